"""The parser's plain-form readers agree with the grammar's regexes wherever they answer.

Each fast path (a URI, a name-addr read with find and slices instead of a regex) either says "not
plain" (None) and leaves the input to the regex, or gives exactly what the regex path gives, an
error included.  Hypothesis draws the inputs from the characters where the two could disagree.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from sipguard.sip.errors import ParseError
from sipguard.sip.grammar import SIP_URI_RE
from sipguard.sip.message import _name_addr_params, _plain_name_addr, _plain_uri, _sip_uri

# the characters URIs and name-addrs are made of, and the ones that make them odd
_PIECES = st.sampled_from([
    "sip:", "sips:", "SIP:", "tel:", "alice", "+3225551234", "@", "@@", "example.com", "127.0.0.1", "[::1]",
    ":", ":5060", ":99999", ":0", ";", ";lr", ";transport=udp", ";user=phone", ";;", "=", "?", "?h=v", "<", ">",
    '"', '"Al ice"', " ", "\t", "\\", ",", "%20", "é", "-", ".", "..", "a-", "x",
])
_TEXT = st.lists(_PIECES, min_size=1, max_size=8).map("".join)
# URIs built part by part, each part plain or odd: most take the plain path, some are near misses
_URI = st.tuples(
    st.sampled_from(["sip:", "sips:", "SIP:", "Sips:", "tel:", "sip", "sip;"]),
    st.sampled_from(["", "alice@", "+3225551234@", "a;b=c@", "@", "a@b@", "a?b@", "é@", "a b@", "a:pw@", "%41@"]),
    st.sampled_from(["example.com", "127.0.0.1", "[::1]", "a..b", "-a", "", "Ex-1.COM", "x?y", "a_b", "é.be"]),
    st.sampled_from(["", ":5060", ":99999", ":65536", ":123456", ":", ":0", ":x", ":5060:1"]),
    st.lists(st.sampled_from([";lr", ";transport=UDP", ";", ";a=b=c", ";?", "?h=v", ";x?h=v", " ;lr", ";é",
                              ";user=phone", ";=x", ";a@b", ";a,b"]), max_size=3).map("".join),
).map("".join)
_NAME_ADDR = st.tuples(
    st.sampled_from(["", '"sipp" ', '"" ', '"a\\"b" ', '"a"', 'Alice ', ' ', '"unclosed ', '"x"  \t']),
    st.sampled_from(["<", "", " <"]),
    _URI,
    st.sampled_from([">", "", "> ", ">>"]),
    st.lists(st.sampled_from([";tag=1", ";tag=a-b.c", ";", ";x", ";x=", ';x="q"', " ;tag=1", "junk", ";a=b c"]),
             max_size=3).map("".join),
).map("".join)


def _by_regex(text: str) -> object:
    m = SIP_URI_RE.fullmatch(text)
    if m is None:
        return "no match"
    scheme, user, host, port, params, headers = m.groups()
    try:
        return _sip_uri(text, scheme, user, host, port or "", params or "", headers)
    except ParseError:
        return "error"


def _by_fast_path(text: str) -> object:
    try:
        return _plain_uri(text)
    except ParseError:
        return "error"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_URI, _TEXT))
@example("sip:+3250555001@127.0.0.1:5060")
@example("sip:alice;x=1@example.com;lr")
@example("sips:example.com:5061;transport=tls")
@example("sip:a@b@c")
@example("sip:host:123456")
@example("sip:host;;lr")
@example("sip:a..b")
def test_a_plain_uri_reads_as_the_regex_reads_it(text: str) -> None:
    fast = _by_fast_path(text)
    if fast is not None:
        assert fast == _by_regex(text)


def test_the_plain_uri_path_takes_the_common_uris() -> None:
    for text in ("sip:+3250555001@127.0.0.1:5060", "sip:sipp@127.0.0.2:5062;transport=UDP",
                 "SIPS:Example.COM;lr", "sip:alice@example.com"):
        assert _plain_uri(text) is not None
        assert _plain_uri(text) == _by_regex(text)
    for text in ("sip:[::1]:5060", "sip:a@b?subject=x", "sip:a b@c", "tel:+32"):
        assert _plain_uri(text) is None


def _params_by_regex(text: str) -> object:
    try:
        return _name_addr_params(text)
    except ParseError:
        return "error"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_NAME_ADDR, _TEXT))
@example('"sipp" <sip:+3228807241@127.0.0.2:5062>;tag=bench1')
@example("<sip:a@b>;tag=1;x")
@example('"a\\"b" <sip:a@b>')
@example('"" <sip:a>')
@example("<sip:a> ;tag=1")
@example("<sip:a><sip:b>")
def test_a_plain_name_addr_reads_as_the_regex_reads_it(text: str) -> None:
    fast = _plain_name_addr(text)
    if fast is not None:
        assert fast == _params_by_regex(text)


def test_the_plain_name_addr_path_takes_the_common_forms() -> None:
    assert _plain_name_addr('"sipp" <sip:+3228807241@127.0.0.2:5062>;tag=bench1') == ";tag=bench1"
    assert _plain_name_addr("<sip:+3250555001@127.0.0.1:5060>") == ""
    for text in ('"a\\"b" <sip:a>', " <sip:a>", "sip:a;tag=1", "Alice <sip:a>", "<sip:a b>"):
        assert _plain_name_addr(text) is None
