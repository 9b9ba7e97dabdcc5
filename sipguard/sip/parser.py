"""Bytes to Request/Response (RFC 3261 §7, §18.3, §20; RFC 4475 cases).

Owns: framing of one datagram (header end, Content-Length, trailing octets),
unfolding, compact forms, the checks that make a message unfit to process or
forward.  Leaves to the proxy: Max-Forwards, loops, Proxy-Require, routing.

``parse(data)`` returns a message or raises a SipError subclass (ParseError,
VersionNotSupported, UnsupportedUriScheme, MessageTooLarge) with ``partial``
set to whatever was readable, so the proxy can still answer a request whose Via
it could read.
"""

from __future__ import annotations

import re
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .errors import MessageTooLarge, ParseError, SipError, UnsupportedUriScheme, VersionNotSupported
from .grammar import (
    ABSOLUTE_URI_RE,
    COMPACT_FORMS,
    CSEQ_RE,
    DATE_RE,
    DIGITS_RE,
    HEADER_NAME_RE,
    REQUEST_LINE_RE,
    STATUS_LINE_RE,
    is_digits,
    is_token,
)
from .message import (
    HeaderField,
    check_name_addr,
    tag_of,
    Message,
    Request,
    Response,
    SipUri,
    Via,
    parse_uri,
    parse_via,
    split_list,
)

__all__ = ["parse", "Partial", "DEFAULT_MAX_MESSAGE_BYTES", "is_keepalive", "peek_response", "ResponsePeek",
           "peek_request", "RequestPeek"]

DEFAULT_MAX_MESSAGE_BYTES: Final = 16384
_CSEQ_MAX: Final = 2**31 - 1  # RFC 3261 §8.1.1.5: less than 2**31
# the single-valued headers a message needs, by their place in parse()'s list of them
_SINGLE: Final = {"call-id": 0, "cseq": 1, "from": 2, "to": 3, "max-forwards": 4}
_NAME_KEYS: Final[dict[str, str]] = {}  # header name as received -> key (bounded memo)
# A whole header line as received -> its field.  Most lines recur verbatim (within a call: From, To,
# Call-ID, CSeq, Contact, Record-Route/Route; across calls: Max-Forwards, Content-Type, ...): one
# lookup instead of partition, name lookup and strip.  Via lines are unique (the branch): not kept.
_LINES: Final[dict[str, HeaderField]] = {}
_LINES_MAX: Final = 16384
# every control byte, CR and LF included: deleting them from a clean head removes exactly its CRLFs
# (CR >= CRLF and LF >= CRLF, so any other CTL, bare CR or bare LF makes the difference larger)
_CTL_BYTES: Final = bytes(range(0x20)) + b"\x7f"
_SPLIT: Final = frozenset(("via", "route", "record-route"))
# a CTL, unless quoted-pair-escaped (quoted-pair allows %x00-09 / %x0B-0C / %x0E-7F), or a bare CR/LF
_CONTROL_RE: Final = re.compile(r"(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")


# the header lines a response to one of our transactions is handled by (peek_response)
_PEEK_KEYS: Final = {"via": 0, "v": 0, "cseq": 1, "to": 2, "t": 2, "content-length": 3, "l": 3}
_PEEK_FIRST: Final = "vctlVCTL"  # the first letters of those names
# the usual spellings of those names and of the others starting with those letters: one lookup, no lower()
_PEEK_NAMES: Final = {"Via": 0, "via": 0, "v": 0, "V": 0, "VIA": 0, "CSeq": 1, "Cseq": 1, "cseq": 1, "CSEQ": 1,
                      "To": 2, "to": 2, "t": 2, "T": 2, "TO": 2, "Content-Length": 3, "content-length": 3, "l": 3,
                      "L": 3, "Call-ID": -1, "Call-Id": -1, "call-id": -1, "Contact": -1, "contact": -1,
                      "Content-Type": -1, "content-type": -1, "c": -1}


