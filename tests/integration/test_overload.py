"""Overload control on the wire (docs/overload.md): a sipguard with two workers forced into overload by the
test hook (``SIPGUARD_FORCE_OVERLOAD``: overloaded while the file it names exists) sheds new INVITEs with
503 + Retry-After, still completes the calls already up, still admits an INVITE to 112, and ends the state
on its own once the hook is gone.  The real signal (the queue's age) is measured by the benchmark
(``python -m bench.overload``, BENCHMARKS.md) and tested with real queues in tests/unit/test_shed.py."""

from __future__ import annotations

import time

import pytest

from .conftest import Sipp, UAC_IP, call_id_for, office_users, until
from .phone import Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"


def test_an_overloaded_sipguard_sheds_new_invites_but_not_calls_up_nor_112(sipguard_factory, sipp: Sipp,
                                                                          tmp_path) -> None:
    hook = tmp_path / "overloaded"
    sg = sipguard_factory(workers=2, users=office_users(10), env={"SIPGUARD_FORCE_OVERLOAD": str(hook)})
    workers = sg.workers  # type: ignore[attr-defined]
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    trunk = Phone(UAC_IP, ("127.0.0.1", sg.sip_port))
    up = [trunk.call(CALLEE, call_id=call_id_for(w)) for w in (0, 1)]  # a call up on each worker
    assert [c.status for c in up] == [200, 200]
    assert all(w.metric("sipguard_overload_active") == 0 for w in workers)

    hook.touch()
    assert all(until(lambda w=w: w.metric("sipguard_overload_active") == 1) for w in workers)
    for w in (0, 1):  # a new call is shed on either worker: 503, Retry-After, the Warning says why
        shed = trunk.call(CALLEE, call_id=call_id_for(w))
        assert shed.status == 503, shed.headers
        assert shed.headers.get("retry-after") == "2" and "overloaded" in shed.headers.get("warning", "")
        assert (shed.to_tag or "").startswith("sgov-")
    assert [w.metric("sipguard_overload_shed_total") for w in workers] == [1, 1]
    # the calls already up complete: their BYE passes and is answered
    assert [trunk.hangup(c) for c in up] == [200, 200]
    # an emergency call is never shed
    sos = trunk.call("112", call_id=call_id_for(0))
    assert sos.status == 200, sos.headers
    assert trunk.hangup(sos) == 200
    # the shed INVITEs' ACKs were absorbed at the edge: no routing refusal, no dialog, nothing held
    assert not sg.decisions("routing")
    assert all(until(lambda w=w: w.metric("sipguard_dialogs") == 0) for w in workers)
    assert all(w.metric('sipguard_channels_active{account="office"}') == 0 for w in workers)
    log = sg.log.read_text()
    assert log.count("overload: the oldest datagram waiting") == 2  # one line per worker

    hook.unlink()  # the load is gone: the state ends by itself (nothing shed for 2 s) and calls are admitted
    assert all(until(lambda w=w: w.metric("sipguard_overload_active") == 0, timeout_s=8) for w in workers)
    assert sg.log.read_text().count("overload ended after") == 2
    after = trunk.call(CALLEE, call_id=call_id_for(1))
    assert after.status == 200 and trunk.hangup(after) == 200
    trunk.close()
    uas.kill()


def test_a_second_sipguard_on_the_same_address_fails_to_start(sipguard_factory, tmp_path) -> None:
    """One process: the address is bound without SO_REUSEADDR/SO_REUSEPORT, so the second bind fails."""
    import subprocess
    import sys

    from .conftest import ROOT, free_tcp_port

    sg = sipguard_factory(users=office_users(2))
    second = tmp_path / "second.yaml"
    second.write_text(sg.policy.read_text().replace(f'admin: "127.0.0.1:{sg.admin_port}"',
                                                     f'admin: "127.0.0.1:{free_tcp_port()}"'))
    proc = subprocess.run([sys.executable, "-m", "sipguard", "run", "--policy", str(second)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1
    assert "Address already in use" in proc.stderr and f"{sg.sip_port}" in proc.stderr, proc.stderr[-2000:]
    assert sg.alive() and sg.http("/healthz")[0] == 200
