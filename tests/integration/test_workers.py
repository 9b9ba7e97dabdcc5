"""Several worker processes on one address (``sipguard run --workers N``), with real SIPp calls.

Calls spread over the workers by source (SO_REUSEPORT), each call's responses and in-dialog
requests come back to the worker that admitted it (its own port in Via and Record-Route), and
an account's channel limit holds across workers; a worker that dies gives its channels back.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from helpers import request

from .conftest import ROOT, UAC_IP, Sipguard, Sipp, free_tcp_port, free_udp_port, office_users, until
from .phone import Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
accounts:
  limited:
    kind: hosted
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: uas
    users: {users}
    numbers: [{{range: "+3228807240-+3228807249", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
"""


def _workers(sg: Sipguard) -> list[Sipguard]:
    return sg.workers  # type: ignore[attr-defined,no-any-return]


def test_calls_spread_over_two_workers_and_complete(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(POLICY, workers=2, users=office_users(400))
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "un", "-max_socket", "1024")  # type: ignore[attr-defined]
    # one SIPp socket per call: sources differ, so the kernel spreads the calls over the workers
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", "un", "-max_socket", "1024", "-s", CALLEE,
                   "-m", "300", "-r", "100", "-d", "200")
    assert run.returncode == 0 and run.stat("Successful call") == 300, run.stdout[-2000:] + run.errors
    invites = [w.metric('sipguard_requests_total{method="INVITE"}') for w in _workers(sg)]
    byes = [w.metric('sipguard_requests_total{method="BYE"}') for w in _workers(sg)]
    assert sum(invites) == 300 and min(invites) > 0, invites
    # every BYE went to the worker that admitted its call: as many BYEs as INVITEs on each
    assert byes == invites, (byes, invites)
    assert all(until(lambda w=w: w.metric("sipguard_dialogs") == 0) for w in _workers(sg))
    assert all(w.metric('sipguard_channels_active{account="limited"}') == 0 for w in _workers(sg))
    uas.kill()


def _source_port_for(sg: Sipguard, worker: int, taken: set[int]) -> int:
    """A UDP source port on the UAC's address whose packets the kernel gives to ``worker``.

    Found by asking: an OPTIONS to sipguard itself from a candidate port, and which worker
    counted it.  SO_REUSEPORT picks by a hash of the addresses and ports, so this is stable.
    """
    workers = _workers(sg)
    for attempt in range(64):
        port = free_udp_port(UAC_IP)
        if port in taken:
            continue
        before = [w.metric('sipguard_requests_total{method="OPTIONS"}') for w in workers]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((UAC_IP, port))
            s.settimeout(2)
            s.sendto(request("OPTIONS", ruri=f"sip:127.0.0.1:{sg.sip_port}", call_id=f"probe-{attempt}",
                             branch=f"z9hG4bK-probe-{attempt}", via_host=f"{UAC_IP}:{port}"),
                     ("127.0.0.1", sg.sip_port))
            s.recvfrom(65535)  # answered (200): counted by now
        after = [w.metric('sipguard_requests_total{method="OPTIONS"}') for w in workers]
        if after[worker] > before[worker]:
            return port
    raise AssertionError(f"no source port reaches worker {worker}")


