"""One JSON line per decision that rejects, rewrites or flags (OPA-style)."""

from __future__ import annotations

import json
import time
from typing import TextIO

from .policy.decision import Decision

__all__ = ["DecisionLog"]


class DecisionLog:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def reopen(self, stream: TextIO) -> None:
        """Write to ``stream`` from now on (the file opened again after logrotate renamed it)."""
        self._stream = stream

    def write(self, decision: Decision, call_id: str, account: str | None) -> None:
        record = {
            "time": round(time.time(), 3),
            "account": account,
            "call_id": call_id,
            "rule": decision.rule,
            "verdict": decision.verdict.value,
            "mode": decision.mode.value,
            "status": decision.status or None,
            "reason": decision.reason,
            "evidence": dict(decision.evidence),
        }
        line = json.dumps(record, ensure_ascii=False, default=str)
        if not line.isascii():
            # header bytes that were not UTF-8 arrive as lone surrogates: write them as JSON escapes (which
            # read back as the same string), not as text no UTF-8 stream can encode
            line = line.encode("utf-8", "backslashreplace").decode("utf-8")
        self._stream.write(line + "\n")
        self._stream.flush()
