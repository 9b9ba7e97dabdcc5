"""Dialogs of admitted INVITEs: what holds a channel, and when it is let go.

A dialog starts when an initial INVITE is admitted (EARLY), is CONFIRMED by a
2xx, and ends on a final non-2xx, a CANCEL's outcome, Timer C, a BYE, or when
no in-dialog request was seen for ``dialog_timeout_s`` (a lost BYE).  It is
keyed by Call-ID and the caller's From tag; a request from the callee carries
the caller's tag as its To tag, so both directions find it.
"""

from __future__ import annotations

from typing import Final

from .symbol import Symbol

__all__ = ["DialogState", "Dialog", "DIALOG_TRANSITIONS"]


class DialogState(Symbol):
    EARLY = "early"
    CONFIRMED = "confirmed"
    ENDED = "ended"


DIALOG_TRANSITIONS: Final[dict[tuple[DialogState, str], DialogState]] = {
    (DialogState.EARLY, "recv_2xx"): DialogState.CONFIRMED,
    (DialogState.EARLY, "end"): DialogState.ENDED,
    (DialogState.CONFIRMED, "recv_2xx"): DialogState.CONFIRMED,
    (DialogState.CONFIRMED, "end"): DialogState.ENDED,
}


class Dialog:
    __slots__ = (
        "dialog_id",
        "call_id",
        "caller_tag",
        "callee_tag",
        "account",
        "direction",
        "claim",
        "state",
        "started_at",
        "answered_at",
        "deadlines",
        "alive",
    )

    def __init__(
        self, call_id: str, caller_tag: str, account: str | None, direction: str, claim: object | None, now: float
    ) -> None:
        self.dialog_id = f"{call_id};{caller_tag}"
        self.call_id = call_id
        self.caller_tag = caller_tag
        self.callee_tag: str | None = None
        self.account = account
        self.direction = direction
        self.claim = claim
        self.state = DialogState.EARLY
        self.started_at = now
        self.answered_at: float | None = None
        self.deadlines: dict[str, float] = {}
        self.alive = True

    def move(self, event: str) -> None:
        nxt = DIALOG_TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise RuntimeError(f"no dialog transition from {self.state} on {event}")
        self.state = nxt
