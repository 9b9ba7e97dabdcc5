"""SIP messages as immutable values.

A message keeps its header fields in received order as ``(key, name, value)``
triples: ``key`` is the lower-case long form (compact forms expanded), ``name``
the spelling as received, ``value`` the unfolded text.  The exact received lines
are kept beside them (``raw_lines``, not part of equality) so that a forwarded
message is the input plus recorded edits (see serializer.py).

Via, Route and Record-Route lines holding several comma-separated values are
split into one field per value at parse time: they are the lists a proxy edits.

The fields every message needs (Call-ID, CSeq, tags, the Via list,
Max-Forwards) are parsed once by the parser and stored as attributes.
From/To/Contact/URIs are parsed on demand with the helpers below.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from .errors import ParseError
from .memo import Memo
from .grammar import (
    TOKEN,
    ADDR_SPEC_RE,
    GENERIC_PARAM_RE,
    HOSTNAME_RE,
    NAME_ADDR_RE,
    SIP_URI_RE,
    VIA_PARAM_RE,
    VIA_RE,
    is_addr_text,
    is_digits,
    is_host_text,
    is_token,
    is_uri_text,
)

__all__ = [
    "HeaderField",
    "Params",
    "SipUri",
    "NameAddr",
    "Via",
    "Request",
    "Response",
    "Message",
    "parse_uri",
    "parse_name_addr",
    "parse_params",
    "parse_via",
    "split_list",
    "normalize_host",
    "ip_literal",
    "tag_of",
    "check_name_addr",
]

HeaderField = tuple[str, str, str]  # (key, name as received, value)
Params = tuple[tuple[str, str | None], ...]


def _param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return value if value is not None else ""
    return None


# Immutable values with a written-out __init__ and Final fields, not frozen dataclasses: see actions.py.
@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class SipUri:
    """A sip:/sips: URI (RFC 3261 §19.1)."""

    scheme: Final[str]
    user: Final[str | None]
    host: Final[str]  # lower-case; IPv6 in brackets
    port: Final[int | None]
    params: Final[Params]
    headers: Final[str | None]  # the '?...' part, unparsed

    def __init__(self, scheme: str, user: str | None, host: str, port: int | None, params: Params,
                 headers: str | None) -> None:
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port
        self.params = params
        self.headers = headers

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def lr(self) -> bool:
        return self.param("lr") is not None

    def hostport(self) -> tuple[str, int]:
        default = 5061 if self.scheme == "sips" else 5060
        return (self.host.strip("[]"), self.port or default)

    def __str__(self) -> str:
        out = self.scheme + ":"
        if self.user is not None:
            out += self.user + "@"
        out += self.host
        if self.port is not None:
            out += f":{self.port}"
        for key, value in self.params:
            out += f";{key}" if value is None else f";{key}={value}"
        if self.headers:
            out += self.headers
        return out


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class NameAddr:
    """name-addr / addr-spec with header parameters (From, To, Contact, Route...)."""

    display: Final[str | None]
    uri: Final[str]
    params: Final[Params]
    bracketed: Final[bool]

    def __init__(self, display: str | None, uri: str, params: Params, bracketed: bool) -> None:
        self.display = display
        self.uri = uri
        self.params = params
        self.bracketed = bracketed

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")


@mypyc_attr(acyclic=True, free_list_len=1)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Via:
    """One via-parm (RFC 3261 §20.42)."""

    version: Final[str]
    transport: Final[str]  # upper-case
    host: Final[str]  # lower-case, IPv6 bracketed
    port: Final[int | None]
    params: Final[Params]

    def __init__(self, version: str, transport: str, host: str, port: int | None, params: Params) -> None:
        self.version = version
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def sent_by(self) -> tuple[str, int]:
        return (self.host, self.port or (5061 if self.transport == "TLS" else 5060))

    def __str__(self) -> str:
        out = f"SIP/{self.version}/{self.transport} {self.host}"
        if self.port is not None:
            out += f":{self.port}"
        for key, value in self.params:
            out += f";{key}" if value is None else f";{key}={value}"
        return out


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)
class _Base:
    headers: Final[tuple[HeaderField, ...]]
    body: Final[bytes]
    call_id: Final[str]
    cseq: Final[int]
    cseq_method: Final[str]
    from_tag: Final[str | None]
    to_tag: Final[str | None]
    vias: Final[tuple[Via, ...]]
    raw_lines: tuple[str | None, ...] = field(compare=False, repr=False)  # not Final: a dataclass field() default

    def __init__(self, headers: tuple[HeaderField, ...], body: bytes, call_id: str, cseq: int, cseq_method: str,
                 from_tag: str | None, to_tag: str | None, vias: tuple[Via, ...],
                 raw_lines: tuple[str | None, ...]) -> None:
        self.headers = headers
        self.body = body
        self.call_id = call_id
        self.cseq = cseq
        self.cseq_method = cseq_method
        self.from_tag = from_tag
        self.to_tag = to_tag
        self.vias = vias
        self.raw_lines = raw_lines

    def get(self, key: str) -> str | None:
        """The value of the first field with this (lower-case, long-form) key."""
        for k, _n, v in self.headers:
            if k == key:
                return v
        return None

    def get_all(self, key: str) -> list[str]:
        """Every value of this key, comma-separated lists split into items."""
        out: list[str] = []
        for k, _n, v in self.headers:
            if k == key:
                out.extend(split_list(v))
        return out

    def has(self, key: str) -> bool:
        for k, _n, _v in self.headers:
            if k == key:
                return True
        return False


@mypyc_attr(acyclic=True, free_list_len=1)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Request(_Base):
    method: Final[str]
    uri: Final[str]
    ruri: Final[SipUri | None]  # None for tel: and other accepted schemes
    max_forwards: Final[int | None]

    def __init__(self, headers: tuple[HeaderField, ...], body: bytes, call_id: str, cseq: int, cseq_method: str,
                 from_tag: str | None, to_tag: str | None, vias: tuple[Via, ...], raw_lines: tuple[str | None, ...],
                 method: str = "", uri: str = "", ruri: SipUri | None = None, max_forwards: int | None = None) -> None:
        _Base.__init__(self, headers, body, call_id, cseq, cseq_method, from_tag, to_tag, vias, raw_lines)  # no super(): slots=True makes a new class
        self.method = method
        self.uri = uri
        self.ruri = ruri
        self.max_forwards = max_forwards

    @property
    def is_request(self) -> bool:
        return True


@mypyc_attr(acyclic=True, free_list_len=1)
@dataclass(slots=True, init=False, unsafe_hash=True)
class Response(_Base):
    status: Final[int]
    reason: Final[str]

    def __init__(self, headers: tuple[HeaderField, ...], body: bytes, call_id: str, cseq: int, cseq_method: str,
                 from_tag: str | None, to_tag: str | None, vias: tuple[Via, ...], raw_lines: tuple[str | None, ...],
                 status: int = 0, reason: str = "") -> None:
        _Base.__init__(self, headers, body, call_id, cseq, cseq_method, from_tag, to_tag, vias, raw_lines)  # no super(): slots=True makes a new class
        self.status = status
        self.reason = reason

    @property
    def is_request(self) -> bool:
        return False


Message = Request | Response


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <>.

    Raises ParseError on an empty item (``a,,b``), as RFC 3261 §7.3.1 allows none.
    """
    if "," not in value:
        return [value.strip()]
    if '"' not in value and "<" not in value:  # the common case (Via lists): no quotes, no URIs
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise ParseError(f"empty item in list {value!r}")
        return items
    items = []
    depth = 0
    quoted = False
    escaped = False
    start = 0
    for i, ch in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(value[start:i].strip())
            start = i + 1
    items.append(value[start:].strip())
    if any(not item for item in items):
        raise ParseError(f"empty item in list {value!r}")
    return items


