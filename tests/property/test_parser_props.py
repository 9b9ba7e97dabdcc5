"""Hypothesis: any bytes parse or raise SipError; serialize and parse are inverse."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import corpus
from helpers import UAC, Wire, feed
from sipguard.sip import SipError, parse, serialize
from sipguard.sip.grammar import STATUS_LINE_RE, TOKEN_CHARS, TOKEN_RE, is_digits, is_token
from sipguard.sip.serializer import Prepend, RemoveFirst, SetHeader

SEEDS = [r["bytes"] for r in corpus("rfc4475") + corpus("rfc5118")]
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parses_or_sip_error(data: bytes) -> None:
    try:
        msg = parse(data)
    except SipError:
        return
    assert parse(serialize(msg)) == msg


@PROPS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    _parses_or_sip_error(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b",", b";", b" ", b":", b"\x00", b"<", b'"', b"\r\n "]))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
    return bytes(data)


@PROPS
@given(mutated())
def test_mutated_torture_messages(data: bytes) -> None:
    _parses_or_sip_error(data)


TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.!%*_+~", min_size=1, max_size=12)
LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@st.composite
def messages(draw) -> bytes:
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS", "MESSAGE", "REGISTER", "INFO"]))
    n_via = draw(st.integers(1, 4))
    vias = [f"SIP/2.0/{draw(st.sampled_from(['UDP', 'TCP']))} {draw(LABEL)}.example:{draw(st.integers(1, 65535))}"
            f";branch=z9hG4bK{draw(TOKEN)}" for _ in range(n_via)]
    lines = [f"{method} sip:{draw(TOKEN)}@example.com SIP/2.0"]
    if draw(st.booleans()):
        lines.append("Via: " + ", ".join(vias))
    else:
        lines.extend(f"{draw(st.sampled_from(['Via', 'v', 'VIA']))}: {v}" for v in vias)
    lines += [
        f"{draw(st.sampled_from(['From', 'f']))}: \"{draw(TOKEN)}\" <sip:{draw(TOKEN)}@a.example>;tag={draw(TOKEN)}",
        f"{draw(st.sampled_from(['To', 't']))}: <sip:{draw(TOKEN)}@b.example>",
        f"{draw(st.sampled_from(['Call-ID', 'i']))}: {draw(TOKEN)}",
        f"CSeq: {draw(st.integers(0, 2**31 - 1))} {method}",
        f"Max-Forwards: {draw(st.integers(0, 255))}",
    ]
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"X-{draw(TOKEN)}: {draw(st.text(alphabet='abc xyz;=,<>', max_size=20)).strip() or 'v'}")
    body = draw(st.binary(max_size=200))
    lines.append(f"{draw(st.sampled_from(['Content-Length', 'l']))}: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@PROPS
@given(messages())
def test_generated_messages_round_trip(data: bytes) -> None:
    msg = parse(data)
    assert parse(serialize(msg)) == msg


@PROPS
@given(messages(), st.lists(st.sampled_from(["route", "record-route", "x-y", "max-forwards"]), max_size=4))
def test_edits_keep_the_message_well_formed(data: bytes, keys: list[str]) -> None:
    msg = parse(data)
    edits = [Prepend("via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc"), SetHeader("max-forwards", "69")]
    edits += [RemoveFirst(k) for k in keys]
    out = parse(serialize(msg, edits))
    assert out.vias[0].host == "127.0.0.1" and out.vias[1:] == msg.vias
    assert out.get("max-forwards") == (None if "max-forwards" in keys else "69")
    assert out.body == msg.body


@settings(max_examples=200, deadline=None)
@given(st.one_of(mutated(), messages(), st.binary(max_size=600)))
def test_core_never_raises_for_bad_input(data: bytes) -> None:
    from conftest import BASE_POLICY
    from sipguard.policy import Engine, load_text
    from sipguard.sip import Local, ProxyCore

    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(BASE_POLICY)))
    wire = Wire()
    feed(core, data, UAC, 0.0, wire)
    try:
        parse(data)
        well_formed = True
    except SipError:
        well_formed = False
    for send in wire.sent:
        if well_formed:
            parse(send.data)  # whatever it sends for a good message is itself well-formed
        else:
            # a bad message is never forwarded; an answer to it echoes its headers (RFC 4475 wants
            # 400/505 even where those headers are what is wrong) under a valid status line
            assert send.status >= 400
            assert STATUS_LINE_RE.fullmatch(send.data.split(b"\r\n", 1)[0].decode())


# Via values close to what UAs send, and near misses: every character class the fast path must
# either accept exactly as the regex does, or hand over to it.
VIA_PART = st.sampled_from(["SIP/2.0/UDP ", "SIP/2.0/TCP ", "SIP/2.0/SCTP ", "SIP / 2.0 / UDP ", "sip/2.0/udp ",
                            "SIP/2.0/UDP\t", "SIP/2.0/UDP", " SIP/2.0/UDP "])
VIA_HOST = st.sampled_from(["127.0.0.2", "host.example", "[::1]", "[2001:DB8::1]", "Host.Example.", "bad_host",
                            "[::g]", ""])
VIA_PORT = st.sampled_from(["", ":5060", ":65535", ":65536", ":0", ": 5060", ":x"])
VIA_PARAM = st.one_of(
    st.builds(lambda n, v: f"{n}={v}", st.sampled_from(["branch", "BRANCH", "rport", "received", "ttl", "x-y", "b!"]),
              st.one_of(TOKEN, st.sampled_from(["127.0.0.1", "::1", "[::1]", '"q s"', "", "a b", "a,b", "é"]))),
    st.sampled_from(["rport", "lr", "", " rport", "rport ", "=x", "a=b=c"]),
)


@PROPS
@given(VIA_PART, VIA_HOST, VIA_PORT, st.lists(VIA_PARAM, max_size=4))
def test_via_fast_path_agrees_with_the_grammar(proto: str, host: str, port: str, params: list[str]) -> None:
    from sipguard.sip.message import _parse_via, parse_via

    text = proto + host + port + "".join(";" + p for p in params)
    try:
        expected = _parse_via(text)
    except SipError:
        expected = None
    try:
        got = parse_via(text)
    except SipError:
        got = None
    assert got == expected, text


@PROPS
@given(st.lists(st.sampled_from(["Via: SIP/2.0/UDP a;branch=z9hG4bK1", "X: \\\x01", 'X: "\\\x01"', "X: a\rb",
                                 "X: a\nb", "X: \x7f", "X: \x00", "X: \t", "CSeq: 1 OPTIONS"]), max_size=5))
def test_control_character_check_agrees_with_the_grammar(extra: list[str]) -> None:
    import re

    lines = ["OPTIONS sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h;branch=z9hG4bKx", "From: <sip:a@b>;tag=1",
             "To: <sip:b@c>", "Call-ID: c", "CSeq: 1 OPTIONS", *extra]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    # the rule, as RFC 3261 §7.3.1/§25 reads: no CTL but in a quoted-pair, no CR or LF outside a CRLF
    bad = re.search(r"(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n", head) is not None
    try:
        parse(data)
        error = ""
    except SipError as err:
        error = str(err)
    for_controls = "control character" in error or "bare CR or LF" in error
    if not bad:
        assert not for_controls, extra
    elif "CSeq: 1 OPTIONS" in extra:  # a second CSeq: refused for whichever of the two the parser meets first
        assert error, extra
    else:
        assert for_controls, extra


NUMBERISH = st.text(alphabet="0123456789 \t١²x-", max_size=13)


@PROPS
@given(NUMBERISH)
def test_number_fast_path_agrees_with_the_grammar(value: str) -> None:
    from sipguard.sip.grammar import DIGITS_RE
    from sipguard.sip.parser import _digits

    m = DIGITS_RE.fullmatch(value)
    try:
        got: int | None = _digits(value, "Content-Length")
    except SipError:
        got = None
    assert got == (int(m.group(1)) if m else None), value


@PROPS
@given(NUMBERISH, st.sampled_from(["OPTIONS", " OPTIONS", "\tOPTIONS", "OPTIONS ", "OPT IONS", "", "OPTIONS\t"]))
def test_cseq_fast_path_agrees_with_the_grammar(number: str, method: str) -> None:
    from sipguard.sip.grammar import CSEQ_RE

    value = f"{number} {method}".strip()  # the parser strips a header value before reading it
    data = ("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\n"
            f"To: <sip:b@c>\r\nCall-ID: c\r\nCSeq: {value}\r\n\r\n").encode()
    m = CSEQ_RE.fullmatch(value)
    expected = (int(m.group(1)), m.group(2)) if m and int(m.group(1)) < 2**31 else None
    try:
        msg = parse(data)
        got: tuple[int, str] | None = (msg.cseq, msg.cseq_method)
    except SipError as err:
        assert expected is None or "does not match" in str(err), (value, err)
        return
    assert got == expected, value


# start lines built slot by slot from values that sit near the fast paths' edges
SEP = st.sampled_from([" ", " ", "  ", "\t", ""])
VERSION = st.sampled_from(["SIP/2.0", "SIP/2.0", "SIP/2.00", "SIP/1.0", "SIP/2.", "SIP/٢.0", "sip/2.0", "SIP/2.0 x"])
REQUEST_LINE = st.tuples(st.sampled_from(["INVITE", "OPTIONS", "IN VITE", "INV@TE", "", "x"]), SEP,
                         st.sampled_from(["sip:a@b", "sip:a@b;lr", "sip:\ta", "sip:a b", "", "sip:é"]), SEP, VERSION)
STATUS_LINE = st.tuples(VERSION, SEP, st.sampled_from(["200", "486", "700", "099", "2000", "2٠0", "20", ""]), SEP,
                        st.sampled_from(["OK", "Busy Here", "", " ", "\t", "é"]))


@PROPS
@given(st.one_of(REQUEST_LINE, STATUS_LINE))
def test_start_line_fast_paths_agree_with_the_grammar(slots: tuple[str, ...]) -> None:
    from sipguard.sip.grammar import REQUEST_LINE_RE
    from sipguard.sip.parser import start_line

    start = "".join(slots)
    if start.startswith("SIP/"):
        m = STATUS_LINE_RE.fullmatch(start)
        expected = (False, *m.groups()) if m else None
    else:
        m = REQUEST_LINE_RE.fullmatch(start)
        expected = (True, *m.groups()) if m else None
    try:
        got: tuple[bool, str, str, str] | None = start_line(start)
    except SipError:
        got = None
    assert got == expected, start


DISPLAY = st.sampled_from(["", '"sipp" ', "Alice ", '"a>b;c" ', '"a<b" ', '"open ', "a@b "])
URI = st.sampled_from(["sip:+3228807241@127.0.0.2:5062", "sip:a@b;transport=udp", "sip:a b", "sip:a>b", ""])
PARAM = st.sampled_from(["tag=abc", "TAG=Q1", "tag", "tag=", "x=1", 'x="a>b"', 'x="a;tag=no"', "x=a>b", "",
                         "tag=é", "tag=a b", "x=[::1]"])


@PROPS
@given(DISPLAY, URI, st.sampled_from(["", " ", "\t"]), st.lists(PARAM, max_size=4), st.booleans())
def test_tag_fast_path_agrees_with_the_grammar(display: str, uri: str, gap: str, params: list[str],
                                               bracketed: bool) -> None:
    from sipguard.sip import message

    text = (f"{display}<{uri}>" if bracketed else uri) + gap + "".join(";" + p for p in params)

    def reference(value: str) -> str | None:  # the full path: validate with the regexes, then search
        found = message._TAG_RE.search(message._check_name_addr_fn(value))
        return found.group(1) if found else None

    outcomes = []
    for fn in (message._tag_of_fn, reference):
        try:
            outcomes.append(("tag", fn(text)))
        except SipError:
            outcomes.append(("refused", None))
    assert outcomes[0] == outcomes[1], text


_TOKENISH = st.text(alphabet=st.sampled_from(list(TOKEN_CHARS) + list(" \t;=,:@\"<>é٣٤ÅⅫ\x00")), max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_TOKENISH, st.text(max_size=12)))
def test_token_and_digit_checks_match_the_grammar(text: str) -> None:
    """The fast checks (a table lookup per character) say what the ABNF's regexes say."""
    assert is_token(text) == (TOKEN_RE.fullmatch(text) is not None), text
    assert is_digits(text) == (re.fullmatch(r"[0-9]+", text) is not None), text


