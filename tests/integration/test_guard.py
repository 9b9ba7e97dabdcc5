"""Auto-dialers on trunks are throttled then blocked; scanners and floods do not get through."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import asyncio_dgram
import pytest

from helpers import request
from sipguard.sip import parse

from .conftest import SCENARIOS, Sipguard, Sipp, free_udp_port

pytestmark = pytest.mark.integration

POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}", sink: "sip:127.0.0.3:{sink_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
  edge: {{packets_per_s: {pps}, burst: {burst}, ban_s: 60}}
  # rate_per_second out of reach: SIPp catching up after a stall on a loaded CI machine sends
  # bursts, which must not skip the warning step this test is about (the ladder is what it checks)
  autodialer: {{cooldown_s: 300, retry_after_s: 30, rate_per_second: {{warning: 20, critical: 50}}}}
accounts:
  dialer:
    kind: trunk
    channels: 100
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: uas
    numbers: [{{range: "+3250123400-+3250123499"}}]
  office:
    kind: trunk
    channels: 100
    match: {{sources: ["127.0.0.4/32"]}}
    upstream: uas
    numbers: [{{range: "+3228807240-+3228807249"}}]
    rules: {{autodialer: off}}
  flooder:
    kind: trunk
    channels: 100000
    match: {{sources: ["127.0.0.8/32"]}}
    upstream: sink
    rules: {{caller_id: off, autodialer: off}}
"""


def _start(factory, pps: int = 5000, burst: int = 10000) -> Sipguard:
    sink_port = free_udp_port("127.0.0.3")
    sg = factory(POLICY, sink_port=sink_port, pps=pps, burst=burst)
    sg.sink_port = sink_port  # type: ignore[attr-defined]
    return sg


def _decisions(sg: Sipguard, rule: str) -> list[dict]:
    lines = sg.decision_log.read_text().splitlines() if sg.decision_log.exists() else []
    return [d for d in map(json.loads, lines) if d["rule"] == rule]


def test_dialer_is_throttled_then_blocked_while_others_pass(sipguard_factory, sipp: Sipp) -> None:
    sg = _start(sipguard_factory)
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    numbers = Path(SCENARIOS / "dialer" / "numbers.csv")
    run = sipp.uac("dialer/uac.xml", sg.sip_port, "-inf", str(numbers), "-r", "3", "-m", "60", timeout_s=90)
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    decisions = _decisions(sg, "autodialer")
    statuses = [d["status"] for d in decisions if d["verdict"] == "reject"]
    assert 503 in statuses and 403 in statuses, statuses
    assert statuses.index(503) < statuses.index(403), "throttled first, then blocked"
    first_block = next(d for d in decisions if d["status"] == 403)
    ev = first_block["evidence"]
    assert ev["level"] == "critical" and ev["sequential_run"] >= 12 and ev["regularity_cv"] <= 0.2
    assert first_block["account"] == "dialer" and ev["source"] == "127.0.0.2"
    m = sg.metrics()
    assert m['sipguard_autodialer_detections_total{level="critical"}'] >= 1
    assert m['sipguard_autodialer_detections_total{level="warning"}'] >= 1
    assert m['sipguard_autodialer_score{account="dialer"}'] >= 5
    # while the dialer account is blocked: another account's calls pass...
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-s", "+3250555000", "-m", "5", "-r", "5", "-d", "100",
                   ip="127.0.0.4")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # ...the same account's emergency calls pass...
    run = sipp.uac("callerid/uac.xml", sg.sip_port, "-s", "112", "-m", "1", "-d", "100",
                   "-key", "caller", "+3250123401", "-key", "extra", "X-Test: emergency while blocked")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # ...and its ordinary calls are refused for the cool-down
    run = sipp.uac("unknown_source/uac.xml", sg.sip_port, "-s", "+3250555001", "-m", "1")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert _decisions(sg, "autodialer")[-1]["reason"] == "blocked as an auto-dialer (cool-down)"
    sipp.close()


