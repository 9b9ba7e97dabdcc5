"""A reload puts every key it accepts in force, and refuses by name every key read at start only.

Through the server as it runs (bench/call.py's harness: the whole datagram path, a clock of its own).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench.call import Harness
from sipguard.policy.model import Service
from sipguard.server import READ_AT_START

START_ONLY_EDITS = {
    "listen": ('listen: ["udp:127.0.0.1:5060"]', 'listen: ["udp:127.0.0.1:5070"]'),
    "admin": ('admin: "127.0.0.1:9090"', 'admin: "127.0.0.1:9099"'),
    "advertise": ("service:\n", 'service:\n  advertise: "192.0.2.10"\n'),
    "state": ("service:\n", 'service:\n  state: {store: redis, url: "redis://127.0.0.1:1/0"}\n'),
    "sip_timers": ("t1_ms: 500", "t1_ms: 250"),
    "max_message_bytes": ("service:\n", "service:\n  max_message_bytes: 9000\n"),
}


def test_every_service_key_is_either_reloaded_or_read_at_start() -> None:
    """The start-only keys are real keys, and each has an edit below (a new start-only key gets a test)."""
    keys = {f.name for f in dataclasses.fields(Service)}
    assert set(READ_AT_START) <= keys and set(START_ONLY_EDITS) == set(READ_AT_START)


@pytest.mark.parametrize("key", READ_AT_START)
def test_a_reload_that_changes_a_start_only_key_is_refused_by_name(tmp_path: Path, key: str) -> None:
    h = Harness(tmp_path)
    in_force = h.server.policy
    policy = Path(h.server.settings.policy_path)
    old, new = START_ONLY_EDITS[key]
    text = policy.read_text()
    assert old in text
    policy.write_text(text.replace(old, new, 1))
    problems = h.server.reload()
    assert len(problems) == 1 and f"service.{key}: changed, and needs a restart" in problems[0]
    assert h.server.policy is in_force  # the running policy stays in force
    h.call(1)  # and calls go on
    assert h.server.metrics.reloads.labels("refused")._value.get() == 1


def test_a_reloaded_dialog_timeout_ends_a_silent_call_at_the_new_timeout(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    policy = Path(h.server.settings.policy_path)
    policy.write_text(policy.read_text().replace("dialog_timeout_s: 600", "dialog_timeout_s: 30", 1))
    assert h.server.reload() == []
    h.up(7)  # INVITE, 200, ACK: the call is up, and nothing more is heard of it
    assert h.server.core.dialog_count == 1
    h.clock.advance(29.0)
    assert h.server.core.dialog_count == 1
    h.clock.advance(2.0)  # past the reloaded 30 s (the old one was 600 s)
    assert h.server.core.dialog_count == 0


def test_a_reloaded_route_secret_signs_the_next_call(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    before = h.server.core.route_key
    policy = Path(h.server.settings.policy_path)
    policy.write_text(policy.read_text().replace("service:\n", 'service:\n  route_secret: "a new shared secret"\n', 1))
    assert h.server.reload() == []
    assert h.server.core.route_key != before
    policy.write_text(policy.read_text().replace("a new shared secret", "another shared secret, longer", 1))
    after = h.server.core.route_key
    assert h.server.reload() == [] and h.server.core.route_key not in (before, after)