# Header values recur (a dialog's From, To, Route; a peer's host): the pure helpers below are
# memoised (memo.py).  Only results are cached; an invalid value raises every time.


def _normalize_host_fn(host: str) -> str:
    """Lower-case a host; validate and canonicalise a bracketed IPv6 reference.

    Raises ParseError for an IPv6 reference that is not an IPv6 address.
    """
    if host.startswith("["):
        if not host.endswith("]"):
            raise ParseError(f"bad IPv6 reference {host!r}")
        try:
            addr = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ParseError(f"bad IPv6 reference {host!r}") from None
        return f"[{addr.compressed}]"
    if not HOSTNAME_RE.fullmatch(host):
        raise ParseError(f"bad host {host!r}")
    return host.lower()


normalize_host: Final = Memo(_normalize_host_fn)


def parse_params(text: str, *, what: str) -> Params:
    """Parse ``;name[=value]`` parameters; names lower-cased, values kept.

    Raises ParseError on an empty or malformed parameter.
    """
    text = text.strip()
    if not text:
        return ()
    if text[0] != ";":
        raise ParseError(f"junk before parameters of {what}: {text!r}")
    out: list[tuple[str, str | None]] = []
    for part in text[1:].split(";"):
        m = GENERIC_PARAM_RE.fullmatch(part)
        if m is None:
            raise ParseError(f"bad parameter {part!r} in {what}")
        out.append((m.group(1).lower(), m.group(2)))
    return tuple(out)