def test_channel_limit_holds_across_workers_and_a_dead_workers_channels_come_back(
        sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))  # two people: 4 channels
    w0, w1 = _workers(sg)
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    port0 = _source_port_for(sg, 0, set())
    port1 = _source_port_for(sg, 1, {port0})
    proxy = ("127.0.0.1", sg.sip_port)
    phone0, phone1 = Phone(UAC_IP, proxy, port0), Phone(UAC_IP, proxy, port1)
    # two calls admitted by each worker, held until hung up: the account's four channels
    held0 = [phone0.call(CALLEE) for _ in range(2)]
    held1 = [phone1.call(CALLEE) for _ in range(2)]
    assert [c.status for c in held0 + held1] == [200] * 4
    assert until(lambda: w0.metric("sipguard_dialogs") == 2 and w1.metric("sipguard_dialogs") == 2)
    # each worker sees the account's four calls in use, and holds two of them (a sum over the workers is right)
    assert w0.metric('sipguard_channels_in_use{account="limited"}') == 4
    assert w1.metric('sipguard_channels_in_use{account="limited"}') == 4
    assert w0.metric('sipguard_channels_active{account="limited"}') == 2
    assert w1.metric('sipguard_channels_active{account="limited"}') == 2
    # the next call is refused whichever worker it reaches: 486 with the Warning naming the limit
    for port in (_source_port_for(sg, 0, {port0, port1}), _source_port_for(sg, 1, {port0, port1})):
        run = sipp.uac("limit/uac_rejected.xml", sg.sip_port, "-s", CALLEE, "-m", "1", "-key", "caller",
                       "+3228807241", "-key", "extra", "X-Test: over the limit", port=port)
        assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # worker 1's calls end: worker 0 admits again
    assert [phone1.hangup(c) for c in held1] == [200, 200]
    phone1.close()
    assert until(lambda: w0.metric('sipguard_channels_in_use{account="limited"}') == 2)
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-s", CALLEE, "-m", "1", "-d", "100",
                   port=_source_port_for(sg, 0, {port0, port1}))
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # worker 0 dies with two calls held: the supervisor frees its channels and starts it again
    pid0 = int(re.search(r"sipguard worker 0 \(pid (\d+)\)", sg.log.read_text()).group(1))  # type: ignore[union-attr]
    os.kill(pid0, signal.SIGKILL)
    assert until(lambda: sg.log.read_text().count("sipguard worker 0 (pid") == 2)
    assert until(lambda: w1.metric('sipguard_channels_in_use{account="limited"}') == 0)
    assert until(lambda: w0.http("/healthz")[0] == 200)
    assert sg.alive()
    phone0.close()
    uas.kill()


def test_a_reload_reaches_every_worker(sipguard_factory) -> None:
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))
    w0, w1 = _workers(sg)
    assert w0.metric('sipguard_channels_limit{account="limited"}') == 4
    sg.policy.write_text(sg.policy.read_text().replace(office_users(2), office_users(4)))  # 4 people: 6 channels
    status, body = w0.http("/reload", method="POST")
    assert status == 200, body
    # worker 0 reloaded, and asked the supervisor to reload the others (SIGHUP)
    assert until(lambda: w1.metric('sipguard_channels_limit{account="limited"}') == 6)
    assert w0.metric('sipguard_channels_limit{account="limited"}') == 6
    # a broken file is refused by the worker asked, and nothing changes anywhere
    sg.policy.write_text(sg.policy.read_text().replace("kind: hosted", "kind: many"))
    status, body = w1.http("/reload", method="POST")
    assert status == 400 and "accounts.limited.kind" in body
    assert w0.metric('sipguard_channels_limit{account="limited"}') == 6
    assert w1.metric('sipguard_channels_limit{account="limited"}') == 6


def test_a_worker_that_cannot_start_stops_the_supervisor(tmp_path) -> None:
    import subprocess
    import sys

    from bench.run import free_tcp_port

    from .conftest import ROOT

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):  # a free port whose worker-1 port (+2) we can hold
        sip_port = free_udp_port()
        try:
            blocker.bind(("127.0.0.1", sip_port + 2))
            break
        except OSError:
            continue
    else:
        raise AssertionError("no free port pair on 127.0.0.1")
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY.format(sip_port=sip_port, admin_port=free_tcp_port(), uas_port=5063,
                                    users=office_users(2)))
    try:
        proc = subprocess.run([sys.executable, "-m", "sipguard", "run", "--policy", str(policy), "--workers", "2"],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    finally:
        blocker.close()
    assert proc.returncode == 1
    assert "worker 1 could not start" in proc.stderr and "Address already in use" in proc.stderr


def test_a_second_sipguard_with_workers_on_the_same_address_fails_to_start(sipguard_factory, tmp_path) -> None:
    """SO_REUSEPORT would let it share the port and silently take half the calls: it must refuse instead."""
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))
    second = tmp_path / "second.yaml"
    other_admin = free_tcp_port()
    second.write_text(sg.policy.read_text().replace(f'admin: "127.0.0.1:{sg.admin_port - 1}"',
                                                     f'admin: "127.0.0.1:{other_admin}"'))
    assert f"127.0.0.1:{other_admin}" in second.read_text()
    proc = subprocess.run([sys.executable, "-m", "sipguard", "run", "--policy", str(second), "--workers", "2"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1
    assert f"udp:127.0.0.1:{sg.sip_port} is served by another sipguard on this host already" in proc.stderr
    assert sg.alive() and all(w.http("/healthz")[0] == 200 for w in _workers(sg))
