"""Socket edges: thin asyncio listeners that hand bytes to the server.

Every transport offers the same small interface (``Transport``), so the server
does not care whether a message leaves over UDP, or later TCP or TLS.
"""

from collections.abc import Callable
from typing import Any, Protocol

from .udp import UdpListener, parse_listen


class Transport(Protocol):
    host: str
    port: int

    @property
    def family(self) -> int: ...

    async def start(self) -> None: ...

    def send(self, data: bytes, host: str, port: int) -> None: ...

    def sender(self) -> Callable[[bytes, tuple[str, int]], Any]:
        """The fastest way to send: ``sendto(data, (host, port))`` (the server's pump calls it)."""
        ...

    def set_receiver(self, receiver: Callable[[bytes, tuple[Any, ...]], None]) -> None: ...

    def close(self) -> None: ...


__all__ = ["Transport", "UdpListener", "parse_listen"]