def _parse_uri_fn(text: str) -> SipUri:
    """Parse a sip:/sips: URI (an immutable SipUri, so results are shared).  Raises ParseError."""
    plain = _plain_uri(text)
    if plain is not None:
        return plain
    m = SIP_URI_RE.fullmatch(text)
    if m is None:
        raise ParseError(f"bad SIP URI {text!r}")
    scheme, user, host, port, params, headers = m.groups()
    return _sip_uri(text, scheme, user, host, port or "", params or "", headers)


def _plain_uri(text: str) -> SipUri | None:
    """The common URI, ``sip[s]:[user@]host[:port][;params]`` of plain characters (one '@' at most, a host
    name or IPv4 address, no '?'), read with find and slices; the SipUri SIP_URI_RE's match would give.
    None for anything else: the regex reads it (or says what is wrong)."""
    colon = 4 if text[:4].lower() == "sip:" else 5 if text[:5].lower() == "sips:" else 0
    if colon == 0 or not is_uri_text(text[colon:]):
        return None
    at = text.find("@", colon)
    if at >= 0 and text.find("@", at + 1) >= 0:
        return None
    user: str | None = text[colon:at] if at >= 0 else None
    start = at + 1 if at >= 0 else colon
    semi = text.find(";", start)
    hostport = text[start:semi] if semi >= 0 else text[start:]
    host, has_port, port = hostport.partition(":")
    if not is_host_text(host) or (has_port and not (len(port) <= 5 and is_digits(port))):
        return None
    return _sip_uri(text, text[: colon - 1], user, host, port, text[semi:] if semi >= 0 else "", None)


def _sip_uri(text: str, scheme: str, user: str | None, host: str, port: str, params: str,
             headers: str | None) -> SipUri:
    """The SipUri of a URI's parts as SIP_URI_RE groups them (port "" and params "" when absent)."""
    uri_params: list[tuple[str, str | None]] = []
    if params:
        for part in params[1:].split(";"):
            if not part:
                raise ParseError(f"empty URI parameter in {text!r}")
            name, eq, value = part.partition("=")
            uri_params.append((name.lower(), value if eq else None))
    port_no = int(port) if port else None
    if port_no is not None and port_no > 65535:
        raise ParseError(f"port out of range in {text!r}")
    return SipUri(scheme.lower(), user, normalize_host.call(host), port_no, tuple(uri_params), headers)


parse_uri: Final = Memo(_parse_uri_fn)


def parse_name_addr(text: str) -> NameAddr:
    """Parse name-addr or addr-spec with header params (From, To, Contact, Route...).

    Raises ParseError: unbalanced quotes, spaces inside <>, an unquoted display
    name that is not tokens (RFC 4475 §3.1.2.6, .14, .15), '?' or ',' in a bare
    addr-spec (§3.1.2.13).
    """
    if "<" in text:
        m = NAME_ADDR_RE.fullmatch(text)
        if m is None:
            raise ParseError(f"bad name-addr {text!r}")
        display = m.group(1).strip() or None
        return NameAddr(display, m.group(2), parse_params(m.group(3), what="name-addr"), True)
    m = ADDR_SPEC_RE.fullmatch(text)
    if m is None:
        raise ParseError(f"bad addr-spec {text!r}")
    return NameAddr(None, m.group(1), parse_params(m.group(2), what="addr-spec"), False)


