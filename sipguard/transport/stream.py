"""TCP and TLS: listeners, connections, and the framing of SIP messages on a byte stream (RFC 3261 §18.3).

The same interface as the UDP listener (transport/__init__.py ``Transport``): ``set_receiver`` for what
comes in, ``sender()`` for what goes out; the pump (sip/pump.py) meets both.  A message is handed on
whole, framed by its Content-Length; the core sees the peer as ``Peer("tcp"|"tls", host, port)``, the
far end of the connection it came on.

Connections (docs/transports.md):
- one table per listener, by the far end's (host, port); a response goes back on the connection its
  request came on (§18.2.2), and a request to a peer goes on a connection to it when one is open
  (reused), else on a new one (``connect_timeout_s``); the first request on an inbound connection
  also makes it the way to its top Via's sent-by (an alias: a PBX that connects from an ephemeral
  port and names its listening port in Via gets its in-dialog requests on the same connection);
- CRLF keep-alive (RFC 5626 §3.5.1): a double CRLF is answered with one CRLF; CRLFs between messages
  are skipped (§7.5);
- bounds: ``max_connections`` in all and ``max_per_source`` from one address (over them a connection is
  closed as soon as it is accepted); ``message_deadline_s`` from a message's first byte to its last
  (slow-loris: a peer that never finishes its headers is closed); ``idle_timeout_s`` of silence both
  ways; ``handshake_timeout_s`` for TLS; a message larger than ``max_message_bytes``, a missing or
  malformed Content-Length that loses the framing, or bytes that are not SIP close the connection with
  one log line saying which.
Every bound is checked by one sweep per second, not by a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..policy.model import Connections, Tls
from ..sip.actions import Peer
from .tls import certificate_names, contexts

__all__ = ["StreamListener", "Framer", "FramingError", "bind_stream"]

log = logging.getLogger("sipguard")

SWEEP_S = 1.0
LOG_PER_MINUTE = 10  # WARNING lines of closed connections per reason and minute (then a count)
_CL_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)
_VIA_RE = re.compile(rb"\r\n(?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*(?:TCP|TLS)[ \t]+"
                     rb"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(?:[ \t]*:[ \t]*(\d{1,5}))?", re.IGNORECASE)
_STATUS_START = b"SIP/2.0 "
_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~")  # RFC 3261 §25.1
Receiver = Callable[[bytes, Peer], None]
Failed = Callable[[bytes, Peer, str], None]


class FramingError(Exception):
    """The stream cannot be read as SIP any more: the connection is closed."""


class Framer:
    """SIP messages out of a byte stream (§18.3): CRLF keep-alives, headers, Content-Length, body.

    ``feed(data)`` returns the complete messages, in order; ``pings`` counts the double-CRLF keep-alives
    seen since the last call (each is answered with one CRLF).  When the stream is not SIP or loses its
    framing, ``error`` says why (the messages before it are still returned) and nothing more is read."""

    __slots__ = ("buffer", "max_bytes", "pings", "started", "error")

    def __init__(self, max_bytes: int) -> None:
        self.buffer = bytearray()
        self.max_bytes = max_bytes
        self.pings = 0
        self.started = False  # a message's first bytes are in the buffer (its deadline runs)
        self.error = ""

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if self.error:
            return out
        try:
            self._frame(data, out)
        except FramingError as err:
            self.error = str(err)
            self.buffer.clear()
        return out

    def _frame(self, data: bytes, out: list[bytes]) -> None:
        buf = self.buffer
        buf += data
        while buf:
            # keep-alives and the CRLFs a sender may put between messages (§7.5)
            skip = 0
            while buf[skip:skip + 2] == b"\r\n":
                skip += 2
            if skip:
                self.pings += skip // 4
                del buf[:skip]
            if not buf or buf == b"\r":  # a CRLF split between two reads: its LF is still to come
                break
            first_end = buf.find(b"\r\n")
            if first_end < 0:
                if len(buf) > self.max_bytes:
                    raise FramingError(f"no line end in {len(buf)} bytes: not SIP")
                self._check_start(bytes(buf[:16]), complete=False)
                self.started = True
                break
            self._check_start(bytes(buf[:first_end]), complete=True)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self.max_bytes:
                    raise FramingError(f"headers longer than {self.max_bytes} bytes")
                self.started = True
                break
            head = bytes(buf[:end])
            values = _CL_RE.findall(head)
            if len(values) > 1:
                raise FramingError("more than one Content-Length: the message's end is not known")
            if not values:
                # §18.3: mandatory on a stream; the core answers the head alone (400), framing goes on after it
                length = 0
            else:
                text = values[0].strip(b" \t")
                if not text.isdigit() or len(text) > 10:
                    raise FramingError(f"Content-Length {text[:20]!r} is not a number")
                length = int(text)
            total = end + 4 + length
            if total > self.max_bytes:
                raise FramingError(f"a message of {total} bytes, over max_message_bytes ({self.max_bytes})")
            if len(buf) < total:
                self.started = True
                break
            out.append(bytes(buf[:total]))
            del buf[:total]
            self.started = False

    @staticmethod
    def _check_start(line: bytes, complete: bool) -> None:
        """A request line (``METHOD SP URI SP SIP/2.0``) or a status line (``SIP/2.0 SP code``), or the start
        of one; anything else (a TLS ClientHello on a TCP port, HTTP, noise) is not SIP."""
        if line.startswith(_STATUS_START) or _STATUS_START.startswith(line):
            return
        method = line.split(b" ", 1)[0]
        if not method or not all(c in _TOKEN for c in method[:32]):
            raise FramingError(f"not SIP: starts with {line[:24]!r}")
        if complete and not line.rstrip(b" \t").rpartition(b" ")[2].startswith(b"SIP/"):  # another version: the core answers 505
            raise FramingError(f"not a SIP request or status line: {line[:60]!r}")


class _Connection(asyncio.Protocol):
    """One TCP or TLS connection: framing in, writes out, its deadlines read by the listener's sweep."""

    def __init__(self, listener: StreamListener, outbound: Peer | None = None) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = outbound  # the far end, as the core names it
        self.keys: list[tuple[str, int]] = []  # this connection's keys in the listener's table
        self.framer = Framer(listener.max_message_bytes)
        self.last_io = 0.0
        self.message_started = 0.0
        self.pending: list[bytes] = []  # written before an outbound connection was up
        self.closed = False
        self.names: list[str] = []  # a TLS client's verified certificate: its names (tls.certificate_names)
        self.aliased = outbound is not None  # outbound: named by its target already
        self.why = ""  # why we closed it

    # --------------------------------------------------------------- asyncio
    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        listener = self.listener
        self.last_io = listener.now()
        if self.peer is None:
            addr = transport.get_extra_info("peername")
            host = addr[0]
            self.peer = Peer(listener.transport, host, addr[1])
            why = listener.admit(host)
            if why:
                listener.refused[why] += 1
                self.closed = True
                transport.abort()
                return
            listener.register(self, (host, addr[1]))
            if listener.server_ssl is not None:
                self.names = certificate_names(transport.get_extra_info("peercert"))
                if self.names:
                    listener.peer_names(self.peer, self.names, True)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        now = listener.now()
        self.last_io = now
        framer = self.framer
        was_started = framer.started
        messages = framer.feed(data)
        if framer.pings:
            framer.pings = 0
            self.write(b"\r\n")
        if framer.started and (not was_started or messages):
            self.message_started = now
        peer = self.peer
        assert peer is not None
        receive = listener.receiver
        for message in messages:
            if not self.aliased:
                self.alias(message)
            receive(message, peer)
            if self.closed:
                return
        if framer.error:
            self.close(f"framing: {framer.error}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.unregister(self)
        if self.names and self.peer is not None:
            self.names, names = [], self.names
            self.listener.peer_names(self.peer, names, False)
        if self.pending and self.peer is not None:
            pending, self.pending = self.pending, []
            for data in pending:
                self.listener.failed(data, self.peer, self.why or "connection closed")

    def eof_received(self) -> bool | None:
        return None  # close our side too

    # --------------------------------------------------------------- ours
    def alias(self, message: bytes) -> None:
        """The first request's top Via: its sent-by, when the host is this connection's, names it too."""
        self.aliased = True
        if message.startswith(_STATUS_START):
            return
        m = _VIA_RE.search(message, 0, message.find(b"\r\n\r\n"))
        if m is None or self.peer is None:
            return
        host = m.group(1).decode("ascii").strip("[]")
        port = int(m.group(2)) if m.group(2) else (5061 if self.listener.transport == "tls" else 5060)
        if host == self.peer.host and port != self.peer.port:
            self.listener.register(self, (host, port))

    def write(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
            return
        self.transport.write(data)
        self.last_io = self.listener.now()

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.why = why
        self.listener.closed[why.split(":", 1)[0]] += 1
        if self.peer is not None:
            self.listener.log_close(self.peer, why)
        if self.transport is not None:
            self.transport.abort()
        self.listener.unregister(self)
        if self.names and self.peer is not None:
            self.names, names = [], self.names
            self.listener.peer_names(self.peer, names, False)


def bind_stream(host: str, port: int) -> socket.socket:
    """A listening TCP socket; SO_REUSEADDR (a restart need not wait for TIME_WAIT to end), never SO_REUSEPORT
    (a second sipguard on the address fails with EADDRINUSE)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        where = f"[{host}]" if ":" in host else host
        raise OSError(err.errno, f"tcp:{where}:{port}: {err.strerror}") from None
    return sock


def _drop(data: bytes, peer: Peer) -> None:
    """Before the server has a receiver: nothing to do."""


def _no_failure(data: bytes, peer: Peer, why: str) -> None:
    """Before the server has a failure hook: nothing to do."""


class StreamListener:
    """A TCP or TLS listen address and every connection it accepted or opened.

    transport: "tcp" or "tls"; server_ssl / client_ssl: the TLS contexts (tls only); limits: the policy's
    ``service.connections`` (``set_limits`` at reload); max_message_bytes: larger messages close the
    connection; shared: with --workers, the listening socket the supervisor bound, which
    every worker accepts on, besides this worker's own ``port`` (one table for the connections of both)."""

    def __init__(self, transport: str, host: str, port: int, limits: Connections, max_message_bytes: int, *,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None,
                 shared: socket.socket | None = None) -> None:
        if transport not in ("tcp", "tls"):
            raise ValueError(f"not a stream transport: {transport}")
        if transport == "tls" and (server_ssl is None or client_ssl is None):
            raise ValueError("a TLS listener needs its server and client contexts")
        self.transport = transport
        self.host = host
        self.port = port
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.shared = shared
        self.sock: socket.socket | None = None
        self.receiver: Receiver = _drop
        self.failed: Failed = _no_failure
        self.admit_source: Callable[[str], bool] = lambda host: True
        # a TLS client with a verified certificate connected (True) or went (False): the names it carries
        self.peer_names: Callable[[Peer, list[str], bool], None] = lambda peer, names, up: None
        self.connections: dict[tuple[str, int], _Connection] = {}
        self._all: set[_Connection] = set()
        self._per_source: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # connections refused at accept, by reason
        self.closed: Counter[str] = Counter()  # connections we closed, by reason
        self.accepted = 0
        self.opened = 0
        self._servers: list[asyncio.base_events.Server] = []
        # log lines of closed connections: LOG_PER_MINUTE per reason, then one line saying how many more
        self._logged: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._log_window = 0.0
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def set_receiver(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def set_failed(self, failed: Failed) -> None:
        """Called with a message that could not be sent (the connection could not be made, or closed before it
        was): the core's transport error."""
        self.failed = failed

    def set_limits(self, limits: Connections) -> None:
        self.limits = limits

    def set_tls(self, tls: Tls) -> None:
        """A reload: the certificate, CAs, client verification and version of ``tls`` for the connections to
        come (those up keep theirs).  ``tls.problems`` found nothing wrong with it first (the loader checks)."""
        if self.server_ssl is None:
            return
        server, client = contexts(tls)
        live = self.server_ssl  # the listening servers hold this one: changed in place
        live.load_cert_chain(tls.cert or "", tls.key)
        if tls.ca:
            live.load_verify_locations(cafile=tls.ca)
        live.verify_mode = server.verify_mode
        live.minimum_version = server.minimum_version
        self.client_ssl = client

    async def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.sock = sock = bind_stream(self.host, self.port)
        if self.port == 0:
            self.port = sock.getsockname()[1]
        for listening in (sock,) if self.shared is None else (sock, self.shared):
            self._servers.append(await loop.create_server(
                lambda: _Connection(self), sock=listening, ssl=self.server_ssl,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if self.server_ssl is not None else None))
        self._sweep = loop.call_later(SWEEP_S, self._sweep_once)

    def sender(self) -> Callable[[bytes, tuple[str, int]], None]:
        return self.send

    # --------------------------------------------------------------- connections
    def admit(self, host: str) -> str:
        """Why a new inbound connection from ``host`` is refused ("" when it is not)."""
        if len(self._all) >= self.limits.max_connections:
            return "max_connections"
        if self._per_source[host] >= self.limits.max_per_source:
            return "max_per_source"
        if not self.admit_source(host):
            return "banned"
        self.accepted += 1
        return ""

    def register(self, conn: _Connection, key: tuple[str, int]) -> None:
        if conn not in self._all:
            self._all.add(conn)
            assert conn.peer is not None
            self._per_source[conn.peer.host] += 1
        conn.keys.append(key)
        self.connections[key] = conn

    def unregister(self, conn: _Connection) -> None:
        if conn in self._all:
            self._all.discard(conn)
            assert conn.peer is not None
            host = conn.peer.host
            self._per_source[host] -= 1
            if self._per_source[host] <= 0:
                del self._per_source[host]
        for key in conn.keys:
            if self.connections.get(key) is conn:
                del self.connections[key]
        conn.keys = []

    def count(self) -> int:
        return len(self._all)

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Write ``data`` on the connection to ``addr`` (open or being opened), else open one."""
        conn = self.connections.get(addr)
        if conn is not None and not conn.closed:
            conn.write(data)
            return
        peer = Peer(self.transport, addr[0], addr[1])
        conn = _Connection(self, peer)
        conn.pending.append(data)
        self.register(conn, addr)
        assert self._loop is not None
        self._loop.create_task(self._connect(conn, peer))

    async def _connect(self, conn: _Connection, peer: Peer) -> None:
        assert self._loop is not None
        try:
            family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
            source = (self.host if self.host not in ("0.0.0.0", "::") else "", 0)
            await asyncio.wait_for(self._loop.create_connection(
                lambda: conn, peer.host, peer.port, family=family, local_addr=source, ssl=self.client_ssl,
                server_hostname=peer.host if self.client_ssl is not None else None,
                ssl_handshake_timeout=self.limits.handshake_timeout_s if self.client_ssl is not None else None),
                self.limits.connect_timeout_s)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as err:
            why = "connect timed out" if isinstance(err, asyncio.TimeoutError) else (
                getattr(err, "strerror", None) or str(err) or type(err).__name__)
            self.closed["connect"] += 1
            self.unregister(conn)
            conn.closed = True
            pending, conn.pending = conn.pending, []
            for data in pending:
                self.failed(data, peer, why)
            return
        self.opened += 1
        pending, conn.pending = conn.pending, []
        for data in pending:
            conn.write(data)

    def log_close(self, peer: Peer, why: str) -> None:
        """One WARNING line per closed connection, up to LOG_PER_MINUTE per reason (a flood of slow-loris
        connections must not flood the log too); the rest counted and summed up once a minute."""
        reason = why.split(":", 1)[0]
        if self._logged[reason] < LOG_PER_MINUTE:
            self._logged[reason] += 1
            log.warning("%s connection %s:%s closed: %s", self.transport.upper(), peer.host, peer.port, why)
        else:
            self._unlogged[reason] += 1

    def _log_minute(self, now: float) -> None:
        if now - self._log_window < 60.0:
            return
        self._log_window = now
        for reason, n in sorted(self._unlogged.items()):
            log.warning("%s: %d more connections closed (%s) in the last minute, not logged one by one",
                        self.transport.upper(), n, reason)
        self._logged.clear()
        self._unlogged.clear()

    def _sweep_once(self) -> None:
        """Close what overstays: a message unfinished past its deadline, a connection idle too long."""
        assert self._loop is not None
        now = self._loop.time()
        self._log_minute(now)
        limits = self.limits
        for conn in list(self._all):
            if conn.closed or conn.transport is None:
                continue
            if conn.framer.started and now - conn.message_started > limits.message_deadline_s:
                conn.close(f"deadline: a message unfinished after {limits.message_deadline_s:g} s")
            elif now - conn.last_io > limits.idle_timeout_s:
                conn.close(f"idle: no traffic for {limits.idle_timeout_s:g} s")
        self._sweep = self._loop.call_later(SWEEP_S, self._sweep_once)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.abort()
        self._all.clear()
        self.connections.clear()
        self._per_source.clear()

    def stats(self) -> dict[str, Any]:
        return {"connections": len(self._all), "accepted": self.accepted, "opened": self.opened,
                "refused": dict(self.refused), "closed": dict(self.closed)}
