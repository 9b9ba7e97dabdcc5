"""Running sipguard like a service (docs/service.md): a stop that drains, with one process
and with workers; the admin API and ``sipguard status`` listing the calls up; the decision log reopened
after logrotate, with every emergency call in it.  Calls are held by ``phone.Phone`` until the test hangs them up; the callee is SIPp."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

from .conftest import CALLER2_IP, ROOT, Sipguard, Sipp, UAC_IP, call_id_for, office_users, until
from .phone import Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
AT_HQ = {"caller": "1000", "extra": ["P-Asserted-Identity: <sip:+3228807241@127.0.0.2>"]}


def _options(phone: Phone, sg: Sipguard) -> int:
    """An OPTIONS addressed to sipguard itself (a dispatcher's or SRV client's probe): its status."""
    branch = f"z9hG4bK-opt{time.monotonic_ns()}"  # a new transaction each time
    return phone.request([f"OPTIONS sip:127.0.0.1:{sg.sip_port} SIP/2.0", phone.via(branch),
                          f"From: <sip:probe@{phone.ip}>;tag=p1", f"To: <sip:127.0.0.1:{sg.sip_port}>",
                          f"Call-ID: probe-{branch}", "CSeq: 1 OPTIONS", "Max-Forwards: 70"], "OPTIONS").status


def _exits(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def test_sigterm_drains_the_calls_in_progress_then_exits_0(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory()
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        assert _options(phone, sg) == 200
        held = [phone.call(CALLEE) for _ in range(3)]
        assert [c.status for c in held] == [200, 200, 200]
        sg.proc.send_signal(signal.SIGTERM)
        assert until(lambda: "stopping: new calls get 503" in sg.log.read_text(), 10)
        # new calls are refused with a Retry-After, so a PBX or SRV client moves to another server...
        refused = phone.call(CALLEE)
        assert refused.status == 503 and refused.headers.get("retry-after", "").isdigit(), refused.headers
        assert _options(phone, sg) == 503
        # ...but an emergency call still goes through, and is drained like the others
        sos = phone.call("112")
        assert sos.status == 200
        held.append(sos)
        # the calls in progress go on: every BYE is relayed and answered; the process waits for the last
        for call in held[:-1]:
            assert phone.hangup(call) == 200
        assert sg.proc.poll() is None and sg.metric("sipguard_dialogs") == 1
        assert phone.hangup(held[-1]) == 200
    assert _exits(sg.proc, 10) == 0
    log = sg.log.read_text()
    assert "waiting for 3 calls in progress" in log and "the last call ended" in log and "sipguard stopped" in log
    refusals = [d for d in sg.decisions("service") if d.get("verdict") == "reject"]
    assert len(refusals) == 1 and refusals[0]["status"] == 503
    uas.kill()


def test_a_second_sigterm_stops_at_once(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory()
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        assert phone.call(CALLEE).status == 200  # held: the drain would wait for it (60 s by default)
        sg.proc.send_signal(signal.SIGTERM)
        assert until(lambda: "stopping: new calls get 503" in sg.log.read_text(), 10)
        assert _exits(sg.proc, 1) is None  # draining
        sg.proc.send_signal(signal.SIGTERM)
        assert _exits(sg.proc, 5) == 0
    assert "stopping now (a second signal): 1 calls in progress" in sg.log.read_text()
    uas.kill()


def test_workers_drain_together(sipguard_factory, sipp: Sipp) -> None:
    """Calls up on worker 0 only: worker 1, with nothing to drain, stays until worker 0 is done, because it
    still owns half the new INVITEs that worker 0 reads from the listen socket (it answers them 503)."""
    sg = sipguard_factory(workers=2)
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as trunk:
        held = [trunk.call(CALLEE, call_id=call_id_for(0)) for _ in range(2)]
        assert [c.status for c in held] == [200, 200]
        sg.proc.send_signal(signal.SIGTERM)  # the supervisor: every worker drains
        assert until(lambda: sg.log.read_text().count("stopping: new calls get 503") == 2, 10)
        time.sleep(0.5)  # worker 1 has no call: it would have left by now
        for worker in (1, 0):
            refused = trunk.call(CALLEE, call_id=call_id_for(worker), timeout_s=3)
            assert refused.status == 503 and "stopping" in refused.headers.get("warning", ""), worker
        for call in held:
            assert trunk.hangup(call) == 200
    assert _exits(sg.proc, 10) == 0
    assert sg.log.read_text().count("the last call ended") == 2
    uas.kill()


def _json(sg: Sipguard, path: str) -> dict:
    status, body = sg.http(path)
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def _status(admin_port: int, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "sipguard", "status", "--admin", f"127.0.0.1:{admin_port}", *extra],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("workers", [1, 2])
def test_the_admin_api_and_status_list_exactly_the_calls_up(sipguard_factory, sipp: Sipp, workers: int) -> None:
    sg = sipguard_factory(workers=workers)
    machine = sg if workers == 1 else dataclasses.replace(sg, admin_port=sg.admin_port - 1)  # the supervisor's
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as one, Phone(CALLER2_IP, ("127.0.0.1", sg.sip_port)) as two:
        held = [(p, p.call(CALLEE)) for p in (one, two, one)]
        assert [c.status for _p, c in held] == [200] * 3
        ended = held.pop(1)
        assert ended[0].hangup(ended[1]) == 200
        up = sorted(c.call_id for _p, c in held)
        assert until(lambda: sorted(c["call_id"] for c in _json(machine, "/calls")["calls"]) == up, 10)
        calls = _json(machine, "/calls?account=office")["calls"]
        assert {(c["account"], c["direction"], c["state"]) for c in calls} == {("office", "outbound", "confirmed")}
        assert _json(machine, "/calls?account=nobody")["calls"] == []
        (office,) = _json(machine, "/accounts")["accounts"]
        assert (office["account"], office["active"], office["held_here"], office["limit"]) == ("office", 2, 2, 107)
        assert _json(machine, "/bans") == {"bans": []}
        if workers == 2:
            assert machine.http("/healthz") == (200, "ok\n")
        text = _status(machine.admin_port)
        assert all(call_id in text for call_id in up) and ended[1].call_id not in text
        assert "office" in text and "2 calls up" in text and "0 sources banned" in text
        for phone, call in held:
            assert phone.hangup(call) == 200
        assert until(lambda: _json(machine, "/calls")["calls"] == [], 10)
    uas.kill()


def test_the_decision_log_is_reopened_after_logrotate_and_holds_every_emergency_call(sipguard_factory,
                                                                                      sipp: Sipp) -> None:
    sg = sipguard_factory()
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        # a 112 call from a person at its site (extension 1000, at hq) presenting a number of that site:
        # allowed, nothing rewritten...
        sos = phone.call("112", **AT_HQ)
        assert sos.status == 200 and phone.hangup(sos) == 200
        # ...and still in the decision log: the audit trail of emergency calls
        assert until(lambda: len(sg.decisions("emergency")) == 1, 5)
        (line,) = sg.decisions("emergency")
        assert line["verdict"] == "allow" and line["call_id"] == sos.call_id and "None" not in line["reason"]
        rotated = sg.decision_log.with_suffix(".1")
        sg.decision_log.rename(rotated)  # logrotate's way: rename, then tell the process
        sg.proc.send_signal(signal.SIGUSR1)
        assert until(lambda: sg.decision_log.exists(), 5)
        second = phone.call("112", **AT_HQ)
        assert second.status == 200 and phone.hangup(second) == 200
        assert until(lambda: len(sg.decisions("emergency")) == 1, 5)
    assert [d["call_id"] for d in sg.decisions("emergency")] == [second.call_id]
    assert [json.loads(x)["call_id"] for x in rotated.read_text().splitlines()] == [sos.call_id]
    assert "decision log reopened" in sg.log.read_text()
    uas.kill()


def test_the_log_says_start_limit_reload_and_stop_once_each(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(users=office_users(2))  # 4 channels
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    log = sg.log.read_text()
    assert f"listening on 127.0.0.1:{sg.sip_port}" in log and f"policy {sg.policy} (1 accounts)" in log
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        held = [phone.call(CALLEE) for _ in range(4)]
        assert [c.status for c in held] == [200] * 4
        assert [phone.call(CALLEE).status for _ in range(3)] == [486] * 3
        # one line for the limit being hit, not one per refused call
        assert sg.log.read_text().count("channels: account office: channel limit of 4 reached, a call refused") == 1
        assert len(sg.decisions("channel_limit")) == 3
        # a reload names what changed
        sg.policy.write_text(sg.policy.read_text().replace("Person 0", "Person Zero"))
        assert sg.http("/reload", "POST") == (200, "reloaded\n")
        assert f"policy reloaded from {sg.policy}: accounts changed: office" in sg.log.read_text()
        assert sg.http("/reload", "POST") == (200, "reloaded\n")
        assert "no change" in sg.log.read_text()
        for call in held:
            assert phone.hangup(call) == 200
    assert _exits(sg.proc, 0.1) is None
    sg.proc.send_signal(signal.SIGTERM)
    assert _exits(sg.proc, 10) == 0
    assert sg.log.read_text().count("sipguard stopped") == 1
    uas.kill()