# the parameters of a name-addr / addr-spec, validated in one C-level match
_PARAMS_RE: Final = re.compile(
    r"(?:[ \t]*;[ \t]*" + TOKEN + r"[ \t]*(?:=[ \t]*(?:" + TOKEN
    + r"|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+|\"(?:[^\"\\]|\\.)*\")[ \t]*)?)*[ \t]*"
)
_TAG_RE: Final = re.compile(r";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)


def _check_name_addr_fn(text: str) -> str:
    """Validate a name-addr / addr-spec with params (as parse_name_addr does); its params text.

    The fast path of the parser: no objects are built.  Raises ParseError.
    """
    params = _plain_name_addr(text)
    if params is None:
        params = _name_addr_params(text)
    if params and _PARAMS_RE.fullmatch(params) is None:
        raise ParseError(f"bad parameters in {text!r}")
    return params


def _plain_name_addr(text: str) -> str | None:
    """The params text of the common name-addr, ``["display" ]<uri>[;params]`` (a display name without
    quotes or backslashes inside, a URI of printable ASCII), as NAME_ADDR_RE's third group would give it;
    None for anything else."""
    lt = 0
    if text[:1] == '"':
        close = text.find('"', 1)
        if close < 0 or text.find("\\", 1, close) >= 0:
            return None
        lt = close + 1
        while text[lt : lt + 1] == " ":
            lt += 1
    if text[lt : lt + 1] != "<":
        return None
    gt = text.find(">", lt)
    if gt < 0 or not is_addr_text(text[lt + 1 : gt]):
        return None
    rest = text[gt + 1 :]
    if rest and rest[0] != ";":
        return None
    return rest


def _name_addr_params(text: str) -> str:
    """The params text of any name-addr / addr-spec, by the grammar's regexes.  Raises ParseError."""
    m = (NAME_ADDR_RE if "<" in text else ADDR_SPEC_RE).fullmatch(text)
    if m is None:
        raise ParseError(f"bad name-addr {text!r}")
    params: str = m.group(3) if m.re is NAME_ADDR_RE else m.group(2)
    return params


check_name_addr: Final = Memo(_check_name_addr_fn)


def _tag_of_fn(text: str) -> str | None:
    """The tag parameter of a From / To value, after validating it.  Raises ParseError.

    A new call's From or To usually differs from earlier ones only in its parameters (the tag):
    when the value is a ``<...>`` name-addr followed by plain ``;token[=token]`` parameters, the
    part up to ``>`` is validated through a memo of its own and the parameters without a regex."""
    gt = text.rfind(">")
    if 0 < gt < len(text) - 1 and text[gt + 1] == ";" and text.find("<", 0, gt) >= 0:
        plist = _plain_params(text[gt + 2 :])
        if plist is not None:
            _name_addr_head.call(text[: gt + 1])
            for name, value in plist:
                if name == "tag" and value is not None:
                    return value
            return None
    params = check_name_addr.call(text)
    m = _TAG_RE.search(params) if params else None
    return m.group(1) if m else None


tag_of: Final = Memo(_tag_of_fn)
_name_addr_head: Final = Memo(_check_name_addr_fn)  # '"name" <uri>' of a From / To, validated


def parse_via(text: str) -> Via:
    """Parse one via-parm.  Raises ParseError; the version is checked by the caller.

    Not memoised: the parser reads the Vias of requests (responses take the light path,
    ``peek_response``), and a request's Via is new (its branch) but for a retransmission.
    It usually differs from earlier ones only in its branch: the sent-protocol and sent-by
    part comes from a memo of its own, and the parameters are checked without a regex."""
    if " " not in text[12:] and "\t" not in text:  # 'SIP/2.0/UDP ' then no more whitespace
        head, semi, params = text.partition(";")
        plist = _plain_params(params) if semi else None
        if plist is not None:
            first = _via_head.call(head)
            return Via(first.version, first.transport, first.host, first.port, tuple(plist))
    return _parse_via(text)


def _plain_params(text: str) -> list[tuple[str, str | None]] | None:
    """``name[=value]`` parameters separated by ';', each name and value a token: [(lower-case name,
    value or None)]; None for anything else (a host or IPv6 value, a quoted string, an error), which
    the caller's full path reads."""
    plist: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not is_token(name) or (eq and not is_token(value)):
            return None
        plist.append((name.lower(), value if eq else None))
    return plist


def _via_head_fn(text: str) -> Via:
    """The sent-protocol and sent-by of a Via without its parameters."""
    return _parse_via(text)


_via_head: Final = Memo(_via_head_fn)


def _parse_via(text: str) -> Via:
    m = VIA_RE.fullmatch(text)
    if m is None:
        raise ParseError(f"bad Via {text!r}")
    proto, version, transport, host, port, params = m.groups()
    if proto.upper() != "SIP":
        raise ParseError(f"bad Via protocol {proto!r}")
    plist: list[tuple[str, str | None]] = []
    if params:
        for part in params[1:].split(";"):
            pm = VIA_PARAM_RE.fullmatch(part)
            if pm is None:
                raise ParseError(f"bad Via parameter {part!r}")
            plist.append((pm.group(1).lower(), pm.group(2)))
    port_no = int(port) if port else None
    if port_no is not None and port_no > 65535:
        raise ParseError(f"Via port out of range in {text!r}")
    return Via(version, transport.upper(), normalize_host.call(host), port_no, tuple(plist))


def ip_literal(host: str) -> str | None:
    """The host as an IP literal without brackets, or None if it is a name."""
    return _ip_literal.call(host)


def _ip_literal_fn(host: str) -> str | None:
    h = host.strip("[]")
    if ":" in h:
        return h
    parts = h.split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return h
    return None


_ip_literal: Final = Memo(_ip_literal_fn)  # a few hosts, asked about several times per request
