"""The parser against RFC 4475 / RFC 5118 and the framing rules of RFC 3261 §7, §18.3."""

from __future__ import annotations

import pytest

from conftest import corpus
from helpers import request
from sipguard.sip import MessageTooLarge, ParseError, Request, Response, SipError, parse, serialize
from sipguard.sip.errors import UnsupportedUriScheme, VersionNotSupported

ROWS = corpus("rfc4475") + corpus("rfc5118")

# What the parser alone says; proxy-level semantics (483, 420, drops) are in test_proxy_corpus.
PARSER_REJECTS = {
    "badinv01.dat": 400, "clerr.dat": 400, "ncl.dat": 400, "scalar02.dat": 400, "scalarlg.dat": 400,
    "quotbal.dat": 400, "ltgtruri.dat": 400, "lwsruri.dat": 400, "lwsstart.dat": 400, "trws.dat": 400,
    "escruri.dat": 400, "baddate.dat": 400, "regbadct.dat": 400, "badaspec.dat": 400, "baddn.dat": 400,
    "badvers.dat": 505, "mismatch01.dat": 400, "mismatch02.dat": 400, "bigcode.dat": 400,
    "insuf.dat": 400, "unkscm.dat": 416, "novelsc.dat": 416, "multi01.dat": 400, "mcl01.dat": 400,
    "ipv6-bad.dat": 400, "ipv6-bug-abnf-3-colons.dat": 400,
}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["file"])
def test_torture_corpus(row: dict) -> None:
    data = row["bytes"]
    expected = PARSER_REJECTS.get(row["file"])
    if expected is None:
        msg = parse(data)
        assert isinstance(msg, (Request, Response))
        assert row["class"] != "invalid", "an invalid message must not parse"
    else:
        with pytest.raises(SipError) as info:
            parse(data)
        assert info.value.status == expected


def test_every_valid_message_parses_and_every_invalid_one_does_not() -> None:
    for row in ROWS:
        if row["class"] == "valid":
            parse(row["bytes"])
        elif row["class"] == "invalid":
            with pytest.raises(SipError):
                parse(row["bytes"])


def _by_file(name: str) -> bytes:
    return next(r["bytes"] for r in ROWS if r["file"] == name)


def test_wsinv_folding_compact_and_case() -> None:
    msg = parse(_by_file("wsinv.dat"))
    assert isinstance(msg, Request)
    assert msg.cseq == 9 and msg.cseq_method == "INVITE"
    assert msg.max_forwards == 68
    assert msg.from_tag == "98asjd8"
    assert msg.to_tag == "1918181833n"
    # three Via values, two of them from one folded, comma-separated compact 'v:' line
    assert [v.host for v in msg.vias] == ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    assert msg.vias[1].transport == "TCP" and msg.vias[1].branch == "z9hG4bK9ikj8"
    assert msg.get("newfangledheader") == "newfangled value continued newfangled value"
    assert msg.get("subject") == ""  # 's :' compact Subject, empty
    assert len(msg.body) == 150


def test_long_request_with_34_vias() -> None:
    msg = parse(_by_file("longreq.dat"))
    assert len(msg.vias) == 34


def test_trailing_octets_after_content_length_are_ignored() -> None:
    msg = parse(_by_file("dblreq.dat"))
    assert isinstance(msg, Request) and msg.method == "REGISTER" and msg.body == b""


def test_binary_body_kept_byte_exact() -> None:
    data = _by_file("mpart01.dat")
    msg = parse(data)
    assert b"\x00" in msg.body or b"\r" in msg.body
    assert parse(serialize(msg)) == msg


def test_ipv6_references() -> None:
    msg = parse(_by_file("port-ambiguous.dat"))
    assert isinstance(msg, Request) and msg.ruri is not None
    assert msg.ruri.host == "[2001:db8::10:5070]" and msg.ruri.port is None
    msg = parse(_by_file("port-unambiguous.dat"))
    assert isinstance(msg, Request) and msg.ruri is not None
    assert msg.ruri.host == "[2001:db8::10]" and msg.ruri.port == 5070


def test_mixed_ip_versions_in_via() -> None:
    msg = parse(_by_file("mult-ip-in-header.dat"))
    hosts = [v.host for v in msg.vias]
    assert any(h.startswith("[") for h in hosts) and any(not h.startswith("[") for h in hosts)


def test_missing_content_length_on_udp_takes_the_rest() -> None:
    data = request(body=b"v=0\r\n").replace(b"Content-Length: 5\r\n", b"")
    msg = parse(data)
    assert msg.body == b"v=0\r\n"


def test_missing_content_length_on_a_stream_is_an_error() -> None:
    data = request().replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(ParseError):
        parse(data, stream=True)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: x INVITE"),
        lambda d: d.replace(b"CSeq: 1 INVITE", b"CSeq: 1"),
        lambda d: d.replace(b"Content-Length: 0", b"Content-Length: abc"),
        lambda d: d.replace(b"Content-Length: 0", b"Content-Length: 10"),
        lambda d: d.replace(b"Call-ID: call-1@127.0.0.2\r\n", b""),
        lambda d: d.replace(b"\r\nVia: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-uac-1", b""),
        lambda d: d.replace(b"From: ", b"From: <sip:broken"),
        lambda d: d[: len(d) // 2],
        lambda d: d.replace(b"\r\n\r\n", b"\r\n"),
        lambda d: d.replace(b"Max-Forwards: 70", b"Max-Forwards: many"),
        lambda d: d.replace(b"To: ", b"To: <sip:a@b>, <sip:c@d>\r\nX: "),
        lambda d: d.replace(b"Via: ", b"Via: SIP/2.0/UDP\r\nX-Via: "),
        lambda d: b"\x00\xff" + d,
        lambda d: d.replace(b"INVITE sip", b"INVITE  sip"),
    ],
)
def test_broken_messages_raise_parse_error(mutate) -> None:
    with pytest.raises(SipError) as info:
        parse(mutate(request()))
    assert info.value.status in (400, 505, 416)


def test_oversized_message_is_513_with_its_via_readable() -> None:
    data = request(body=b"x" * 20000)
    with pytest.raises(MessageTooLarge) as info:
        parse(data, max_bytes=16384)
    assert info.value.status == 513
    assert info.value.partial.vias  # type: ignore[attr-defined]


def test_version_and_scheme_errors() -> None:
    with pytest.raises(VersionNotSupported):
        parse(request().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    with pytest.raises(UnsupportedUriScheme):
        parse(request(ruri="http://example.com/x"))


def test_tel_request_uri_is_accepted() -> None:
    msg = parse(request(ruri="tel:+3250123400"))
    assert isinstance(msg, Request) and msg.ruri is None and msg.uri == "tel:+3250123400"


def test_round_trip_is_byte_exact_without_edits() -> None:
    data = _by_file("esc01.dat")
    msg = parse(data)
    assert parse(serialize(msg)) == msg
