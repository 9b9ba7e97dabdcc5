"""Dialogs of admitted INVITEs: what holds a channel, and when it is let go.

A dialog starts when an initial INVITE is admitted (EARLY), is CONFIRMED by a
2xx, and ends on a final non-2xx, a CANCEL's outcome, Timer C, a BYE, or when
no in-dialog request was seen for ``dialog_timeout_s`` (a lost BYE).  It is
keyed by Call-ID and the caller's From tag; a request from the callee carries
the caller's tag as its To tag, so both directions find it.

A dialog has two ends: the address its INVITE came from (the caller's side) and
the next hop sipguard sent it to (the callee's side).  Requests inside it are
relayed only from one end to the other.  The same two ends, with the Call-ID,
are signed into sipguard's Record-Route (``route_token``, keyed BLAKE2s, the MAC
of RFC 7693 §2.9, under the ``service.route_secret``), so that after a restart,
or on another node that
knows the secret, an in-dialog request proves the dialog was admitted even when
no dialog is held for it (README, "In-dialog requests").
"""

from __future__ import annotations

import hashlib
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .actions import Action, DialogEnded, DialogStarted
from .message import Request
from .symbol import Symbol, move, steps
from .timers import TimerOwner, TimerWheel

__all__ = ["DialogState", "Dialog", "Dialogs", "DIALOG_TRANSITIONS", "TOKEN_PARAM", "account_tag", "route_token", "token_side"]

TOKEN_PARAM: Final = "sgt"  # the Record-Route URI parameter that carries the token
_MAC_LEN: Final = 20  # hex characters of the MAC; the account's tag follows


