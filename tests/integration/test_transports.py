"""TCP (and the transport changes between UDP and TCP) against a running sipguard, with SIPp and raw sockets.

Every connection's bounds are the shipped defaults (service.connections): a message must be whole within
5 s of its first byte, 64 connections per source address.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import corpus
from helpers import CORPUS_EXPECTED_REPLY as EXPECTED_REPLY, CORPUS_NO_DIALOG as NO_DIALOG, request
from sipguard.sip import parse
from sipguard.transport.stream import Framer

from .answering import answer as _answer
from .conftest import CALLER2_IP, TEST_POLICY, UAC_IP, UAS_IP, Sipguard, Sipp, until

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
TCP_POLICY = TEST_POLICY.replace('listen: ["udp:127.0.0.1:{sip_port}"]',
                                'listen: ["udp:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{sip_port}"]').replace(
    'uas: "sip:127.0.0.3:{uas_port}"', 'uas: "sip:127.0.0.3:{uas_port};transport={uas_transport}"')
assert "tcp:127.0.0.1" in TCP_POLICY and "transport={uas_transport}" in TCP_POLICY


def _start(factory, uas_transport: str = "tcp", extra: str = "") -> Sipguard:  # type: ignore[no-untyped-def]
    return factory(TCP_POLICY + extra, uas_transport=uas_transport)  # type: ignore[no-any-return]


def _connect(sg: Sipguard, source: str = UAC_IP) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", sg.sip_port))
    return s


def _read_all(s: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything until the other side closes (bounded)."""
    s.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (ConnectionResetError, TimeoutError, socket.timeout):
        return data


def _closed_by_peer(s: socket.socket, timeout_s: float) -> bool:
    s.settimeout(timeout_s)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False


@pytest.mark.parametrize("mode", ["t1", "tn"])
def test_sipp_over_tcp_1000_calls(sipguard_factory, sipp: Sipp, mode: str) -> None:
    sg = _start(sipguard_factory)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "t1", "-m", "1000")  # type: ignore[attr-defined]
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", mode, "-s", CALLEE, "-r", "200", "-m", "1000", "-d", "100")
    assert run.stat("Successful call") == 1000 and run.stat("Failed call") == 0, run.errors
    assert sipp.wait(uas) == 0
    assert sg.wait_metric("sipguard_dialogs", 0) == 0
    m = sg.metrics()
    assert m['sipguard_dialogs_ended_total{reason="bye"}'] == 1000
    inbound = m['sipguard_connections_made_total{direction="inbound",transport="tcp"}']
    assert inbound == (1 if mode == "t1" else 1000)  # SIPp tn: a connection per call
    assert m['sipguard_connections_made_total{direction="outbound",transport="tcp"}'] == 1  # reused for every call
    assert m["sipguard_internal_errors_total"] == 0


def test_a_udp_caller_reaches_a_tcp_upstream_with_a_double_record_route(sipguard_factory, sipp: Sipp) -> None:
    sg = _start(sipguard_factory)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "t1", "-m", "20", "-trace_msg")  # type: ignore[attr-defined]
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", "u1", "-s", CALLEE, "-r", "20", "-m", "20", "-d", "100",
                   "-trace_msg")
    assert run.stat("Successful call") == 20 and run.stat("Failed call") == 0, run.errors
    assert sipp.wait(uas) == 0
    seen_by_uas = next(Path(run.workdir).glob("uas*_messages.log")).read_text()
    seen_by_uac = next(Path(run.workdir).glob("uac*_messages.log")).read_text()
    # RFC 5658: our TCP side first (towards the UAS), then our UDP side, with the same token
    rr = re.findall(r"Record-Route: <sip:127\.0\.0\.1:(\d+);transport=tcp;lr;sgt=(\w+)>\r?\n"
                    r"Record-Route: <sip:127\.0\.0\.1:(\d+);lr;sgt=(\w+)>", seen_by_uas)
    assert len(rr) == 20 and all(a == b and t1 == t2 for a, t1, b, t2 in rr)
    assert "SIP/2.0/TCP 127.0.0.1" in seen_by_uas and "SIP/2.0/TCP" not in seen_by_uac
    assert sg.wait_metric("sipguard_dialogs", 0) == 0