# Responses as UASes send them, and near misses: the light path (peek_response) either reads one
# exactly as parse() does, or leaves it to parse().
@st.composite
def responses(draw) -> bytes:
    def usually(common: str, *odd: str) -> str:  # the plain form most of the time, so both paths get exercised
        return draw(st.sampled_from([common] * (2 * len(odd) + 2) + list(odd)))

    vias = [f"SIP/2.0/UDP {draw(LABEL)}.example:{draw(st.integers(1, 65535))};branch=z9hG4bK{draw(TOKEN)}"
            for _ in range(int(usually("2", "1", "3")))]
    fields = [f"{usually('Via', 'v', 'VIA', 'via ')}: {v}" for v in vias]
    if len(vias) > 1 and usually("apart", "together") == "together":
        fields = [f"Via: {vias[0]}, {vias[1]}", *fields[2:]]
    method = draw(st.sampled_from(["INVITE", "BYE", "OPTIONS"]))
    body = draw(st.binary(max_size=60))
    length = int(usually(str(len(body)), str(max(len(body) - 1, 0)), str(len(body) + 1)))
    fields += [
        f"From: <sip:{draw(TOKEN)}@a.example>;tag={draw(TOKEN)}",
        f"{usually('To', 't', 'TO')}:{usually(' ', chr(13) + chr(10) + ' ', chr(13) + chr(10) + chr(9))}"
        f"<sip:{draw(TOKEN)}@b.example>;tag={draw(TOKEN)}",
        f"Call-ID: {draw(TOKEN)}",
        f"{usually('CSeq', 'cseq')}: {usually('1', '007', '2147483648', 'x')}{usually(' ', '  ', chr(9))}{method}",
        f"{usually('Content-Length', 'l', 'content-length')}: {length}",
    ]
    fields += [f"X-{draw(TOKEN)}: {draw(TOKEN)}" for _ in range(draw(st.integers(0, 3)))]
    extra = usually("", "CSeq: 2 BYE", "l: 0", "t: <sip:x@y>", "X-C: a\x01b", "X-L: a\rb", "X-N: a\nb", "X-E: a\n")
    order = draw(st.permutations(fields + ([extra] if extra else [])))
    status = usually(draw(st.sampled_from(["100 Trying", "180 Ringing", "200 OK", "486 Busy", "699 x", "200 Ok é"])),
                     "099 x", "200", "2000 x", "700 x", "200 O\nK")
    head = f"SIP/2.0 {status}\r\n" + "\r\n".join(order)
    return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body + usually("", "trailing").encode()


