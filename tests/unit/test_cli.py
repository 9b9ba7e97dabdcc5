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
