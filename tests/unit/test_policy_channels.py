"""The channel formula (terms: Business Telephony 4a) and who counts as a user."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from sipguard.cli import main
from sipguard.policy import load, load_text
from sipguard.policy.channels import channel_limit, channels_for, count_users
from sipguard.policy.model import Service

BANDS = Service().channel_bands
ROOT = Path(__file__).parents[2]


def expected(users: int) -> Fraction:
    """Progressive bands written out one user at a time, in exact arithmetic."""
    total = Fraction(0)
    for i in range(1, users + 1):
        total += 2 if i <= 2 else 1 if i <= 5 else Fraction(1, 2) if i <= 10 else Fraction(1, 4)
    return total


@pytest.mark.parametrize("users", range(0, 41))
def test_formula_for_0_to_40_users(users: int) -> None:
    exact, _how = channels_for(users, BANDS)
    assert Fraction(exact).limit_denominator(4) == expected(users)


@pytest.mark.parametrize("users,channels", [(0, 0), (1, 2), (2, 4), (5, 7), (10, 9.5), (14, 10.5)])
def test_examples_of_the_spec(users: int, channels: float) -> None:
    assert channels_for(users, BANDS)[0] == channels


SERVICE = """service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {pbx: "sip:127.0.0.3:5060"}
"""


def _account(users: str, devices: str = "[]", extra: str = ""):
    policy = load_text(SERVICE + f"""{extra}accounts:
  a:
    match: {{sources: ["192.0.2.0/28"]}}
    upstream: pbx
    users: {users}
    devices: {devices}
""")
    return policy.accounts[0], policy.service


# one row per example of the terms of use: (users, devices) -> billable users
TERMS = [
    ("a person with a desk phone and two softphones is one user",
     '[{name: P, sip_users: ["1", "1m", "1s"]}]', "[]", 1),
    ("a workshop with one phone is one user", '[{name: W, kind: shared_room, sip_users: ["230"]}]', "[]", 1),
    ("a warehouse with two phones is two users",
     '[{name: W, kind: shared_room, sip_users: ["231", "232"]}]', "[]", 2),
    ("a meeting room used by users is no user", '[{name: M, kind: meeting_room, sip_users: ["240"]}]', "[]", 0),
    ("a door phone is no user", "[]", '[{name: D, type: door_phone, sip_users: ["290"]}]', 0),
    ("a fax is no user", "[]", '[{name: F, type: fax, sip_users: ["291"]}]', 0),
    ("a pager is no user", "[]", '[{name: P, type: pager}]', 0),
    ("an emergency phone, buzzer and flasher are no users", "[]",
     "[{name: E, type: emergency_phone}, {name: B, type: buzzer}, {name: L, type: flasher}]", 0),
    ("a no-service administrator is no user", '[{name: A, kind: admin_no_service, sip_users: ["299"]}]', "[]", 0),
    ("a no-service supervisor is no user", '[{name: S, kind: supervisor_no_service}]', "[]", 0),
]


@pytest.mark.parametrize("case,users,devices,billable", TERMS, ids=[t[0] for t in TERMS])
def test_who_counts_as_a_user(case: str, users: str, devices: str, billable: int) -> None:
    account, _service = _account(users, devices)
    assert sum(c.users for c in count_users(account)) == billable


def test_rounding_is_configurable() -> None:
    users = "[" + ", ".join(f'{{name: U{i}, sip_users: ["{i}"]}}' for i in range(7)) + "]"  # 7 users -> 8
    users10 = "[" + ", ".join(f'{{name: U{i}, sip_users: ["{i}"]}}' for i in range(6)) + "]"  # 6 -> 7.5
    account, service = _account(users10)
    assert channel_limit(account, service.channel_bands, "floor").limit == 7
    assert channel_limit(account, service.channel_bands, "ceil").limit == 8
    account7, service = _account(users)
    assert channel_limit(account7, service.channel_bands, service.channel_rounding).limit == 8


def test_bands_are_policy_data() -> None:
    policy = load_text(SERVICE.replace('upstreams:', 'channel_bands: [{up_to: 1, per_user: 3}, {per_user: 1}]\n  upstreams:')
                       + """accounts:
  a:
    match: {sources: ["192.0.2.0/28"]}
    upstream: pbx
    users: [{name: A}, {name: B}, {name: C}]
""")
    account = policy.accounts[0]
    assert channel_limit(account, policy.service.channel_bands, "floor").limit == 5


def test_trunk_declares_its_channels() -> None:
    policy = load(ROOT / "policies" / "example.yaml")
    trunk = policy.accounts[1]
    assert channel_limit(trunk, policy.service.channel_bands, "floor").limit == 30


def test_channels_command_explains_the_example(capsys) -> None:
    assert main(["channels", str(ROOT / "policies" / "example.yaml"), "acme"]) == 0
    out = capsys.readouterr().out
    assert "acme (hosted): 8 channels, 7 billable users" in out
    assert "2 users  Warehouse [shared_room]" in out
    assert "0 users  Meeting room [meeting_room]" in out
    assert "0 users  Front door [door_phone]: a device not linked to a user is not a user" in out
    assert "= 8 -> floor 8" in out
    assert main(["channels", str(ROOT / "policies" / "example.yaml"), "nobody"]) == 1


def test_alarm_and_lift_lines_are_refused(tmp_path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text(SERVICE + """accounts:
  a:
    match: {sources: ["192.0.2.0/28"]}
    upstream: pbx
    devices:
      - {name: Alarm, type: alarm}
      - {name: Lift 1, type: lift}
""")
    assert main(["check", str(bad)]) == 1


def _people(n: int) -> str:
    return "[" + ", ".join(f'{{name: U{i}, sip_users: ["{i}"]}}' for i in range(n)) + "]"


@pytest.mark.parametrize("users,floor,round_,ceil", [(10, 9, 10, 10), (14, 10, 11, 11), (13, 10, 10, 11),
                                                     (5, 7, 7, 7), (0, 0, 0, 0)])
def test_each_rounding_on_the_bands_of_the_terms(users: int, floor: int, round_: int, ceil: int) -> None:
    account, service = _account(_people(users))
    limits = [channel_limit(account, service.channel_bands, r).limit for r in ("floor", "round", "ceil")]
    assert limits == [floor, round_, ceil]


def test_the_explanation_shows_every_band_and_the_rounding() -> None:
    account, service = _account(_people(14))
    limit = channel_limit(account, service.channel_bands, "round")
    assert limit.explanation == ("14 users: 2 x 2 (1-2) + 3 x 1 (3-5) + 5 x 0.5 (6-10) + 4 x 0.25 (>10) = 10.5 "
                                 "-> round 11")
    assert (limit.account, limit.users, limit.exact, limit.limit) == ("a", 14, 10.5, 11)
    assert limit.entries[0].reason.startswith("a natural person") and limit.entries[0].users == 1
    nobody, service = _account("[]")
    assert channel_limit(nobody, service.channel_bands, "floor").explanation == "0 users: no users = 0 -> floor 0"


def test_a_trunks_declared_channels_are_explained_and_its_users_still_counted() -> None:
    policy = load_text(SERVICE + """accounts:
  t:
    kind: trunk
    channels: 12
    match: {sources: ["192.0.2.0/28"]}
    upstream: pbx
    users: [{name: A}, {name: B}]
""")
    limit = channel_limit(policy.accounts[0], policy.service.channel_bands, "floor")
    assert (limit.account, limit.users, limit.exact, limit.limit) == ("t", 2, 12.0, 12)
    assert limit.explanation == "12 channels declared by the trunk" and len(limit.entries) == 2