class ResponsePeek:
    """What a stateful proxy reads of a response to forward it (peek_response).

    status; top_via: the first Via value (as received, Latin-1); cut_start, cut_end: what removing
    it takes out of the datagram (its line with the CRLF before it, or, when the next Via shares the
    line as ``Via: top, next``, the value with its comma and the blanks after); cseq_method; to_start,
    to_end: where the To value is (``to()`` reads it: only an INVITE's final response needs it);
    body_end: where the message ends (Content-Length applied).
    """

    __slots__ = ("data", "status", "top_via", "cut_start", "cut_end", "cseq_method", "to_start", "to_end", "body_end")

    def __init__(self, data: bytes, status: int, top_via: str, cut_start: int, cut_end: int, cseq_method: str,
                 to_start: int, to_end: int, body_end: int) -> None:
        self.data = data
        self.status = status
        self.top_via = top_via
        self.cut_start = cut_start
        self.cut_end = cut_end
        self.cseq_method = cseq_method
        self.to_start = to_start
        self.to_end = to_end
        self.body_end = body_end

    def to(self) -> str:
        """The To value, as received (UTF-8, undecodable bytes kept by surrogateescape)."""
        return self.data[self.to_start : self.to_end].decode("utf-8", "surrogateescape").strip(" \t")

    def without_top_via(self, data: bytes) -> bytes:
        """The response as it is forwarded: as received, minus the top Via line (and trailing octets)."""
        return data[: self.cut_start] + data[self.cut_end : self.body_end]


