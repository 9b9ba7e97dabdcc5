"""Socket edges: thin asyncio protocols that hand bytes to the server."""

from .udp import UdpListener, parse_listen

__all__ = ["UdpListener", "parse_listen"]