class _TwoTransportUas:
    """A UAS on 127.0.0.3:PORT over UDP and (when ``tcp``) TCP: records what came on which, answers INVITEs 486."""

    def __init__(self, port: int, tcp: bool) -> None:
        self.got: list[tuple[str, bytes]] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((UAS_IP, port))
        self.udp.settimeout(0.2)
        self.tcp: socket.socket | None = None
        if tcp:
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.bind((UAS_IP, port))
            self.tcp.listen(8)
            self.tcp.settimeout(0.2)
        self.stop = False
        self.threads = [threading.Thread(target=self._udp, daemon=True)]
        if tcp:
            self.threads.append(threading.Thread(target=self._tcp, daemon=True))
        for t in self.threads:
            t.start()

    def _udp(self) -> None:
        while not self.stop:
            try:
                data, addr = self.udp.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                continue
            self.got.append(("udp", data))
            answer = _answer(data)
            if answer:
                self.udp.sendto(answer, addr)

    def _tcp(self) -> None:
        assert self.tcp is not None
        while not self.stop:
            try:
                conn, _addr = self.tcp.accept()
            except (TimeoutError, socket.timeout):
                continue
            framer = Framer(65536)
            conn.settimeout(0.2)
            while not self.stop:
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, socket.timeout):
                    continue
                if not chunk:
                    break
                for data in framer.feed(chunk):
                    self.got.append(("tcp", data))
                    answer = _answer(data)
                    if answer:
                        conn.sendall(answer)
            conn.close()

    def close(self) -> None:
        self.stop = True
        for t in self.threads:
            t.join(timeout=2)
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


@pytest.mark.parametrize("uas_tcp", [True, False], ids=["uas-on-udp-and-tcp", "uas-on-udp-only"])
def test_a_3000_byte_invite_from_udp_goes_over_tcp_when_the_next_hop_takes_it(sipguard_factory, uas_tcp: bool) -> None:
    """RFC 3261 §18.1.1: over 1,300 bytes, TCP; a next hop that refuses the connection gets it over UDP."""
    sg = _start(sipguard_factory, uas_transport="udp")
    uas = _TwoTransportUas(sg.uas_port, uas_tcp)  # type: ignore[attr-defined]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((UAC_IP, 0))
    client.settimeout(10)
    try:
        body = b"v=0\r\n" + b"a=x-padding:" + b"p" * 2900 + b"\r\n"
        invite = request(ruri=f"sip:{CALLEE}@127.0.0.1:{sg.sip_port}", via_host=f"{UAC_IP}:{client.getsockname()[1]}",
                         rport=True, body=body, extra=["Content-Type: application/sdp"])
        assert len(invite) > 3000
        client.sendto(invite, ("127.0.0.1", sg.sip_port))
        statuses = []
        while 486 not in statuses:
            statuses.append(parse(client.recvfrom(65536)[0]).status)  # type: ignore[union-attr]
        assert until(lambda: any(parse(d).method == "ACK" for _t, d in uas.got  # type: ignore[union-attr]
                                 if not d.startswith(b"SIP/")), 5)
    finally:
        client.close()
        uas.close()
    invites = [(t, d) for t, d in uas.got if d.startswith(b"INVITE")]
    assert invites and {t for t, _d in invites} == {"tcp" if uas_tcp else "udp"}
    top_via = parse(invites[0][1]).vias[0]
    assert top_via.transport.upper() == ("TCP" if uas_tcp else "UDP") and top_via.host == "127.0.0.1"
    acks = [t for t, d in uas.got if d.startswith(b"ACK")]
    assert acks and set(acks) == {"tcp" if uas_tcp else "udp"}  # the ACK of the 486 goes the INVITE's way
    assert sg.wait_metric("sipguard_dialogs", 0) == 0


def _corpus_rows() -> list[dict[str, str]]:
    return corpus("rfc4475") + corpus("rfc5118")