async def _replies(client, timeout_s: float) -> list:
    out = []
    try:
        while True:
            data, _addr = await asyncio.wait_for(client.recv(), timeout=timeout_s)
            out.append(parse(data))
    except asyncio.TimeoutError:
        return out


async def test_scanner_user_agent_is_blocked_within_10_requests(sipguard_factory) -> None:
    sg = _start(sipguard_factory)
    ip = "127.0.0.9"
    port = free_udp_port(ip)
    client = await asyncio_dgram.bind((ip, port))
    proxy = ("127.0.0.1", sg.sip_port)
    try:
        for i in range(10):
            ua = ["User-Agent: friendly-scanner"] if i == 0 else []
            await client.send(request("OPTIONS", ruri=f"sip:100@127.0.0.1:{sg.sip_port}", call_id=f"scan{i}",
                                      branch=f"z9hG4bK-s{i}", via_host=f"{ip}:{port}", extra=ua), proxy)
        assert await _replies(client, 1.0) == []  # not even a 403: scanners learn nothing
        # a probe of sipguard itself from the banned address is not answered either
        await client.send(request("OPTIONS", ruri=f"sip:127.0.0.1:{sg.sip_port}", call_id="probe",
                                  branch="z9hG4bK-probe", via_host=f"{ip}:{port}"), proxy)
        assert await _replies(client, 0.5) == []
    finally:
        client.close()
    m = sg.metrics()
    assert m['sipguard_drops_total{reason="scanner"}'] == 1
    assert m['sipguard_drops_total{reason="banned"}'] == 10
    # another source is still answered
    other = await asyncio_dgram.bind(("127.0.0.10", free_udp_port("127.0.0.10")))
    try:
        addr = other.sockname
        await other.send(request("OPTIONS", ruri=f"sip:127.0.0.1:{sg.sip_port}", call_id="ok",
                                 branch="z9hG4bK-ok", via_host=f"{addr[0]}:{addr[1]}"), proxy)
        assert [r.status for r in await _replies(other, 2.0)] == [200]
    finally:
        other.close()


def test_flood_reaches_the_uas_only_within_the_budget(sipguard_factory, sipp: Sipp) -> None:
    sg = _start(sipguard_factory, pps=100, burst=200)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.3", sg.sink_port))  # type: ignore[attr-defined]
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sink.settimeout(0.2)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "20")  # type: ignore[attr-defined]
    legit = sipp.uac_background("basic/uac.xml", sg.sip_port, "-s", "+3250555000", "-m", "20", "-r", "10",
                                "-d", "200", ip="127.0.0.4")
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.8", 0))
    via = f"127.0.0.8:{flood.getsockname()[1]}"
    started = time.monotonic()
    for i in range(20000):
        flood.sendto(request(call_id=f"flood-{i}", branch=f"z9hG4bK-fl{i}", via_host=via,
                             from_user="+3299999999"), ("127.0.0.1", sg.sip_port))
        if i % 500 == 499:
            time.sleep(0.01)  # a few seconds in all, not one burst the kernel would drop
    elapsed = time.monotonic() - started
    flood.close()
    call_ids: set[str] = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            data, _ = sink.recvfrom(65535)
        except socket.timeout:
            continue
        call_ids.add(parse(data).call_id)
    sink.close()
    assert sipp.finish(legit) == 0, "a legitimate call failed during the flood"
    assert sipp.wait(uas) == 0
    assert sg.alive() and sg.http("/healthz")[0] == 200
    # burst + rate x time, the moment the bucket ran dry the source was banned
    assert 0 < len(call_ids) <= 200 + 100 * elapsed, (len(call_ids), elapsed)
    m = sg.metrics()
    assert m['sipguard_drops_total{reason="flood"}'] >= 1
    assert m['sipguard_drops_total{reason="banned"}'] >= 10000
