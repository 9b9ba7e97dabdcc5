"""What the core asks the server to do, and what the server tells the core.

Inputs are nouns (``Peer`` says where bytes came from); actions are imperatives
(``Send``, ``Settle``) or events (``DialogStarted``, ``DialogEnded``,
``Decided``).  The hook types (``Admission``, ``Reject``) are what a router /
policy answers for a new request.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any, Final, Generic, Protocol, TypeVar

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .message import Request
from .serializer import Edit

__all__ = [
    "CoreStats",
    "Peer",
    "Send",
    "Settle",
    "Resolve",
    "DialogStarted",
    "DialogEnded",
    "EndedByToken",
    "Decided",
    "Action",
    "Reject",
    "Admission",
    "Router",
    "PerFamily",
]

T = TypeVar("T")


# The value types made on every message are written as ``@dataclass(slots=True, init=False,
# unsafe_hash=True)`` with ``Final`` fields and a written-out ``__init__``, not as frozen dataclasses:
# under mypyc a dataclass's generated ``__init__`` stays interpreted Python (a frozen one sets each
# field through ``object.__setattr__``: about 1 µs per object, dozens of objects per call), while a
# written-out one is compiled (under 0.1 µs).  ``Final`` keeps them immutable: mypy (the mypyc build)
# refuses an assignment, and the compiled attributes are read-only at run time.  The dataclass still
# gives ``__eq__``, ``__hash__``, ``__repr__`` and ``dataclasses.replace``.


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Peer:
    """A transport address: ``host`` is an IP literal without brackets."""

    transport: Final[str]  # "udp" | "tcp" | "tls"
    host: Final[str]
    port: Final[int]

    def __init__(self, transport: str, host: str, port: int) -> None:
        self.transport = transport
        self.host = host
        self.port = port


class PerFamily(Generic[T]):
    """What a transport has per address family (a listen address, a socket's ``sendto``), picked for a
    destination by its transport, a string key, then its family: a ``(transport, family)`` key cost a tuple
    built, hashed and compared at every forward and every send (about 400 instructions more).

    items: (transport, family 4 or 6, value); the first value given for a transport and family is kept."""

    def __init__(self, items: Iterable[tuple[str, int, T]]) -> None:
        self.table: dict[str, tuple[T | None, T | None]] = {}
        for transport, family, value in items:
            v4, v6 = self.table.get(transport, (None, None))
            if family == 6:
                v6 = value if v6 is None else v6
            else:
                v4 = value if v4 is None else v4
            self.table[transport] = (v4, v6)

    def get(self, dest: Peer) -> T | None:
        """The value for ``dest``'s transport and address family; None: there is none."""
        pair = self.table.get(dest.transport)
        if pair is None:
            return None
        return pair[1] if ":" in dest.host else pair[0]


@mypyc_attr(acyclic=True, free_list_len=1)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Send:
    data: Final[bytes]
    dest: Final[Peer]
    method: Final[str]  # the request's method, or the CSeq method of a response
    status: Final[int]  # 0 for a request

    def __init__(self, data: bytes, dest: Peer, method: str, status: int) -> None:
        self.data = data
        self.dest = dest
        self.method = method
        self.status = status


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Settle:
    """Settle ``claim`` in the state store, then call ``core.settled(ticket, ok, now)``."""

    ticket: Final[int]
    claim: Final[Any]  # the store's claim, opaque to the core (Any, not object: mypyc needs it)
    emergency: Final[bool]

    def __init__(self, ticket: int, claim: Any, emergency: bool) -> None:
        self.ticket = ticket
        self.claim = claim
        self.emergency = emergency


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Resolve:
    """Find where ``target`` (a host name: RFC 3263) goes, then call ``core.resolved(ticket, peers, why, now)``."""

    ticket: Final[int]
    target: Final[Peer]  # host a name; port 0 and transport "" when the URI gave none

    def __init__(self, ticket: int, target: Peer) -> None:
        self.ticket = ticket
        self.target = target


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class DialogStarted:
    dialog_id: Final[str]
    call_id: Final[str]
    account: Final[str | None]
    direction: Final[str]
    claim: Final[Any | None]

    def __init__(self, dialog_id: str, call_id: str, account: str | None, direction: str, claim: Any | None) -> None:
        self.dialog_id = dialog_id
        self.call_id = call_id
        self.account = account
        self.direction = direction
        self.claim = claim


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class DialogEnded:
    dialog_id: Final[str]
    call_id: Final[str]
    account: Final[str | None]
    reason: Final[str]  # bye | rejected | cancelled | timer_c | no_response | timeout | claim_refused
    claim: Final[Any | None]
    duration_s: Final[float | None]  # from 2xx to end; None if never answered

    def __init__(self, dialog_id: str, call_id: str, account: str | None, reason: str, claim: Any | None,
                 duration_s: float | None) -> None:
        self.dialog_id = dialog_id
        self.call_id = call_id
        self.account = account
        self.reason = reason
        self.claim = claim
        self.duration_s = duration_s


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class EndedByToken:
    """A call admitted by another process (before a restart, or another node of a pair) ended with a BYE relayed
    on the proof of its route token: release ``call_key`` of the account whose tag is ``account_tag``."""

    call_key: Final[str]  # Call-ID;caller's tag, as the claim was made
    account_tag: Final[str]

    def __init__(self, call_key: str, account_tag: str) -> None:
        self.call_key = call_key
        self.account_tag = account_tag


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Decided:
    """A policy decision to log and count (the server decides what is logged)."""

    decision: Final[Any]
    call_id: Final[str]
    account: Final[str | None]

    def __init__(self, decision: Any, call_id: str, account: str | None) -> None:
        self.decision = decision
        self.call_id = call_id
        self.account = account


Action = Send | Settle | Resolve | DialogStarted | DialogEnded | EndedByToken | Decided


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Reject:
    status: Final[int]
    reason: Final[str]
    headers: Final[tuple[tuple[str, str], ...]]  # e.g. ("warning", '399 sipguard "..."')

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Admission:
    """The answer for a new out-of-dialog request.

    target: the next hop (None together with ``reject``);
    reject: answer with this instead of forwarding (``silent`` drops instead);
    edits: header rewrites applied to the forwarded request;
    claim: an opaque channel claim the server settles before forwarding;
    claim_reject: the answer when the claim is refused;
    decisions: opaque records the server logs / counts (one Decided action each);
    drop_routes: remove the request's Route header fields (an emergency call whose preloaded Routes
        name somewhere else: it goes to ``target`` whatever they say).
    """

    target: Final[Peer | None]
    account: Final[str | None]
    direction: Final[str]
    reject: Final[Reject | None]
    silent: Final[bool]
    edits: Final[tuple[Edit, ...]]
    claim: Final[Any | None]
    claim_reject: Final[Reject | None]
    emergency: Final[bool]
    decisions: Final[tuple[object, ...]]
    drop_routes: Final[bool]

    def __init__(self, target: Peer | None = None, account: str | None = None, direction: str = "outbound",
                 reject: Reject | None = None, silent: bool = False, edits: tuple[Edit, ...] = (),
                 claim: Any | None = None, claim_reject: Reject | None = None, emergency: bool = False,
                 decisions: tuple[object, ...] = (), drop_routes: bool = False) -> None:
        self.target = target
        self.account = account
        self.direction = direction
        self.reject = reject
        self.silent = silent
        self.edits = edits
        self.claim = claim
        self.claim_reject = claim_reject
        self.emergency = emergency
        self.decisions = decisions
        self.drop_routes = drop_routes


class Router(Protocol):
    """The hook the core calls; the policy engine implements it."""

    def screen_packet(self, data: bytes, source: Peer, now: float) -> str | None:
        """Before parsing: None to go on, or why the packet is dropped silently (banned, flood)."""
        ...

    def screen_user_agent(self, user_agent: str | None, source: Peer, now: float) -> str | None:
        """After reading a request, its User-Agent (None: none): None to go on, or why the request is dropped
        silently (scanner)."""
        ...

    def admit(self, request: Request, source: Peer, now: float, routes: tuple[str, ...]) -> Admission:
        """Route and decide a new out-of-dialog request (INVITE, OPTIONS, MESSAGE...); ``routes``: its Route
        values after sipguard's own."""
        ...

    def in_dialog(self, request: Request, account: str | None) -> tuple[object, ...]:
        """Decisions to record about a request inside a dialog (never a rejection)."""
        ...

    def refused(self, method: str, uri: str, source: Peer, status: int, why: str, cause: str) -> tuple[object, ...]:
        """Decisions to record about a request the core refused itself; cause: ``in_dialog``, ``unroutable``,
        or what was wrong with it (``malformed``, ``too_many_hops``, ``loop_detected``...)."""
        ...


class CoreStats:
    """Counters of the core (the proxy, its transactions), read by the metrics collector at scrape time."""

    __slots__ = ("requests", "responses", "parse_errors", "drops", "replies", "light_responses", "light_requests",
                 "token_relays", "failovers")

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # by method (bounded: the known methods + other)
        self.responses: Counter[str] = Counter()  # received, by class "2xx"
        self.replies: Counter[int] = Counter()  # generated by us, by status
        self.parse_errors: Counter[int] = Counter()  # by the status it earned
        self.drops: Counter[str] = Counter()  # by reason
        self.light_responses = 0  # responses read by the light path (peek_response), not parsed whole
        self.light_requests = 0  # in-dialog ACKs and BYEs read by the light path (peek_request)
        self.token_relays = 0  # in-dialog requests relayed on the proof of a route token (no dialog held)
        self.failovers = 0  # requests sent on to the next target of a named next hop (RFC 3263 §4.3)
