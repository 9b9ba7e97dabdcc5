"""Socket edges: thin asyncio listeners that hand datagrams to the server's pump.

Every transport offers the same small interface (``Transport``), so the server
does not care whether a message leaves over UDP, or later TCP or TLS.
"""

from typing import Protocol

from ..sip.pump import SendTo
from .udp import Receiver, UdpListener, parse_listen


class Transport(Protocol):
    host: str
    port: int

    @property
    def family(self) -> int: ...

    async def start(self) -> None: ...

    def sender(self) -> SendTo:
        """The fastest way to send: ``sendto(data, (host, port))`` (the server's pump calls it)."""
        ...

    def set_receiver(self, receiver: Receiver) -> None: ...

    def close(self) -> None: ...


__all__ = ["Transport", "UdpListener", "parse_listen"]
