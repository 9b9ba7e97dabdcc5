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
        self._stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._stream.flush()
