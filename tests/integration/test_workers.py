"""Several worker processes on one address (``sipguard run --workers N``), with real SIPp calls.

Calls from one socket (a trunk) spread over the workers by Call-ID (the kernel steers each datagram to
the socket of the worker its Call-ID hashes to; what it cannot steer, the worker that reads it hands
on), each call's responses and
in-dialog requests come back to the worker that admitted it (its own port in Via and Record-Route),
and an account's channel limit holds across workers; a worker that dies gives its channels back.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest


from helpers import request

from .conftest import ROOT, Sipguard, Sipp, UAC_IP, call_id_for, free_tcp_port, free_udp_port, office_users, until
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


@pytest.mark.parametrize("transport", ["u1", "un"])
def test_calls_spread_over_two_workers_and_complete(sipguard_factory, sipp: Sipp, transport: str) -> None:
    """u1: every call from one SIPp socket, as a PBX trunk or a carrier sends them; un: a socket per call."""
    sg = sipguard_factory(POLICY, workers=2, users=office_users(400))
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-t", "un", "-max_socket", "1024")  # type: ignore[attr-defined]
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-t", transport, "-max_socket", "1024", "-s", CALLEE,
                   "-m", "300", "-r", "100", "-d", "200")
    assert run.returncode == 0 and run.stat("Successful call") == 300, run.stdout[-2000:] + run.errors
    invites = [w.metric('sipguard_requests_total{method="INVITE"}') for w in _workers(sg)]
    byes = [w.metric('sipguard_requests_total{method="BYE"}') for w in _workers(sg)]
    started = [w.metric('sipguard_dialogs_started_total{direction="outbound"}') for w in _workers(sg)]
    # both workers admitted calls (the Call-ID hash splits 300 calls about evenly: far from 0 either way)
    assert sum(invites) == 300 and min(invites) > 60, invites
    assert started == invites
    # the kernel steered every INVITE to its owner's socket (transport/steer.py): no worker handed one on
    handed = [w.metric("sipguard_worker_handoffs_total") for w in _workers(sg)]
    assert handed == [0, 0], handed
    assert "the kernel steering each datagram by its Call-ID" in sg.log.read_text()
    # every BYE went to the worker that admitted its call: as many BYEs as INVITEs on each
    assert byes == invites, (byes, invites)
    assert all(until(lambda w=w: w.metric("sipguard_dialogs") == 0) for w in _workers(sg))
    assert all(w.metric('sipguard_channels_active{account="limited"}') == 0 for w in _workers(sg))
    uas.kill()


def test_what_the_kernel_cannot_steer_is_handed_to_its_owner(sipguard_factory) -> None:
    """Call-IDs in the compact form ("i:") are not steered: the kernel gives the trunk's datagrams to one
    socket, and that worker hands the other's calls over, with the peer they came from."""
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind((UAC_IP, 0))
    via = f"{UAC_IP}:{trunk.getsockname()[1]}"
    for n in range(40):  # From a number the account does not own: each refused 403 by the worker owning it
        call_id = call_id_for(n % 2, prefix="compact")
        data = request(call_id=call_id, branch=f"z9hG4bK-c{n}", via_host=via, from_user="+3299999999")
        trunk.sendto(data.replace(b"Call-ID:", b"i:"), ("127.0.0.1", sg.sip_port))
    trunk.settimeout(2.0)
    refused: set[bytes] = set()
    while len(refused) < 40:
        try:
            data, _ = trunk.recvfrom(65535)
        except socket.timeout:
            break
        if data.startswith(b"SIP/2.0 403 "):
            refused.add(re.search(rb"\r\n(?:Call-ID|i): *([^\r]+)", data).group(1))  # type: ignore[union-attr]
    trunk.close()
    assert len(refused) == 40, len(refused)
    handed = [w.metric("sipguard_worker_handoffs_total") for w in _workers(sg)]
    invites = [w.metric('sipguard_requests_total{method="INVITE"}') for w in _workers(sg)]
    assert invites == [20, 20], invites  # each worker handled its own 20: the owner, whoever read them
    assert sorted(handed) == [0, 20], handed  # one socket read them all, and handed half on


