"""ProxyCore: a stateful, record-routing SIP proxy without I/O (RFC 3261 §16).

Owns: the rules of §16 (Max-Forwards, loop detection, Proxy-Require, Route
processing, Via, Record-Route), RFC 3581 rport/received, the transaction table
(transaction.py) and the dialog table (dialog.py), and every SIP timer.
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

Not supported (stated in the README): forking, strict routing (§16.4 R-URI
replacement), DNS (next hops must be IP literals: otherwise 478).
"""

from __future__ import annotations

import secrets
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from .actions import (Action, Admission, Decided, DialogEnded, DialogStarted, EndedByToken, Peer, Reject, Router, Send,
                      Settle)
from .dialog import TOKEN_PARAM, Dialog, DialogState, account_tag, route_token, token_side
from .errors import BadExtension, LoopDetected, ParseError, SipError, TooManyHops
from .memo import Memo
from .message import Request, Response, SipUri, Via, ip_literal, parse_name_addr, parse_uri, tag_of
from .grammar import CSEQ_RE
from .parser import DEFAULT_MAX_MESSAGE_BYTES, Partial, is_keepalive, parse, peek_response
from .serializer import Edit, Prepend, RemoveAll, RemoveFirst, ReplaceFirst, SetHeader, header_name, serialize
from .timers import TimerConfig, TimerWheel
from .transaction import ClientState, ServerState, Txn

__all__ = ["ProxyCore", "Local", "CoreStats", "KNOWN_METHODS"]

