"""SIPp UAC -> sipguard -> SIPp UAS over loopback, one scenario folder per case."""

from __future__ import annotations

import json
import re

import pytest

from .conftest import Sipguard, Sipp, free_udp_port

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"


def _assert_clean(sg: Sipguard) -> None:
    """Afterwards every transaction and dialog is freed (64*T1 = 12.8 s with the test T1)."""
    assert sg.wait_metric("sipguard_dialogs", 0) == 0
    assert sg.wait_metric("sipguard_transactions", 0, timeout_s=30) == 0
    assert sg.alive()


def test_1000_calls_at_200_per_second(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("basic/uas.xml", sipguard.uas_port, "-m", "1000")  # type: ignore[attr-defined]
    run = sipp.uac("basic/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "200", "-m", "1000", "-d", "200")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    assert run.stat("Successful call") == 1000 and run.stat("Failed call") == 0
    assert sipp.wait(uas) == 0, "the UAS saw a failed call: some BYE did not reach it"
    m = sipguard.metrics()
    # every BYE passed through sipguard, and so did every ACK for the 2xx
    assert m['sipguard_requests_total{method="BYE"}'] == 1000
    assert m['sipguard_requests_total{method="ACK"}'] == 1000
    assert m['sipguard_dialogs_ended_total{reason="bye"}'] == 1000
    # every response SIPp sent (its Vias on one line) took the light path, none was parsed whole
    responses = sum(n for name, n in m.items() if name.startswith("sipguard_responses_total{"))
    assert responses >= 3000 and m["sipguard_responses_light_total"] == responses
    # on the shipped edge defaults: the customer's PBX is never banned, nothing was refused
    assert sipguard.http("/bans") == (200, '{\n "bans": []\n}\n')
    assert not [k for k in m if k.startswith("sipguard_drops_total") and ("banned" in k or "flood" in k)]
    assert not [k for k in m if k.startswith("sipguard_decisions_total") and 'outcome="reject"' in k]
    _assert_clean(sipguard)


def test_cancel_before_answer(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("cancel/uas.xml", sipguard.uas_port, "-m", "20")  # type: ignore[attr-defined]
    run = sipp.uac("cancel/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "20", "-m", "20")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    assert sipp.wait(uas) == 0
    assert sipguard.metric('sipguard_dialogs_ended_total{reason="cancelled"}') == 20
    _assert_clean(sipguard)


@pytest.mark.parametrize("status", ["486", "503"])
def test_final_4xx_5xx_acked_hop_by_hop(sipguard: Sipguard, sipp: Sipp, status: str) -> None:
    uas = sipp.uas(f"reject_{status}/uas.xml", sipguard.uas_port, "-m", "20")  # type: ignore[attr-defined]
    run = sipp.uac(f"reject_{status}/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "20", "-m", "20")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    # the UAS scenario ends with <recv request="ACK">: sipguard's own ACK reached it for every call
    assert sipp.wait(uas) == 0
    m = sipguard.metrics()
    assert m['sipguard_dialogs_ended_total{reason="rejected"}'] == 20
    assert m['sipguard_responses_total{class="%sxx"}' % status[0]] == 20
    _assert_clean(sipguard)


def test_uas_retransmitting_its_200(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("retrans_200/uas.xml", sipguard.uas_port, "-m", "20")  # type: ignore[attr-defined]
    run = sipp.uac("retrans_200/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "20", "-m", "20", "-d", "100")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    assert sipp.wait(uas) == 0
    assert sipguard.metric('sipguard_responses_total{class="2xx"}') >= 60  # 2 x 200 INVITE + 200 BYE
    _assert_clean(sipguard)


def test_uas_that_never_answers_gets_timer_c(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("timer_c/uas.xml", sipguard.uas_port, "-m", "5")  # type: ignore[attr-defined]
    run = sipp.uac("timer_c/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "5", "-m", "5")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors  # each got its 408
    assert sipp.wait(uas) == 0  # each got sipguard's CANCEL
    m = sipguard.metrics()
    assert m['sipguard_dialogs_ended_total{reason="timer_c"}'] == 5
    assert m['sipguard_replies_total{status="408"}'] == 5
    _assert_clean(sipguard)


def test_retransmitted_invites_are_absorbed(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("invite_retrans/uas.xml", sipguard.uas_port, "-m", "20")  # type: ignore[attr-defined]
    # -nr: SIPp would answer each repeated 100 by sending its INVITE again, a ping-pong no phone plays
    run = sipp.uac("invite_retrans/uac.xml", sipguard.sip_port, "-s", CALLEE, "-r", "20", "-m", "20", "-d", "100",
                   "-nr")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    assert sipp.wait(uas) == 0  # a second INVITE forwarded would have been unexpected there
    m = sipguard.metrics()
    assert m['sipguard_requests_total{method="INVITE"}'] == 40  # each sent twice
    assert m['sipguard_dialogs_started_total{direction="outbound"}'] == 20  # and admitted once
    assert m['sipguard_drops_total{reason="retransmission"}'] == 20  # absorbed, answered with our 100
    _assert_clean(sipguard)


def test_unknown_source_gets_403_and_is_logged(sipguard: Sipguard, sipp: Sipp) -> None:
    port = free_udp_port("127.0.0.9")
    run = sipp.uac("unknown_source/uac.xml", sipguard.sip_port, "-s", CALLEE, "-m", "3", ip="127.0.0.9", port=port)
    assert run.returncode == 0, run.stdout[-3000:] + run.errors  # each got a 403 and ACKed it
    assert sipguard.metric('sipguard_decisions_total{outcome="reject",rule="attribution"}') == 3
    lines = [json.loads(line) for line in sipguard.decision_log.read_text().splitlines()]
    assert len(lines) == 3 and all(r["reason"] == "unknown source" and r["status"] == 403 for r in lines)
    assert lines[0]["evidence"] == {"source": "127.0.0.9"} and lines[0]["call_id"]


IPV6_POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}", "udp:[::1]:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
accounts:
  v6office:
    kind: hosted
    match: {{sources: ["::1/128"]}}
    upstream: uas
    users: {users}
    numbers: [{{range: "+3228807240-+3228807249", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
"""


def test_ipv6_caller_to_ipv4_callee_with_double_record_route(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(IPV6_POLICY)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "50", "-trace_msg")
    run = sipp.uac("basic/uac.xml", sg.sip_port, "-s", CALLEE, "-r", "50", "-m", "50", "-d", "100",
                   ip="::1", port=free_udp_port("::1"), target_host="[::1]")
    assert run.returncode == 0, run.stdout[-3000:] + run.errors
    assert sipp.wait(uas) == 0
    trace = "".join(p.read_text() for p in run.workdir.glob("*_messages.log"))
    # RFC 5658: one Record-Route per side, so each side's route set reaches its own family
    token = r";lr;sgt=([0-9a-f]{28})>"
    pair = re.search(rf"Record-Route: <sip:127\.0\.0\.1:{sg.sip_port}{token}\nRecord-Route: <sip:\[::1\]:{sg.sip_port}{token}",
                     trace)
    assert pair is not None and pair.group(1) == pair.group(2), trace[:2000]
    assert sg.metric('sipguard_dialogs_ended_total{reason="bye"}') == 50
    _assert_clean(sg)
