"""Proxy transactions: a server side facing upstream and a client side facing
downstream, in one record per proxied request (RFC 3261 §17, RFC 6026).

The transitions live in tables, the reasoning here:

* Server INVITE side (§17.2.1 + RFC 6026): PROCEEDING from the moment the INVITE
  arrives (we send 100 at once); a non-2xx final moves it to COMPLETED, where it
  retransmits the final over UDP (Timer G) until the ACK (-> CONFIRMED, Timer I)
  or Timer H.  A 2xx moves it to ACCEPTED (Timer L), absorbing INVITE
  retransmissions while the 2xx retransmissions from downstream pass through.
* Server non-INVITE side (§17.2.2): TRYING, PROCEEDING on a provisional,
  COMPLETED on a final (Timer J), where retransmissions get the final again.
* Client INVITE side (§17.1.1): NONE until admission forwards it, CALLING
  (Timer A retransmits over UDP, Timer B times out), PROCEEDING after any 1xx
  (Timer C), COMPLETED after a non-2xx (we ACK hop-by-hop; Timer D), ACCEPTED
  after a 2xx (Timer M).
* Client non-INVITE side (§17.1.2): TRYING (Timer E, F), PROCEEDING, COMPLETED
  (Timer K).
* A transport error on a client side that waits for a final (§17.1.1.2, §17.1.2.2:
  the socket refused the datagram) terminates it; the proxy answers 503 upstream.

A record is freed when both sides are TERMINATED (a side never started counts
as terminated once the other is).  ``move`` raises RuntimeError on a transition
that is not in the table: that is our bug, not the peer's.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from .actions import Admission, Peer
from .message import Request
from .symbol import Symbol

__all__ = [
    "ServerState",
    "ClientState",
    "SERVER_INVITE",
    "SERVER_NON_INVITE",
    "CLIENT_INVITE",
    "CLIENT_NON_INVITE",
    "Txn",
    "move",
]


class ServerState(Symbol):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class ClientState(Symbol):
    NONE = "none"
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


# Short names for the tables (built once).  The methods below spell the class out: compiled,
# ``ServerState.COMPLETED`` is a C static, while ``S.COMPLETED`` is an attribute lookup on the Enum class
# (about 0.1 µs each, through EnumType's getattr hook; 20+ per call).
S: Final = ServerState
C: Final = ClientState

# (state, event) -> next state
SERVER_INVITE: Final[dict[tuple[ServerState, str], ServerState]] = {
    (S.PROCEEDING, "send_1xx"): S.PROCEEDING,
    (S.PROCEEDING, "send_2xx"): S.ACCEPTED,
    (S.PROCEEDING, "send_final"): S.COMPLETED,
    (S.COMPLETED, "recv_ack"): S.CONFIRMED,
    (S.COMPLETED, "timer_g"): S.COMPLETED,
    (S.COMPLETED, "timer_h"): S.TERMINATED,
    (S.COMPLETED, "send_2xx"): S.COMPLETED,  # late 2xx forwarded after our own final
    (S.CONFIRMED, "timer_i"): S.TERMINATED,
    (S.CONFIRMED, "send_2xx"): S.CONFIRMED,
    (S.ACCEPTED, "send_2xx"): S.ACCEPTED,  # 2xx retransmissions pass through
    (S.ACCEPTED, "timer_l"): S.TERMINATED,
}

SERVER_NON_INVITE: Final[dict[tuple[ServerState, str], ServerState]] = {
    (S.TRYING, "send_1xx"): S.PROCEEDING,
    (S.TRYING, "send_final"): S.COMPLETED,
    (S.PROCEEDING, "send_1xx"): S.PROCEEDING,
    (S.PROCEEDING, "send_final"): S.COMPLETED,
    (S.COMPLETED, "timer_j"): S.TERMINATED,
}

CLIENT_INVITE: Final[dict[tuple[ClientState, str], ClientState]] = {
    (C.NONE, "send"): C.CALLING,
    (C.CALLING, "timer_a"): C.CALLING,
    (C.CALLING, "timer_b"): C.TERMINATED,
    (C.CALLING, "recv_1xx"): C.PROCEEDING,
    (C.CALLING, "recv_2xx"): C.ACCEPTED,
    (C.CALLING, "recv_final"): C.COMPLETED,
    (C.CALLING, "transport_error"): C.TERMINATED,
    (C.PROCEEDING, "recv_1xx"): C.PROCEEDING,
    (C.PROCEEDING, "transport_error"): C.TERMINATED,
    (C.PROCEEDING, "timer_c"): C.PROCEEDING,
    (C.PROCEEDING, "timer_b"): C.TERMINATED,  # nothing after our CANCEL at Timer C
    (C.PROCEEDING, "recv_2xx"): C.ACCEPTED,
    (C.PROCEEDING, "recv_final"): C.COMPLETED,
    (C.COMPLETED, "recv_final"): C.COMPLETED,  # retransmitted final: ACK again
    (C.COMPLETED, "timer_d"): C.TERMINATED,
    (C.ACCEPTED, "recv_2xx"): C.ACCEPTED,
    (C.ACCEPTED, "timer_m"): C.TERMINATED,
}

CLIENT_NON_INVITE: Final[dict[tuple[ClientState, str], ClientState]] = {
    (C.NONE, "send"): C.TRYING,
    (C.TRYING, "timer_e"): C.TRYING,
    (C.TRYING, "timer_f"): C.TERMINATED,
    (C.TRYING, "recv_1xx"): C.PROCEEDING,
    (C.TRYING, "recv_final"): C.COMPLETED,
    (C.TRYING, "transport_error"): C.TERMINATED,
    (C.PROCEEDING, "timer_e"): C.PROCEEDING,
    (C.PROCEEDING, "transport_error"): C.TERMINATED,
    (C.PROCEEDING, "timer_f"): C.TERMINATED,
    (C.PROCEEDING, "recv_1xx"): C.PROCEEDING,
    (C.PROCEEDING, "recv_final"): C.COMPLETED,
    (C.COMPLETED, "recv_final"): C.COMPLETED,
    (C.COMPLETED, "timer_k"): C.TERMINATED,
}

# recv_2xx on a non-INVITE is a final like any other
_ALIASES: Final = {"recv_2xx": "recv_final", "send_2xx": "send_final"}


def move(table: dict[tuple[Enum, str], Enum], state: Enum, event: str) -> Enum:
    """The next state; RuntimeError if the table has no such transition."""
    nxt = table.get((state, event))
    if nxt is None and event in _ALIASES:
        nxt = table.get((state, _ALIASES[event]))
    if nxt is None:
        raise RuntimeError(f"no transition from {state} on {event}")
    return nxt


class Txn:
    """One proxied request: its server side, its client side, and what links them."""

    __slots__ = (
        "key",
        "method",
        "request",
        "invite",
        "reply_to",
        "server",
        "client",
        "last_response",
        "last_status",
        "retransmit_s",
        "branch",
        "client_key",
        "target",
        "out_bytes",
        "out_route",
        "popped",
        "loop",
        "dialog",
        "cancelled",
        "cancel_pending",
        "admission",
        "ticket",
        "local",
        "deadlines",
        "alive",
    )

    def __init__(self, key: tuple[object, ...], request: Request, reply_to: Peer) -> None:
        self.key = key
        self.method = request.method
        self.request: Request | None = request  # None once both sides are final (slim)
        self.invite = request.method == "INVITE"
        self.reply_to = reply_to
        self.server: ServerState = ServerState.PROCEEDING if self.invite else ServerState.TRYING
        self.client: ClientState = ClientState.NONE
        self.last_response: bytes | None = None
        self.last_status = 0
        self.retransmit_s = 0.0
        self.branch = ""
        self.client_key: tuple[str, str] | None = None
        self.target: Peer | None = None
        self.out_bytes = b""
        self.out_route: tuple[str, ...] = ()  # Route values of the forwarded request
        self.popped = 0  # how many of the received Route values were ours
        self.loop = ""  # the loop-detection hash that goes into our branch
        self.dialog: object | None = None
        self.cancelled = False
        self.cancel_pending = False
        self.admission: Admission | None = None
        self.ticket = 0
        self.local = False  # answered by us only (no client side will ever start)
        self.deadlines: dict[str, float] = {}
        self.alive = True

    def server_move(self, event: str) -> None:
        table = SERVER_INVITE if self.invite else SERVER_NON_INVITE
        self.server = move(table, self.server, event)  # type: ignore[arg-type,assignment]

    def client_move(self, event: str) -> None:
        table = CLIENT_INVITE if self.invite else CLIENT_NON_INVITE
        self.client = move(table, self.client, event)  # type: ignore[arg-type,assignment]

    @property
    def settled_sides(self) -> bool:
        """Both sides past their final response: only retransmission absorption is left."""
        server = self.server
        server_final = (server is ServerState.COMPLETED or server is ServerState.CONFIRMED
                        or server is ServerState.ACCEPTED or server is ServerState.TERMINATED)
        client = self.client
        client_final = (client is ClientState.COMPLETED or client is ClientState.ACCEPTED
                        or client is ClientState.TERMINATED or (client is ClientState.NONE and self.local))
        return server_final and client_final

    def slim(self) -> None:
        """Drop what a finished transaction no longer needs (the request, the admission, the dialog):
        it lives on for Timers J/L/M/D only to absorb retransmissions."""
        self.request = None
        self.admission = None
        self.dialog = None
        self.out_route = ()
        if self.client is not ClientState.COMPLETED:  # COMPLETED keeps its ACK bytes for retransmitted finals
            self.out_bytes = b""

    @property
    def done(self) -> bool:
        server_done = self.server is ServerState.TERMINATED
        client_done = self.client is ClientState.TERMINATED or (
            self.client is ClientState.NONE and (self.local or server_done))
        return server_done and client_done
