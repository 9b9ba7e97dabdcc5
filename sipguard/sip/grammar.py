"""RFC 3261 §25 tokens as compiled regular expressions.

Each pattern quotes the ABNF it implements.  LWS inside header values is matched
after unfolding (the parser joins continuation lines with one space), so
``LWS`` here is ``[ \\t]*``.
"""

from __future__ import annotations

import re
from typing import Final

from .._compiled import i64  # docs/compiled.md, "Rules": machine integers in a loop over characters

__all__ = [
    "TOKEN",
    "TOKEN_RE",
    "TOKEN_CHARS",
    "DIGIT_CHARS",
    "is_token",
    "is_digits",
    "is_uri_text",
    "is_host_text",
    "is_addr_text",
    "REQUEST_LINE_RE",
    "STATUS_LINE_RE",
    "HEADER_NAME_RE",
    "SIP_URI_RE",
    "ABSOLUTE_URI_RE",
    "HOSTNAME_RE",
    "VIA_RE",
    "VIA_PARAM_RE",
    "NAME_ADDR_RE",
    "ADDR_SPEC_RE",
    "GENERIC_PARAM_RE",
    "CSEQ_RE",
    "DIGITS_RE",
    "DATE_RE",
    "COMPACT_FORMS",
    "CANONICAL_NAMES",
]

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN: Final = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE: Final = re.compile(TOKEN)
# the same characters as a string (is_token reads them from a table built from it)
TOKEN_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
DIGIT_CHARS: Final = "0123456789"
_TOKEN_TABLE: Final = bytes(1 if chr(i) in TOKEN_CHARS else 0 for i in range(128))  # is_token's lookup
_DIGIT_TABLE: Final = bytes(1 if chr(i) in DIGIT_CHARS else 0 for i in range(128))  # is_digits'
# The plain forms the parser reads without a regex (the regexes below read everything else, and say what
# is wrong): a URI of these characters (no '?', brackets, quotes, '<', '>' or whitespace), a host name or
# IPv4 address, and the URI inside '<...>' of a name-addr (printable ASCII but '<', '>' and space).
_ALNUM: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_URI_TABLE: Final = bytes(1 if chr(i) in _ALNUM + "-_.!~*'()&=+$,;:@%/" else 0 for i in range(128))
_HOST_TABLE: Final = bytes(1 if chr(i) in _ALNUM + "-." else 0 for i in range(128))
_ADDR_TABLE: Final = bytes(1 if 0x21 <= i <= 0x7E and chr(i) not in "<>" else 0 for i in range(128))


def _all_in(text: str, table: bytes) -> bool:
    """Non-empty, and every character ASCII with a non-zero entry in ``table`` (128 bytes).

    One compiled pass: ``ord(text[i])`` reads a character without making a string, where
    ``text.strip(chars)`` searches ``chars`` for each one and ``isascii`` is a generic method call; the
    index and the character are machine integers (``i64``, docs/compiled.md)."""
    n: i64 = len(text)
    if n == 0:
        return False
    i: i64 = 0
    while i < n:
        c: i64 = ord(text[i])
        if c >= 128 or table[c] == 0:
            return False
        i += 1
    return True


def is_token(text: str) -> bool:
    """``1*token-char``."""
    return _all_in(text, _TOKEN_TABLE)


def is_digits(text: str) -> bool:
    """``1*DIGIT``, ASCII digits only (``str.isdigit`` alone takes other scripts' digits too)."""
    return _all_in(text, _DIGIT_TABLE)


def is_uri_text(text: str) -> bool:
    """Non-empty, and only the characters of a plain sip: URI (see _URI_TABLE)."""
    return _all_in(text, _URI_TABLE)


def is_host_text(text: str) -> bool:
    """``[A-Za-z0-9.-]+``: what SIP_URI_RE and VIA_RE read as a host name or IPv4 address."""
    return _all_in(text, _HOST_TABLE)


def is_addr_text(text: str) -> bool:
    """``[^<>\\s]+`` of NAME_ADDR_RE, in ASCII (anything else goes to the regex)."""
    return _all_in(text, _ADDR_TABLE)


# Request-Line = Method SP Request-URI SP SIP-Version CRLF   (exactly one SP each)
# SIP-Version  = "SIP" "/" 1*DIGIT "." 1*DIGIT
REQUEST_LINE_RE: Final = re.compile(r"(" + TOKEN + r") ([^ \t]+) SIP/(\d+\.\d+)")

# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF; Status-Code = 3DIGIT
STATUS_LINE_RE: Final = re.compile(r"SIP/(\d+\.\d+) ([1-6]\d\d) (.*)", re.DOTALL)

# message-header: header-name HCOLON header-value; HCOLON = *( SP / HTAB ) ":" SWS
HEADER_NAME_RE: Final = re.compile(r"(" + TOKEN + r")[ \t]*:")

# hostname / IPv4address / IPv6reference; IPv6reference = "[" IPv6address "]"
HOSTNAME_RE: Final = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?")

# SIP-URI = "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# userinfo = ( user / telephone-subscriber ) [ ":" password ] "@"
# hostport = host [ ":" port ]
SIP_URI_RE: Final = re.compile(
    r"(sips?):"
    r"(?:([^@\s<>\"]*)@)?"  # userinfo (user may hold ';' per §19.1.1, semiuri)
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)"  # host
    r"(?::(\d{1,5}))?"  # port
    r"((?:;[^?\s<>\"]*)?)"  # uri-parameters
    r"(\?[^\s<>\"]*)?",  # headers
    re.IGNORECASE,
)

# absoluteURI = scheme ":" ( hier-part / opaque-part ); scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
ABSOLUTE_URI_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+")

# via-parm = sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol = protocol-name SLASH protocol-version SLASH transport
VIA_RE: Final = re.compile(
    r"[ \t]*(" + TOKEN + r")[ \t]*/[ \t]*(" + TOKEN + r")[ \t]*/[ \t]*(" + TOKEN + r")[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(?:[ \t]*:[ \t]*(\d{1,5}))?[ \t]*((?:;.*)?)"
)
# via-params = via-ttl / via-maddr / via-received / via-branch / via-extension
# generic-param = token [ EQUAL gen-value ]; gen-value = token / host / quoted-string
VIA_PARAM_RE: Final = re.compile(
    r"[ \t]*(" + TOKEN + r")[ \t]*(?:=[ \t]*(" + TOKEN + r"|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+|\"(?:[^\"\\]|\\.)*\")[ \t]*)?"
)
GENERIC_PARAM_RE: Final = VIA_PARAM_RE

# name-addr = [ display-name ] LAQUOT addr-spec RAQUOT
# display-name = *(token LWS) / quoted-string
NAME_ADDR_RE: Final = re.compile(
    r"[ \t]*((?:" + TOKEN + r"[ \t]*)*|\"(?:[^\"\\]|\\.)*\")[ \t]*<([^<>\s]+)>[ \t]*((?:;.*)?)"
)
# addr-spec form of from-spec/to-spec/contact-param: the URI ends at the first ';'
# (its params belong to the header, §20.10) and may not hold '?', ',' or ';' headers.
ADDR_SPEC_RE: Final = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9+\-.]*:[^\s;<>\"?,]+)[ \t]*((?:;.*)?)")

# CSeq = "CSeq" HCOLON 1*DIGIT LWS Method
CSEQ_RE: Final = re.compile(r"[ \t]*(\d{1,10})[ \t]+(" + TOKEN + r")[ \t]*")
DIGITS_RE: Final = re.compile(r"[ \t]*(\d{1,10})[ \t]*")

# SIP-date = rfc1123-date = wkday "," SP date1 SP time SP "GMT"
DATE_RE: Final = re.compile(
    r"[ \t]*(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT[ \t]*"
)

# RFC 3261 §7.3.3 compact forms, and the RFC 3515/3892/4028/3265/3841 ones.
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

# How we spell the headers we write ourselves.
CANONICAL_NAMES: Final[dict[str, str]] = {
    "via": "Via",
    "route": "Route",
    "record-route": "Record-Route",
    "max-forwards": "Max-Forwards",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "from": "From",
    "to": "To",
    "content-length": "Content-Length",
    "contact": "Contact",
    "warning": "Warning",
    "retry-after": "Retry-After",
    "unsupported": "Unsupported",
    "p-asserted-identity": "P-Asserted-Identity",
    "p-preferred-identity": "P-Preferred-Identity",
    "remote-party-id": "Remote-Party-ID",
    "server": "Server",
    "allow": "Allow",
    "user-agent": "User-Agent",
    "www-authenticate": "WWW-Authenticate",
    "proxy-authenticate": "Proxy-Authenticate",
}
