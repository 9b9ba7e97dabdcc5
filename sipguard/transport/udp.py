"""UDP listener: one socket per listen address, datagrams straight to a receiver.

The transport interface the server relies on (``Transport``): ``set_receiver`` for what comes in,
``sender()`` for what goes out (both meet in the pump, sip/pump.py), and a ``Local`` describing
the address; TCP/TLS listeners will offer the same.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import Any

from ..sip.pump import SendTo, drain

__all__ = ["UdpListener", "parse_listen", "bind_udp"]

RCVBUF_BYTES = 4 * 1024 * 1024
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux (asm-generic); the kernel stamps each datagram


def parse_listen(spec: str) -> tuple[str, str, int]:
    """'udp:0.0.0.0:5060' / 'udp:[::1]:5060' -> ('udp', host, port).  ValueError if malformed."""
    transport, _sep, rest = spec.partition(":")
    host, _sep, port = rest.rpartition(":")
    if transport not in ("udp", "tcp", "tls") or not host or not port.isdigit():
        raise ValueError(f"listen address must be udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT, got {spec!r}")
    return transport, host.strip("[]"), int(port)


Receiver = Callable[[bytes, tuple[Any, ...]], None]  # (data, (host, port[, ...])) as asyncio hands them over


def _drop(data: bytes, addr: tuple[Any, ...]) -> None:
    """Before the server has a receiver (between bind and the core's creation): nothing to do."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, listener: UdpListener) -> None:
        self.listener = listener
        # the receiver itself, as an instance attribute: the event loop calls it with no frame between
        self.datagram_received = listener.receiver  # type: ignore[method-assign,assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable from a previous sendto: the peer is gone; nothing to do
        self.listener.errors += 1


def bind_udp(host: str, port: int, *, reuseport: bool = False) -> socket.socket:
    """A UDP socket bound to ``host:port``, non-blocking, with large buffers.  No SO_REUSEADDR, and
    SO_REUSEPORT only for the workers' steered group (transport/steer.py, behind the supervisor's claim of
    the address): either would let a second process bind the same address and take its datagrams, so a
    second sipguard on an address in use fails here (EADDRINUSE) instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF_BYTES)
        except OSError:
            pass
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        where = f"[{host}]" if ":" in host else host
        raise OSError(err.errno, f"udp:{where}:{port}: {err.strerror}"
                      + (" (another process, a sipguard perhaps, serves it)" if err.errno == errno.EADDRINUSE else "")
                      ) from None
    return sock


_TS_SPACE = socket.CMSG_SPACE(16)


def head_age(sock: socket.socket, now_ns: int) -> float:
    """How long the datagram at the head of ``sock``'s receive queue has waited (seconds; 0: the queue is
    empty).  ``now_ns``: ``time.time_ns()``; the socket must have SO_TIMESTAMPNS set."""
    try:
        _data, ancdata, _flags, _addr = sock.recvmsg(1, _TS_SPACE, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:  # BlockingIOError: nothing waits
        return 0.0
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            sec = int.from_bytes(value[:8], "little")
            nsec = int.from_bytes(value[8:16], "little")
            return max(0.0, (now_ns - sec * 1_000_000_000 - nsec) / 1e9)
    return 0.0


class UdpListener:
    """A bound UDP socket.  ``receiver(data, addr)`` is called for each datagram (``set_receiver``).

    sock: a socket bound already (the shared listen socket the workers inherit from the supervisor);
    default: bound by ``start``."""

    def __init__(self, host: str, port: int, receiver: Receiver = _drop, *, sock: socket.socket | None = None) -> None:
        self.host = host
        self.port = port
        self.sock = sock
        self.receiver = receiver
        self.errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._sendto: SendTo | None = None
        self._reader: asyncio.AbstractEventLoop | None = None  # start(batch=...): read by ``drain``
        self._buffer = memoryview(b"")  # ... into this one buffer
        self.batch = 0

    def set_receiver(self, receiver: Receiver) -> None:
        self.receiver = receiver
        if self._protocol is not None:
            self._protocol.datagram_received = receiver  # type: ignore[method-assign,assignment]
        if self._reader is not None and self.sock is not None:
            self._reader.add_reader(self.sock.fileno(), drain, self.sock.recvfrom_into, self._buffer, receiver,
                                    self.batch)

    def sender(self) -> SendTo:
        """The socket's own ``sendto(data, (host, port))``: as fast as the transport's, and an error is raised
        at once (the transport would report it later to ``error_received``, not knowing which datagram)."""
        if self._sendto is None:
            raise RuntimeError("listener not started")
        return self._sendto

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    async def start(self, batch: int = 0) -> None:
        """Bind (unless bound) and read.  ``batch``: read up to that many datagrams per turn of the loop with
        ``drain`` instead of the event loop's datagram transport (0)."""
        sock = self.sock if self.sock is not None else bind_udp(self.host, self.port)
        self.sock = sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # the queue's age (head_age)
        except OSError:
            pass
        if self.port == 0:
            self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self.batch = batch
        if batch:
            self._reader = loop
            self._buffer = memoryview(bytearray(65536))
            self._sendto = sock.sendto
            self.set_receiver(self.receiver)
            return
        transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._protocol = protocol
        self._sendto = sock.sendto

    def head_age(self, now_ns: int) -> float:
        """How long the oldest datagram waiting in the socket's receive queue has waited, in seconds (0: none
        waits).  Read with MSG_PEEK from its kernel receive time (SO_TIMESTAMPNS): the overload signal."""
        return head_age(self.sock, now_ns) if self.sock is not None else 0.0

    def close(self) -> None:
        if self._reader is not None and self.sock is not None:
            self._reader.remove_reader(self.sock.fileno())
            self.sock.close()
            self._reader = None
            self._sendto = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._protocol = None
            self._sendto = None
