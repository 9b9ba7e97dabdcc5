"""The messages the proxy writes itself (RFC 3261 §8.2.6, §9.1, §16.7 items 6-7, §17.1.1.3).

Owns: a reply to a request (status line, the request's Via, From, To with our tag, Call-ID and
CSeq), a reply to a request that failed to parse, the CANCEL of a forwarded INVITE and the ACK of a
non-2xx final it earned, and the Warning that says why sipguard refused something.  Pure functions
of the request they answer: no state, bytes out.  Where they are sent, and when, is the transaction
layer's (transaction.py) and the proxy's (proxy.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

from .errors import SipError
from .grammar import CSEQ_RE
from .message import Request
from .parser import Partial
from .serializer import header_name

__all__ = ["REASONS", "reason", "reply", "reply_partial", "cancel", "ack", "warning", "quote", "crc32_text"]

REASONS: Final = {
    100: "Trying", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
    408: "Request Timeout", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    478: "Unresolvable Destination", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    500: "Server Internal Error", 503: "Service Unavailable", 505: "Version Not Supported",
    513: "Message Too Large",
}


def reason(status: int) -> str:
    return REASONS.get(status, "Error")


_crc32: Final = zlib.crc32  # a C static compiled: no attribute lookup on the module per call (docs/compiled.md)


def crc32_text(text: str) -> int:
    """CRC-32 of header text as its bytes were received (``surrogateescape`` gives back bytes that were
    not UTF-8), for the tags and branches derived from a request."""
    return _crc32(text.encode("utf-8", "surrogateescape"))


def quote(text: str) -> str:
    """Text for a quoted-string (a Warning's), at most 200 characters."""
    return text.replace("\\", "\\\\").replace('"', '\\"')[:200]


def warning(text: str) -> tuple[str, str]:
    """The Warning header (RFC 3261 §20.43, code 399: miscellaneous) that says why sipguard did something."""
    return ("warning", f'399 sipguard "{quote(text)}"')


def _end(lines: list[str], server: str | None) -> bytes:
    if server:
        lines.append(f"Server: {server}")
    lines.append("Content-Length: 0")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def reply(req: Request, status: int, reason_text: str, extra: Iterable[tuple[str, str]] = (), to_tag: bool = True,
          server: str | None = None) -> bytes:
    """A response to ``req`` (§8.2.6): its Via (with the received/rport the proxy wrote, when it did), From,
    To, Call-ID and CSeq; a To tag of ours, derived from Call-ID and CSeq so that a retransmitted request
    gets the same one, except on a 100 or when the request had one (``to_tag`` False: none at all)."""
    lines = [f"SIP/2.0 {status} {reason_text}"]
    for key, name, value in req.headers:
        if key == "via":
            lines.append(f"Via: {value}")
        elif key in ("from", "call-id", "cseq"):
            lines.append(f"{name}: {value}")
        elif key == "to":
            if to_tag and status > 100 and req.to_tag is None:
                value = f"{value};tag=sg{crc32_text(req.call_id + str(req.cseq)):08x}"
            lines.append(f"{name}: {value}")
    for key, value in extra:
        lines.append(f"{header_name(key)}: {value}")
    return _end(lines, server)


def reply_partial(partial: Partial, err: SipError, server: str | None) -> bytes | None:
    """The answer to a request that failed to parse, or None when no well-formed answer can be built
    from what was read of it (Via, From, To, Call-ID and CSeq are needed to match it)."""
    lines = [f"SIP/2.0 {err.status} {err.reason}"]
    seen: set[str] = set()
    for key, name, value in partial.headers:
        if key in ("via", "from", "to", "call-id", "cseq"):
            if key != "via" and (key in seen or not _answerable(key, value)):
                return None
            seen.add(key)
            lines.append(f"{name}: {value}")
    if len(seen) < 5:
        return None
    lines.append(f'Warning: 399 sipguard "{quote(err.detail)}"')
    return _end(lines, server)


def _answerable(key: str, value: str) -> bool:
    """Whether a header of a failed request can be echoed in a well-formed answer."""
    # From/To are echoed as received even when malformed (RFC 4475 §3.1.2.6 wants a 400);
    # without a valid CSeq the peer could not match the answer to its request.
    if key == "cseq":
        return CSEQ_RE.fullmatch(value) is not None
    return bool(value) and "\x00" not in value


def _downstream(method: str, req: Request, via: str, routes: tuple[str, ...]) -> list[str]:
    lines = [f"{method} {req.uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70"]
    lines.extend(f"Route: {r}" for r in routes)
    return lines


def cancel(req: Request, via: str, routes: tuple[str, ...]) -> bytes:
    """The CANCEL of a forwarded INVITE (§9.1): its Request-URI, our Via (the INVITE's branch), its Route
    set as forwarded, From, To, Call-ID, and its CSeq number."""
    lines = _downstream("CANCEL", req, via, routes)
    for key, name, value in req.headers:
        if key in ("from", "to", "call-id"):
            lines.append(f"{name}: {value}")
    lines.append(f"CSeq: {req.cseq} CANCEL")
    lines.extend(("Content-Length: 0", "", ""))
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def ack(req: Request, via: str, routes: tuple[str, ...], to: str) -> bytes:
    """The ACK of a non-2xx final to a forwarded INVITE (§17.1.1.3): as the CANCEL, with the To of the
    response (``to``; the INVITE's when empty)."""
    lines = _downstream("ACK", req, via, routes)
    for key, name, value in req.headers:
        if key in ("from", "call-id"):
            lines.append(f"{name}: {value}")
    lines.append(f"To: {to or req.get('to')}")
    lines.append(f"CSeq: {req.cseq} ACK")
    lines.extend(("Content-Length: 0", "", ""))
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")