def account_tag(account: str | None) -> str:
    """An opaque tag of an account, 8 hex characters: the token carries it (not the name), so that a node that
    holds no dialog for a BYE can still release the call's channel (state/redis_store.py)."""
    if not account:
        return "00000000"
    return hashlib.blake2s(account.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def route_token(key: bytes, call_id: str, caller_host: str, callee_host: str, tag: str) -> str:
    """The token of a dialog: an 80-bit keyed BLAKE2s (``key``: 16 to 32 bytes) of its Call-ID, its two ends and
    its account's tag, in hex, then the tag.  A third of HMAC-SHA256's cost, which set up OpenSSL contexts on
    every call."""
    message = f"{call_id}\x00{caller_host}\x00{callee_host}\x00{tag}".encode("utf-8", "surrogateescape")
    return hashlib.blake2s(message, key=key, digest_size=10).hexdigest() + tag


def token_side(key: bytes, token: str, call_id: str, source_host: str, target_host: str) -> str | None:
    """Which end a request inside the dialog of ``token`` comes from (``caller`` or ``callee``) when it goes from
    one end to the other; None when the token does not prove that."""
    if len(token) != _MAC_LEN + 8:
        return None
    tag = token[_MAC_LEN:]
    if token == route_token(key, call_id, source_host, target_host, tag):
        return "caller"
    if token == route_token(key, call_id, target_host, source_host, tag):
        return "callee"
    return None


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
_DIALOG_STEPS: Final = steps(DIALOG_TRANSITIONS)  # by state, then event (symbol.py)


# acyclic: a Dialog holds strings, times and its claim, none of which leads back to it
@mypyc_attr(acyclic=True)
class Dialog(TimerOwner):
    __slots__ = (
        "dialog_id",
        "call_id",
        "caller_tag",
        "callee_tag",
        "account",
        "direction",
        "claim",
        "caller_host",
        "callee_host",
        "state",
        "started_at",
        "answered_at",
        "heard_at",
    )

    def __init__(
        self, call_id: str, caller_tag: str, account: str | None, direction: str, claim: object | None, now: float,
        caller_host: str = "", callee_host: str = "",
    ) -> None:
        super().__init__()
        self.dialog_id = f"{call_id};{caller_tag}"
        self.call_id = call_id
        self.caller_tag = caller_tag
        self.callee_tag: str | None = None
        self.account = account
        self.direction = direction
        self.claim = claim
        self.caller_host = caller_host  # the two ends, IP literals: where the INVITE came from, where it went
        self.callee_host = callee_host
        self.state = DialogState.EARLY
        self.started_at = now
        self.answered_at: float | None = None
        self.heard_at = now  # the last request inside the confirmed dialog (or its 2xx): its silence starts here

    def joins(self, source_host: str, target_host: str) -> bool:
        """Whether a request from ``source_host`` to ``target_host`` goes from one end of the dialog to the other."""
        caller, callee = self.caller_host, self.callee_host
        return (source_host == caller and target_host == callee) or (source_host == callee and target_host == caller)

    def move(self, event: str) -> None:
        self.state = move(_DIALOG_STEPS, self.state, event)


class Dialogs:
    """The dialogs sipguard holds, by Call-ID and the caller's tag: started when an INVITE is admitted,
    confirmed by its 2xx, kept alive by the requests inside it, ended (with its channel) by a BYE, a final
    non-2xx, a CANCEL, Timer C, a transport error or ``timeout_s`` of silence."""

    __slots__ = ("_table", "_wheel", "timeout_s")

    def __init__(self, wheel: TimerWheel, timeout_s: float) -> None:
        self._table: dict[tuple[str, str], Dialog] = {}
        self._wheel = wheel  # shared with the transactions: the core arms one timer for both
        self.timeout_s = timeout_s

    def __len__(self) -> int:
        return len(self._table)

    def all(self) -> list[Dialog]:
        return list(self._table.values())

    def start(self, req: Request, account: str | None, direction: str, claim: object | None, caller_host: str,
              callee_host: str, now: float, out: list[Action]) -> Dialog:
        dialog = Dialog(req.call_id, req.from_tag or "", account, direction, claim, now, caller_host, callee_host)
        self._table[(req.call_id, dialog.caller_tag)] = dialog
        out.append(DialogStarted(dialog.dialog_id, req.call_id, account, direction, claim))
        return dialog

    def find(self, req: Request) -> Dialog | None:
        """The dialog of an in-dialog request, from either end: the caller's tag is the From tag of the
        caller's requests and the To tag of the callee's."""
        return self.find_tags(req.call_id, req.from_tag, req.to_tag)

    def find_tags(self, call_id: str, from_tag: str | None, to_tag: str | None) -> Dialog | None:
        d = self._table.get((call_id, from_tag or ""))
        if d is None and to_tag is not None:
            d = self._table.get((call_id, to_tag))
        return d

    def answered(self, dialog: Dialog, callee_tag: str | None, now: float) -> None:
        """A 2xx to its INVITE (the first confirms it; a retransmitted one only re-arms the timeout)."""
        if dialog.state is DialogState.EARLY:
            dialog.answered_at = now
            dialog.callee_tag = callee_tag
        dialog.move("recv_2xx")
        dialog.heard_at = now
        self._wheel.set(dialog, "timeout", now + self.timeout_s)

    def touched(self, dialog: Dialog, now: float) -> None:
        """A request inside a confirmed dialog: it is not silent.  Only noted: the timeout, when it comes, looks
        at it (``timed_out``), instead of a wheel operation per request."""
        if dialog.state is DialogState.CONFIRMED:
            dialog.heard_at = now

    def timed_out(self, dialog: Dialog, now: float, out: list[Action]) -> None:
        """Its timeout came: ended if it has been silent for ``timeout_s``, else the timeout moves to that point."""
        due = dialog.heard_at + self.timeout_s
        if due > now:
            self._wheel.set(dialog, "timeout", due)
        else:
            self.end(dialog, "timeout", now, out)

    def end(self, dialog: Dialog, reason: str, now: float, out: list[Action]) -> None:
        if not dialog.alive:
            return
        dialog.move("end")
        dialog.alive = False
        self._wheel.cancel_all(dialog)
        self._table.pop((dialog.call_id, dialog.caller_tag), None)
        duration = None if dialog.answered_at is None else now - dialog.answered_at
        out.append(DialogEnded(dialog.dialog_id, dialog.call_id, dialog.account, reason, dialog.claim, duration))
