"""The decision log: one JSON line per logged decision, whatever bytes the request carried."""

from __future__ import annotations

import json
from pathlib import Path

from sipguard.decisionlog import DecisionLog
from sipguard.policy.decision import Decision, Verdict


def test_undecodable_header_bytes_are_logged_as_json_escapes_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    call_id = b"\x80call@host".decode("utf-8", "surrogateescape")  # as the parser reads such a Call-ID
    with open(path, "a", encoding="utf-8") as stream:  # as the server opens --decision-log
        log = DecisionLog(stream)
        log.write(Decision(Verdict.REJECT, "caller_id", "not ours: José", "acme"), call_id, "acme")
        log.write(Decision(Verdict.REJECT, "caller_id", "plain", "acme"), "c2", "acme")
    first, second = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines())
    assert first["call_id"] == call_id  # the escape reads back as the same string
    assert first["reason"] == "not ours: José"  # readable text stays text
    assert second["call_id"] == "c2"
