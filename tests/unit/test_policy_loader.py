"""Policy files: the example loads; broken files are refused with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipguard.cli import main
from sipguard.policy import PolicyError, load, load_text
from sipguard.policy.model import RuleMode

ROOT = Path(__file__).parents[2]


def test_example_policy_loads_with_every_key() -> None:
    policy = load(ROOT / "policies" / "example.yaml")
    names = [a.name for a in policy.accounts]
    assert names == ["acme", "bigco-trunk"]
    acme = policy.accounts[0]
    assert acme.kind == "hosted" and acme.upstream == "pbx"
    assert {u.kind for u in acme.users} == {"person", "shared_room", "meeting_room", "admin_no_service"}
    assert acme.rules["caller_id"] is RuleMode.ENFORCE
    trunk = policy.accounts[1]
    assert trunk.channels == 30 and trunk.deliver_to is not None and trunk.deliver_to.port == 5060
    assert policy.service.reject.channel_limit == 486
    service = policy.service
    assert service.international == frozenset({"abroad"}) and service.upstreams["abroad"].host == "203.0.113.9"
    assert service.inbound_caller_id.mode is RuleMode.ENFORCE and service.inbound_caller_id.allow[0].holds("+3225550042")
    assert service.reject.inbound_spoofing == 403 and service.route_secret is None
    assert (service.edge.trusted_requests_per_s, service.edge.packets_per_s, service.edge.burst) == (300, 20, 20)
    assert service.state.store == "memory" and service.state.lease_s == 30 and service.state.renew_s == 10
    assert (service.overload.queue_delay_ms, service.overload.retry_after_s) == (40, 2)


def _problems(text: str) -> list[tuple[int, str, str]]:
    with pytest.raises(PolicyError) as info:
        load_text(text, "p.yaml")
    return [(p.line, p.key, p.message) for p in info.value.problems]


GOOD_SERVICE = """service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {pbx: "sip:127.0.0.3:5060"}
"""


def test_every_error_is_reported_with_line_and_key() -> None:
    text = GOOD_SERVICE + """accounts:
  a:
    kind: hosted
    match: {sources: ["not-a-network"]}
    upstream: nowhere
    devices:
      - {name: "Alarm panel", type: alarm}
      - {name: "Lift", type: lift}
    rules: {channel_limit: maybe}
    colour: blue
"""
    problems = _problems(text)
    keys = {(line, key) for line, key, _m in problems}
    assert (7, "accounts.a.match.sources[0]") in keys
    assert (8, "accounts.a.upstream") in keys
    assert (10, "accounts.a.devices[0].type") in keys
    assert (11, "accounts.a.devices[1].type") in keys
    assert (12, "accounts.a.rules.channel_limit") in keys
    assert (13, "accounts.a.colour") in keys
    alarm = next(m for line, key, m in problems if key == "accounts.a.devices[0].type")
    assert "may not be provisioned" in alarm


def test_service_errors() -> None:
    problems = _problems("""service:
  listen: ["udp:nowhere"]
  upstreams: {pbx: "http://x"}
  channel_bands:
    - {up_to: 5, per_user: 1}
    - {up_to: 2, per_user: 1}
  reject: {channel_limit: 200}
  dialog_timeout_s: -1
  overload: {queue_delay_ms: 0, retry_after: 2}
