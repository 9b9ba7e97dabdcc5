"""Socket edges: thin asyncio listeners that hand bytes to the server.

Every transport offers the same small interface (``Transport``), so the server
does not care whether a message leaves over UDP, or later TCP or TLS.
"""

from typing import Protocol

from .udp import UdpListener, parse_listen


class Transport(Protocol):
    host: str
    port: int

    @property
    def family(self) -> int: ...

    async def start(self) -> None: ...

    def send(self, data: bytes, host: str, port: int) -> None: ...

    def close(self) -> None: ...


__all__ = ["Transport", "UdpListener", "parse_listen"]
