"""Next hops by name (RFC 3263) against a running sipguard, with dnsmasq serving NAPTR, SRV and A records on a
loopback port: the first target, the second after a 503 or when the first is down, a TTL change honoured,
a name without records a 503 (and a warning from `check`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import request
from sipguard.sip import parse

from .answering import Serving, StreamUas, answer
from .conftest import ROOT, TEST_POLICY, UAC_IP, Sipguard, free_udp_port, require, until

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
FIRST_IP, SECOND_IP = "127.0.0.3", "127.0.0.8"
DNS_POLICY = TEST_POLICY.replace('uas: "sip:127.0.0.3:{uas_port}"', 'uas: "{upstream}"').replace(
    "  sip_timers:", '  dns: {{servers: ["127.0.0.1:{dns_port}"]}}\n  sip_timers:')
assert "{upstream}" in DNS_POLICY and "dns_port" in DNS_POLICY


class Dnsmasq:
    """dnsmasq on 127.0.0.1:PORT answering for carrier.test only: NAPTR -> SRV -> A, with a short TTL."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("dnsmasq")
        self.port = free_udp_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, first: tuple[str, int], second: tuple[str, int], ttl_s: int = 1, transport: str = "udp") -> None:
        """_sip._udp.carrier.test (``transport`` tcp: _sip._tcp): a.carrier.test (priority 10) = ``first``,
        b.carrier.test (20) = ``second``."""
        self.stop()
        service, srv = ("SIP+D2U", "_sip._udp") if transport == "udp" else ("SIP+D2T", "_sip._tcp")
        args = [self.binary, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--no-poll", f"--local-ttl={ttl_s}", f"--pid-file={self.workdir}/dns.pid",
                f"--naptr-record=carrier.test,10,50,S,{service},,{srv}.carrier.test",
                f"--srv-host={srv}.carrier.test,a.carrier.test,{first[1]},10,60",
                f"--srv-host={srv}.carrier.test,b.carrier.test,{second[1]},20,60",
                f"--host-record=a.carrier.test,{first[0]}", f"--host-record=b.carrier.test,{second[0]}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert until(self._answers, 5), "dnsmasq did not come up"

    def _answers(self) -> bool:
        from sipguard.dns import SRV, query_bytes
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(query_bytes(7, "_sip._udp.carrier.test", SRV), ("127.0.0.1", self.port))
            try:
                return bool(s.recv(512))
            except (TimeoutError, socket.timeout):
                return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path)
    yield server
    server.stop()


class Uas(Serving):
    """A UDP UAS that answers every INVITE with ``status`` (None: never answers: a dead next hop)."""

    def __init__(self, ip: str, status: str | None) -> None:
        super().__init__()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.status = status
        self.invites: list[str] = []  # the Call-IDs of the INVITEs that came
        self.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, socket.timeout):
                continue
            if data.startswith(b"INVITE"):
                msg = parse(data)
                if msg.call_id not in self.invites:
                    self.invites.append(msg.call_id)
            reply = answer(data, self.status) if self.status else None
            if reply is not None:
                self.sock.sendto(reply, addr)

    def close(self) -> None:
        super().close()
        self.sock.close()


def _start(factory, dnsmasq: Dnsmasq, upstream: str = "sip:carrier.test") -> Sipguard:  # type: ignore[no-untyped-def]
    return factory(DNS_POLICY, upstream=upstream, dns_port=dnsmasq.port)  # type: ignore[no-any-return]


