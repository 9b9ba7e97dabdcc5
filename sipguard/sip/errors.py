"""Errors raised for bad input from a peer.

Each subclass states the SIP status it turns into.  They are raised deep in the
parser and the proxy rules and caught only in ``ProxyCore.receive``, which turns
them into a reply (when the message was a request whose Via could be read) or a
drop, and counts them.  Our own misuse raises ValueError/TypeError/RuntimeError.
"""

from __future__ import annotations

__all__ = [
    "SipError",
    "ParseError",
    "MessageTooLarge",
    "TooManyHops",
    "LoopDetected",
    "VersionNotSupported",
    "UnsupportedUriScheme",
    "BadExtension",
]


class SipError(Exception):
    """Bad input from a peer; ``status`` is the reply it earns."""

    status: int = 400
    reason: str = "Bad Request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ParseError(SipError):
    status = 400
    reason = "Bad Request"


class MessageTooLarge(SipError):
    status = 513
    reason = "Message Too Large"


class TooManyHops(SipError):
    status = 483
    reason = "Too Many Hops"


class LoopDetected(SipError):
    status = 482
    reason = "Loop Detected"


class VersionNotSupported(SipError):
    status = 505
    reason = "Version Not Supported"


class UnsupportedUriScheme(SipError):
    status = 416
    reason = "Unsupported URI Scheme"


class BadExtension(SipError):
    """Proxy-Require names an option we do not support (RFC 3261 §16.3 item 5)."""

    status = 420
    reason = "Bad Extension"

    def __init__(self, detail: str, unsupported: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.unsupported = unsupported
