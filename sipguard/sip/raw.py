"""Reading a datagram's few fields without parsing it, and a stateless reply from those alone.

Two callers need a request's Call-ID or a quick answer before the full parse (parser.py) would be
worth its cost: the workers' hand-off (every worker reads the shared socket and passes a datagram
to the worker its Call-ID hashes to: sip/pump.py ``Dispatch``), and the overload shedder (sip/shed.py),
which answers excess new INVITEs 503 for a fraction of what the full path costs (docs/overload.md).

What is read here is read leniently: the full parser still sees every datagram that is passed on,
and rejects what is malformed.  A datagram whose fields cannot be found here is simply passed on.
"""

from __future__ import annotations

from typing import Final

__all__ = ["call_id_of", "call_id_hash", "owner_of", "RawHead", "read_head", "stateless_reply", "HASH_BYTES",
           "HASH_MUL", "HASH_MIX"]

_FAST: Final = b"\r\nCall-ID:"
# header names (lower case) of the fields a stateless reply copies, by their long and compact forms
_COPIED: Final[dict[bytes, bytes]] = {b"via": b"Via", b"v": b"Via", b"from": b"From", b"f": b"From",
                                       b"to": b"To", b"t": b"To", b"call-id": b"Call-ID", b"i": b"Call-ID",
                                       b"cseq": b"CSeq"}


def _head_end(data: bytes) -> int:
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end


def call_id_of(data: bytes) -> bytes | None:
    """The Call-ID value (blanks around it stripped), or None when the head has none."""
    start = data.find(_FAST)
    if start >= 0 and start < _head_end(data):
        start += len(_FAST)
        end = data.find(b"\r\n", start)
        value = data[start:end if end >= 0 else len(data)].strip()
        return value or None
    # any spelling: "call-id", "CALL-ID", "i", blanks before the colon
    for line in data[:_head_end(data)].split(b"\r\n")[1:]:
        colon = line.find(b":")
        if colon > 0 and line[:colon].strip().lower() in (b"call-id", b"i"):
            value = line[colon + 1:].strip()
            return value or None
    return None


# The Call-ID hash: simple enough for the kernel to compute it too (transport/steer.py builds the same
# hash as a classic BPF program that steers each datagram to its owner's socket), so the two must agree.
HASH_BYTES: Final = 48  # the Call-ID's first bytes that count (a longer one is told apart by these)
HASH_MUL: Final = 31
HASH_MIX: Final = 0x9E3779B1  # Knuth's multiplicative mix; the owner is taken from bits 16-31


def call_id_hash(call_id: bytes) -> int:
    """The hash of a Call-ID value: its bytes up to the first blank or control byte, at most HASH_BYTES of them,
    h = h * 31 + byte (32 bits), then mixed; 0 to 65535."""
    h = 0
    for i in range(min(len(call_id), HASH_BYTES)):
        byte = call_id[i]
        if byte <= 0x20:
            break
        h = (h * HASH_MUL + byte) & 0xFFFFFFFF
    return ((h * HASH_MIX) & 0xFFFFFFFF) >> 16


def owner_of(data: bytes, workers: int) -> int:
    """Which of ``workers`` processes owns the datagram's call: the hash of its Call-ID (``call_id_hash``, the
    same in every process and in the kernel's steering program), modulo ``workers``.  Without a Call-ID:
    worker 0 (the parser answers it)."""
    call_id = call_id_of(data)
    if call_id is None:
        return 0
    return call_id_hash(call_id) % workers


class RawHead:
    """The header lines a stateless reply copies, as received (folded lines joined), and the To tag."""

    __slots__ = ("lines", "to_tag", "via_count", "call_id", "top_via")

    def __init__(self) -> None:
        self.lines: list[bytes] = []  # "Via: ...", "From: ...", in order, each name in its long form
        self.to_tag = False
        self.via_count = 0
        self.call_id = b""
        self.top_via = b""


def read_head(data: bytes) -> RawHead | None:
    """The fields of a request a reply needs; None when one of Via, From, To, Call-ID or CSeq is missing."""
    head = RawHead()
    seen_from = seen_to = seen_cseq = False
    last = -1  # index in head.lines of the field a folded line continues; -1: a field not copied
    for line in data[:_head_end(data)].split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            if last >= 0:
                head.lines[last] += b" " + line.strip()
            continue
        colon = line.find(b":")
        if colon <= 0:
            last = -1
            continue
        name = _COPIED.get(line[:colon].strip().lower())
        if name is None:
            last = -1
            continue
        value = line[colon + 1:].strip()
        if name == b"Via":
            if head.via_count == 0:
                head.top_via = value.split(b",", 1)[0]
            head.via_count += 1
        elif name == b"To":
            seen_to = True
            head.to_tag = b";tag=" in value.lower().replace(b" ", b"")
        elif name == b"From":
            seen_from = True
        elif name == b"CSeq":
            seen_cseq = True
        elif name == b"Call-ID":
            head.call_id = value
        head.lines.append(name + b": " + value)
        last = len(head.lines) - 1
    if not (head.via_count and seen_from and seen_to and seen_cseq and head.call_id):
        return None
    return head


def reply_port(top_via: bytes, source_port: int) -> int:
    """Where a reply over UDP goes (RFC 3261 §18.2.2, RFC 3581): the source port when the top Via asks
    for ``rport``, else the port of its sent-by (5060 when it names none); the host is always the source."""
    params = top_via.split(b";")
    for param in params[1:]:
        if param.strip().lower().split(b"=", 1)[0] == b"rport":
            return source_port
    sent_by = params[0].strip().split()
    if len(sent_by) < 2:
        return source_port
    hostport = sent_by[-1]
    if hostport.endswith(b"]"):  # [v6] without a port
        return 5060
    _host, colon, port = hostport.rpartition(b":")
    if colon and port.isdigit() and b"]" not in port:
        return int(port)
    return 5060


def stateless_reply(head: RawHead, status: int, reason: bytes, tag: bytes, extra: bytes) -> bytes:
    """A response to the request ``head`` was read from, without a transaction: its Via, From, Call-ID
    and CSeq copied, ``tag`` added to its To, ``extra`` (header lines, each ending CRLF) after them."""
    out = [b"SIP/2.0 %d %s\r\n" % (status, reason)]
    for line in head.lines:
        if line.startswith(b"To: ") and not head.to_tag:
            line += b";tag=" + tag
        out.append(line + b"\r\n")
    out.append(extra)
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"".join(out)
