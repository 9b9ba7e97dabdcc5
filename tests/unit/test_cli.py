"""The command line's log options, the JSON log format, a reload's summary and systemd's notify protocol."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from sipguard import systemd
from sipguard.cli import JsonFormatter, build_parser
from sipguard.policy import load_text
from sipguard.server import policy_changes


@pytest.mark.parametrize("argv", [
    ["--log-level", "debug", "--log-format", "json", "check", "p.yaml"],
    ["check", "p.yaml", "--log-level", "debug", "--log-format", "json"],
    ["--log-level", "warning", "check", "--log-level", "debug", "p.yaml", "--log-format", "json"],
])
def test_log_options_work_before_and_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.log_level, args.log_format) == ("DEBUG", "json")


def test_log_options_default_to_info_text_and_refuse_nonsense() -> None:
    args = build_parser().parse_args(["run", "--policy", "p.yaml"])
    assert (args.log_level, args.log_format) == ("INFO", "text")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--policy", "p.yaml", "--log-format", "xml"])


def test_json_log_lines_are_one_object_each() -> None:
    record = logging.LogRecord("sipguard", logging.WARNING, __file__, 1, "edge: banned %s for %d s", ("1.2.3.4", 60),
                               None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "sipguard", "edge: banned 1.2.3.4 for 60 s")


BASE = """
service:
  upstreams: {pbx: "sip:10.0.0.10:5060"}
accounts:
  acme: {kind: hosted, match: {sources: ["192.0.2.0/28"]}, upstream: pbx, users: [{name: A, sip_users: ["201"]}]}
  beta: {kind: hosted, match: {sources: ["192.0.2.16/28"]}, upstream: pbx, users: [{name: B, sip_users: ["301"]}]}