# Over a stream, what framing decides (RFC 4475 §3.1.2.x says as much for TCP): the connection is closed without
# an answer for a Content-Length larger than what follows (clerr: it waits for more, then the peer closes), a
# negative one (ncl) or two that differ (mcl01); dblreq's trailing INVITE is a message of its own on a stream.
STREAM_CLOSES = {"clerr.dat", "ncl.dat", "mcl01.dat"}


def test_the_torture_messages_over_tcp(sipguard_factory) -> None:
    sg = _start(sipguard_factory, uas_transport="udp", extra="    rules: {{caller_id: off}}\n")
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind((UAS_IP, sg.uas_port))  # type: ignore[attr-defined]
    false_400 = []
    try:
        for row in _corpus_rows():
            name = row["file"]
            s = _connect(sg)
            s.sendall(row["bytes"])  # type: ignore[arg-type]
            s.shutdown(socket.SHUT_WR)  # then the peer's end: sipguard answers what it read, and closes
            # the status lines (an answer echoes a malformed From or To as received: RFC 4475 §3.1.2.6)
            replies = [int(m[8:11]) for m in Framer(65536).feed(_read_all(s))]
            s.close()
            if name in STREAM_CLOSES:
                assert replies == [], (name, replies)
            elif name in EXPECTED_REPLY:
                expected = EXPECTED_REPLY[name]
                assert replies == ([expected] if expected else []), (name, replies)
            elif row["class"] == "invalid" or name in ("insuf.dat", "multi01.dat", "ipv6-bug-abnf-3-colons.dat",
                                                      "inv2543.dat"):
                assert replies in ([400], []), (name, replies)
            elif name in NO_DIALOG:
                assert replies == [NO_DIALOG[name]], (name, replies)
            elif 400 in replies:
                false_400.append((name, replies))
    finally:
        uas.close()
    assert false_400 == []
    assert sg.alive()
    m = sg.metrics()
    assert m["sipguard_internal_errors_total"] == 0
    log = sg.log.read_text()
    assert "closed: framing: Content-Length b'-999' is not a number" in log  # ncl
    assert "closed: framing: more than one Content-Length" in log  # mcl01
    # and a message whose body runs past its Content-Length: what follows it is read as the next message
    assert m['sipguard_connections_closed_total{reason="framing",transport="tcp"}'] == log.count("closed: framing")
    assert sg.wait_metric('sipguard_connections{transport="tcp"}', 0) == 0


def test_slow_loris_connections_do_not_stop_a_call_and_are_closed_at_the_deadline(sipguard_factory,
                                                                                  sipp: Sipp) -> None:
    sg = _start(sipguard_factory)
    half = request(ruri=f"sip:{CALLEE}@127.0.0.1")[:70]  # half a header, never finished
    loris: list[socket.socket] = []
    try:
        for i in range(500):  # 25 from each of 20 addresses: under max_per_source (64)
            s = _connect(sg, f"127.0.1.{10 + i // 25}")
            s.sendall(half)
            loris.append(s)
        sent_at = time.monotonic()
        uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "t1", "-m", "5")  # type: ignore[attr-defined]
        run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", "t1", "-s", CALLEE, "-r", "5", "-m", "5", "-d", "100")
        assert run.stat("Successful call") == 5 and run.stat("Failed call") == 0, run.errors
        assert sipp.wait(uas) == 0
        assert time.monotonic() - sent_at < 5, "the call went through before the deadline"
        assert all(_closed_by_peer(s, max(0.1, sent_at + 8 - time.monotonic())) for s in loris)
        assert time.monotonic() - sent_at >= 4.5  # closed at the deadline (5 s), not before
    finally:
        for s in loris:
            s.close()
    m = sg.metrics()
    assert m['sipguard_connections_closed_total{reason="deadline",transport="tcp"}'] == 500
    log = sg.log.read_text()
    assert log.count("closed: deadline: a message unfinished after 5 s") == 10  # the rest are counted, not logged


