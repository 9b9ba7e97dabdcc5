"""The DNS client of next hops by name (sipguard/dns.py): the wire format, SRV order (RFC 2782), RFC 3263's
choices, the cache, against answers built here and a resolver on a loopback socket of the test's own."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections import Counter

import pytest

from sipguard.dns import A, AAAA, NAPTR, SRV, DnsError, Naptr, Resolver, Srv, parse_answer, query_bytes, split_server, \
    srv_order
from sipguard.sip.actions import Peer


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def _answer(qid: int, question: str, qtype: int, records: list[tuple[int, int, bytes]], rcode: int = 0,
            compress: bool = False) -> bytes:
    """A response: the question, then records (type, ttl, rdata), each named by a pointer to the question
    (``compress``) or by the name written out."""
    head = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(records), 0, 0)
    body = _name(question) + struct.pack("!HH", qtype, 1)
    for rtype, ttl, rdata in records:
        owner = b"\xc0\x0c" if compress else _name(question)
        body += owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return head + body


def _srv(priority: int, weight: int, port: int, target: str) -> bytes:
    return struct.pack("!HHH", priority, weight, port) + _name(target)


def _naptr(order: int, pref: int, flags: str, service: str, replacement: str) -> bytes:
    strings = b"".join(bytes([len(t)]) + t.encode() for t in (flags, service, ""))
    return struct.pack("!HH", order, pref) + strings + _name(replacement)


def test_a_query_is_one_question_with_recursion_desired() -> None:
    q = query_bytes(0x1234, "carrier.test", SRV)
    assert q[:4] == b"\x12\x34\x01\x00" and q[4:6] == b"\x00\x01"
    assert q[12:] == _name("carrier.test") + struct.pack("!HH", SRV, 1)
    with pytest.raises(DnsError, match="not a host name"):
        query_bytes(1, "a..b", A)


@pytest.mark.parametrize("compress", [False, True])
def test_answers_of_every_kind_are_read(compress: bool) -> None:
    srv = _answer(7, "_sip._udp.carrier.test", SRV, [(SRV, 60, _srv(10, 5, 5070, "a.carrier.test"))],
                  compress=compress)
    assert parse_answer(srv, 7, SRV) == (0, [(SRV, 60, Srv(10, 5, 5070, "a.carrier.test"))])
    naptr = _answer(8, "carrier.test", NAPTR, [(NAPTR, 30, _naptr(10, 50, "s", "sip+d2t", "_sip._tcp.carrier.test"))],
                    compress=compress)
    assert parse_answer(naptr, 8, NAPTR)[1] == [(NAPTR, 30, Naptr(10, 50, "S", "SIP+D2T", "_sip._tcp.carrier.test"))]
    addresses = _answer(9, "a.carrier.test", A, [(A, 5, bytes([192, 0, 2, 7])), (AAAA, 5, bytes(15) + b"\x01")],
                        compress=compress)
    assert parse_answer(addresses, 9, A)[1] == [(A, 5, "192.0.2.7"), (AAAA, 5, "::1")]


def test_what_is_not_an_answer_to_the_query_is_refused() -> None:
    good = _answer(7, "x.test", A, [(A, 5, bytes(4))])
    with pytest.raises(DnsError, match="not the answer"):
        parse_answer(good, 8, A)  # another query's id
    truncated = bytearray(good)
    truncated[2] |= 0x02
    with pytest.raises(DnsError, match="truncated"):
        parse_answer(bytes(truncated), 7, A)
    with pytest.raises(DnsError, match="malformed"):
        parse_answer(good[:-3], 7, A)
    loop = struct.pack("!HHHHHH", 7, 0x8180, 0, 1, 0, 0) + b"\xc0\x0c" + struct.pack("!HHIH", A, 1, 5, 4) + bytes(4)
    with pytest.raises(DnsError):
        parse_answer(loop, 7, A)  # a name that points at itself
    assert parse_answer(_answer(7, "x.test", A, [], rcode=3), 7, A) == (3, [])  # NXDOMAIN: no records


def test_srv_targets_go_by_priority_then_by_weight() -> None:
    rng = random.Random(1)
    records = [Srv(20, 0, 1, "backup"), Srv(10, 90, 1, "heavy"), Srv(10, 10, 1, "light")]
    firsts = Counter(srv_order(records, rng)[0].target for _ in range(2000))
    assert set(firsts) == {"heavy", "light"}  # never the lower priority first
    assert 0.85 < firsts["heavy"] / 2000 < 0.95  # RFC 2782: 90 of 100
    assert all(srv_order(records, rng)[-1].target == "backup" for _ in range(50))


def test_a_resolver_address() -> None:
    assert split_server("192.0.2.1") == ("192.0.2.1", 53)
    assert split_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_server("[::1]:5353") == ("::1", 5353)


class _Server:
    """A resolver on 127.0.0.1 that answers from a table {(name, type): [(type, ttl, rdata)]}, and counts."""

    def __init__(self, table: dict[tuple[str, int], list[tuple[int, int, bytes]]]) -> None:
        self.table = table
        self.asked: Counter[tuple[str, int]] = Counter()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()

    def answer_one(self) -> None:
        data, addr = self.sock.recvfrom(512)
        qid = struct.unpack("!H", data[:2])[0]
        at, labels = 12, []
        while data[at]:
            labels.append(data[at + 1:at + 1 + data[at]].decode())
            at += 1 + data[at]
        qtype = struct.unpack("!H", data[at + 1:at + 3])[0]
        name = ".".join(labels)
        self.asked[(name, qtype)] += 1
        self.sock.sendto(_answer(qid, name, qtype, self.table.get((name, qtype), []), compress=True), addr)


def test_rfc3263_naptr_then_srv_then_addresses_and_the_cache() -> None:
    server = _Server({
        ("carrier.test", NAPTR): [(NAPTR, 60, _naptr(10, 50, "S", "SIP+D2T", "_sip._tcp.carrier.test")),
                                  (NAPTR, 60, _naptr(20, 50, "S", "SIP+D2U", "_sip._udp.carrier.test")),
                                  (NAPTR, 60, _naptr(5, 50, "S", "SIPS+D2T", "_sips._tcp.carrier.test"))],
        ("_sip._tcp.carrier.test", SRV): [(SRV, 60, _srv(10, 1, 5070, "a.carrier.test"))],
        ("_sip._udp.carrier.test", SRV): [(SRV, 60, _srv(10, 1, 5080, "b.carrier.test"))],
        ("a.carrier.test", A): [(A, 60, bytes([192, 0, 2, 1]))],
        ("b.carrier.test", A): [(A, 60, bytes([192, 0, 2, 2]))],
        ("c.carrier.test", A): [(A, 60, bytes([192, 0, 2, 3]))],
    })

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(server.sock.fileno(), server.answer_one)
        resolver = Resolver([server.address], ("udp", "tcp"), timeout_s=1.0)
        # NAPTR by order: TLS first in the zone, but no tls listener: TCP, then UDP
        assert await resolver.targets("carrier.test", None, None, False) == [
            Peer("tcp", "192.0.2.1", 5070), Peer("udp", "192.0.2.2", 5080)]
        # a port in the URI: the addresses only; a transport and no port: that transport's SRV
        assert await resolver.targets("c.carrier.test", 5090, None, False) == [Peer("udp", "192.0.2.3", 5090)]
        assert await resolver.targets("carrier.test", None, "udp", False) == [Peer("udp", "192.0.2.2", 5080)]
        # no NAPTR and no SRV: the name's address on 5060
        assert await resolver.targets("c.carrier.test", None, None, False) == [Peer("udp", "192.0.2.3", 5060)]
        asked = sum(server.asked.values())
        await resolver.targets("carrier.test", None, None, False)  # every answer is in the cache for 60 s
        assert sum(server.asked.values()) == asked
        loop.remove_reader(server.sock.fileno())

    asyncio.run(main())


def test_no_answer_at_all_is_an_error_that_says_so() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        resolver = Resolver([silent.getsockname()], ("udp",), timeout_s=0.05)
        with pytest.raises(DnsError, match="no answer for x.test"):
            asyncio.run(resolver.targets("x.test", 5060, None, False))
        assert resolver.failures == 1 and resolver.queries == 2  # each resolver tried twice
    finally:
        silent.close()
