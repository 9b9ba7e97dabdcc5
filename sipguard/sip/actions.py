"""What the core asks the server to do, and what the server tells the core.

Inputs are nouns (``Peer`` says where bytes came from); actions are imperatives
(``Send``, ``Settle``) or events (``DialogStarted``, ``DialogEnded``,
``Decided``).  The hook types (``Admission``, ``Reject``) are what a router /
policy answers for a new request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from .message import Request
from .serializer import Edit

__all__ = [
    "Peer",
    "Send",
    "Settle",
    "DialogStarted",
    "DialogEnded",
    "Decided",
    "Action",
    "Reject",
    "Admission",
    "Router",
]


@dataclass(frozen=True, slots=True)
class Peer:
    """A transport address: ``host`` is an IP literal without brackets."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes
    dest: Peer
    method: str  # the request's method, or the CSeq method of a response
    status: int  # 0 for a request


@dataclass(frozen=True, slots=True)
class Settle:
    """Settle ``claim`` in the state store, then call ``core.settled(ticket, ok, now)``."""

    ticket: int
    claim: Any  # the store's claim, opaque to the core (Any, not object: mypyc's dataclasses need it)
    emergency: bool


@dataclass(frozen=True, slots=True)
class DialogStarted:
    dialog_id: str
    call_id: str
    account: str | None
    direction: str
    claim: Any | None


@dataclass(frozen=True, slots=True)
class DialogEnded:
    dialog_id: str
    call_id: str
    account: str | None
    reason: str  # bye | rejected | cancelled | timer_c | no_response | timeout | claim_refused
    claim: Any | None
    duration_s: float | None  # from 2xx to end; None if never answered


@dataclass(frozen=True, slots=True)
class Decided:
    """A policy decision to log and count (the server decides what is logged)."""

    decision: Any
    call_id: str
    account: str | None


Action = Send | Settle | DialogStarted | DialogEnded | Decided


@dataclass(frozen=True, slots=True)
class Reject:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()  # e.g. ("warning", '399 sipguard "..."')


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer for a new out-of-dialog request.

    target: the next hop (None together with ``reject``);
    reject: answer with this instead of forwarding (``silent`` drops instead);
    edits: header rewrites applied to the forwarded request;
    claim: an opaque channel claim the server settles before forwarding;
    claim_reject: the answer when the claim is refused;
    decisions: opaque records the server logs / counts (one Decided action each).
    """

    target: Peer | None = None
    account: str | None = None
    direction: str = "outbound"
    reject: Reject | None = None
    silent: bool = False
    edits: tuple[Edit, ...] = ()
    claim: Any | None = None
    claim_reject: Reject | None = None
    emergency: bool = False
    decisions: tuple[object, ...] = ()


class Router(Protocol):
    """The hook the core calls; the policy engine implements it."""

    def screen_packet(self, source: Peer, now: float) -> str | None:
        """Before parsing: None to go on, or why the packet is dropped silently (banned, flood)."""
        ...

    def screen_request(self, request: Request, source: Peer, now: float) -> str | None:
        """After parsing a request: None to go on, or why it is dropped silently (scanner)."""
        ...

    def admit(self, request: Request, source: Peer, now: float) -> Admission:
        """Route and decide a new out-of-dialog request (INVITE, OPTIONS, MESSAGE...)."""
        ...

    def is_known(self, source: Peer) -> bool:
        """Whether an in-dialog request from ``source`` may be relayed without a dialog we track."""
        ...

    def in_dialog(self, request: Request, account: str | None) -> tuple[object, ...]:
        """Decisions to record about a request inside a dialog (never a rejection)."""
        ...