def test_connection_bounds_keepalive_and_garbage(sipguard_factory) -> None:
    sg = _start(sipguard_factory)
    held = [_connect(sg, CALLER2_IP) for _ in range(64)]  # an account's PBX, at the bound
    try:
        over = _connect(sg, CALLER2_IP)  # the 65th from one address: closed as soon as accepted
        assert _closed_by_peer(over, 3)
        over.close()
        ping = held[0]
        ping.sendall(b"\r\n\r\n")  # RFC 5626 §3.5.1: a double CRLF is answered with one CRLF
        ping.settimeout(3)
        assert ping.recv(16) == b"\r\n"
        junk = held[1]
        junk.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # TLS on the TCP port: not SIP, closed
        assert _closed_by_peer(junk, 3)
        big = held[3]  # a message over max_message_bytes (16384): its framing cannot be trusted, closed
        big.sendall(request(body=b"v=0\r\n" + b"a=x\r\n" * 4000))
        assert _closed_by_peer(big, 3)
        # the other connections still serve: an OPTIONS to sipguard on one of them gets its 200
        ok = held[2]
        ok.sendall(request("OPTIONS", ruri=f"sip:127.0.0.1:{sg.sip_port}", via_host=f"{CALLER2_IP}:5060"))
        ok.settimeout(5)
        reply = Framer(65536)
        got: list[bytes] = []
        while not got:
            got = reply.feed(ok.recv(65536))
        assert parse(got[0]).status == 200  # type: ignore[union-attr]
    finally:
        for s in held:
            s.close()
    m = sg.metrics()
    assert m['sipguard_connections_refused_total{reason="max_per_source",transport="tcp"}'] == 1
    assert m['sipguard_connections_closed_total{reason="framing",transport="tcp"}'] == 2
    log = sg.log.read_text()
    assert "closed: framing: not SIP" in log and "over max_message_bytes (16384)" in log


def test_tcp_connections_spread_over_workers(sipguard_factory, sipp: Sipp) -> None:
    """With --workers every worker accepts on the one TCP listen socket and serves the connections it accepted."""
    sg = sipguard_factory(TCP_POLICY, uas_transport="tcp", workers=2)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "t1", "-m", "200")  # type: ignore[attr-defined]
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", "tn", "-s", CALLEE, "-r", "50", "-m", "200", "-d", "100")
    assert run.stat("Successful call") == 200 and run.stat("Failed call") == 0, run.errors
    assert sipp.wait(uas) == 0
    assert until(lambda: sum(w.metric('sipguard_dialogs_ended_total{reason="bye"}')
                             for w in sg.workers) == 200)  # type: ignore[attr-defined]
    accepted = [w.metric('sipguard_connections_made_total{direction="inbound",transport="tcp"}')
                for w in sg.workers]  # type: ignore[attr-defined]
    assert sum(accepted) == 200 and all(a > 0 for a in accepted)  # both accepted some


def test_idle_connections_are_closed_and_keepalives_keep_one_open(sipguard_factory) -> None:
    """service.connections at values of this test's own (the feature under test): idle 2 s, 3 connections."""
    policy = TCP_POLICY.replace("  sip_timers:", "  connections: {{idle_timeout_s: 2, max_connections: 3}}\n"
                                                 "  sip_timers:")
    sg = sipguard_factory(policy, uas_transport="tcp")
    quiet, alive = _connect(sg), _connect(sg)
    third = _connect(sg)
    fourth = _connect(sg, CALLER2_IP)  # a fourth connection to the listen address: over max_connections
    try:
        assert _closed_by_peer(fourth, 3)
        t0 = time.monotonic()
        for _ in range(4):  # a CRLF keep-alive a second (RFC 5626 §3.5.1) keeps ``alive`` open
            alive.sendall(b"\r\n\r\n")
            alive.settimeout(2)
            assert alive.recv(16) == b"\r\n"
            time.sleep(0.8)
        assert _closed_by_peer(quiet, 0.1) and time.monotonic() - t0 < 4.5  # silent for 2 s: closed (1 s sweep)
        alive.sendall(b"\r\n\r\n")
        assert alive.recv(16) == b"\r\n"  # still open
    finally:
        for s in (quiet, alive, third, fourth):
            s.close()
    m = sg.metrics()
    assert m['sipguard_connections_refused_total{reason="max_connections",transport="tcp"}'] == 1
    assert m['sipguard_connections_closed_total{reason="idle",transport="tcp"}'] >= 2  # quiet and third
