"""Decisions as values: what a policy concluded, why, and what it changes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from ..sip.symbol import Symbol

__all__ = ["Verdict", "Mode", "Decision", "Evidence"]


class Verdict(Symbol):
    ALLOW = "allow"
    REJECT = "reject"
    REWRITE = "rewrite"
    FLAG = "flag"


class Mode(Symbol):
    ENFORCE = "enforce"
    SHADOW = "shadow"


Evidence = tuple[tuple[str, str | int | float | bool | None], ...]


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class Decision:
    """One rule's conclusion about one request.

    verdict: what it concluded; rule: which rule fired ("attribution", ...);
    reason: words for a person; evidence: the values it looked at;
    mode: ENFORCE (carried out) or SHADOW (recorded, call let through);
    status: the SIP status of a rejection;
    logged: whether it gets a decision-log line (default: rejects, rewrites and flags; plain allows are
        only counted; a rule that refuses many requests in a row logs the first of them only).
    """

    verdict: Final[Verdict]
    rule: Final[str]
    reason: Final[str]
    account: Final[str | None]
    evidence: Final[Evidence]
    mode: Final[Mode]
    status: Final[int]
    logged: Final[bool]

    def __init__(self, verdict: Verdict, rule: str, reason: str, account: str | None = None, evidence: Evidence = (),
                 mode: Mode = Mode.ENFORCE, status: int = 0, logged: bool | None = None) -> None:
        self.verdict = verdict
        self.rule = rule
        self.reason = reason
        self.account = account
        self.evidence = evidence
        self.mode = mode
        self.status = status
        self.logged = verdict is not Verdict.ALLOW if logged is None else logged
