"""Every route is sipguard's own, tried as an attacker would: forged in-dialog requests, preloaded Routes,
an upstream's INVITE naming an IP address, a tampered route token; and what must still work: a BYE after a
restart, a send failure that releases its channel, the Belgian inbound caller-ID rule.  Shipped defaults."""

from __future__ import annotations

import socket
import pytest

from sipguard.sip import parse

from .conftest import UAC_IP, Sipguard, Sipp, office_users
from .phone import Phone

pytestmark = pytest.mark.integration

POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams:
    pbx: "sip:127.0.0.3:{uas_port}"
    carrier: "sip:127.0.0.7:5060"
    abroad: {{uri: "sip:127.0.0.8:5060", international: true}}
    dead: "sip:198.51.100.7:5060"
  inbound_caller_id: {{mode: {inbound_mode}, allow: ["+3225550000-+3225550099"]}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
accounts:
  acme:
    kind: hosted
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: pbx
    deliver_to: "sip:127.0.0.3:{uas_port}"
    users: {users}
    numbers: [{{range: "+3250123400-+3250123499", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3250123400"}}}}
  faraway:
    kind: hosted
    match: {{sources: ["127.0.0.6/32"]}}
    upstream: dead
    users: {users}
    numbers: [{{range: "+3250123500-+3250123599", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3250123500"}}}}
"""


def _start(factory, inbound_mode: str = "enforce") -> Sipguard:
    return factory(POLICY, users=office_users(10), inbound_mode=inbound_mode)  # type: ignore[no-any-return]


def _received(sock: socket.socket) -> list[bytes]:
    """What a socket holds now (no waiting)."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def test_forged_in_dialog_requests_preloaded_routes_and_ip_request_uris_never_leave(sipguard_factory) -> None:
    sg = _start(sipguard_factory)
    uas = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uas.bind(("127.0.0.3", sg.uas_port))  # type: ignore[attr-defined]
    trap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trap.bind(("127.0.0.9", 0))
    trap_at = f"127.0.0.9:{trap.getsockname()[1]}"
    proxy = ("127.0.0.1", sg.sip_port)
    with Phone(UAC_IP, proxy) as phone, Phone("127.0.0.7", proxy) as carrier:
        # 1. an INVITE with a To tag that matches no dialog, routed at the trap and the UAS
        lines = [f"INVITE sip:+3250555555@{trap_at} SIP/2.0", phone.via("z9hG4bK-forged"),
                 f"Route: <sip:127.0.0.1:{sg.sip_port};lr>, <sip:{trap_at};lr>",
                 f"From: <sip:+3250123401@{UAC_IP}>;tag=f1", "To: <sip:+3250555555@127.0.0.3>;tag=forged",
                 "Call-ID: forged-1", "CSeq: 1 INVITE", "Max-Forwards: 70"]
        assert phone.request(lines, "INVITE").status == 481
        # 2. an initial INVITE with a preloaded Route to the trap
        call = phone.call("+3250555555", "+3250123401", extra=[f"Route: <sip:{trap_at};lr>"])
        assert call.status == 403 and "Route not allowed" in call.headers.get("warning", "")
        # 3. from an upstream: an INVITE for no number of any account, its Request-URI naming the trap
        inbound = carrier.call("+3299999999", "+3212345678", request_uri=f"sip:+3299999999@{trap_at}")
        assert inbound.status == 404
        # then a legitimate call, forwarded in order after everything above: what reached the UAS or the
        # trap before it is all there is
        lines = ["OPTIONS sip:+3250555555@127.0.0.3 SIP/2.0", phone.via("z9hG4bK-sync"),
                 f"From: <sip:+3250123401@{UAC_IP}>;tag=s1", "To: <sip:+3250555555@127.0.0.3>",
                 "Call-ID: sync-1", "CSeq: 1 OPTIONS", "Max-Forwards: 70"]
        phone.send(lines)
        uas.settimeout(10)
        first = parse(uas.recv(65535))
    assert first.call_id == "sync-1", "something else reached the UAS first"
    assert _received(trap) == []
    assert all(parse(d).call_id == "sync-1" for d in _received(uas))
    trap.close()
    uas.close()
    routing = sg.decisions("routing")
    assert [(d["status"], d["evidence"]["source"]) for d in routing] == [(481, UAC_IP), (403, UAC_IP)]
    assert "matches no dialog sipguard admitted" in routing[0]["reason"] and trap_at.split(":")[0] in routing[1]["reason"]
    attribution = sg.decisions("attribution")
    assert [(d["status"], d["evidence"]["source"]) for d in attribution] == [(404, "127.0.0.7")]


def test_a_bye_after_a_restart_is_relayed_and_a_tampered_token_is_refused(sipguard_factory, sipp: Sipp) -> None:
    sg = _start(sipguard_factory)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "1")  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        call = phone.call("+3250555555", "+3250123401")
        assert call.status == 200 and len(call.route) == 1 and ";sgt=" in call.route[0]
        assert sg.metric('sipguard_channels_active{account="acme"}') == 1
        assert sg.wait_metric('sipguard_requests_total{method="ACK"}', 1) == 1  # relayed before the kill
        sg = sipguard_factory.restart(sg)  # SIGKILL, then a new process on the same address: no dialog held
        assert sg.metric("sipguard_dialogs") == 0
        # the same BYE with its route token changed: refused, and it never reaches the UAS
        token = call.route[0].split("sgt=")[1].rstrip(">")
        forged = call.route[0].replace(token, token[::-1])
        lines = [f"BYE {call.target} SIP/2.0", phone.via("z9hG4bK-tampered"), f"Route: {forged}",
                 f"From: <sip:{call.caller}@{UAC_IP}>;tag={call.from_tag}",
                 f"To: <sip:{call.callee}@127.0.0.1>;tag={call.to_tag}", f"Call-ID: {call.call_id}", "CSeq: 2 BYE",
                 "Max-Forwards: 70"]
        refused = phone.request(lines, "BYE")
        assert refused.status == 403 and "route token does not match" in (refused.get("warning") or "")
        # the real one: relayed on the proof of the token, answered by the UAS
        assert phone.hangup(call) == 200
    assert sipp.wait(uas) == 0, "the UAS did not get exactly the one real BYE"
    assert sg.metric("sipguard_token_relays_total") == 1
    assert [d["status"] for d in sg.decisions("routing")] == [403]


def test_a_send_failure_answers_503_and_holds_no_channel(sipguard_factory) -> None:
    sg = _start(sipguard_factory)
    # the account's upstream is an address a socket bound to 127.0.0.1 cannot send to: the kernel refuses
    with Phone("127.0.0.6", ("127.0.0.1", sg.sip_port)) as phone:
        call = phone.call("+3250555555", "+3250123501")
        assert call.status == 503 and "sending to 198.51.100.7:5060 failed" in call.headers.get("warning", "")
        sos = phone.call("112", "+3250123501")
        assert sos.status == 503
    assert sg.metric('sipguard_channels_active{account="faraway"}') == 0
    assert sg.metric("sipguard_dialogs") == 0
    assert sg.metric('sipguard_dialogs_ended_total{reason="send_failed"}') == 2
    assert sg.metric('sipguard_emergency_refused_total{reason="unroutable"}') == 1
    assert [d["status"] for d in sg.decisions("routing")] == [503, 503]
    log = sg.log.read_text()
    assert "WARNING" in log and "emergency call" in log and "refused (unroutable)" in log


def test_calls_from_abroad_may_not_present_a_belgian_number(sipguard_factory, sipp: Sipp) -> None:
    sg = _start(sipguard_factory)
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "3")  # type: ignore[attr-defined]
    with Phone("127.0.0.8", ("127.0.0.1", sg.sip_port)) as abroad:
        spoofed = abroad.call("+3250123410", "+3225551234")
        assert spoofed.status == 403 and "not allowed from abroad" in spoofed.headers.get("warning", "")
        national = abroad.call("+3250123410", "025551234")  # the same number, national format
        assert national.status == 403
        bona_fide = abroad.call("+3250123410", "+3225550042")  # registered: a cloud contact centre
        foreign = abroad.call("+3250123410", "+33123456789")
        assert (bona_fide.status, foreign.status) == (200, 200)
        assert abroad.hangup(bona_fide) == 200 and abroad.hangup(foreign) == 200
        refusals = sg.decisions("inbound_caller_id")
        assert [(d["status"], d["mode"], d["evidence"]["presented"]) for d in refusals] == [
            (403, "enforce", "+3225551234"), (403, "enforce", "+3225551234")]
        assert sg.metric('sipguard_decisions_total{outcome="reject",rule="inbound_caller_id"}') == 2
        # shadow mode: decided and logged, the call goes through
        sg.policy.write_text(sg.policy.read_text().replace("mode: enforce", "mode: shadow"))
        assert sg.http("/reload", "POST") == (200, "reloaded\n")
        shadowed = abroad.call("+3250123410", "+3225551234")
        assert shadowed.status == 200 and abroad.hangup(shadowed) == 200
    assert sipp.wait(uas) == 0
    assert [d["mode"] for d in sg.decisions("inbound_caller_id")] == ["enforce", "enforce", "shadow"]