class RequestPeek:
    """What the light path of an in-dialog ACK or BYE reads of it (peek_request), and the bytes it forwards.

    The values are those ``parse`` would give; ``*_at``: where a header line starts (its first character)
    and ends (its CR), -1 for none; ``head_end``: where the last header line ends.
    """

    __slots__ = ("data", "method", "uri", "ruri", "via", "via_at", "call_id", "from_tag", "to_tag", "cseq",
                 "max_forwards", "mf_at", "routes", "route_at", "cl_at", "head_end", "user_agent")

    def __init__(self, data: bytes, method: str, uri: str, ruri: SipUri, via: Via, via_at: tuple[int, int],
                 call_id: str, from_tag: str | None, to_tag: str | None, cseq: int, max_forwards: int | None,
                 mf_at: tuple[int, int], routes: list[str], route_at: list[tuple[int, int]], cl_at: tuple[int, int],
                 head_end: int, user_agent: str | None) -> None:
        self.data = data
        self.method = method
        self.uri = uri
        self.ruri = ruri
        self.via = via
        self.via_at = via_at
        self.call_id = call_id
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.cseq = cseq
        self.max_forwards = max_forwards
        self.mf_at = mf_at
        self.routes = routes
        self.route_at = route_at
        self.cl_at = cl_at
        self.head_end = head_end
        self.user_agent = user_agent

    def forwarded(self, our_via: str, top_via: str | None) -> bytes:
        """The request as a proxy forwards it when every Route is its own: ``Via: our_via`` on top, the
        received Via replaced by ``top_via`` (received/rport) unless None, Max-Forwards one less (70 when
        there was none), every Route removed, ``Content-Length: 0`` last; every other line as received.
        The same bytes ``serialize`` writes for the parsed request with those edits."""
        data = self.data
        # (start, end, replacement): what replaces data[start:end], in the order of the datagram
        cuts: list[tuple[int, int, bytes]] = []
        start, end = self.via_at
        ours = ("Via: " + our_via + "\r\n").encode("latin-1")
        if top_via is None:
            cuts.append((start, start, ours))
        else:
            cuts.append((start, end, ours + ("Via: " + top_via).encode("latin-1")))
        mf = self.max_forwards
        if mf is not None:
            cuts.append((self.mf_at[0], self.mf_at[1], b"Max-Forwards: %d" % (min(mf, 256) - 1)))
        for start, end in self.route_at:
            cuts.append((start - 2, end, b""))  # the line with the CRLF before it
        cuts.append((self.cl_at[0] - 2, self.cl_at[1], b""))
        cuts.sort()
        parts: list[bytes] = []
        at = 0
        for start, end, text in cuts:
            parts.append(data[at:start])
            parts.append(text)
            at = end
        parts.append(data[at : self.head_end])
        parts.append(b"\r\nContent-Length: 0\r\n\r\n" if mf is not None
                     else b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        return b"".join(parts)


_NONE_AT: Final = (-1, -1)
# What a header line means to the light path of requests (peek_request), by kind (Final: docs/compiled.md, "Rules")
_VIA: Final = 0
_CALL_ID: Final = 1
_FROM: Final = 2
_TO: Final = 3
_CSEQ: Final = 4
_MAX_FORWARDS: Final = 5
_CONTENT_LENGTH: Final = 6
_ROUTE: Final = 7
_USER_AGENT: Final = 8
_OTHER: Final = 9  # a valid name the light path does not read (a Contact checked, a Record-Route not a list)
_REFUSED: Final = 10  # a line that sends the request to parse(): a bad name, a Date, a Proxy-Require, a list...
_KINDS: Final = {"via": _VIA, "call-id": _CALL_ID, "from": _FROM, "to": _TO, "cseq": _CSEQ,
                 "max-forwards": _MAX_FORWARDS, "content-length": _CONTENT_LENGTH, "route": _ROUTE,
                 "user-agent": _USER_AGENT}


# acyclic: a _Line holds strings and an int
@mypyc_attr(acyclic=True)
class _Line:
    """One header line as the light path of requests reads it: its kind, its value, and what is derived from
    the value alone (a From or To tag, a CSeq's number and method, Max-Forwards).  Remembered by the line
    (``_REQ_LINES``): a call's lines recur (its From, To, Call-ID, Route in the ACK and the BYE; Max-Forwards,
    Contact, CSeq across calls)."""

    __slots__ = ("kind", "value", "text", "number")

    def __init__(self, kind: int, value: str = "", text: str | None = None, number: int = 0) -> None:
        self.kind = kind
        self.value = value
        self.text = text  # the tag of a From or To (None: none); the method of a CSeq
        self.number = number  # a CSeq's number, Max-Forwards


_REQ_LINES: Final[dict[str, _Line]] = {}
_REFUSED_LINE: Final = _Line(_REFUSED)


def _req_line(line: str) -> _Line:
    """What ``line`` (a header line, not folded) is to the light path of requests; ``_REFUSED_LINE`` for
    anything it leaves to parse().  A Via line (unique: its branch) is read, not remembered.  A line is
    remembered only once it passed the control-character check: a line found needs none."""
    if not (line.isascii() and line.isprintable()):
        return _REFUSED_LINE  # a control character (a tab included), a bare CR or LF, anything but ASCII
    name, colon, value = line.partition(":")
    if not colon or line[0] == " ":
        return _REFUSED_LINE
    try:
        key = _header_key(name)
    except ParseError:
        return _REFUSED_LINE
    kind = _KINDS.get(key, _OTHER)
    value = value.strip()
    if kind == _VIA:
        return _Line(_VIA, value)
    if kind == _OTHER:
        if key == "contact":
            if value != "*":
                if "," in value:
                    return _REFUSED_LINE
                try:
                    check_name_addr.call(value)
                except ParseError:
                    return _REFUSED_LINE
        elif key == "record-route":
            if "," in value:
                return _REFUSED_LINE
        elif key in ("date", "proxy-require"):
            return _REFUSED_LINE
        found = _Line(_OTHER)
    elif kind == _FROM or kind == _TO:
        if not value:
            return _REFUSED_LINE
        try:
            found = _Line(kind, value, tag_of.call(value))
        except ParseError:
            return _REFUSED_LINE
    elif kind == _CSEQ:
        plain = _plain_cseq(value)
        if plain is None or int(plain[0]) > _CSEQ_MAX:
            return _REFUSED_LINE
        found = _Line(_CSEQ, value, plain[1], int(plain[0]))
    elif kind == _MAX_FORWARDS:
        if not _is_digits(value):
            return _REFUSED_LINE
        found = _Line(_MAX_FORWARDS, value, None, int(value))
    elif kind == _CONTENT_LENGTH:
        if value != "0":
            return _REFUSED_LINE
        found = _Line(_CONTENT_LENGTH, value)
    elif kind == _CALL_ID:
        if not value or " " in value:
            return _REFUSED_LINE
        found = _Line(_CALL_ID, value)
    elif kind == _ROUTE:
        if "," in value:
            return _REFUSED_LINE
        found = _Line(_ROUTE, value)
    else:
        found = _Line(kind, value)
    if len(_REQ_LINES) >= _LINES_MAX:
        _REQ_LINES.clear()
    _REQ_LINES[line] = found
    return found


def _crlf(head: str, start: int) -> int:
    """Where the next CRLF from ``start`` is; -1 if there is none, -2 if an LF without its CR comes first (the
    light paths leave such a message to ``parse``).  A search for the LF: one character is a ``memchr``,
    where ``find("\\r\\n")`` sets up a two-character search at every line (about 120 instructions more)."""
    lf = head.find("\n", start)
    if lf < 0:
        return -1
    if lf == start or head[lf - 1] != "\r":
        return -2
    return lf - 1


def peek_request(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> RequestPeek | None:
    """Read an ACK or a BYE the way the light path of in-dialog requests needs it (proxy.py), or None
    when it is not plain, and ``parse`` must read it whole: anything but ASCII in its head, a control
    character (a tab included) or a bare CR or LF, a folded line, a request line other than
    ``METHOD sip-uri SIP/2.0``, a Request-URI with headers, a header name ``parse`` refuses, more than one
    Via, Call-ID, From, To, CSeq, Max-Forwards, Content-Length or User-Agent, a Via, Route or
    Record-Route line holding a list, a Contact holding one or failing its check, a Date or a
    Proxy-Require, a Content-Length other than 0, a CSeq other than ``number METHOD`` of this method,
    or more than ``max_bytes``.  Whatever it accepts, ``parse`` accepts with the same values (the
    property tests hold the two to that)."""
    if len(data) > max_bytes or not (data.startswith(b"ACK ") or data.startswith(b"BYE ")):
        return None
    # Latin-1: one character per byte, so the offsets are the datagram's (each line is checked for ASCII and
    # control characters when it is first read: _req_line)
    head = data.decode("latin-1")
    end = head.find("\r\n\r\n")
    nxt = _crlf(head, 0)
    if end < 0 or nxt < 0 or nxt == end:
        return None
    start = head[:nxt]
    if not (start.isascii() and start.isprintable()):
        return None
    parts = start.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        return None
    method = parts[0]
    uri = parts[1]
    if not (uri.startswith("sip:") or uri.startswith("sips:")):
        return None
    try:
        ruri = parse_uri.call(uri)
    except ParseError:
        return None
    if ruri.headers:
        return None
    via: Via | None = None
    via_at = mf_at = cl_at = _NONE_AT
    call_id: _Line | None = None
    from_line = to_line = cseq_line = mf_line = cl_line = ua = call_id
    routes: list[str] = []
    route_at: list[tuple[int, int]] = []
    while nxt < end:
        line = nxt + 2
        nxt = _crlf(head, line)  # never past ``end``: the empty line's CRLF comes first
        if nxt < 0:
            return None  # an LF without its CR
        text = head[line:nxt]
        found = _REQ_LINES.get(text)
        if found is None:
            found = _req_line(text)
        kind = found.kind
        if kind == _OTHER:
            continue
        if kind == _REFUSED:
            return None
        if kind == _VIA:
            if via is not None or not found.value or "," in found.value:
                return None
            try:
                via = parse_via(found.value)
            except ParseError:
                return None
            if via.version != "2.0":
                return None
            via_at = (line, nxt)
        elif kind == _ROUTE:
            routes.append(found.value)
            route_at.append((line, nxt))
        # one each of the others: locals (a list by kind cost 4,700 instructions per call more, compiled)
        elif kind == _CALL_ID:
            if call_id is not None:
                return None
            call_id = found
        elif kind == _FROM:
            if from_line is not None:
                return None
            from_line = found
        elif kind == _TO:
            if to_line is not None:
                return None
            to_line = found
        elif kind == _CSEQ:
            if cseq_line is not None:
                return None
            cseq_line = found
        elif kind == _MAX_FORWARDS:
            if mf_line is not None:
                return None
            mf_line = found
            mf_at = (line, nxt)
        elif kind == _CONTENT_LENGTH:
            if cl_line is not None:
                return None
            cl_line = found
            cl_at = (line, nxt)
        else:  # User-Agent
            if ua is not None:
                return None
            ua = found
    if via is None or call_id is None or from_line is None or to_line is None or cseq_line is None or \
            cl_line is None or cseq_line.text != method:
        return None
    return RequestPeek(data, method, uri, ruri, via, via_at, call_id.value, from_line.text, to_line.text,
                       cseq_line.number, None if mf_line is None else mf_line.number, mf_at, routes, route_at, cl_at,
                       end, None if ua is None else ua.value)


class Partial:
    """What could be read of a message that failed: enough to answer it."""

    __slots__ = ("is_request", "method", "uri", "headers", "vias")

    def __init__(self) -> None:
        self.is_request: bool | None = None
        self.method: str | None = None
        self.uri = ""  # the Request-URI as written (an emergency call's refusal is recorded as such)
        self.headers: list[HeaderField] = []
        self.vias: list[Via] = []


def is_keepalive(data: bytes) -> bool:
    """CRLF keep-alives (RFC 5626 §4.4.1) and empty datagrams: not messages."""
    return len(data) <= 8 and not data.strip(b"\r\n \t")


def peek_response(data: bytes, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ResponsePeek | None:
    """Read a response the way a transaction-stateful proxy forwards one (Kamailio's tm does the same):
    the status, the top Via, CSeq and To, the framing; nothing else is parsed.  None when the response
    is not plain, and ``parse`` must read it whole: a status line other than ``SIP/2.0 1xx-6xx reason``,
    a control character or bare CR/LF in the headers, a folded or repeated CSeq, To or Content-Length,
    a folded top Via or one with a quote before its comma, a single Via, no Content-Length or one
    larger than what arrived, a CSeq other than ``number method``, or more than ``max_bytes``.
    A top Via sharing its line with the next (``Via: a, b``, as SIPp writes them) is read up to
    the comma.

    The datagram is read as Latin-1 text (one character per byte, so its offsets are the datagram's):
    compiled, str methods are direct C calls where bytes methods are generic ones; the walk from line
    to line finds the empty line that ends the head.
    """
    if len(data) > max_bytes or not data.startswith(b"SIP/2.0 "):
        return None
    head = data.decode("latin-1")  # the head and the body: the walk below stops at the empty line
    code = head[8:11]
    if head[11:12] != " " or not is_digits(code) or not "1" <= code[0] <= "6":
        return None
    top = cseq = cl = ""
    cut_start = cut_end = to_start = to_end = -1
    vias = 0
    crlf = 0  # the CRLFs that end the status line and the header lines
    nxt = _crlf(head, 0)  # the end of the status line
    if nxt < 0:
        return None
    while True:
        line = nxt + 2
        nxt = _crlf(head, line)
        if nxt == line:
            break  # the empty line: the head ends at ``line - 2``
        if nxt < 0:
            return None  # no empty line (not a whole message), or an LF without its CR
        crlf += 1
        line_end = nxt
        if head[line] not in _PEEK_FIRST:
            continue
        colon = head.find(":", line, line_end)
        if colon < 0:
            continue
        name = head[line:colon]
        kind = _PEEK_NAMES.get(name, -2)
        if kind == -2:  # header names are case-insensitive: any other spelling
            kind = _PEEK_KEYS.get(name.rstrip(" \t").lower(), -1)
        if kind < 0:
            continue
        if head[nxt + 2 : nxt + 3] in (" ", "\t"):
            return None  # the next line continues this one (folding)
        if kind == 2:
            if to_start >= 0:
                return None
            to_start, to_end = colon + 1, line_end
            continue
        value = head[colon + 1 : line_end].strip(" \t")
        if kind == 0:
            vias += 1
            if vias == 1:
                comma = head.find(",", colon, line_end)
                if comma < 0:
                    top = value
                    cut_start, cut_end = line - 2, line_end
                else:  # 'Via: top, next': cut from the value's start to the next one's
                    top = head[colon + 1 : comma].strip(" \t")
                    if '"' in top:
                        return None  # a quoted string: the comma may be inside it
                    vias += 1
                    cut_start = colon + 1
                    while head[cut_start] in " \t":
                        cut_start += 1
                    cut_end = comma + 1
                    while cut_end < line_end and head[cut_end] in " \t":
                        cut_end += 1
                    if cut_end == line_end or head[cut_end] == ",":
                        return None  # an empty item after the comma: parse() refuses it
        elif kind == 1:
            if cseq:
                return None
            cseq = value
        else:
            if cl:
                return None
            cl = value
    if vias < 2 or not top or not cseq or to_start < 0 or not _is_digits(cl):
        return None
    end = line - 2
    # one pass in C: a head whose only control bytes are its CRLFs loses exactly 2 per CRLF
    head_bytes = data[:end]
    if len(head_bytes) - len(head_bytes.translate(None, _CTL_BYTES)) != 2 * crlf:
        return None  # a control character, a bare CR or LF: parse() decides
    body_end = end + 4 + int(cl)
    if body_end > len(data):
        return None
    plain = _plain_cseq(cseq)
    if plain is None or int(plain[0]) > _CSEQ_MAX:
        return None
    return ResponsePeek(data, int(code), top, cut_start, cut_end, plain[1], to_start, to_end, body_end)


def parse(data: bytes, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, stream: bool = False) -> Message:
    """Parse one SIP message from a datagram (or one framed stream message).

    Args:
        data: the bytes received.
        max_bytes: larger messages raise MessageTooLarge (513) once their Via is read.
        stream: True when framed by a stream transport, where Content-Length is
            mandatory and already applied by the framer.

    Returns: a Request or Response.
    Raises: SipError subclasses; ``err.partial`` (a Partial) is attached.
    """
    partial = Partial()
    try:
        return _parse(data, max_bytes, stream, partial)
    except SipError as err:
        err.partial = partial  # type: ignore[attr-defined]
        raise
    except UnicodeError as err:  # surrogateescape cannot fail, but be explicit
        perr = ParseError(f"undecodable: {err}")
        perr.partial = partial  # type: ignore[attr-defined]
        raise perr from None


def _header_key(name_part: str) -> str:
    """The lower-case long-form key of a header name as received ('v ', 'Via').  Memoised."""
    key = _NAME_KEYS.get(name_part)
    if key is None:
        m = HEADER_NAME_RE.fullmatch(name_part + ":")
        if m is None:
            raise ParseError(f"bad header name {name_part[:40]!r}")
        key = m.group(1).lower()
        key = COMPACT_FORMS.get(key, key)
        if len(_NAME_KEYS) < 4096:
            _NAME_KEYS[name_part] = key
    return key


def _check_controls(line: str) -> None:
    """Refuse a control character in a header or start line (TEXT-UTF8 and the start lines exclude them;
    a quoted-pair may escape one), and a CR or LF that is not part of a CRLF (the lines were split at
    CRLF).  Raises ParseError.  ``isprintable`` is one pass in C; only a line it does not pass (a tab,
    non-ASCII text, a control character) is looked at closely."""
    if line.isprintable():
        return
    ctl = _CONTROL_RE.search(line)
    if ctl is None:
        return
    if ctl.group() in ("\r", "\n"):
        raise ParseError("a bare CR or LF in the headers")
    raise ParseError(f"control character {ctl.group()!r} in the headers")


def _is_digits(text: str) -> bool:
    """1 to 10 ASCII digits, nothing else (str.isdigit would take other scripts' digits too)."""
    return 0 < len(text) <= 10 and is_digits(text)


def _plain_cseq(value: str) -> tuple[str, str] | None:
    """A CSeq value in its plain form, ``number method`` with one space: (number, method); None for any
    other form (the grammar's regex reads those, in ``parse``)."""
    number, space, method = value.partition(" ")
    if space and _is_digits(number) and is_token(method):
        return number, method
    return None


def _digits(value: str, what: str) -> int:
    """1*10DIGIT with optional LWS around it (Content-Length, Max-Forwards).  Raises ParseError."""
    if _is_digits(value):
        return int(value)
    m = DIGITS_RE.fullmatch(value)
    if m is None:
        raise ParseError(f"bad {what} {value!r}")
    return int(m.group(1))


def start_line(start: str) -> tuple[bool, str, str, str]:
    """A request line as (True, method, Request-URI, version), a status line as (False, version, status, reason).

    The plain forms (``INVITE sip:x SIP/2.0``, ``SIP/2.0 200 OK``) are read with split and slices;
    anything else goes through the grammar's regexes, which give the same parts.  Raises ParseError.
    """
    if start.startswith("SIP/"):
        if (start.startswith("SIP/2.0 ") and len(start) >= 12 and start[11] == " " and "1" <= start[8] <= "6"
                and is_digits(start[9:11])):
            return False, "2.0", start[8:11], start[12:]
        sm = STATUS_LINE_RE.fullmatch(start)
        if sm is None:
            raise ParseError(f"bad status line {start[:80]!r}")
        return False, sm.group(1), sm.group(2), sm.group(3)
    parts = start.split(" ")
    if (len(parts) == 3 and parts[2] == "SIP/2.0" and parts[1] and is_token(parts[0])
            and "\t" not in parts[1]):
        return True, parts[0], parts[1], "2.0"
    sm = REQUEST_LINE_RE.fullmatch(start)
    if sm is None:
        raise ParseError(f"bad request line {start[:80]!r}")
    return True, sm.group(1), sm.group(2), sm.group(3)


def _parse(data: bytes, max_bytes: int, stream: bool, partial: Partial) -> Message:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise ParseError("no empty line after the headers")
    head_bytes = data[:end]
    head = head_bytes.decode("utf-8", "surrogateescape")
    lines = head.split("\r\n")
    # Control characters are looked for line by line, in the lines not seen before (_LINES keeps only
    # lines that passed): the start line, the Vias, a new call's From, To, Call-ID.
    _check_controls(lines[0])
    body_start = end + 4
    is_request, first, second, third = start_line(lines[0])
    if is_request:
        partial.method = first
        partial.uri = second
    partial.is_request = is_request

    headers: list[HeaderField] = []
    raw: list[str | None] = []
    vias: list[Via] = []
    single: list[str | None] = [None, None, None, None, None]  # the values of _SINGLE's headers
    cl_values: list[str] = []
    needs_split = False
    previous: int = -1
    for line in lines[1:]:
        if not line:
            raise ParseError("empty header line")
        if line[0] in " \t":  # folding: continuation of the previous header (§7.3.1)
            _check_controls(line)
            if previous == -2:  # a folded Content-Length
                cl_values[-1] = (cl_values[-1] + " " + line.strip()).strip()
                continue
            if previous < 0:
                raise ParseError("continuation line before any header")
            key, name, value = headers[previous]
            value = (value + " " + line.strip()).strip()
            headers[previous] = (key, name, value)
            raw[previous] = None
            at = _SINGLE.get(key, -1)
            if at >= 0:
                single[at] = value
            needs_split = needs_split or (key in _SPLIT and "," in value)
            continue
        field = _LINES.get(line)
        if field is None:
            _check_controls(line)
            name, colon, value = line.partition(":")
            if not colon:
                raise ParseError(f"bad header line {line[:60]!r}")
            key = _header_key(name)
            field = (key, name.rstrip(), value.strip())
            if key != "via":
                if len(_LINES) >= _LINES_MAX:
                    _LINES.clear()
                _LINES[line] = field
        key, _name, value = field
        if key == "content-length":  # framing, not content: kept aside, rewritten on output
            cl_values.append(value)
            previous = -2
            continue
        at = _SINGLE.get(key, -1)
        if at >= 0:
            if single[at] is not None:
                raise ParseError(f"more than one {key} header")
            single[at] = value
        elif key in _SPLIT and "," in value:
            needs_split = True
        headers.append(field)
        raw.append(line)
        previous = len(headers) - 1
    if len(cl_values) > 1:
        raise ParseError("more than one content-length header")

    # Split the list headers a proxy edits: one field per value.
    if needs_split:
        split_headers: list[HeaderField] = []
        split_raw: list[str | None] = []
        for (key, name, value), line_raw in zip(headers, raw):
            if key in _SPLIT and "," in value:
                for item in split_list(value):
                    split_headers.append((key, name, item))
                    split_raw.append(None)
            else:
                split_headers.append((key, name, value))
                split_raw.append(line_raw)
        headers, raw = split_headers, split_raw
    partial.headers = headers

    for key, _name, value in headers:
        if key == "via":
            if not value:
                raise ParseError("empty Via")
            vias.append(parse_via(value))
    partial.vias = vias

    version = first if not is_request else third
    if version != "2.0":
        raise VersionNotSupported(f"SIP version {version}")
    for via in vias:
        if via.version != "2.0":
            raise VersionNotSupported(f"Via version {via.version}")

    if len(data) > max_bytes:
        raise MessageTooLarge(f"{len(data)} bytes > {max_bytes}")

    if not vias:
        raise ParseError("no Via")
    call_id = single[0]
    if not call_id:
        raise ParseError("no Call-ID")
    if " " in call_id or "\t" in call_id:
        raise ParseError("bad Call-ID")
    from_value = single[2]
    to_value = single[3]
    if not from_value or not to_value:
        raise ParseError("no From or To")
    from_tag = tag_of.call(from_value)
    to_tag = tag_of.call(to_value)
    cseq_value = single[1]
    if cseq_value is None:
        raise ParseError("no CSeq")
    plain = _plain_cseq(cseq_value)
    if plain is not None:
        number, cseq_method = plain
    else:
        cm = CSEQ_RE.fullmatch(cseq_value)  # LWS other than one space, or not a CSeq at all
        if cm is None:
            raise ParseError(f"bad CSeq {cseq_value!r}")
        number, cseq_method = cm.group(1), cm.group(2)
    cseq = int(number)
    if cseq > _CSEQ_MAX:
        raise ParseError(f"CSeq {cseq} out of range")

    # Body and Content-Length (§18.3, §20.14)
    cl_value = cl_values[0] if cl_values else None
    available = len(data) - body_start
    if cl_value is None:
        if stream:
            raise ParseError("no Content-Length on a stream transport")
        body = data[body_start:]
    else:
        length = _digits(cl_value, "Content-Length")
        if length > available:
            raise ParseError(f"Content-Length {length} > {available} bytes received")
        body = data[body_start : body_start + length]  # trailing octets ignored (§18.3)

    for key, _name, value in headers:
        if key == "contact" and value != "*":
            for item in split_list(value):
                check_name_addr.call(item)
        elif key == "date" and DATE_RE.fullmatch(value) is None:
            raise ParseError(f"bad Date {value!r}")

    if not is_request:
        return Response(tuple(headers), body, call_id, cseq, cseq_method, from_tag, to_tag, tuple(vias), tuple(raw),
                        int(second), third)

    method = first
    uri = second
    if method != cseq_method:
        raise ParseError(f"CSeq method {cseq_method} does not match {method}")
    ruri: SipUri | None = None
    lower = uri[:5].lower()
    if lower.startswith("sip:") or lower.startswith("sips:"):
        ruri = parse_uri.call(uri)
        if ruri.headers:
            raise ParseError("headers in a Request-URI")  # RFC 4475 §3.1.2.11
    elif lower.startswith("tel:") or (lower.startswith("urn:") and ABSOLUTE_URI_RE.fullmatch(uri)):
        pass  # tel: (RFC 3966), urn: (RFC 5031 urn:service:sos): numbers and services, routed by the policy
    elif ABSOLUTE_URI_RE.fullmatch(uri):
        raise UnsupportedUriScheme(f"scheme of {uri[:40]!r}")
    else:
        raise ParseError(f"bad Request-URI {uri[:60]!r}")

    max_forwards: int | None = None
    mf_value = single[4]
    if mf_value is not None:
        max_forwards = _digits(mf_value, "Max-Forwards")
    return Request(tuple(headers), body, call_id, cseq, cseq_method, from_tag, to_tag, tuple(vias), tuple(raw),
                   method, uri, ruri, max_forwards)