"""


def test_a_reload_summary_names_what_changed() -> None:
    old = load_text(BASE)
    assert policy_changes(old, load_text(BASE)) == []
    new = load_text(BASE.replace('name: B', 'name: Bee').replace("  beta:", "  gamma:").replace(
        "upstreams:", "drain_timeout_s: 5\n  upstreams:") + '  delta: {kind: hosted, match: {sources: ["192.0.2.32/28"]}, '
        'upstream: pbx, users: []}\n')
    assert policy_changes(old, new) == ["accounts added: delta, gamma", "accounts removed: beta",
                                        "service: drain_timeout_s"]
    changed = load_text(BASE.replace('name: A', 'name: Anna'))
    assert policy_changes(old, changed) == ["accounts changed: acme"]


def test_sd_notify_reaches_the_socket_and_is_silent_without_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1\nSTATUS=listening") is True
        assert sock.recv(100) == b"READY=1\nSTATUS=listening"


def test_the_watchdog_period_is_half_of_watchdog_usec_for_this_process_only(monkeypatch) -> None:
    import os

    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    assert systemd.watchdog_period_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_period_s() == 5.0


# ---------------------------------------------------------------- sipguard check: one line per mistake, at its line
EXAMPLE = Path(__file__).parents[2] / "policies" / "example.yaml"


def _check(tmp_path: Path, capsys, edit: tuple[str, str]) -> list[str]:
    from sipguard.cli import main

    text = EXAMPLE.read_text()
    assert edit[0] in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    assert main(["check", str(path)]) == 1
    return capsys.readouterr().out.splitlines()


def _line_of(text: str) -> int:
    return EXAMPLE.read_text().splitlines().index(next(l for l in EXAMPLE.read_text().splitlines() if text in l)) + 1


def test_check_a_yaml_syntax_error_is_one_line_at_the_bracket_never_closed(tmp_path: Path, capsys) -> None:
    opened = 'sources: ["192.0.2.0/28"]'
    (line,) = _check(tmp_path, capsys, (opened, opened[:-1]))
    assert line.startswith(f"{tmp_path / 'policy.yaml'}:{_line_of(opened)}: YAML syntax: ")


def test_check_country_no_is_one_error_not_a_cascade(tmp_path: Path, capsys) -> None:
    (line,) = _check(tmp_path, capsys, ('  country: BE', '  country: NO'))
    assert f":{_line_of('country: ')}: service.country: NO is read by YAML as false" in line
    (line,) = _check(tmp_path, capsys, ('  country: BE', '  country: XX'))
    assert "not an ISO 3166 country code" in line


def test_check_a_misspelt_key_says_did_you_mean_and_not_also_missing(tmp_path: Path, capsys) -> None:
    (line,) = _check(tmp_path, capsys, ("    upstream: pbx", "    upstraem: pbx"))
    assert line.endswith("accounts.acme.upstraem: unknown key: did you mean 'upstream'?")
    assert f":{_line_of('    upstream: pbx')}:" in line


def test_check_a_network_with_host_bits_is_an_error(tmp_path: Path, capsys) -> None:
    (line,) = _check(tmp_path, capsys, ('["192.0.2.0/28"]', '["192.0.2.5/28"]'))
    assert "host bits set: '192.0.2.5/28' is the network '192.0.2.0/28'" in line


def test_check_problems_are_sorted_by_line(tmp_path: Path, capsys) -> None:
    from sipguard.cli import main

    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE.read_text().replace("    upstream: pbx", "    upstraem: pbx", 1)
                    .replace('  country: BE', '  country: XX', 1))
    assert main(["check", str(path)]) == 1
    lines = [int(line.split(":")[1]) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines == sorted(lines)


# ---------------------------------------------------------------- sipguard channels: exports and --compare (BT4a)
def _people(n: int) -> str:
    return "[" + ", ".join(f'{{name: "P{i}", sip_users: ["{100 + i}"]}}' for i in range(n)) + "]"


def _policy_file(tmp_path: Path, name: str, people: int) -> str:
    path = tmp_path / name
    path.write_text(BASE.replace('users: [{name: A, sip_users: ["201"]}]', f"users: {_people(people)}"))
    return str(path)


def test_channels_exports_json_and_csv(tmp_path: Path, capsys) -> None:
    from sipguard.cli import main

    path = _policy_file(tmp_path, "p.yaml", 10)
    assert main(["channels", path, "--format", "json"]) == 0
    rows = {r["account"]: r for r in json.loads(capsys.readouterr().out)["accounts"]}
    assert (rows["acme"]["billable_users"], rows["acme"]["channels"], rows["acme"]["users_by_kind"]) == (
        10, 9, {"person": 10})  # 2 x 2 + 3 x 1 + 5 x 0.5 = 9.5, rounded down by default
    assert rows["acme"]["computation"].startswith("10 users:")
    assert main(["channels", path, "acme", "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.startswith("account,kind,billable_users,channels,users_person") and row.startswith("acme,hosted,10,")


def test_channels_compare_flags_a_reduction_over_ten_percent_and_not_ten(tmp_path: Path, capsys) -> None:
    from sipguard.cli import main

    old = _policy_file(tmp_path, "old.yaml", 20)
    assert main(["channels", "--compare", old, _policy_file(tmp_path, "ten.yaml", 18)]) == 0  # -10%: allowed
    assert "reduction over 10%" not in capsys.readouterr().out
    assert main(["channels", "--compare", old, _policy_file(tmp_path, "more.yaml", 17)]) == 1  # -15%
    out = capsys.readouterr().out
    assert "acme: 20 -> 17 billable users (-15.0%)  <-- reduction over 10%" in out
    assert main(["channels", "--compare", old, _policy_file(tmp_path, "more2.yaml", 17), "--format", "json"]) == 1
    rows = {r["account"]: r for r in json.loads(capsys.readouterr().out)["accounts"]}
    assert rows["acme"]["status"] == "reduction over 10%" and rows["acme"]["change"] == -0.15
    assert rows["beta"]["status"] == "ok"
