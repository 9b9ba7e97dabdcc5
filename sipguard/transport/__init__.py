"""Socket edges: thin asyncio listeners that hand messages to the server's pump.

Every transport offers the same small interface (``Transport``: ``sender()``, ``start``, ``close``), so the
pump does not care whether a message leaves over UDP (udp.py) or TCP and TLS (stream.py, tls.py).
"""

from typing import Protocol

from ..sip.pump import SendTo
from .stream import StreamListener
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

    def close(self) -> None: ...


__all__ = ["Transport", "UdpListener", "StreamListener", "parse_listen"]