def _peek_agrees_with_parse(data: bytes, *, well_formed_elsewhere: bool) -> None:
    """What the light path reads of a response, parse() reads the same; what it forwards is the
    response minus its top Via.  ``well_formed_elsewhere``: every header it does not read is valid,
    so parse() must take what the light path takes."""
    from sipguard.sip.parser import peek_response

    peek = peek_response(data)
    if peek is None:
        return  # parse() reads it
    if well_formed_elsewhere:
        msg = parse(data)
    else:
        try:
            msg = parse(data)
        except SipError:
            return  # a header the light path does not read is malformed: passed as received (Kamailio's tm too)
    assert peek.status == msg.status and peek.cseq_method == msg.cseq_method
    assert peek.to() == msg.get("to")
    first = next(i for i, (key, _name, _value) in enumerate(msg.headers) if key == "via")
    assert peek.top_via == msg.headers[first][2].encode("utf-8", "surrogateescape").decode("latin-1")
    forwarded = parse(peek.without_top_via(data))
    assert forwarded.vias == msg.vias[1:] and forwarded.body == msg.body
    assert forwarded.headers == msg.headers[:first] + msg.headers[first + 1 :]


@PROPS
@given(responses())
def test_response_light_path_agrees_with_parse(data: bytes) -> None:
    _peek_agrees_with_parse(data, well_formed_elsewhere=True)


@PROPS
@given(st.one_of(mutated(), st.binary(max_size=600)))
def test_response_light_path_never_raises_and_agrees(data: bytes) -> None:
    _peek_agrees_with_parse(b"SIP/2.0 200 OK\r\n" + data if not data.startswith(b"SIP/2.0 ") else data,
                            well_formed_elsewhere=False)
