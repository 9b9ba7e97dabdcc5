"""ProxyCore: a stateful, record-routing SIP proxy without I/O (RFC 3261 §16).

Owns: the rules of §16 (Max-Forwards, loop detection, Proxy-Require, Route
processing, Via, Record-Route), RFC 3581 rport/received, admission (the Router
and the channel claim), CANCEL (§16.10), and the one timer wheel it fires.
Sits on: the transaction layer (transaction.py, §17: timers A-M, responses,
the ACK and CANCEL it sends, freeing), the dialog table (dialog.py) and the
messages it writes itself (replies.py).
Leaves to others: where a new request goes and whether it may (the Router
hook: the policy engine), settling channel claims (the server, via the
``Settle`` action), sockets and clocks (the server calls ``receive``,
``settled``, ``send_failed`` and ``on_timer`` with ``now``, and arms one timer
at ``next_deadline()``).

Every route is ours: a new request goes where the Router says (a preloaded
Route only when the Router accepted it), and a request inside a dialog is
relayed only between the two ends of a dialog sipguard admitted, known from the
dialog it holds or proven by the token it signed into its Record-Route
(dialog.py); anything else gets 481 or 403 and is reported to the Router.

A next hop the Router names by host name is resolved outside the core (the
``Resolve`` action; README, "Next hops by name") and tried in order: the next
target after a 503, a timeout or a transport error (RFC 3263 §4.3).

Not supported (stated in the README): forking, strict routing (§16.4 R-URI
replacement), host names in in-dialog Routes and Request-URIs (478).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from .actions import (Action, Admission, CoreStats, Decided, EndedByToken, Peer, PerFamily, Reject, Resolve, Router,
                      Send, Settle)
from .dialog import TOKEN_PARAM, Dialog, Dialogs, account_tag, route_token, token_side
from .errors import BadExtension, LoopDetected, ParseError, SipError, TooManyHops
from .memo import Memo
from .message import Request, Response, SipUri, Via, ip_literal, parse_name_addr, parse_uri, tag_of
from .parser import DEFAULT_MAX_MESSAGE_BYTES, Partial, is_keepalive, parse, peek_request, peek_response
from .replies import crc32_text, reason, reply, reply_partial, warning
from .serializer import Edit, Prepend, RemoveAll, RemoveFirst, ReplaceFirst, SetHeader, serialize
from .timers import TimerConfig, TimerWheel
from .transaction import ClientState, ServerState, Transactions, Txn

__all__ = ["ProxyCore", "Local", "CoreStats", "KNOWN_METHODS"]

KNOWN_METHODS: Final = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
_DIALOG_CREATING: Final = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
MAX_UDP_REQUEST: Final = 1300  # RFC 3261 §18.1.1: larger requests go over TCP (path MTU unknown)
_COOKIE: Final = "z9hG4bK"
_CLASSES: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")  # CoreStats.responses keys, by status // 100
_ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, UPDATE, INFO, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
_ERROR_KINDS: Final = {  # a refusal's cause by the status it earned (an emergency call's refusal is counted by it)
    400: "malformed", 416: "unsupported_uri_scheme", 420: "bad_extension", 481: "no_dialog", 482: "loop_detected",
    483: "too_many_hops", 505: "bad_version", 513: "too_large",
}


@dataclass(frozen=True, slots=True)
class Local:
    """One address sipguard is reached at: what it puts in Via and Record-Route."""

    transport: str  # udp | tcp | tls
    host: str  # IP literal or name, IPv6 without brackets
    port: int
    # derived once, used on every forwarded message
    hostport: str = field(init=False, compare=False, repr=False)
    rr_prefix: str = field(init=False, compare=False, repr=False)  # our Record-Route, up to its token
    via_prefix: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        hostport = f"{host}:{self.port}"
        params = "" if self.transport == "udp" else f";transport={self.transport}"
        object.__setattr__(self, "hostport", hostport)
        object.__setattr__(self, "rr_prefix", f"<sip:{hostport}{params};lr;{TOKEN_PARAM}=")
        object.__setattr__(self, "via_prefix", f"SIP/2.0/{self.transport.upper()} {hostport};branch=")

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _unicast(host: str) -> bool:
    """False for broadcast, multicast and unspecified addresses (RFC 4475 §3.3.10)."""
    if ":" in host:
        return not (host.lower().startswith("ff") or host == "::")
    first = int(host.split(".")[0])
    return not (host in ("255.255.255.255", "0.0.0.0") or 224 <= first <= 239)


class ProxyCore:
    """The sans-I/O proxy.  Feed it datagrams, claim results and timer ticks."""

    def __init__(
        self,
        locals_: Sequence[Local],
        router: Router,
        timers: TimerConfig | None = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        aliases: Iterable[str] = (),
        server_header: str | None = "sipguard",
        route_key: bytes | None = None,
    ) -> None:
        """route_key: the secret of the Record-Route tokens (dialog.py), 16 to 32 bytes; None: a random one,
        valid for this core only (in-dialog requests of calls it did not admit are then refused)."""
        if not locals_:
            raise ValueError("at least one local address is needed")
        self.locals = tuple(locals_)
        self.router = router
        self.timers = timers or TimerConfig()
        self.max_message_bytes = max_message_bytes
        self.route_key = route_key if route_key is not None else secrets.token_bytes(32)
        if not 16 <= len(self.route_key) <= 32:
            raise ValueError("the route key is 16 to 32 bytes (a BLAKE2s key)")
        self._me = {(loc.host.lower(), loc.port) for loc in self.locals}
        self._by_family: PerFamily[Local] = PerFamily((loc.transport, loc.family, loc) for loc in self.locals)
        self._me_hosts = {loc.host.lower() for loc in self.locals} | {a.lower().strip("[]") for a in aliases}
        self._me_ports = {loc.port for loc in self.locals}
        self._server_header = server_header
        # the start of our own Via in a response to us: the light path (_peeked_response) looks for it
        self._via_prefixes = tuple(loc.via_prefix for loc in self.locals)
        # our Record-Route as we write it, up to its token: a Route entry sent back to us as we wrote it is
        # recognised without parsing (each dialog's token differs, so a memo of parsed routes would miss)
        self._rr_prefixes = tuple(loc.rr_prefix for loc in self.locals)
        self._account_tags: dict[str | None, str] = {}  # account -> its tag in the route token (dialog.py)
        self._tickets: dict[int, Txn] = {}  # INVITEs waiting for their channel claim (Settle -> settled)
        self._timers = TimerWheel()  # every timer of the transactions and dialogs: one deadline for the server
        self.stats = CoreStats()
        self._dialogs = Dialogs(self._timers, self.timers.dialog_timeout_s)
        self._txns = Transactions(self.timers, self._timers, self._dialogs, self.stats, server_header)
        self._txns.failover = self._failover
        self._counter = 0
        self.unavailable: Reject | None = None  # while stopping: the answer to an OPTIONS addressed to sipguard
        # an in-dialog ACK or BYE of a dialog held here read by the light path (_peeked_request); False: every
        # request parsed whole (the tests run both paths on the same requests and compare what they do)
        self.light_requests = True

    # ------------------------------------------------------------------ sizes
    @property
    def transaction_count(self) -> int:
        return len(self._txns)

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    def dialogs(self) -> list[Dialog]:
        return self._dialogs.all()

    def transactions(self) -> list[Txn]:
        return self._txns.all()

    def set_router(self, router: Router) -> None:
        """Swap the hook (policy reload); transactions and dialogs are kept."""
        self.router = router

    def set_dialog_timeout(self, dialog_timeout_s: float) -> None:
        self.timers = replace(self.timers, dialog_timeout_s=dialog_timeout_s)
        self._txns.timers = self.timers
        self._dialogs.timeout_s = dialog_timeout_s

    # ------------------------------------------------------------------ inputs
    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    def receive(self, data: bytes, source: Peer, now: float) -> list[Action]:
        """Process one datagram (or one framed stream message) from ``source``.

        Returns the actions to carry out, in order.  Never raises for bad input:
        a SipError becomes a reply (a request whose Via could be read, not an
        ACK) or a drop, and is counted.
        """
        if is_keepalive(data):
            return []
        dropped = self.router.screen_packet(data, source, now)
        if dropped is not None:
            self.stats.drops[dropped] += 1
            return []
        out: list[Action] = []
        if data.startswith(b"SIP/2.0 "):
            if self._peeked_response(data, now, out):
                return out
        elif self.light_requests and (data.startswith(b"ACK ") or data.startswith(b"BYE ")) and \
                self._peeked_request(data, source, now, out):
            return out
        try:
            msg = parse(data, max_bytes=self.max_message_bytes, stream=source.transport != "udp")
        except SipError as err:
            self.stats.parse_errors[err.status] += 1
            partial: Partial = err.partial  # type: ignore[attr-defined]
            if partial.is_request and partial.method != "ACK" and partial.vias:
                self._reply_partial(partial, source, err, out)
            else:
                self.stats.drops["malformed"] += 1
            if partial.method == "INVITE":
                call_id = next((v for k, _n, v in partial.headers if k == "call-id"), "")
                self._refused(partial.method, partial.uri, call_id, source, err.status, err.detail,
                              _ERROR_KINDS.get(err.status, "malformed"), out)
            return out
        try:
            if isinstance(msg, Request):
                method = msg.method if msg.method in KNOWN_METHODS else "other"
                self.stats.requests[method] += 1
                dropped = self.router.screen_user_agent(msg.get("user-agent"), source, now)
                if dropped is not None:
                    self.stats.drops[dropped] += 1
                    return out
                self._on_request(msg, source, now, out)
            else:
                self.stats.responses[_CLASSES[msg.status // 100]] += 1
                self._on_response(msg, now, out)
        except SipError as err:
            if isinstance(msg, Request) and msg.method != "ACK":
                extra: tuple[tuple[str, str], ...] = ()
                if isinstance(err, BadExtension):
                    extra = (("unsupported", ", ".join(err.unsupported)),)
                self._send_reply(msg, self._reply_address(msg.vias[0], source), err.status, err.reason, out, extra)
                if msg.method == "INVITE":
                    self._refused(msg.method, msg.uri, msg.call_id, source, err.status, err.detail,
                                  _ERROR_KINDS.get(err.status, "refused"), out)
            else:
                self.stats.drops["rejected_response" if isinstance(msg, Response) else "rejected_ack"] += 1
        return out

    def settled(self, ticket: int, granted: bool, now: float) -> list[Action]:
        """The server settled the claim of ``ticket``: forward or reject the INVITE."""
        out: list[Action] = []
        txn = self._tickets.pop(ticket, None)
        if txn is None or txn.admission is None:
            return out
        adm = txn.admission
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        if not granted:
            rej = adm.claim_reject or Reject(503, "Service Unavailable")
            self._txns.final(txn, reply(req, rej.status, rej.reason, rej.headers, True, self._server_header),
                             rej.status, now, out)
            return out
        dialog = self._start_dialog(txn, req, adm, now, out)
        txn.dialog = dialog
        if txn.cancelled:
            self._dialogs.end(dialog, "cancelled", now, out)
            return out
        self._go_on(txn, adm, now, out)
        return out

    def _go_on(self, txn: Txn, adm: Admission, now: float, out: list[Action]) -> None:
        """An admitted request, its channel claimed: forward it, or first find where its named next hop is."""
        target = adm.target
        assert target is not None
        if ip_literal(target.host) is None:  # a host name (RFC 3263): the server resolves it, then resolved()
            txn.ticket = self._next_id()
            self._tickets[txn.ticket] = txn
            out.append(Resolve(txn.ticket, target))
            return
        self._forward_admitted(txn, adm, target, now, out)
        self._txns.trying(txn, out)

    def resolved(self, ticket: int, peers: list[Peer], why: str, now: float) -> list[Action]:
        """The next hops a named target resolved to, in the order to try (RFC 3263 §4); none: ``why`` not."""
        out: list[Action] = []
        txn = self._tickets.pop(ticket, None)
        if txn is None or txn.admission is None or txn.request is None:
            return out
        adm = txn.admission
        name = adm.target.host if adm.target is not None else ""
        if txn.cancelled:  # answered 487 while it was being resolved
            self._txns.abandon(txn, "cancelled", now, out)
            return out
        reachable = [p for p in peers if self._local_for(p) is not None]
        if not reachable:
            if peers:
                why = f"no listen address reaches what {name} resolves to ({peers[0].transport}:{peers[0].host})"
            req = txn.request
            self._txns.answer(txn, 503, "Service Unavailable", now, out, (warning(why),))
            self._refused(req.method, req.uri, req.call_id, txn.reply_to, 503, why, "unroutable", out)
            self._txns.abandon(txn, "unroutable", now, out)
            return out
        txn.alternatives = tuple(reachable[1:])
        self._forward_admitted(txn, adm, reachable[0], now, out)
        self._txns.trying(txn, out)
        return out

    def _failover(self, txn: Txn, now: float, out: list[Action]) -> bool:
        """The next hop failed (a 503, a timeout, a transport error): send the request to the next alternative
        (RFC 3263 §4.3), in a new client side with a new branch.  False when there is none left."""
        adm = txn.admission
        if not txn.alternatives or adm is None or txn.request is None:
            return False
        target, txn.alternatives = txn.alternatives[0], txn.alternatives[1:]
        self._txns.reset_client(txn)
        self.stats.failovers += 1
        self._forward_admitted(txn, adm, target, now, out)
        return True

    def send_failed(self, send: Send, why: str, now: float) -> list[Action]:
        """The socket refused a datagram we sent (no route to the host, an address it may not send to): a
        transport error (§18.4).  A request of one of our client transactions ends that transaction: the
        caller gets 503 with a Warning, and its dialog ends, which releases its channel.  A response or an
        ACK is only counted."""
        out: list[Action] = []
        self.stats.drops["send_failed"] += 1
        if send.status != 0:
            return out
        try:
            msg = parse(send.data, max_bytes=len(send.data))
        except SipError:
            return out
        if not isinstance(msg, Request) or msg.method == "ACK":
            return out
        txn = self._txns.client(msg.vias[0].branch or "", msg.method)
        if txn is None or not self._txns.waiting(txn):
            return out
        if txn.alternatives and not txn.our_cancel and self._failover(txn, now, out):
            return out  # RFC 3263 §4.3: a transport error moves on to the next target
        adm = txn.admission
        if (adm is not None and adm.target is not None and adm.target.transport == "udp" and txn.target is not None
                and txn.target.transport == "tcp" and not txn.our_cancel and ip_literal(adm.target.host)):
            # sent over TCP for its size only (§18.1.1): the next hop does not take TCP, so UDP after all
            local = self._local_for(adm.target)
            if local is not None:
                txn.target = adm.target
                self._txns.resend(txn, self._admitted_bytes(txn, adm, adm.target, local),
                                  local.via_prefix + txn.branch, now, out)
                return out
        req = self._txns.request_of(txn)
        why = f"sending to {_format_host(send.dest.host)}:{send.dest.port} failed: {why}"
        if self._txns.transport_error(txn, warning(why), now, out) and req is not None:
            self._refused(req.method, req.uri, req.call_id, txn.reply_to, 503, why, "unroutable", out)
        self._txns.abandon(txn, "send_failed", now, out)
        return out

    def on_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``."""
        out: list[Action] = []
        for owner, name in self._timers.pop_due(now):
            if not owner.alive:  # ended by an earlier timer of this batch
                continue
            if isinstance(owner, Dialog):
                self._dialogs.timed_out(owner, now, out)
            else:
                self._txns.timer(owner, name, now, out)  # type: ignore[arg-type]
        return out

    # ------------------------------------------------------------------ helpers
    def _is_me(self, host: str, port: int | None) -> bool:
        h = host.lower().strip("[]")
        if port is None:
            port = 5060
        return (h, port) in self._me or (h in self._me_hosts and port in self._me_ports)

    def _uri_is_me(self, uri: SipUri) -> bool:
        return self._is_me(uri.host, uri.port)

    def _local_for(self, dest: Peer) -> Local | None:
        return self._by_family.get(dest)

    def _reply_address(self, via: Via, source: Peer) -> Peer:
        # RFC 3261 §18.2.2 + RFC 3581 §4: over TCP or TLS the connection the request came on; over UDP the
        # source address, its port if rport, else sent-by's
        if source.transport != "udp" or via.param("rport") is not None:
            return source
        return Peer(source.transport, source.host, via.port or 5060)

    def _response_address(self, via: Via) -> Peer | None:
        """Where a response goes by its (next) Via: received/rport or sent-by (§18.2.2)."""
        host = via.param("received") or via.host
        ip = ip_literal(host)
        if ip is None:
            return None
        rport = via.param("rport")
        port = int(rport) if rport and rport.isdigit() else (via.port or 5060)
        return Peer(via.transport.lower(), ip, port)

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _loop_hash(self, req: Request, routes: Sequence[str]) -> str:
        return _loop_hash_of(req.uri, req.call_id, req.from_tag, req.to_tag, req.cseq, ",".join(routes),
                             req.get("proxy-require") or "")

    def _own_routes(self, req: Request) -> tuple[list[str], int]:
        """The Route values and how many at the top are ours (to strip, §16.4)."""
        routes = [v for k, _n, v in req.headers if k == "route"]
        popped = 0
        while popped < len(routes) and self._is_our_route(routes[popped]):
            popped += 1
        return routes, popped

    def _our_token(self, value: str) -> str | None:
        """The token of a Route entry exactly as we wrote it (``<sip:host:port;lr;sgt=TOKEN>``), or None."""
        if value[-1:] == ">":
            for prefix in self._rr_prefixes:
                if value.startswith(prefix):
                    token = value[len(prefix):-1]
                    return token if token.isalnum() else None
        return None

    def _is_our_route(self, value: str) -> bool:
        if self._our_token(value) is not None:
            return True
        try:
            uri = _route_uri.call(value)
        except ParseError:
            return False
        return self._uri_is_me(uri)

    def _server_key(self, req: Request, method: str) -> str:
        """The key of a request's server transaction (RFC 3261 §17.2.3): its parts joined by LF, which no
        parsed header value contains (the transaction tables are keyed by strings: transaction.py)."""
        via = req.vias[0]
        key = _branch_key(via, method)
        if key is not None:
            return key
        # RFC 2543 matching (§17.2.3 last paragraph), also for a bare magic cookie; a From without a tag
        # ("\0") is not one with an empty tag
        tag = req.from_tag if req.from_tag is not None else "\0"
        return f"2543\n{req.call_id}\n{req.cseq}\n{tag}\n{via}\n{req.uri}\n{method}"

    def _refused(self, method: str, uri: str, call_id: str, source: Peer, status: int, why: str, cause: str,
                 out: list[Action]) -> None:
        """Report a request we refused ourselves to the Router, and record what it makes of it."""
        for decision in self.router.refused(method, uri, source, status, why, cause):
            out.append(Decided(decision, call_id, None))

    # ------------------------------------------------------------------ replies
    def _send_reply(
        self, req: Request, dest: Peer, status: int, reason_text: str, out: list[Action],
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Our answer to a request outside any transaction (one that failed §16.3's checks)."""
        self.stats.replies[status] += 1
        out.append(Send(reply(req, status, reason_text, extra, True, self._server_header), dest, req.method, status))

    def _reply_partial(self, partial: Partial, source: Peer, err: SipError, out: list[Action]) -> None:
        """Answer a request that failed to parse, if a well-formed answer can be built from it."""
        data = reply_partial(partial, err, self._server_header)
        if data is None:
            self.stats.drops["malformed"] += 1
            return
        self.stats.replies[err.status] += 1
        dest = self._reply_address(partial.vias[0], source)
        out.append(Send(data, dest, partial.method or "", err.status))

    # ------------------------------------------------------------------ requests
    def _on_request(self, req: Request, source: Peer, now: float, out: list[Action]) -> None:
        top = req.vias[0]
        method = req.method
        if method == "ACK":
            txn = self._txns.get(self._server_key(req, "INVITE"))
            if txn is not None:  # ACK for our non-2xx final: absorbed hop-by-hop (§17.2.1)
                self._txns.ack_received(txn, now)
                return
            if req.max_forwards == 0:  # §16.3 item 3: not forwarded; an ACK gets no 483
                self.stats.drops["too_many_hops"] += 1
                return
            routes, popped = self._own_routes(req)
            self._forward_in_dialog(req, source, now, out, routes, popped, self._loop_hash(req, routes[popped:]),
                                    stateless=True)
            return

        key = self._server_key(req, method)
        txn = self._txns.get(key)
        if txn is not None:  # retransmission: absorb, resend our last response
            self._txns.retransmission(txn, out)
            return

        reply_to = self._reply_address(top, source)
        if method == "CANCEL":
            self._on_cancel(req, reply_to, now, out)
            return

        # §16.3 request validation
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            if method == "OPTIONS" and req.ruri is not None and self._addressed_to_me(req):
                self._options_reply(req, key, reply_to, now, out, (("allow", _ALLOW),))
                return
            raise TooManyHops("Max-Forwards is 0")
        proxy_require = req.get_all("proxy-require")
        if proxy_require:
            raise BadExtension("Proxy-Require", tuple(proxy_require))

        routes, popped = self._own_routes(req)
        remaining = routes[popped:]
        loop = self._loop_hash(req, remaining)
        for via in req.vias:
            if self._is_me(via.host, via.port):
                branch = via.branch or ""
                if branch.startswith(_COOKIE + loop + "."):  # ours (_our_branch): the hash ends at the dot
                    raise LoopDetected(f"own Via {via.host}:{via.port} with the same request")

        if req.to_tag is not None:
            self._forward_in_dialog(req, source, now, out, routes, popped, loop, stateless=False, key=key,
                                    reply_to=reply_to)
            return

        if method == "OPTIONS" and not remaining and self._addressed_to_me(req):
            self._options_reply(req, key, reply_to, now, out, (("allow", _ALLOW), ("accept", "application/sdp")))
            return

        adm = self.router.admit(req, source, now, tuple(remaining))
        for decision in adm.decisions:
            out.append(Decided(decision, req.call_id, adm.account))
        if adm.reject is not None or adm.target is None:
            if adm.silent:
                self.stats.drops["policy"] += 1
                return
            rej = adm.reject or Reject(404, "Not Found")
            self._local_reply(req, key, reply_to, rej.status, now, out, rej.headers, rej.reason)
            return

        target = adm.target
        if self._is_me(target.host, target.port):
            self._local_reply(req, key, reply_to, 404, now, out)  # no route beyond ourselves
            return
        if self._local_for(target) is None and ip_literal(target.host) is not None:  # before any channel is claimed
            self._unroutable(req, key, reply_to, source, target, now, out)
            return
        txn = self._txns.add(key, req, reply_to)
        txn.admission = adm
        # a preloaded Route set stays only when the Router accepted it (it names the same next hop)
        txn.out_route = () if adm.drop_routes else tuple(remaining)
        txn.popped = popped
        txn.loop = loop
        if adm.claim is not None:
            txn.ticket = self._next_id()
            self._tickets[txn.ticket] = txn
            out.append(Settle(txn.ticket, adm.claim, adm.emergency))
            return  # settled() forwards it, then sends the 100
        if txn.invite:
            txn.dialog = self._start_dialog(txn, req, adm, now, out)
        self._go_on(txn, adm, now, out)

    def _unroutable(self, req: Request, key: str, reply_to: Peer, source: Peer, target: Peer,
                    now: float, out: list[Action]) -> None:
        """503 for a request no listen address can send on (a family or a transport sipguard does not serve)."""
        why = f"no listen address reaches {target.transport}:{_format_host(target.host)}:{target.port}"
        self._local_reply(req, key, reply_to, 503, now, out, (warning(why),))
        self._refused(req.method, req.uri, req.call_id, source, 503, why, "unroutable", out)

    def _addressed_to_me(self, req: Request) -> bool:
        ruri = req.ruri
        return ruri is not None and ruri.user is None and self._uri_is_me(ruri)

    def _local_reply(
        self, req: Request, key: str, reply_to: Peer, status: int, now: float, out: list[Action],
        extra: Iterable[tuple[str, str]] = (), reason_text: str | None = None,
    ) -> None:
        """Answer a request ourselves inside a server transaction that absorbs its retransmissions."""
        txn = self._txns.add(key, req, reply_to)
        txn.local = True
        self._txns.answer(txn, status, reason_text or reason(status), now, out, tuple(extra))

    def _options_reply(self, req: Request, key: str, reply_to: Peer, now: float, out: list[Action],
                       extra: tuple[tuple[str, str], ...]) -> None:
        """An OPTIONS addressed to sipguard (a keep-alive, a dispatcher's probe): 200, or while stopping the
        503 that tells the prober to move away."""
        down = self.unavailable
        if down is None:
            self._local_reply(req, key, reply_to, 200, now, out, extra)
        else:
            self._local_reply(req, key, reply_to, down.status, now, out, down.headers, down.reason)

    def _route_target(self, route_value: str) -> Peer | None:
        try:
            uri = _route_uri.call(route_value)
        except ParseError:
            return None
        return self._uri_target(uri)

    def _uri_target(self, uri: SipUri) -> Peer | None:
        ip = ip_literal(uri.host)
        if ip is None:
            return None
        transport = (uri.param("transport") or ("tls" if uri.scheme == "sips" else "udp")).lower()
        return Peer(transport, ip, uri.port or (5061 if transport == "tls" else 5060))

    def _on_cancel(self, req: Request, reply_to: Peer, now: float, out: list[Action]) -> None:
        key = self._server_key(req, "CANCEL")
        invite = self._txns.get(self._server_key(req, "INVITE"))
        if invite is None or invite.local:
            self._local_reply(req, key, reply_to, 481, now, out)
            return
        self._local_reply(req, key, reply_to, 200, now, out)
        if invite.server is not ServerState.PROCEEDING:
            return  # a final was sent already; the CANCEL has no effect (§9.2)
        invite.cancelled = True
        if invite.client is ClientState.PROCEEDING:
            self._txns.send_cancel(invite, now, out)
        elif invite.client is ClientState.CALLING:
            invite.cancel_pending = True  # §9.1: wait for a provisional before CANCEL
        elif invite.client is ClientState.NONE:
            # still waiting for its claim: answer 487 now, release when it settles
            self._txns.answer(invite, 487, "Request Terminated", now, out)

    # ------------------------------------------------------------------ forwarding
    def _forward_admitted(self, txn: Txn, adm: Admission, target: Peer, now: float, out: list[Action]) -> None:
        """Forward an admitted request to ``target`` (the Router's, or one its name resolved to)."""
        local = self._local_for(target)
        assert local is not None, "checked before admission (_unroutable), or when resolved"
        if txn.dialog is not None:
            txn.dialog.callee_host = target.host  # the dialog's far end: this address, whatever name found it
        txn.branch = self._our_branch(txn.loop, None)
        data = self._admitted_bytes(txn, adm, target, local)
        if len(data) > MAX_UDP_REQUEST and target.transport == "udp":
            # §18.1.1: a request over 1,300 bytes goes over a congestion-controlled transport, when there is one
            tcp = self._local_for(Peer("tcp", local.host, local.port))
            if tcp is not None:
                target, local = Peer("tcp", target.host, target.port), tcp
                data = self._admitted_bytes(txn, adm, target, local)
        txn.target = target
        self._txns.start_client(txn, data, local.via_prefix + txn.branch, now, out)

    def _admitted_bytes(self, txn: Txn, adm: Admission, target: Peer, local: Local) -> bytes:
        """A new request as it is forwarded to ``target`` from ``local`` (§16.6)."""
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        edits: list[Edit] = []
        via_edit = self._received_edit(req.vias[0], txn.reply_to)
        if via_edit is not None:
            edits.append(via_edit)
        edits.append(Prepend("via", local.via_prefix + txn.branch))
        edits.extend(self._max_forwards_edit(req))
        if adm.drop_routes:
            edits.append(RemoveAll("route"))
        else:
            edits.extend(RemoveFirst("route") for _ in range(txn.popped))
        if req.method in _DIALOG_CREATING:
            tag = self._account_tags.get(adm.account)
            if tag is None:
                tag = self._account_tags[adm.account] = account_tag(adm.account)
            token = route_token(self.route_key, req.call_id, txn.reply_to.host, target.host, tag)
            edits.extend(self._record_route(txn.reply_to, local, token))
        edits.extend(adm.edits)
        return serialize(req, edits)

    def _record_route(self, source: Peer, out_local: Local, token: str) -> list[Edit]:
        """§16.6 item 4, with the dialog's route token (dialog.py); RFC 5658 double Record-Route when the two
        sides differ."""
        in_local = self._local_for(source)
        edits: list[Edit] = []
        # (``is not`` first: Local's dataclass __eq__ runs interpreted, and the two are usually the same object)
        if in_local is not None and in_local is not out_local and in_local != out_local:
            edits.append(Prepend("record-route", f"{in_local.rr_prefix}{token}>"))
        edits.append(Prepend("record-route", f"{out_local.rr_prefix}{token}>"))
        return edits

    @staticmethod
    def _max_forwards_edit(req: Request) -> list[Edit]:
        mf = req.max_forwards
        return [SetHeader("max-forwards", "70" if mf is None else str(min(mf, 256) - 1))]

    @staticmethod
    def _received_edit(via: Via, source: Peer) -> Edit | None:
        """RFC 3261 §18.2.1 received, RFC 3581 §4 rport: the top Via as forwarded."""
        value = _received_via(via, source)
        return None if value is None else ReplaceFirst("via", value)

    def _peeked_request(self, data: bytes, source: Peer, now: float, out: list[Action]) -> bool:
        """The light path of an ACK or a BYE inside a dialog sipguard holds, sent from one of its ends to the
        other through sipguard's own Record-Route (every Route ours, as written) and carrying no body: read
        only what relaying it needs (parser.peek_request) and forward it with the edits of
        ``_forward_in_dialog`` spliced into the bytes as received.  False, with nothing done, when it is not
        that: a retransmission, an ACK of our own non-2xx, Max-Forwards 0, a Via of ours (a loop), a Route
        that is not ours as we wrote it, no dialog held (a route token's proof), a request that leaves its
        dialog or names sipguard: ``parse`` and ``_on_request`` handle every one of those, refusals included.
        What it does when it is taken is what the whole path does (tests/unit/test_light_requests.py holds
        the two to the same actions)."""
        peek = peek_request(data, self.max_message_bytes)
        if peek is None or peek.to_tag is None:
            return False
        via = peek.via
        method = peek.method
        ack = method == "ACK"
        key = _branch_key(via, "INVITE" if ack else method)
        if key is None or self._txns.get(key) is not None:
            return False
        mf = peek.max_forwards
        if (mf is not None and mf <= 0) or self._is_me(via.host, via.port):
            return False
        for route in peek.routes:
            if self._our_token(route) is None:
                return False
        dialog = self._dialogs.find_tags(peek.call_id, peek.from_tag, peek.to_tag)
        if dialog is None or self._uri_is_me(peek.ruri):
            return False
        target = self._uri_target(peek.ruri)
        if target is None or not dialog.joins(source.host, target.host):
            return False
        local = self._local_for(target)
        if local is None:
            return False
        stats = self.stats
        stats.requests[method] += 1
        dropped = self.router.screen_user_agent(peek.user_agent, source, now)
        if dropped is not None:
            stats.drops[dropped] += 1
            return True
        stats.light_requests += 1
        if ack:
            self._dialogs.touched(dialog, now)
        else:
            self._dialogs.end(dialog, "bye", now, out)
        reply_to = self._reply_address(via, source)
        loop = _loop_hash_of(peek.uri, peek.call_id, peek.from_tag, peek.to_tag, peek.cseq, "", "")
        branch = self._our_branch(loop, (via.branch or "") if ack else None)
        our_via = local.via_prefix + branch
        forwarded = peek.forwarded(our_via, _received_via(via, reply_to))
        if ack:
            out.append(Send(forwarded, target, "ACK", 0))
            return True
        txn = self._txns.add_received(key, method, data, reply_to)
        txn.branch = branch
        txn.target = target
        self._txns.start_client(txn, forwarded, our_via, now, out)
        return True

    def _forward_in_dialog(
        self, req: Request, source: Peer, now: float, out: list[Action], routes: list[str], popped: int,
        loop: str, *, stateless: bool, key: str | None = None, reply_to: Peer | None = None,
    ) -> None:
        """Loose routing of a request inside a dialog (§16.4, §16.6), ACK for 2xx statelessly.

        ``routes``: the Route values, of which the first ``popped`` are ours; ``loop``: the request's loop hash.
        Relayed only from one end of a dialog sipguard admitted to the other: a dialog it holds, or one
        whose token is in our Route (dialog.py); otherwise 481 (no such dialog) or 403 (a route that leaves it).
        """
        remaining = routes[popped:]
        dialog = self._dialogs.find(req)
        token: str | None = None
        if dialog is None:
            token = self._token_of(routes[:popped])
            if token is None:
                self._refuse_in_dialog(req, source, 481, "in-dialog request that matches no dialog sipguard "
                                       "admitted", stateless, key, reply_to, now, out)
                return
        if remaining:
            target = self._route_target(remaining[0])
        elif req.ruri is not None and not self._uri_is_me(req.ruri):
            target = self._uri_target(req.ruri)
        else:
            target = None
        if target is None:
            if stateless:
                self.stats.drops["unroutable"] += 1
                return
            assert key is not None and reply_to is not None
            self._local_reply(req, key, reply_to, 478 if remaining or req.ruri else 404, now, out)
            return
        side: str | None = None
        if dialog is not None:
            joined = dialog.joins(source.host, target.host)
        else:
            assert token is not None
            side = token_side(self.route_key, token, req.call_id, source.host, target.host)
            joined = side is not None
        if not joined:
            why = (f"in-dialog request from {source.host} to {_format_host(target.host)} leaves its dialog"
                   if dialog is not None else "in-dialog request whose route token does not match its Call-ID "
                   f"and ends ({source.host} to {_format_host(target.host)})")
            self._refuse_in_dialog(req, source, 403, why, stateless, key, reply_to, now, out)
            return
        if dialog is None:
            self.stats.token_relays += 1
            if req.method == "BYE" and token is not None:  # a call another process admitted ends here
                caller_tag = req.from_tag if side == "caller" else req.to_tag
                out.append(EndedByToken(f"{req.call_id};{caller_tag or ''}", token[-8:]))
        if dialog is not None and req.body:
            for decision in self.router.in_dialog(req, dialog.account):
                out.append(Decided(decision, req.call_id, dialog.account))
        if dialog is not None:
            if req.method == "BYE":
                self._dialogs.end(dialog, "bye", now, out)
            else:
                self._dialogs.touched(dialog, now)
        local = self._local_for(target)
        if local is None:
            if not stateless:
                assert key is not None and reply_to is not None
                self._unroutable(req, key, reply_to, source, target, now, out)
            return
        edits: list[Edit] = []
        src = reply_to or self._reply_address(req.vias[0], source)
        via_edit = self._received_edit(req.vias[0], src)
        if via_edit is not None:
            edits.append(via_edit)
        branch = self._our_branch(loop, (req.vias[0].branch or "") if stateless else None)
        via = local.via_prefix + branch
        edits.append(Prepend("via", via))
        edits.extend(self._max_forwards_edit(req))
        edits.extend(RemoveFirst("route") for _ in range(popped))
        data = serialize(req, edits)
        if stateless:
            out.append(Send(data, target, req.method, 0))
            return
        assert key is not None and reply_to is not None
        txn = self._txns.add(key, req, reply_to)
        txn.branch = branch
        txn.target = target
        txn.out_route = tuple(remaining)
        self._txns.trying(txn, out)  # a re-INVITE: 100 hop-by-hop, no new channel
        self._txns.start_client(txn, data, via, now, out)

    def _token_of(self, our_routes: list[str]) -> str | None:
        """The route token in our own Route entries (the Record-Route we wrote, sent back to us)."""
        for value in our_routes:
            token = self._our_token(value)
            if token is None:  # ours, but not as we wrote it (parameters reordered, another spelling)
                try:
                    token = _route_uri.call(value).param(TOKEN_PARAM)
                except ParseError:
                    continue
            if token:
                return token
        return None

    def _refuse_in_dialog(self, req: Request, source: Peer, status: int, why: str, stateless: bool,
                          key: str | None, reply_to: Peer | None, now: float, out: list[Action]) -> None:
        if stateless:  # an ACK gets no answer
            self.stats.drops["unknown_dialog" if status == 481 else "route_leaves_dialog"] += 1
            return
        assert key is not None and reply_to is not None
        self._local_reply(req, key, reply_to, status, now, out, (warning(why),))
        self._refused(req.method, req.uri, req.call_id, source, status, why, "in_dialog", out)

    def _our_branch(self, loop: str, ack_of: str | None) -> str:
        """The branch of our Via on a request we forward: the loop hash, then a counter, or for a stateless
        ACK a hash of its own branch (``ack_of``: the same branch for every retransmission, §16.11).
        In decimal: compiled, ``str()`` of an int costs a seventh of ``"%x" %`` (which parses its format on every
        call) and a third of ``hex()`` (a builtin looked up by name)."""
        if ack_of is not None:
            return _COOKIE + loop + ".a" + str(crc32_text(ack_of))
        return _COOKIE + loop + "." + str(self._next_id())

    # ------------------------------------------------------------------ responses
    def _on_response(self, resp: Response, now: float, out: list[Action]) -> None:
        top = resp.vias[0]
        if not self._is_me(top.host, top.port):
            self.stats.drops["not_our_via"] += 1
            return
        branch = top.branch or ""
        txn = self._txns.client(branch, resp.cseq_method)
        if txn is None:
            # RFC 3261 §16.7/§16.11: a stray 2xx to INVITE is forwarded statelessly
            if resp.cseq_method == "INVITE" and 200 <= resp.status < 300 and len(resp.vias) > 1:
                dest = self._response_address(resp.vias[1])
                if dest is not None and _unicast(dest.host):
                    out.append(Send(serialize(resp, (RemoveFirst("via"),)), dest, "INVITE", resp.status))
                    return
            self.stats.drops["stray_response"] += 1
            return
        if txn.our_cancel:
            self._txns.cancel_answered(txn, resp.status, now)
            return
        if len(resp.vias) < 2:
            self.stats.drops["no_upstream_via"] += 1
            return
        if resp.status == 503 and txn.alternatives and self._next_alternative(txn, resp.get("to") or "", now, out):
            return
        self._txns.response(txn, resp.status, resp.to_tag, resp.get("to") or "",
                            serialize(resp, (RemoveFirst("via"),)), now, out)

    def _peeked_response(self, data: bytes, now: float, out: list[Action]) -> bool:
        """The light path of a response to one of our client transactions: read only what forwarding
        needs (parser.peek_response), forward the bytes as received minus our Via.  False, with nothing
        done, when it is not that: ``parse`` and ``_on_response`` handle everything else (strays, a
        CANCEL's answer, a Via we did not write, anything unusual)."""
        peek = peek_response(data, self.max_message_bytes)
        if peek is None:
            return False
        top = peek.top_via
        branch = ""
        for prefix in self._via_prefixes:
            if top.startswith(prefix):
                branch = top[len(prefix):]
                break
        if not branch:
            return False  # not our Via
        # a branch we made is a key of ours exactly: anything after it (a parameter a later hop added) misses
        txn = self._txns.client(branch, peek.cseq_method)
        if txn is None or txn.our_cancel:
            return False
        status = peek.status
        to_tag: str | None = None
        to = ""
        if txn.invite and status >= 200:  # the To is used: the callee's tag (2xx), the ACK (3xx-6xx)
            to = peek.to()
            try:
                to_tag = tag_of.call(to)
            except ParseError:
                return False
        stats = self.stats
        stats.responses[_CLASSES[status // 100]] += 1
        stats.light_responses += 1
        if status == 503 and txn.alternatives and self._next_alternative(txn, to, now, out):
            return True
        self._txns.response(txn, status, to_tag, to, peek.without_top_via(data), now, out)
        return True

    def _next_alternative(self, txn: Txn, to: str, now: float, out: list[Action]) -> bool:
        """A 503 from a next hop that has an alternative (RFC 3263 §4.3): ACK it (an INVITE's), try the next."""
        if not self._txns.waiting(txn):
            return False
        if txn.invite:
            self._txns.ack_final(txn, to, out)
        return self._failover(txn, now, out)

    # ------------------------------------------------------------------ dialogs
    def _start_dialog(self, txn: Txn, req: Request, adm: Admission, now: float, out: list[Action]) -> Dialog:
        target = adm.target
        assert target is not None
        return self._dialogs.start(req, adm.account, adm.direction, adm.claim, txn.reply_to.host, target.host, now,
                                   out)


def _branch_key(via: Via, method: str) -> str | None:
    """The key of a server transaction whose top Via has an RFC 3261 branch (§17.2.3), None for RFC 2543
    matching (ProxyCore._server_key)."""
    branch = via.branch
    if branch and branch.startswith(_COOKIE) and len(branch) > len(_COOKIE):
        return f"{branch}\n{via.host}\n{via.port}\n{method}"
    return None


def _loop_hash_of(uri: str, call_id: str, from_tag: str | None, to_tag: str | None, cseq: int, routes: str,
                  proxy_require: str) -> str:
    """RFC 3261 §16.6 item 8: a hash of everything that decides where a request goes, minus Via."""
    basis = "\x00".join((uri, call_id, from_tag or "", to_tag or "", str(cseq), routes, proxy_require))
    return str(crc32_text(basis))  # in decimal, as _our_branch writes its counter


def _received_via(via: Via, source: Peer) -> str | None:
    """RFC 3261 §18.2.1 received, RFC 3581 §4 rport: the top Via as forwarded, None when it goes unchanged."""
    has_rport = via.param("rport") is not None
    if not has_rport and via.host.strip("[]").lower() == source.host.lower():
        return None
    params = []
    for name, value in via.params:
        if name == "received" or (name == "rport" and has_rport):
            continue
        params.append((name, value))
    params.append(("received", source.host))
    if has_rport:
        params.append(("rport", str(source.port)))
    return str(Via(via.version, via.transport, via.host, via.port, tuple(params)))


def _route_uri_fn(value: str) -> SipUri:
    """The SIP URI of a Route / Record-Route value (a dialog's route recurs).  Raises ParseError."""
    return parse_uri.call(parse_name_addr(value).uri)


_route_uri: Final = Memo(_route_uri_fn)