def _call(sg: Sipguard, call_id: str, timeout_s: float = 20) -> int:
    """An INVITE from the account's PBX; the final status it gets back."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((UAC_IP, 0))
        s.settimeout(timeout_s)
        s.sendto(request(ruri=f"sip:{CALLEE}@127.0.0.1", call_id=call_id, via_host=f"{UAC_IP}:{s.getsockname()[1]}",
                         rport=True, branch=f"z9hG4bK-{call_id}"), ("127.0.0.1", sg.sip_port))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = parse(s.recv(65536)).status  # type: ignore[union-attr]
            if status >= 200:
                return status
    raise AssertionError(f"no final answer to {call_id}")


def test_calls_go_to_the_first_srv_target_then_the_second_after_a_503(sipguard_factory, dnsmasq: Dnsmasq) -> None:
    first, second = Uas(FIRST_IP, "486 Busy Here"), Uas(SECOND_IP, "486 Busy Here")
    try:
        dnsmasq.start((FIRST_IP, first.port), (SECOND_IP, second.port))
        sg = _start(sipguard_factory, dnsmasq)
        assert [_call(sg, f"to-first-{i}") for i in range(3)] == [486] * 3
        assert first.invites == ["to-first-0", "to-first-1", "to-first-2"] and second.invites == []
        first.status = "503 Service Unavailable"  # the first target is overloaded: the same calls move on
        assert [_call(sg, f"after-503-{i}") for i in range(3)] == [486] * 3  # the caller never sees the 503
        assert [c for c in first.invites if c.startswith("after")] == [f"after-503-{i}" for i in range(3)]
        assert second.invites == [f"after-503-{i}" for i in range(3)]
        assert sg.wait_metric("sipguard_dialogs", 0) == 0
        assert sg.metric("sipguard_failovers_total") == 3
    finally:
        first.close()
        second.close()


def test_a_dead_first_target_is_left_after_its_timeout(sipguard_factory, dnsmasq: Dnsmasq) -> None:
    """No answer at all (Timer B: 64 × T1, 12.8 s with the tests' T1): the call goes to the second target."""
    dead, second = Uas(FIRST_IP, None), Uas(SECOND_IP, "486 Busy Here")
    try:
        dnsmasq.start((FIRST_IP, dead.port), (SECOND_IP, second.port))
        sg = _start(sipguard_factory, dnsmasq)
        t0 = time.monotonic()
        assert _call(sg, "first-dead", timeout_s=30) == 486
        assert 12 <= time.monotonic() - t0 < 20
        assert dead.invites == ["first-dead"] and second.invites == ["first-dead"]
    finally:
        dead.close()
        second.close()


def test_a_ttl_change_is_honoured(sipguard_factory, dnsmasq: Dnsmasq) -> None:
    first, second = Uas(FIRST_IP, "486 Busy Here"), Uas(SECOND_IP, "486 Busy Here")
    try:
        dnsmasq.start((FIRST_IP, first.port), (SECOND_IP, second.port), ttl_s=1)
        sg = _start(sipguard_factory, dnsmasq)
        assert _call(sg, "before") == 486 and first.invites == ["before"]
        dnsmasq.start((SECOND_IP, second.port), (FIRST_IP, first.port), ttl_s=1)  # the carrier swaps its targets
        time.sleep(1.5)  # past the 1 s TTL of what sipguard cached
        assert _call(sg, "after") == 486
        assert second.invites == ["after"] and first.invites == ["before"]
    finally:
        first.close()
        second.close()


def test_a_name_without_records_gets_503_and_a_warning_from_check(sipguard_factory, dnsmasq: Dnsmasq,
                                                                 tmp_path: Path) -> None:
    first, second = Uas(FIRST_IP, "486 Busy Here"), Uas(SECOND_IP, "486 Busy Here")
    try:
        dnsmasq.start((FIRST_IP, first.port), (SECOND_IP, second.port))
        sg = _start(sipguard_factory, dnsmasq, upstream="sip:nowhere.carrier.test")
        assert _call(sg, "no-records") == 503
        assert sg.wait_metric("sipguard_dialogs", 0) == 0 and sg.alive()
        assert "next hop nowhere.carrier.test" in sg.log.read_text()
        (refusal,) = [d for d in sg.decisions() if d.get("call_id") == "no-records"]
        assert refusal["status"] == 503
        check = subprocess.run([sys.executable, "-m", "sipguard", "check", str(sg.policy)], capture_output=True,
                               text=True, cwd=ROOT, timeout=60)
        assert check.returncode == 0, check.stdout  # a warning, not an error: DNS may come up later
        assert "warning: service.upstreams.uas: nowhere.carrier.test" in check.stdout
    finally:
        first.close()
        second.close()


def test_a_refused_connection_moves_the_call_to_the_next_target(sipguard_factory, dnsmasq: Dnsmasq) -> None:
    """NAPTR SIP+D2T -> _sip._tcp: the first target refuses the TCP connection (a transport error)."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.bind((FIRST_IP, 0))  # bound, never listening: a connection to it is refused
    second = StreamUas(SECOND_IP)
    try:
        dnsmasq.start((FIRST_IP, closed.getsockname()[1]), (SECOND_IP, second.port), transport="tcp")
        policy = DNS_POLICY.replace('listen: ["udp:127.0.0.1:{sip_port}"]',
                                    'listen: ["udp:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{sip_port}"]')
        sg = sipguard_factory(policy, upstream="sip:carrier.test", dns_port=dnsmasq.port)
        assert _call(sg, "first-refuses") == 486
        assert second.invites == ["first-refuses"]
        assert sg.metric("sipguard_failovers_total") == 1
        assert sg.wait_metric("sipguard_dialogs", 0) == 0
    finally:
        closed.close()
        second.close()