""")
    keys = {key for _l, key, _m in problems}
    assert {"service.listen[0]", "service.upstreams.pbx", "service.channel_bands[1].up_to",
            "service.reject.channel_limit", "service.dialog_timeout_s", "service.overload.queue_delay_ms",
            "service.overload.retry_after"} <= keys
    assert any("did you mean 'retry_after_s'" in m for _l, key, m in problems if key == "service.overload.retry_after")


def test_yaml_syntax_error_names_the_line() -> None:
    problems = _problems(GOOD_SERVICE + "accounts:\n  a: [unclosed\n")
    assert problems[0][0] >= 5 and "YAML" in problems[0][2]


def test_missing_service_is_an_error() -> None:
    assert ("service", "missing") in [(k, m) for _l, k, m in _problems("accounts: {}\n")]


def test_check_command_prints_every_problem(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD_SERVICE + "accounts:\n  a: {match: {sources: [x]}, upstream: pbx, kind: pbx}\n")
    assert main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:5: accounts.a.match.sources[0]" in out
    assert f"{bad}:5: accounts.a.kind" in out
    assert main(["check", str(ROOT / "policies" / "example.yaml")]) == 0


def test_policy_folder_is_read_in_name_order(tmp_path) -> None:
    (tmp_path / "00-service.yaml").write_text(GOOD_SERVICE)
    (tmp_path / "10-acme.yaml").write_text("accounts:\n  acme: {match: {sources: [192.0.2.0/28]}, upstream: pbx}\n")
    (tmp_path / "20-other.yaml").write_text("accounts:\n  other: {match: {sources: [192.0.2.16/28]}, upstream: pbx}\n")
    policy = load(tmp_path)
    assert [a.name for a in policy.accounts] == ["acme", "other"]


def test_overlapping_number_blocks_are_refused() -> None:
    problems = _problems(GOOD_SERVICE + """accounts:
  a:
    kind: trunk
    channels: 1
    match: {sources: [192.0.2.1/32]}
    upstream: pbx
    numbers: [{range: "+3228807240-+3228807249", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
  b:
    kind: trunk
    channels: 1
    match: {sources: [192.0.2.2/32]}
    upstream: pbx
    numbers: [{number: "+3228807245", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
""")
    assert (17, "accounts.b.numbers[0]") in [(line, key) for line, key, _m in problems]
    assert "overlaps +3228807240-+3228807249 of account a" in problems[0][2]


BROKEN = sorted((ROOT / "tests" / "data" / "policies").glob("*.yaml"))


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.name)
def test_check_finds_every_error_of_a_broken_file_with_its_line(path: Path, capsys) -> None:
    expected = []
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            number, _sep, key = line[len("# expect: "):].partition(" ")
            expected.append(f"{path}:{number}: {key.strip()}:" if key.strip() else f"{path}:{number}: YAML syntax:")
    assert expected, "each broken file says what check must find"
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    for prefix in expected:
        assert prefix in out, f"{prefix!r} not reported:\n{out}"
    reported = [line for line in out.splitlines() if line.startswith(str(path))]
    assert len({line.split(": ")[0] + ": " + line.split(": ")[1] for line in reported}) == len(set(expected)), out


ACCOUNT = """accounts:
  a:
    kind: hosted
    match: {sources: ["127.0.0.2/32"]}
    upstream: pbx
    users: [{name: "A", sip_users: ["1000"], site: hq}]
    numbers: [{range: "+3228807240-+3228807249", site: hq}]
    sites: {hq: {address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3228807240"}}
"""


def test_stream_transports_and_their_keys() -> None:
    policy = load_text("""service:
  listen: ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
  upstreams: {pbx: "sip:127.0.0.3:5060;transport=tcp"}
  connections: {idle_timeout_s: 120, max_per_source: 8}
  tls: {ca: null, min_version: "1.3"}
""" + ACCOUNT, "p.yaml")
    service = policy.service
    assert service.upstreams["pbx"].transport == "tcp"
    assert (service.connections.idle_timeout_s, service.connections.max_per_source) == (120, 8)
    assert service.connections.message_deadline_s == 5  # the defaults of the keys not given
    assert service.tls.ca is None and service.tls.min_version == "1.3"


def test_stream_transport_errors_name_their_line_and_key() -> None:
    problems = _problems("""service:
  listen: ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
  upstreams: {pbx: "sip:127.0.0.3:5060;transport=tcp"}
  connections: {max_per_source: 0, message_deadline: 5}
  tls: {verify_clients: maybe, min_version: "1.1"}
""" + ACCOUNT.replace('match: {sources: ["127.0.0.2/32"]}', 'match: {tls_names: ["pbx.test"]}'))
    keys = {(line, key) for line, key, _m in problems}
    assert (3, "service.upstreams.pbx") in keys  # no tcp: listener reaches it
    assert (4, "service.connections.max_per_source") in keys and (4, "service.connections.message_deadline") in keys
    assert (5, "service.tls.verify_clients") in keys and (5, "service.tls.min_version") in keys
    assert (9, "accounts.a.match.tls_names") in keys  # a name is no proof without the CAs it chains to
    messages = dict(((line, key), m) for line, key, m in problems)
    assert "no tcp address of IPv4" in messages[(3, "service.upstreams.pbx")]


def test_a_tls_listener_needs_a_certificate_that_serves(tmp_path) -> None:
    problems = _problems("""service:
  listen: ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
  upstreams: {pbx: "sip:127.0.0.3:5060"}
""" + ACCOUNT)
    assert any(key == "service.tls.cert" and "needs service.tls.cert" in m for _l, key, m in problems)
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    problems = _problems(f"""service:
  listen: ["udp:127.0.0.1:5060", "tls:127.0.0.1:5061"]
  upstreams: {{pbx: "sip:127.0.0.3:5060"}}
  tls: {{cert: "{tmp_path / 'cert.pem'}", key: "{tmp_path / 'key.pem'}"}}
""" + ACCOUNT)
    assert [(line, key) for line, key, _m in problems] == [(4, "service.tls.cert")]
    assert "cannot read the certificate" in problems[0][2]
