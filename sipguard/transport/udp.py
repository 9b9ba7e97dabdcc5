"""UDP listener: one socket per listen address, datagrams straight to a receiver.

The transport interface the server relies on (``Transport``): ``set_receiver`` for what comes in,
``sender()`` for what goes out (both meet in the pump, sip/pump.py), and a ``Local`` describing
the address; TCP/TLS listeners will offer the same.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from ..sip.pump import SendTo

__all__ = ["UdpListener", "parse_listen"]

RCVBUF_BYTES = 4 * 1024 * 1024


def parse_listen(spec: str) -> tuple[str, str, int]:
    """'udp:0.0.0.0:5060' / 'udp:[::1]:5060' -> ('udp', host, port).  ValueError if malformed."""
    transport, _sep, rest = spec.partition(":")
    host, _sep, port = rest.rpartition(":")
    if transport not in ("udp", "tcp", "tls") or not host or not port.isdigit():
        raise ValueError(f"listen address must be udp:HOST:PORT, got {spec!r}")
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


class UdpListener:
    """A bound UDP socket.  ``receiver(data, addr)`` is called for each datagram (``set_receiver``)."""

    def __init__(self, host: str, port: int, receiver: Receiver = _drop, *, reuse_port: bool = False) -> None:
        self.host = host
        self.port = port
        self.reuse_port = reuse_port  # several worker processes on one address: the kernel spreads by 4-tuple
        self.receiver = receiver
        self.errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None
        self._sendto: SendTo | None = None

    def set_receiver(self, receiver: Receiver) -> None:
        self.receiver = receiver
        if self._protocol is not None:
            self._protocol.datagram_received = receiver  # type: ignore[method-assign,assignment]

    def sender(self) -> SendTo:
        """The socket's own ``sendto(data, (host, port))``: as fast as the transport's, and an error is raised
        at once (the transport would report it later to ``error_received``, not knowing which datagram)."""
        if self._sendto is None:
            raise RuntimeError("listener not started")
        return self._sendto

    @property
    def family(self) -> int:
        return 6 if ":" in self.host else 4

    async def start(self) -> None:
        family = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF_BYTES)
            except OSError:
                pass
            sock.bind((self.host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        if self.port == 0:
            self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._protocol = protocol
        self._sendto = sock.sendto

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            self._protocol = None
            self._sendto = None