KNOWN_METHODS: Final = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
     "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH")
)
_DIALOG_CREATING: Final = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
_COOKIE: Final = "z9hG4bK"
_CLASSES: Final = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx")  # CoreStats.responses keys, by status // 100
_ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, UPDATE, INFO, SUBSCRIBE, NOTIFY, REFER, MESSAGE"
_ERROR_KINDS: Final = {  # a refusal's cause by the status it earned (an emergency call's refusal is counted by it)
    400: "malformed", 416: "unsupported_uri_scheme", 420: "bad_extension", 481: "no_dialog", 482: "loop_detected",
    483: "too_many_hops", 505: "bad_version", 513: "too_large",
}
_REASONS: Final = {
    100: "Trying", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    478: "Unresolvable Destination", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    500: "Server Internal Error", 503: "Service Unavailable", 505: "Version Not Supported",
    513: "Message Too Large",
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


class CoreStats:
    """Counters the metrics collector reads at scrape time."""

    __slots__ = ("requests", "responses", "parse_errors", "drops", "replies", "light_responses", "token_relays")

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()  # by method (bounded: KNOWN_METHODS + other)
        self.responses: Counter[str] = Counter()  # received, by class "2xx"
        self.replies: Counter[int] = Counter()  # generated by us, by status
        self.parse_errors: Counter[int] = Counter()  # by the status it earned
        self.drops: Counter[str] = Counter()  # by reason
        self.light_responses = 0  # responses read by the light path (peek_response), not parsed whole
        self.token_relays = 0  # in-dialog requests relayed on the proof of a route token (no dialog held)


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _unicast(host: str) -> bool:
    """False for broadcast, multicast and unspecified addresses (RFC 4475 §3.3.10)."""
    if ":" in host:
        return not (host.lower().startswith("ff") or host == "::")
    first = int(host.split(".")[0])
    return not (host in ("255.255.255.255", "0.0.0.0") or 224 <= first <= 239)


def _crc32(text: str) -> int:
    """CRC-32 of header text as its bytes were received (``surrogateescape`` gives back bytes that were
    not UTF-8), for the tags and branches we derive from a request."""
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


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
        self._by_family: dict[tuple[str, int], Local] = {}
        for loc in self.locals:
            self._by_family.setdefault((loc.transport, loc.family), loc)
        self._me_hosts = {loc.host.lower() for loc in self.locals} | {a.lower().strip("[]") for a in aliases}
        self._me_ports = {loc.port for loc in self.locals}
        self._server_header = server_header
        # the start of our own Via in a response to us: the light path (_peeked_response) looks for it
        self._via_prefixes = tuple(loc.via_prefix for loc in self.locals)
        # our Record-Route as we write it, up to its token: a Route entry sent back to us as we wrote it is
        # recognised without parsing (each dialog's token differs, so a memo of parsed routes would miss)
        self._rr_prefixes = tuple(loc.rr_prefix for loc in self.locals)
        self._account_tags: dict[str | None, str] = {}  # account -> its tag in the route token (dialog.py)
        self._txns: dict[tuple[object, ...], Txn] = {}
        self._client: dict[tuple[str, str], Txn] = {}
        self._tickets: dict[int, Txn] = {}
        self._dialogs: dict[tuple[str, str], Dialog] = {}
        self._timers = TimerWheel()
        self._counter = 0
        self.stats = CoreStats()
        self.unavailable: Reject | None = None  # while stopping: the answer to an OPTIONS addressed to sipguard

    # ------------------------------------------------------------------ sizes
    @property
    def transaction_count(self) -> int:
        return len(self._txns)

    @property
    def dialog_count(self) -> int:
        return len(self._dialogs)

    def dialogs(self) -> list[Dialog]:
        return list(self._dialogs.values())

    def set_router(self, router: Router) -> None:
        """Swap the hook (policy reload); transactions and dialogs are kept."""
        self.router = router

    def set_dialog_timeout(self, dialog_timeout_s: float) -> None:
        self.timers = replace(self.timers, dialog_timeout_s=dialog_timeout_s)

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
        if data.startswith(b"SIP/2.0 ") and self._peeked_response(data, now, out):
            return out
        try:
            msg = parse(data, max_bytes=self.max_message_bytes)
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
                dropped = self.router.screen_request(msg, source, now)
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
            self._server_final(txn, self._build_reply(req, rej.status, rej.reason, rej.headers), rej.status, now, out)
            return out
        dialog = self._start_dialog(txn, req, adm, now, out)
        txn.dialog = dialog
        if txn.cancelled:
            self._end_dialog(dialog, "cancelled", now, out)
            return out
        self._forward_admitted(txn, adm, now, out)
        self._trying(txn, req, out)
        return out

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
        txn = self._client.get((msg.vias[0].branch or "", msg.method))
        if txn is None or txn.client not in (ClientState.CALLING, ClientState.TRYING, ClientState.PROCEEDING):
            return out
        for name in ("A", "B", "C", "E", "F"):
            self._timers.cancel(txn, name)
        txn.client_move("transport_error")
        req = txn.request
        if txn.key[0] != "cancel" and req is not None and txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
            reason = f"sending to {_format_host(send.dest.host)}:{send.dest.port} failed: {why}"
            data = self._build_reply(req, 503, "Service Unavailable", (("warning", f'399 sipguard "{_quote(reason)}"'),))
            self.stats.replies[503] += 1
            self._server_final(txn, data, 503, now, out)
            self._refused(req.method, req.uri, req.call_id, txn.reply_to, 503, reason, "unroutable", out)
        if isinstance(txn.dialog, Dialog) and txn.dialog.alive:
            self._end_dialog(txn.dialog, "send_failed", now, out)
        self._maybe_free(txn)
        return out

    def _trying(self, txn: Txn, req: Request, out: list[Action]) -> None:
        """The 100 Trying of a new INVITE, sent just after the INVITE went downstream (the downstream
        hop gets it first; RFC 3261 §17.2.1 gives the 100 up to 200 ms), unless a final was sent instead."""
        if txn.invite and txn.last_status == 0:
            self._server_provisional(txn, self._build_reply(req, 100, "Trying", to_tag=False), 100, out)

    def on_timer(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``."""
        out: list[Action] = []
        for owner, name in self._timers.pop_due(now):
            if not owner.alive:  # ended by an earlier timer of this batch
                continue
            if isinstance(owner, Dialog):
                self._end_dialog(owner, "timeout", now, out)
            else:
                self._txn_timer(owner, name, now, out)  # type: ignore[arg-type]
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
        return self._by_family.get((dest.transport, 6 if ":" in dest.host else 4))

    def _reply_address(self, via: Via, source: Peer) -> Peer:
        # RFC 3261 §18.2.2 + RFC 3581 §4: the source address; its port if rport, else sent-by's
        if via.param("rport") is not None:
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
        # RFC 3261 §16.6 item 8: everything that decides where the request goes, minus Via
        basis = "\x00".join(
            (req.uri, req.call_id, req.from_tag or "", req.to_tag or "", str(req.cseq),
             ",".join(routes), req.get("proxy-require") or "")
        )
        return "%08x" % _crc32(basis)

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

    def _server_key(self, req: Request, method: str) -> tuple[object, ...]:
        via = req.vias[0]
        branch = via.branch
        if branch and branch.startswith(_COOKIE) and len(branch) > len(_COOKIE):
            return (branch, via.host, via.port, method)
        # RFC 2543 matching (§17.2.3 last paragraph), also for a bare magic cookie
        return ("2543", req.call_id, req.cseq, req.from_tag, str(via), req.uri, method)

    def _refused(self, method: str, uri: str, call_id: str, source: Peer, status: int, why: str, cause: str,
                 out: list[Action]) -> None:
        """Report a request we refused ourselves to the Router, and record what it makes of it."""
        for decision in self.router.refused(method, uri, source, status, why, cause):
            out.append(Decided(decision, call_id, None))

    # ------------------------------------------------------------------ replies
    def _build_reply(
        self, req: Request, status: int, reason: str, extra: Iterable[tuple[str, str]] = (), to_tag: bool = True
    ) -> bytes:
        lines = [f"SIP/2.0 {status} {reason}"]
        for key, name, value in req.headers:
            if key == "via":
                lines.append(f"Via: {value}")
            elif key in ("from", "call-id", "cseq"):
                lines.append(f"{name}: {value}")
            elif key == "to":
                if to_tag and status > 100 and req.to_tag is None:
                    value = f"{value};tag=sg{_crc32(req.call_id + str(req.cseq)):08x}"
                lines.append(f"{name}: {value}")
        for key, value in extra:
            lines.append(f"{header_name(key)}: {value}")
        if self._server_header:
            lines.append(f"Server: {self._server_header}")
        lines.append("Content-Length: 0")
        lines.append("")
        lines.append("")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape")

    def _send_reply(
        self, req: Request, dest: Peer, status: int, reason: str, out: list[Action],
        extra: Iterable[tuple[str, str]] = (),
    ) -> bytes:
        # our first Via value carries received/rport for the reply to be routable
        data = self._build_reply(req, status, reason, extra)
        self.stats.replies[status] += 1
        out.append(Send(data, dest, req.method, status))
        return data

    def _reply_partial(self, partial: Partial, source: Peer, err: SipError, out: list[Action]) -> None:
        """Answer a request that failed to parse, if a well-formed answer can be built from it."""
        lines = [f"SIP/2.0 {err.status} {err.reason}"]
        seen: set[str] = set()
        for key, name, value in partial.headers:
            if key in ("via", "from", "to", "call-id", "cseq"):
                if key != "via" and (key in seen or not _answerable(key, value)):
                    self.stats.drops["malformed"] += 1
                    return
                seen.add(key)
                lines.append(f"{name}: {value}")
        if len(seen) < 5:  # Via, From, To, Call-ID and CSeq are needed to match an answer
            self.stats.drops["malformed"] += 1
            return
        lines.append(f'Warning: 399 sipguard "{_quote(err.detail)}"')
        if self._server_header:
            lines.append(f"Server: {self._server_header}")
        lines.append("Content-Length: 0")
        lines.append("")
        lines.append("")
        self.stats.replies[err.status] += 1
        dest = self._reply_address(partial.vias[0], source)
        out.append(Send("\r\n".join(lines).encode("utf-8", "surrogateescape"), dest, partial.method or "", err.status))

    # ------------------------------------------------------------------ requests
    def _on_request(self, req: Request, source: Peer, now: float, out: list[Action]) -> None:
        top = req.vias[0]
        method = req.method
        if method == "ACK":
            txn = self._txns.get(self._server_key(req, "INVITE"))
            if txn is not None:
                # ACK for our non-2xx final: absorbed hop-by-hop (§17.2.1)
                if txn.server is ServerState.COMPLETED:
                    txn.server_move("recv_ack")
                    self._timers.cancel(txn, "G")
                    self._timers.cancel(txn, "H")
                    self._timers.set(txn, "I", now + self.timers.t4_s)
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
            self.stats.drops["retransmission"] += 1
            if txn.last_response is not None and txn.server is not ServerState.ACCEPTED:
                out.append(Send(txn.last_response, txn.reply_to, method, txn.last_status))
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
                if branch.startswith(_COOKIE + loop):
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
        if self._local_for(target) is None:  # before any channel is claimed
            self._unroutable(req, key, reply_to, source, target, now, out)
            return
        txn = Txn(key, req, reply_to)
        txn.admission = adm
        # a preloaded Route set stays only when the Router accepted it (it names the same next hop)
        txn.out_route = () if adm.drop_routes else tuple(remaining)
        txn.popped = popped
        txn.loop = loop
        self._txns[key] = txn
        if adm.claim is not None:
            txn.ticket = self._next_id()
            self._tickets[txn.ticket] = txn
            out.append(Settle(txn.ticket, adm.claim, adm.emergency))
            return  # settled() forwards it, then sends the 100
        if txn.invite:
            txn.dialog = self._start_dialog(txn, req, adm, now, out)
        self._forward_admitted(txn, adm, now, out)
        self._trying(txn, req, out)

    def _unroutable(self, req: Request, key: tuple[object, ...], reply_to: Peer, source: Peer, target: Peer,
                    now: float, out: list[Action]) -> None:
        """503 for a request no listen address can send on (a family or a transport sipguard does not serve)."""
        why = f"no listen address reaches {target.transport}:{_format_host(target.host)}:{target.port}"
        self._local_reply(req, key, reply_to, 503, now, out, (("warning", f'399 sipguard "{_quote(why)}"'),))
        self._refused(req.method, req.uri, req.call_id, source, 503, why, "unroutable", out)

    def _addressed_to_me(self, req: Request) -> bool:
        ruri = req.ruri
        return ruri is not None and ruri.user is None and self._uri_is_me(ruri)

    def _local_reply(
        self, req: Request, key: tuple[object, ...], reply_to: Peer, status: int, now: float, out: list[Action],
        extra: Iterable[tuple[str, str]] = (), reason: str | None = None,
    ) -> None:
        """Answer a request ourselves inside a server transaction that absorbs its retransmissions."""
        txn = Txn(key, req, reply_to)
        txn.local = True
        self._txns[key] = txn
        data = self._build_reply(req, status, reason or _REASONS.get(status, "Error"), extra)
        self.stats.replies[status] += 1
        self._server_final(txn, data, status, now, out)

    def _options_reply(self, req: Request, key: tuple[object, ...], reply_to: Peer, now: float, out: list[Action],
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
            self._send_cancel(invite, now, out)
        elif invite.client is ClientState.CALLING:
            invite.cancel_pending = True  # §9.1: wait for a provisional before CANCEL
        elif invite.client is ClientState.NONE:
            # still waiting for its claim: answer 487 now, release when it settles
            assert invite.request is not None
            data = self._build_reply(invite.request, 487, "Request Terminated")
            self.stats.replies[487] += 1
            self._server_final(invite, data, 487, now, out)

    # ------------------------------------------------------------------ forwarding
    def _forward_admitted(self, txn: Txn, adm: Admission, now: float, out: list[Action]) -> None:
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        target = adm.target
        assert target is not None
        local = self._local_for(target)
        assert local is not None, "checked before admission (_unroutable)"
        popped, loop = txn.popped, txn.loop
        edits: list[Edit] = []
        via_edit = self._received_edit(req.vias[0], txn.reply_to)
        if via_edit is not None:
            edits.append(via_edit)
        txn.branch = self._our_branch(loop, None)
        edits.append(Prepend("via", local.via_prefix + txn.branch))
        edits.extend(self._max_forwards_edit(req))
        if adm.drop_routes:
            edits.append(RemoveAll("route"))
        else:
            edits.extend(RemoveFirst("route") for _ in range(popped))
        if req.method in _DIALOG_CREATING:
            tag = self._account_tags.get(adm.account)
            if tag is None:
                tag = self._account_tags[adm.account] = account_tag(adm.account)
            token = route_token(self.route_key, req.call_id, txn.reply_to.host, target.host, tag)
            edits.extend(self._record_route(txn.reply_to, local, token))
        edits.extend(adm.edits)
        txn.target = target
        self._start_client(txn, serialize(req, edits), now, out)

    def _start_client(self, txn: Txn, data: bytes, now: float, out: list[Action]) -> None:
        """Send a request downstream and start its client side: Timers A/E (UDP) and B/F."""
        txn.out_bytes = data
        txn.client_key = (txn.branch, txn.method if txn.key[0] != "cancel" else "CANCEL")
        self._client[txn.client_key] = txn
        txn.client_move("send")
        assert txn.target is not None
        out.append(Send(data, txn.target, txn.client_key[1], 0))
        if txn.target.transport == "udp":
            txn.retransmit_s = self.timers.t1_s
            self._timers.set(txn, "A" if txn.invite else "E", now + txn.retransmit_s)
        self._timers.set(txn, "B" if txn.invite else "F", now + self.timers.t64_s)

    def _record_route(self, source: Peer, out_local: Local, token: str) -> list[Edit]:
        """§16.6 item 4, with the dialog's route token (dialog.py); RFC 5658 double Record-Route when the two
        sides differ."""
        in_local = self._local_for(source)
        edits: list[Edit] = []
        if in_local is not None and in_local != out_local:
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
        return ReplaceFirst("via", str(Via(via.version, via.transport, via.host, via.port, tuple(params))))

    def _forward_in_dialog(
        self, req: Request, source: Peer, now: float, out: list[Action], routes: list[str], popped: int,
        loop: str, *, stateless: bool, key: tuple[object, ...] | None = None, reply_to: Peer | None = None,
    ) -> None:
        """Loose routing of a request inside a dialog (§16.4, §16.6), ACK for 2xx statelessly.

        ``routes``: the Route values, of which the first ``popped`` are ours; ``loop``: the request's loop hash.
        Relayed only from one end of a dialog sipguard admitted to the other: a dialog it holds, or one
        whose token is in our Route (dialog.py); otherwise 481 (no such dialog) or 403 (a route that leaves it).
        """
        remaining = routes[popped:]
        dialog = self._find_dialog(req)
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
                self._end_dialog(dialog, "bye", now, out)
            elif dialog.state is DialogState.CONFIRMED:
                self._timers.set(dialog, "timeout", now + self.timers.dialog_timeout_s)
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
        edits.append(Prepend("via", local.via_prefix + branch))
        edits.extend(self._max_forwards_edit(req))
        edits.extend(RemoveFirst("route") for _ in range(popped))
        data = serialize(req, edits)
        if stateless:
            out.append(Send(data, target, req.method, 0))
            return
        assert key is not None and reply_to is not None
        txn = Txn(key, req, reply_to)
        txn.branch = branch
        txn.target = target
        txn.out_route = tuple(remaining)
        self._txns[key] = txn
        if txn.invite:  # re-INVITE: 100 hop-by-hop, no new channel
            self._server_provisional(txn, self._build_reply(req, 100, "Trying", to_tag=False), 100, out)
        self._start_client(txn, data, now, out)

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
                          key: tuple[object, ...] | None, reply_to: Peer | None, now: float, out: list[Action]) -> None:
        if stateless:  # an ACK gets no answer
            self.stats.drops["unknown_dialog" if status == 481 else "route_leaves_dialog"] += 1
            return
        assert key is not None and reply_to is not None
        self._local_reply(req, key, reply_to, status, now, out, (("warning", f'399 sipguard "{_quote(why)}"'),))
        self._refused(req.method, req.uri, req.call_id, source, status, why, "in_dialog", out)

    def _our_branch(self, loop: str, ack_of: str | None) -> str:
        """The branch of our Via on a request we forward: the loop hash, then a counter, or for a stateless
        ACK a hash of its own branch (``ack_of``: the same branch for every retransmission, §16.11).
        %-formatting: compiled, an f-string with a format spec costs several times as much."""
        if ack_of is not None:
            return "%s%s.a%x" % (_COOKIE, loop, _crc32(ack_of))
        return "%s%s.%x" % (_COOKIE, loop, self._next_id())

    def _send_cancel(self, txn: Txn, now: float, out: list[Action]) -> None:
        """CANCEL downstream for our INVITE client transaction (§9.1, §16.10)."""
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        assert txn.target is not None
        local = self._local_for(txn.target)
        assert local is not None
        lines = [f"CANCEL {req.uri} SIP/2.0",
                 f"Via: {local.via_prefix}{txn.branch}",
                 "Max-Forwards: 70"]
        lines.extend(f"Route: {r}" for r in txn.out_route)
        for key, name, value in req.headers:
            if key in ("from", "to", "call-id"):
                lines.append(f"{name}: {value}")
        lines.append(f"CSeq: {req.cseq} CANCEL")
        lines.extend(("Content-Length: 0", "", ""))
        # a small client transaction for the CANCEL itself: retransmits until its final
        cancel = Txn(("cancel", txn.branch), req, txn.reply_to)
        cancel.invite = False
        cancel.server = ServerState.TERMINATED
        cancel.local = True
        cancel.branch = txn.branch
        cancel.target = txn.target
        self._txns[cancel.key] = cancel
        self._start_client(cancel, "\r\n".join(lines).encode("utf-8", "surrogateescape"), now, out)

    def _send_ack(self, txn: Txn, to: str, out: list[Action]) -> None:
        """ACK for a non-2xx final, hop-by-hop (§17.1.1.3); the same bytes for a retransmitted final."""
        assert txn.target is not None
        if txn.client is ClientState.COMPLETED and txn.request is None:
            out.append(Send(txn.out_bytes, txn.target, "ACK", 0))
            return
        req = txn.request
        assert req is not None, "a slim transaction is not forwarded again"
        local = self._local_for(txn.target)
        assert local is not None
        lines = [f"ACK {req.uri} SIP/2.0",
                 f"Via: {local.via_prefix}{txn.branch}",
                 "Max-Forwards: 70"]
        lines.extend(f"Route: {r}" for r in txn.out_route)
        for key, name, value in req.headers:
            if key in ("from", "call-id"):
                lines.append(f"{name}: {value}")
        to_value = to or req.get("to")
        lines.append(f"To: {to_value}")
        lines.append(f"CSeq: {req.cseq} ACK")
        lines.extend(("Content-Length: 0", "", ""))
        data = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        txn.out_bytes = data  # the INVITE is never retransmitted again: keep the ACK instead
        out.append(Send(data, txn.target, "ACK", 0))

    # ------------------------------------------------------------------ responses
    def _on_response(self, resp: Response, now: float, out: list[Action]) -> None:
        top = resp.vias[0]
        if not self._is_me(top.host, top.port):
            self.stats.drops["not_our_via"] += 1
            return
        branch = top.branch or ""
        txn = self._client.get((branch, resp.cseq_method))
        if txn is None:
            # RFC 3261 §16.7/§16.11: a stray 2xx to INVITE is forwarded statelessly
            if resp.cseq_method == "INVITE" and 200 <= resp.status < 300 and len(resp.vias) > 1:
                dest = self._response_address(resp.vias[1])
                if dest is not None and _unicast(dest.host):
                    out.append(Send(serialize(resp, (RemoveFirst("via"),)), dest, "INVITE", resp.status))
                    return
            self.stats.drops["stray_response"] += 1
            return
        if txn.key[0] == "cancel":
            if resp.status >= 200 and txn.client in (ClientState.TRYING, ClientState.PROCEEDING):
                txn.client_move("recv_final")
                self._timers.cancel(txn, "E")
                self._timers.cancel(txn, "F")
                self._timers.set(txn, "K", now + self.timers.t4_s)
            return
        if len(resp.vias) < 2:
            self.stats.drops["no_upstream_via"] += 1
            return
        self._txn_response(txn, resp.status, resp.to_tag, resp.get("to") or "",
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
        txn = self._client.get((branch, peek.cseq_method))
        if txn is None or txn.key[0] == "cancel":
            return False
        status = peek.status
        to_tag: str | None = None
        if txn.invite and status >= 200:  # the To is used: the callee's tag (2xx), the ACK (3xx-6xx)
            try:
                to_tag = tag_of.call(peek.to)
            except ParseError:
                return False
        stats = self.stats
        stats.responses[_CLASSES[status // 100]] += 1
        stats.light_responses += 1
        self._txn_response(txn, status, to_tag, peek.to, peek.without_top_via(data), now, out)
        return True

    def _txn_response(self, txn: Txn, status: int, to_tag: str | None, to: str, forward: bytes, now: float,
                      out: list[Action]) -> None:
        """A response to client transaction ``txn``: ``forward`` is it as it goes upstream, ``to`` its
        To value (an ACK for a non-2xx final carries it)."""
        if txn.invite:
            self._invite_response(txn, status, to_tag, to, forward, now, out)
        else:
            self._non_invite_response(txn, status, forward, now, out)
        if status >= 200:
            self._maybe_free(txn)

    def _invite_response(self, txn: Txn, status: int, to_tag: str | None, to: str, forward: bytes, now: float,
                         out: list[Action]) -> None:
        client = txn.client
        if client in (ClientState.TERMINATED, ClientState.NONE):
            return
        dialog = txn.dialog if isinstance(txn.dialog, Dialog) else None
        if status < 200:
            if client not in (ClientState.CALLING, ClientState.PROCEEDING):
                return  # a provisional after a final: ignore
            txn.client_move("recv_1xx")
            self._timers.cancel(txn, "A")
            self._timers.cancel(txn, "B")
            if status > 100 or "C" not in txn.deadlines:
                self._timers.set(txn, "C", now + self.timers.timer_c_s)  # §16.7 item 2
            if txn.cancel_pending:
                txn.cancel_pending = False
                self._send_cancel(txn, now, out)
            if status > 100 and txn.server is ServerState.PROCEEDING:
                self._server_provisional(txn, forward, status, out)
            return
        if status < 300:
            if client is ClientState.COMPLETED:
                self.stats.drops["2xx_after_final"] += 1
                return
            txn.client_move("recv_2xx")
            for name in ("A", "B", "C"):
                self._timers.cancel(txn, name)
            if "M" not in txn.deadlines:
                self._timers.set(txn, "M", now + self.timers.t64_s)
            if dialog is not None and dialog.alive:
                if dialog.state is DialogState.EARLY:
                    dialog.answered_at = now
                    dialog.callee_tag = to_tag
                dialog.move("recv_2xx")
                self._timers.set(dialog, "timeout", now + self.timers.dialog_timeout_s)
            if txn.server is not ServerState.TERMINATED:
                txn.server_move("send_2xx")
            txn.last_response = None
            if "L" not in txn.deadlines and txn.server is ServerState.ACCEPTED:
                self._timers.set(txn, "L", now + self.timers.t64_s)
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
            self._timers.cancel(txn, name)
        self._timers.set(txn, "D", now + self.timers.t64_s)
        if txn.server is ServerState.PROCEEDING:
            self._server_final(txn, forward, status, now, out)
        if dialog is not None and dialog.alive:
            self._end_dialog(dialog, "cancelled" if txn.cancelled else "rejected", now, out)

    def _non_invite_response(self, txn: Txn, status: int, forward: bytes, now: float, out: list[Action]) -> None:
        if txn.client not in (ClientState.TRYING, ClientState.PROCEEDING):
            return
        if status < 200:
            txn.client_move("recv_1xx")
            if status > 100 and txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
                self._server_provisional(txn, forward, status, out)
            return
        txn.client_move("recv_final")
        self._timers.cancel(txn, "E")
        self._timers.cancel(txn, "F")
        self._timers.set(txn, "K", now + (self.timers.t4_s if txn.target and txn.target.transport == "udp" else 0))
        if txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
            self._server_final(txn, forward, status, now, out)

    # ------------------------------------------------------------------ server side
    def _server_provisional(self, txn: Txn, data: bytes, status: int, out: list[Action]) -> None:
        if status != 100 or not txn.invite:
            txn.server_move("send_1xx")
        if status == 100:
            self.stats.replies[100] += 1
        txn.last_response = data
        txn.last_status = status
        out.append(Send(data, txn.reply_to, txn.method, status))

    def _server_final(self, txn: Txn, data: bytes, status: int, now: float, out: list[Action]) -> None:
        """Send a non-2xx final (ours or forwarded) upstream and complete the server side."""
        txn.server_move("send_final")
        txn.last_response = data
        txn.last_status = status
        out.append(Send(data, txn.reply_to, txn.method, status))
        udp = txn.reply_to.transport == "udp"
        if txn.invite:
            if udp:
                txn.retransmit_s = self.timers.t1_s
                self._timers.set(txn, "G", now + txn.retransmit_s)
            self._timers.set(txn, "H", now + self.timers.t64_s)
        else:
            self._timers.set(txn, "J", now + (self.timers.t64_s if udp else 0))

    # ------------------------------------------------------------------ timers
    def _txn_timer(self, txn: Txn, name: str, now: float, out: list[Action]) -> None:
        t = self.timers
        if name in ("A", "E"):  # retransmit downstream over UDP
            txn.client_move("timer_a" if name == "A" else "timer_e")
            assert txn.target is not None and txn.client_key is not None
            out.append(Send(txn.out_bytes, txn.target, txn.client_key[1], 0))
            if name == "A":
                txn.retransmit_s *= 2
            else:
                txn.retransmit_s = t.t2_s if txn.client is ClientState.PROCEEDING else min(txn.retransmit_s * 2, t.t2_s)
            self._timers.set(txn, name, now + txn.retransmit_s)
        elif name in ("B", "F"):  # no final from downstream
            self._timers.cancel(txn, "A")
            self._timers.cancel(txn, "E")
            txn.client_move("timer_b" if name == "B" else "timer_f")
            if txn.key[0] != "cancel" and txn.server in (ServerState.TRYING, ServerState.PROCEEDING):
                assert txn.request is not None
                data = self._build_reply(txn.request, 408, "Request Timeout")
                self.stats.replies[408] += 1
                self._server_final(txn, data, 408, now, out)
                if isinstance(txn.dialog, Dialog) and txn.dialog.alive:
                    self._end_dialog(txn.dialog, "no_response", now, out)
        elif name == "C":  # §16.8: CANCEL downstream, 408 upstream
            txn.client_move("timer_c")
            self._send_cancel(txn, now, out)
            if txn.server is ServerState.PROCEEDING:
                assert txn.request is not None
                data = self._build_reply(txn.request, 408, "Request Timeout")
                self.stats.replies[408] += 1
                self._server_final(txn, data, 408, now, out)
            if isinstance(txn.dialog, Dialog) and txn.dialog.alive:
                self._end_dialog(txn.dialog, "timer_c", now, out)
            self._timers.set(txn, "B", now + t.t64_s)  # give the 487 a bound
        elif name == "G":
            txn.server_move("timer_g")
            if txn.last_response is not None:
                out.append(Send(txn.last_response, txn.reply_to, txn.method, txn.last_status))
            txn.retransmit_s = min(txn.retransmit_s * 2, t.t2_s)
            self._timers.set(txn, "G", now + txn.retransmit_s)
        elif name in ("H", "I", "J", "L"):
            self._timers.cancel(txn, "G")
            txn.server_move("timer_" + name.lower())
        elif name in ("D", "K", "M"):
            txn.client_move("timer_" + name.lower())
        self._maybe_free(txn)

    def _maybe_free(self, txn: Txn) -> None:
        if not txn.done:
            if txn.request is not None and txn.settled_sides:
                txn.slim()
            return
        txn.alive = False
        self._timers.cancel_all(txn)
        if self._txns.get(txn.key) is txn:
            del self._txns[txn.key]
        if txn.client_key is not None and self._client.get(txn.client_key) is txn:
            del self._client[txn.client_key]

    # ------------------------------------------------------------------ dialogs
    def _start_dialog(self, txn: Txn, req: Request, adm: Admission, now: float, out: list[Action]) -> Dialog:
        target = adm.target
        assert target is not None
        dialog = Dialog(req.call_id, req.from_tag or "", adm.account, adm.direction, adm.claim, now,
                        txn.reply_to.host, target.host)
        self._dialogs[(req.call_id, dialog.caller_tag)] = dialog
        out.append(DialogStarted(dialog.dialog_id, req.call_id, adm.account, adm.direction, adm.claim))
        return dialog

    def _find_dialog(self, req: Request) -> Dialog | None:
        d = self._dialogs.get((req.call_id, req.from_tag or ""))
        if d is None and req.to_tag is not None:
            d = self._dialogs.get((req.call_id, req.to_tag))
        return d

    def _end_dialog(self, dialog: Dialog, reason: str, now: float, out: list[Action]) -> None:
        if not dialog.alive:
            return
        dialog.move("end")
        dialog.alive = False
        self._timers.cancel_all(dialog)
        self._dialogs.pop((dialog.call_id, dialog.caller_tag), None)
        duration = None if dialog.answered_at is None else now - dialog.answered_at
        out.append(DialogEnded(dialog.dialog_id, dialog.call_id, dialog.account, reason, dialog.claim, duration))


def _route_uri_fn(value: str) -> SipUri:
    """The SIP URI of a Route / Record-Route value (a dialog's route recurs).  Raises ParseError."""
    return parse_uri.call(parse_name_addr(value).uri)


_route_uri: Final = Memo(_route_uri_fn)


def _answerable(key: str, value: str) -> bool:
    """Whether a header of a failed request can be echoed in a well-formed answer."""
    # From/To are echoed as received even when malformed (RFC 4475 §3.1.2.6 wants a 400);
    # without a valid CSeq the peer could not match the answer to its request.
    if key == "cseq":
        return CSEQ_RE.fullmatch(value) is not None
    return bool(value) and "\x00" not in value


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')[:200]