def test_channel_limit_holds_across_workers_and_a_dead_workers_channels_come_back(
        sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))  # two people: 4 channels
    w0, w1 = _workers(sg)
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    proxy = ("127.0.0.1", sg.sip_port)
    trunk = Phone(UAC_IP, proxy)  # every call from one socket, as a trunk: the Call-ID decides the worker
    # two calls admitted by each worker, held until hung up: the account's four channels
    held0 = [trunk.call(CALLEE, call_id=call_id_for(0)) for _ in range(2)]
    held1 = [trunk.call(CALLEE, call_id=call_id_for(1)) for _ in range(2)]
    assert [c.status for c in held0 + held1] == [200] * 4
    assert until(lambda: w0.metric("sipguard_dialogs") == 2 and w1.metric("sipguard_dialogs") == 2)
    # each worker sees the account's four calls in use, and holds two of them (a sum over the workers is right)
    assert w0.metric('sipguard_channels_in_use{account="limited"}') == 4
    assert w1.metric('sipguard_channels_in_use{account="limited"}') == 4
    assert w0.metric('sipguard_channels_active{account="limited"}') == 2
    assert w1.metric('sipguard_channels_active{account="limited"}') == 2
    # the next call is refused whichever worker it reaches: 486 with the Warning naming the limit
    for worker in (w0, w1):
        before = worker.metric('sipguard_decisions_total{outcome="reject",rule="channel_limit"}')
        refused = trunk.call(CALLEE, call_id=call_id_for(_workers(sg).index(worker)))
        assert refused.status == 486 and "channel limit" in refused.headers.get("warning", ""), refused.headers
        assert worker.metric('sipguard_decisions_total{outcome="reject",rule="channel_limit"}') == before + 1
    # worker 1's calls end: worker 0 admits again
    assert [trunk.hangup(c) for c in held1] == [200, 200]
    assert until(lambda: w0.metric('sipguard_channels_in_use{account="limited"}') == 2)
    again = trunk.call(CALLEE, call_id=call_id_for(0))
    assert again.status == 200 and trunk.hangup(again) == 200
    # worker 0 dies with two calls held: the supervisor frees its channels and starts it again
    pid0 = int(re.search(r"sipguard worker 0 \(pid (\d+)\)", sg.log.read_text()).group(1))  # type: ignore[union-attr]
    os.kill(pid0, signal.SIGKILL)
    assert until(lambda: sg.log.read_text().count("sipguard worker 0 (pid") == 2)
    assert until(lambda: w1.metric('sipguard_channels_in_use{account="limited"}') == 0)
    assert until(lambda: w0.http("/healthz")[0] == 200)
    assert sg.alive()
    trunk.close()
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


def test_an_unknown_sources_flood_meets_one_worker_and_leaks_at_most_its_burst(sipguard_factory) -> None:
    """Calls of trusted sources are spread by Call-ID; a source of no account is dispatched by its address, so
    one worker's bucket sees its whole flood: banned after the burst (20), as with one process."""
    sg = sipguard_factory(POLICY, workers=2, users=office_users(2))
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.8", 0))
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    via = f"127.0.0.8:{flood.getsockname()[1]}"
    for i in range(2000):  # every INVITE a new Call-ID: spread by Call-ID, they would meet two buckets
        flood.sendto(request(call_id=f"flood-{i}", branch=f"z9hG4bK-fl{i}", via_host=via), ("127.0.0.1", sg.sip_port))
        if i % 200 == 199:
            time.sleep(0.01)
    answered: set[bytes] = set()  # the Call-IDs answered 403 (each answer retransmitted until ACKed: once each)
    flood.settimeout(1.0)
    while True:
        try:
            data, _ = flood.recvfrom(65535)
        except socket.timeout:
            break
        if data.startswith(b"SIP/2.0 403 "):
            answered.add(data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0])
    flood.close()
    assert 0 < len(answered) <= 20, len(answered)
    floods = [w.metric('sipguard_drops_total{reason="flood"}') for w in _workers(sg)]
    banned = [w.metric('sipguard_drops_total{reason="banned"}') for w in _workers(sg)]
    assert sorted(floods) == [0, 1] and banned[floods.index(0)] == 0 and sum(banned) >= 1900, (floods, banned)
