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

``Transactions`` is the transaction layer the proxy (proxy.py, §16) sits on: the table of records
by their server key and by the branch of their client side, the timers of both sides, the
responses received and sent, the ACK and CANCEL a client side sends, and freeing.  What a response
means for its dialog (answered, ended) it tells the dialog table (dialog.py).  Timer A/E and G
(retransmission) run over UDP only; over a reliable transport Timers J and K are 0 (§17.1.2.2,
§17.2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .actions import Action, Admission, CoreStats, Peer, Send
from .dialog import Dialog, Dialogs
from .errors import SipError
from .message import Request
from .parser import parse
from .replies import ack, cancel, reply
from .symbol import Symbol, move, steps
from .timers import TimerConfig, TimerOwner, TimerWheel

__all__ = [
    "ServerState",
    "ClientState",
    "SERVER_INVITE",
    "SERVER_NON_INVITE",
    "CLIENT_INVITE",
    "CLIENT_NON_INVITE",
    "Txn",
    "Transactions",
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

# the same tables by state, then event (symbol.py): what the moves below use
_SERVER_INVITE_STEPS: Final = steps(SERVER_INVITE)
_SERVER_NON_INVITE_STEPS: Final = steps(SERVER_NON_INVITE)
_CLIENT_INVITE_STEPS: Final = steps(CLIENT_INVITE)
_CLIENT_NON_INVITE_STEPS: Final = steps(CLIENT_NON_INVITE)


def _client_key(branch: str, method: str) -> str:
    """The key of a client side: our branch and the method its responses carry (a string: the table stays
    untracked by the GC, docs/compiled.md)."""
    return branch + "\n" + method


# acyclic: what a Txn holds (its messages, peers, dialog, admission) never leads back to a Txn
@mypyc_attr(acyclic=True)
class Txn(TimerOwner):
    """One proxied request: its server side, its client side, and what links them."""

    __slots__ = (
        "key",
        "method",
        "request",
        "received",
        "invite",
        "reply_to",
        "server",
        "client",
        "last_response",
        "last_status",
        "retransmit_s",
        "branch",
        "via",
        "client_key",
        "client_method",
        "our_cancel",
        "target",
        "alternatives",
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
    )

    def __init__(self, key: str, request: Request | None, reply_to: Peer, method: str = "",
                 received: bytes = b"") -> None:
        """request: the request as parsed; or None, with its ``method`` and the bytes ``received`` (the light
        path of in-dialog requests), parsed only if the proxy must answer it itself (request_of)."""
        super().__init__()
        self.key = key
        self.method = request.method if request is not None else method
        self.request: Request | None = request  # None once both sides are final (slim)
        self.received = received  # b"" once parsed, or slim
        self.invite = self.method == "INVITE"
        self.reply_to = reply_to
        self.server: ServerState = ServerState.PROCEEDING if self.invite else ServerState.TRYING
        self.client: ClientState = ClientState.NONE
        self.last_response: bytes | None = None
        self.last_status = 0
        self.retransmit_s = 0.0
        self.branch = ""
        self.via = ""  # our Via on the forwarded request (its CANCEL and ACK carry the same)
        self.client_key: str | None = None  # our branch and the method its responses carry: "branch\nMETHOD"
        self.client_method = ""
        self.our_cancel = False  # the CANCEL we send downstream for an INVITE (cancel_client)
        self.target: Peer | None = None
        self.alternatives: tuple[Peer, ...] = ()  # the next hops to try after this one (RFC 3263 §4.3)
        self.out_bytes = b""
        self.out_route: tuple[str, ...] = ()  # Route values of the forwarded request
        self.popped = 0  # how many of the received Route values were ours
        self.loop = ""  # the loop-detection hash that goes into our branch
        self.dialog: Dialog | None = None
        self.cancelled = False
        self.cancel_pending = False
        self.admission: Admission | None = None
        self.ticket = 0
        self.local = False  # answered by us only (no client side will ever start)

    def server_move(self, event: str) -> None:
        by_state = _SERVER_INVITE_STEPS if self.invite else _SERVER_NON_INVITE_STEPS
        self.server = move(by_state, self.server, event)

    def client_move(self, event: str) -> None:
        by_state = _CLIENT_INVITE_STEPS if self.invite else _CLIENT_NON_INVITE_STEPS
        self.client = move(by_state, self.client, event)

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
        self.received = b""
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


class Transactions:
    """The proxy's transactions (RFC 3261 §17, RFC 6026): the records, their timers, their responses."""

    __slots__ = ("timers", "_wheel", "_dialogs", "_stats", "server_header", "_by_key", "_by_client", "failover")

    def __init__(self, timers: TimerConfig, wheel: TimerWheel, dialogs: Dialogs, stats: CoreStats,
                 server_header: str | None) -> None:
        self.timers = timers
        self._wheel = wheel
        self._dialogs = dialogs
        self._stats = stats
        self.server_header = server_header
        # keyed by strings, not tuples: a dict of strings and Txns (untracked) is never walked by the GC
        # (docs/compiled.md, "Objects the GC never sees")
        self._by_key: dict[str, Txn] = {}
        self._by_client: dict[str, Txn] = {}
        # the proxy's: send a request whose next hop timed out to its next alternative (True: sent)
        self.failover: Callable[[Txn, float, list[Action]], bool] | None = None

    def __len__(self) -> int:
        return len(self._by_key)

    def all(self) -> list[Txn]:
        return list(self._by_key.values())

    def get(self, key: str) -> Txn | None:
        """The record whose server side ``key`` names (proxy.server_key)."""
        return self._by_key.get(key)

    def client(self, branch: str, method: str) -> Txn | None:
        """The record whose client side a response with our ``branch`` and CSeq ``method`` answers."""
        return self._by_client.get(_client_key(branch, method))

    def add(self, key: str, req: Request, reply_to: Peer) -> Txn:
        txn = Txn(key, req, reply_to)
        self._by_key[key] = txn
        return txn

    def add_received(self, key: str, method: str, data: bytes, reply_to: Peer) -> Txn:
        """A transaction of a request the proxy relayed without parsing it whole (the light path of in-dialog
        requests): parsed only if it must be answered here (request_of)."""
        txn = Txn(key, None, reply_to, method, data)
        self._by_key[key] = txn
        return txn

    @staticmethod
    def request_of(txn: Txn) -> Request | None:
        """The request of ``txn``, parsed now if it came by the light path; None once slim."""
        req = txn.request
        if req is None and txn.received:
            try:
                parsed = parse(txn.received)
            except SipError:  # the light path takes only what parse accepts (the property tests)
                return None
            if isinstance(parsed, Request):
                txn.request = req = parsed
            txn.received = b""
        return req

    def _reply(self, req: Request, status: int, reason_text: str,
               extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        self._stats.replies[status] += 1
        return reply(req, status, reason_text, extra, True, self.server_header)

    # ------------------------------------------------------------------ server side
    def retransmission(self, txn: Txn, out: list[Action]) -> None:
        """A request retransmitted upstream: absorbed; our last response again (none once a 2xx passed:
        the 2xx retransmissions come from downstream)."""
        self._stats.drops["retransmission"] += 1
        if txn.last_response is not None and txn.server is not ServerState.ACCEPTED:
            out.append(Send(txn.last_response, txn.reply_to, txn.method, txn.last_status))

    def ack_received(self, txn: Txn, now: float) -> None:
        """The ACK of our non-2xx final to an INVITE: absorbed hop-by-hop (§17.2.1)."""
        if txn.server is ServerState.COMPLETED:
            txn.server_move("recv_ack")
            self._wheel.cancel(txn, "G")
            self._wheel.cancel(txn, "H")
            self._wheel.set(txn, "I", now + self.timers.t4_s)

    def trying(self, txn: Txn, out: list[Action]) -> None:
        """The 100 Trying of an INVITE, sent just after it went downstream (the downstream hop gets it first;
        §17.2.1 gives the 100 up to 200 ms), unless a final was sent instead."""
        req = txn.request
        if txn.invite and txn.last_status == 0 and req is not None:
            self.provisional(txn, reply(req, 100, "Trying", (), False, self.server_header), 100, out)

    def provisional(self, txn: Txn, data: bytes, status: int, out: list[Action]) -> None:
        if status != 100 or not txn.invite:
            txn.server_move("send_1xx")
        if status == 100:
            self._stats.replies[100] += 1
        txn.last_response = data
        txn.last_status = status
        out.append(Send(data, txn.reply_to, txn.method, status))

    def final(self, txn: Txn, data: bytes, status: int, now: float, out: list[Action]) -> None:
        """Send a non-2xx final (ours or forwarded) upstream and complete the server side."""
        txn.server_move("send_final")
        txn.last_response = data
        txn.last_status = status
        out.append(Send(data, txn.reply_to, txn.method, status))
        udp = txn.reply_to.transport == "udp"
        if txn.invite:
            if udp:
                txn.retransmit_s = self.timers.t1_s
                self._wheel.set(txn, "G", now + txn.retransmit_s)
            self._wheel.set(txn, "H", now + self.timers.t64_s)
        else:
            self._wheel.set(txn, "J", now + (self.timers.t64_s if udp else 0))

    def answer(self, txn: Txn, status: int, reason_text: str, now: float, out: list[Action],
               extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Our own final to the request of ``txn`` (counted)."""
        req = self.request_of(txn)
        assert req is not None
        self.final(txn, self._reply(req, status, reason_text, extra), status, now, out)

    # ------------------------------------------------------------------ client side
    def start_client(self, txn: Txn, data: bytes, via: str, now: float, out: list[Action]) -> None:
        """Send a request downstream (``via``: our Via on it) and start its client side: Timers A/E (UDP)
        and B/F."""
        method = "CANCEL" if txn.our_cancel else txn.method
        txn.client_method = method
        txn.client_key = _client_key(txn.branch, method)
        self._by_client[txn.client_key] = txn
        txn.client_move("send")
        self._transmit(txn, data, via, now, out)

    def _transmit(self, txn: Txn, data: bytes, via: str, now: float, out: list[Action]) -> None:
        txn.out_bytes = data
        txn.via = via
        assert txn.target is not None and txn.client_key is not None
        out.append(Send(data, txn.target, txn.client_method, 0))
        if txn.target.transport == "udp":
            txn.retransmit_s = self.timers.t1_s
            self._wheel.set(txn, "A" if txn.invite else "E", now + txn.retransmit_s)
        self._wheel.set(txn, "B" if txn.invite else "F", now + self.timers.t64_s)

    def reset_client(self, txn: Txn) -> None:
        """End a client side that failed (a 503, a timeout, a transport error) without ending the record: a new
        one starts for the next alternative (``start_client``, with a new branch)."""
        for name in ("A", "B", "C", "D", "E", "F", "K", "M"):
            self._wheel.cancel(txn, name)
        if txn.client_key is not None and self._by_client.get(txn.client_key) is txn:
            del self._by_client[txn.client_key]
        txn.client_key = None
        txn.client = ClientState.NONE

    def ack_final(self, txn: Txn, to: str, out: list[Action]) -> None:
        """ACK a non-2xx final to an INVITE that is not forwarded upstream (the next alternative is tried)."""
        self._send_ack(txn, to, out)

    def resend(self, txn: Txn, data: bytes, via: str, now: float, out: list[Action]) -> None:
        """Send the request of a waiting client side again, changed (another transport to ``txn.target``):
        its timers start over; its state and branch stay."""
        for name in ("A", "B", "E", "F"):
            self._wheel.cancel(txn, name)
        self._transmit(txn, data, via, now, out)

    def send_cancel(self, txn: Txn, now: float, out: list[Action]) -> None:
        """CANCEL downstream for an INVITE client side (§9.1, §16.10), in a small client transaction of its own
        that retransmits it until its final."""
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        c = Txn("cancel\n" + txn.branch, req, txn.reply_to)
        c.our_cancel = True
        c.invite = False
        c.server = ServerState.TERMINATED
        c.local = True
        c.branch = txn.branch
        c.target = txn.target
        self._by_key[c.key] = c
        self.start_client(c, cancel(req, txn.via, txn.out_route), txn.via, now, out)

    def _send_ack(self, txn: Txn, to: str, out: list[Action]) -> None:
        """ACK for a non-2xx final, hop-by-hop (§17.1.1.3); the same bytes for a retransmitted final."""
        assert txn.target is not None
        if txn.client is ClientState.COMPLETED and txn.request is None:
            out.append(Send(txn.out_bytes, txn.target, "ACK", 0))
            return
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        data = ack(req, txn.via, txn.out_route, to)
        txn.out_bytes = data  # the INVITE is never retransmitted again: keep the ACK instead
        out.append(Send(data, txn.target, "ACK", 0))

    def cancel_answered(self, txn: Txn, status: int, now: float) -> None:
        """A response to one of our CANCELs: a final ends its client side (Timer K)."""
        if status >= 200 and txn.client in (ClientState.TRYING, ClientState.PROCEEDING):
            txn.client_move("recv_final")
            self._wheel.cancel(txn, "E")
            self._wheel.cancel(txn, "F")
            self._wheel.set(txn, "K", now + self.timers.t4_s)

    def response(self, txn: Txn, status: int, to_tag: str | None, to: str, forward: bytes, now: float,
                 out: list[Action]) -> None:
        """A response to client side ``txn``: ``forward`` is it as it goes upstream, ``to`` its To value (an
        ACK for a non-2xx final carries it), ``to_tag`` the callee's tag (an INVITE's final)."""
        if txn.invite:
            self._invite_response(txn, status, to_tag, to, forward, now, out)
        else:
            self._non_invite_response(txn, status, forward, now, out)
        if status >= 200:
            self.maybe_free(txn)

    def _invite_response(self, txn: Txn, status: int, to_tag: str | None, to: str, forward: bytes, now: float,
                         out: list[Action]) -> None:
        client = txn.client
        if client in (ClientState.TERMINATED, ClientState.NONE):
            return
        dialog = txn.dialog
        if status < 200:
            if client not in (ClientState.CALLING, ClientState.PROCEEDING):
                return  # a provisional after a final: ignore
            txn.client_move("recv_1xx")
            self._wheel.cancel(txn, "A")
            self._wheel.cancel(txn, "B")
            if status > 100 or "C" not in txn.deadlines:
                self._wheel.set(txn, "C", now + self.timers.timer_c_s)  # §16.7 item 2
            if txn.cancel_pending:
                txn.cancel_pending = False
                self.send_cancel(txn, now, out)
            if status > 100 and txn.server is ServerState.PROCEEDING:
                self.provisional(txn, forward, status, out)
            return
        if status < 300:
            if client is ClientState.COMPLETED:
                self._stats.drops["2xx_after_final"] += 1
                return
            txn.client_move("recv_2xx")
            for name in ("A", "B", "C"):
                self._wheel.cancel(txn, name)
            if "M" not in txn.deadlines:
                self._wheel.set(txn, "M", now + self.timers.t64_s)
            if dialog is not None and dialog.alive:
                self._dialogs.answered(dialog, to_tag, now)
            if txn.server is not ServerState.TERMINATED:
                txn.server_move("send_2xx")
            txn.last_response = None
            if "L" not in txn.deadlines and txn.server is ServerState.ACCEPTED:
                self._wheel.set(txn, "L", now + self.timers.t64_s)
            out.append(Send(forward, txn.reply_to, "INVITE", status))
            return
        # 3xx-6xx: ACK it hop-by-hop; forward it once
        first = client is not ClientState.COMPLETED
        if client in (ClientState.ACCEPTED,):
            return
        txn.client_move("recv_final")
        self._send_ack(txn, to, out)
        if not first:
            return
        for name in ("A", "B", "C"):
            self._wheel.cancel(txn, name)
        self._wheel.set(txn, "D", now + self.timers.t64_s)
        if txn.server is ServerState.PROCEEDING:
            self.final(txn, forward, status, now, out)
        if dialog is not None and dialog.alive:
            self._dialogs.end(dialog, "cancelled" if txn.cancelled else "rejected", now, out)

    def _non_invite_response(self, txn: Txn, status: int, forward: bytes, now: float, out: list[Action]) -> None:
        if txn.client not in (ClientState.TRYING, ClientState.PROCEEDING):
            return
        if status < 200:
            txn.client_move("recv_1xx")
            if status > 100 and txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
                self.provisional(txn, forward, status, out)
            return
        txn.client_move("recv_final")
        self._wheel.cancel(txn, "E")
        self._wheel.cancel(txn, "F")
        self._wheel.set(txn, "K", now + (self.timers.t4_s if txn.target and txn.target.transport == "udp" else 0))
        if txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
            self.final(txn, forward, status, now, out)

    def waiting(self, txn: Txn) -> bool:
        """Whether the client side of ``txn`` still waits for a final."""
        return txn.client in (ClientState.CALLING, ClientState.TRYING, ClientState.PROCEEDING)

    def transport_error(self, txn: Txn, warning: tuple[str, str], now: float, out: list[Action]) -> bool:
        """The socket refused the request of a waiting client side (§17.1.1.2, §17.1.2.2): the client side
        ends and the request is answered 503 with ``warning`` (True: answered; the proxy reports the
        refusal, then ``abandon``s the record)."""
        for name in ("A", "B", "C", "E", "F"):
            self._wheel.cancel(txn, name)
        txn.client_move("transport_error")
        if not txn.our_cancel and self.request_of(txn) is not None and txn.server in (ServerState.TRYING,
                                                                                 ServerState.PROCEEDING):
            self.answer(txn, 503, "Service Unavailable", now, out, (warning,))
            return True
        return False

    def abandon(self, txn: Txn, reason: str, now: float, out: list[Action]) -> None:
        """A request that will not be forwarded (a transport error, a name that did not resolve, a CANCEL before
        it was): its dialog ends (``reason``), the record goes when its sides allow."""
        if txn.dialog is not None and txn.dialog.alive:
            self._dialogs.end(txn.dialog, reason, now, out)
        self.maybe_free(txn)

    # ------------------------------------------------------------------ timers
    def timer(self, txn: Txn, name: str, now: float, out: list[Action]) -> None:
        """Timer ``name`` of ``txn`` fired."""
        t = self.timers
        if name in ("A", "E"):  # retransmit downstream over UDP
            txn.client_move("timer_a" if name == "A" else "timer_e")
            assert txn.target is not None and txn.client_key is not None
            out.append(Send(txn.out_bytes, txn.target, txn.client_method, 0))
            if name == "A":
                txn.retransmit_s *= 2
            else:
                txn.retransmit_s = t.t2_s if txn.client is ClientState.PROCEEDING else min(txn.retransmit_s * 2, t.t2_s)
            self._wheel.set(txn, name, now + txn.retransmit_s)
        elif name in ("B", "F"):  # no final from downstream
            if txn.alternatives and not txn.our_cancel and self.failover is not None and \
                    txn.client in (ClientState.CALLING, ClientState.TRYING, ClientState.PROCEEDING) and \
                    self.failover(txn, now, out):
                return
            self._wheel.cancel(txn, "A")
            self._wheel.cancel(txn, "E")
            txn.client_move("timer_b" if name == "B" else "timer_f")
            if not txn.our_cancel and txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
                self.answer(txn, 408, "Request Timeout", now, out)
                if txn.dialog is not None and txn.dialog.alive:
                    self._dialogs.end(txn.dialog, "no_response", now, out)
        elif name == "C":  # §16.8: CANCEL downstream, 408 upstream
            txn.client_move("timer_c")
            self.send_cancel(txn, now, out)
            if txn.server is ServerState.PROCEEDING:
                self.answer(txn, 408, "Request Timeout", now, out)
            if txn.dialog is not None and txn.dialog.alive:
                self._dialogs.end(txn.dialog, "timer_c", now, out)
            self._wheel.set(txn, "B", now + t.t64_s)  # give the 487 a bound
        elif name == "G":
            txn.server_move("timer_g")
            if txn.last_response is not None:
                out.append(Send(txn.last_response, txn.reply_to, txn.method, txn.last_status))
            txn.retransmit_s = min(txn.retransmit_s * 2, t.t2_s)
            self._wheel.set(txn, "G", now + txn.retransmit_s)
        elif name in ("H", "I", "J", "L"):
            self._wheel.cancel(txn, "G")
            txn.server_move("timer_" + name.lower())
        elif name in ("D", "K", "M"):
            txn.client_move("timer_" + name.lower())
        self.maybe_free(txn)

    def maybe_free(self, txn: Txn) -> None:
        """Slim a record whose sides are both final; free one whose sides are both terminated."""
        if not txn.done:
            if (txn.request is not None or txn.received) and txn.settled_sides:
                txn.slim()
            return
        txn.alive = False
        self._wheel.cancel_all(txn)
        if self._by_key.get(txn.key) is txn:
            del self._by_key[txn.key]
        if txn.client_key is not None and self._by_client.get(txn.client_key) is txn:
            del self._by_client[txn.client_key]
