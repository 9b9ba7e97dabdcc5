"""Broken messages of many kinds against a running sipguard: 400/513 or dropped,
sipguard keeps answering, and nothing malformed reaches the UAS."""

from __future__ import annotations

import asyncio

import asyncio_dgram
import pytest

from conftest import corpus
from helpers import request
from sipguard.sip import Response, parse

from .conftest import UAC_IP, UAS_IP, Sipguard, free_udp_port

pytestmark = pytest.mark.integration


def _broken_messages() -> list[tuple[str, bytes]]:
    ok = request(ruri="sip:+3250123400@127.0.0.1", via_host="127.0.0.2:5062", rport=True)
    cases = [
        ("no Call-ID", ok.replace(b"Call-ID: call-1@127.0.0.2\r\n", b"")),
        ("no From", ok.replace(b"From: <sip:+3228807240@127.0.0.2>;tag=ft1\r\n", b"")),
        ("no To", ok.replace(b"To: <sip:+3250123400@127.0.0.3>\r\n", b"")),
        ("no Via", ok.replace(b"Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-uac-1;rport\r\n", b"")),
        ("no CSeq", ok.replace(b"CSeq: 1 INVITE\r\n", b"")),
        ("bad CSeq number", ok.replace(b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE")),
        ("CSeq method mismatch", ok.replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")),
        ("bad Content-Length", ok.replace(b"Content-Length: 0", b"Content-Length: x")),
        ("Content-Length too big", ok.replace(b"Content-Length: 0", b"Content-Length: 500")),
        ("negative Content-Length", ok.replace(b"Content-Length: 0", b"Content-Length: -1")),
        ("two Content-Lengths", ok.replace(b"Content-Length: 0", b"Content-Length: 0\r\nContent-Length: 4")),
        ("truncated", ok[:60]),
        ("truncated headers", ok[: ok.index(b"\r\n\r\n") - 5]),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad version", ok.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1)),
        ("NUL in header", ok.replace(b"To: <sip:", b"To: <sip:\x00")),
        ("bad request line", ok.replace(b"INVITE sip:", b"INVITE  sip:", 1)),
        ("oversized", request(body=b"v=0\r\n" + b"a=x\r\n" * 4000, rport=True)),
    ]
    for row in corpus("rfc4475") + corpus("rfc5118"):
        if row["class"] == "invalid":
            cases.append((row["file"], row["bytes"]))  # type: ignore[arg-type]
    return cases


async def _replies_until_probe(client, proxy: tuple[str, int], n: int) -> list[int]:
    """The statuses sipguard sent back before it answered a probe sent after them (UDP on loopback keeps the
    order, and sipguard answers a datagram before it reads the next): no time window to guess.  A reply
    that does not parse fails the test: sipguard's own answers must be well-formed."""
    probe_id = f"probe-{n}"
    await client.send(request("OPTIONS", ruri=f"sip:127.0.0.1:{proxy[1]}", call_id=probe_id, branch=f"z9hG4bK-p{n}",
                              rport=True), proxy)
    statuses: list[int] = []
    while True:
        reply, _addr = await asyncio.wait_for(client.recv(), timeout=10)
        msg = parse(reply)
        assert isinstance(msg, Response), msg
        if msg.call_id == probe_id:
            assert msg.status == 200
            return statuses
        statuses.append(msg.status)


async def test_broken_messages_get_400_or_are_dropped(sipguard: Sipguard) -> None:
    uas = await asyncio_dgram.bind((UAS_IP, sipguard.uas_port))  # type: ignore[attr-defined]
    client = await asyncio_dgram.bind((UAC_IP, free_udp_port(UAC_IP)))
    proxy = ("127.0.0.1", sipguard.sip_port)
    replies: dict[str, list[int]] = {}
    try:
        for n, (name, data) in enumerate(_broken_messages()):
            await client.send(data, proxy)
            replies[name] = await _replies_until_probe(client, proxy, n)
        # still serving: a real INVITE reaches the UAS
        await client.send(request(call_id="good-call", rport=True), proxy)
        received = [(await asyncio.wait_for(uas.recv(), timeout=10))[0]]
        try:
            while True:  # and whatever else arrives (its retransmissions: sipguard's Timer A)
                data, _addr = await asyncio.wait_for(uas.recv(), timeout=0.5)
                received.append(data)
        except asyncio.TimeoutError:
            pass
    finally:
        client.close()
        uas.close()
    for name, statuses in replies.items():
        assert statuses in ([], [400], [505], [513], [416], [420]), (name, statuses)
    assert replies["oversized"] == [513]
    assert replies["bad Content-Length"] == [400] and replies["CSeq method mismatch"] == [400]
    assert replies["no Call-ID"] == []  # an answer without a Call-ID would itself be malformed
    assert replies["garbage"] == [] and replies["HTTP"] == []
    # nothing malformed reached the UAS: exactly the one good INVITE (retransmitted by sipguard maybe)
    for data in received:
        msg = parse(data)
        assert msg.call_id == "good-call"
    assert sipguard.alive()
    m = sipguard.metrics()
    assert m['sipguard_parse_errors_total{status="400"}'] >= 20
    assert m['sipguard_parse_errors_total{status="513"}'] == 1
    assert m["sipguard_internal_errors_total"] == 0
