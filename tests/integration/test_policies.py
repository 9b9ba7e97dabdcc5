"""The terms of use enforced on live SIPp calls: channel limits, caller-ID screening,
emergency caller ID, lost BYEs, and reload under load."""

from __future__ import annotations

import pytest

from .conftest import UAC_IP, Sipguard, Sipp, free_udp_port, until
from .phone import Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"

POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams:
    uas: "sip:127.0.0.3:{uas_port}"
    uas_cancel: "sip:127.0.0.3:{cancel_port}"
    uas_reject: "sip:127.0.0.3:{reject_port}"
  dialog_timeout_s: {dialog_timeout_s}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000, timer_c_s: 5}}
accounts:
  limited:
    kind: trunk
    channels: 3
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: uas
    numbers: [{{range: "+3228807240-+3228807249", site: main}}]
    sites: {{main: {{address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3228807240"}}}}
  cancelled:
    kind: trunk
    channels: 1
    match: {{sources: ["127.0.0.5/32"]}}
    upstream: uas_cancel
    numbers: [{{number: "+3228807250", site: main}}]
    sites: {{main: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
  refused:
    kind: trunk
    channels: 1
    match: {{sources: ["127.0.0.6/32"]}}
    upstream: uas_reject
    numbers: [{{number: "+3228807251", site: main}}]
    sites: {{main: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
"""


def _wait_active(sg: Sipguard, account: str, value: int, timeout_s: float = 20) -> None:
    seen = sg.wait_metric(f'sipguard_channels_active{{account="{account}"}}', value, timeout_s)
    assert seen == value, f"{account}: {seen} channels active, expected {value}"


def test_channel_limit_on_live_calls(sipguard_factory, sipp: Sipp) -> None:
    ports = {"cancel_port": free_udp_port("127.0.0.3"), "reject_port": free_udp_port("127.0.0.3")}
    sg = sipguard_factory(POLICY, **ports)
    assert sg.metric('sipguard_channels_limit{account="limited"}') == 3
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "5")  # three held, 112, and one after a BYE
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as phone:
        # three calls hold the account's three channels until this test hangs them up
        held = [phone.call(CALLEE) for _ in range(3)]
        assert [c.status for c in held] == [200, 200, 200]
        _wait_active(sg, "limited", 3)
        # the next INVITE gets 486 with a Warning naming the limit (checked by the scenario)
        run = sipp.uac("limit/uac_rejected.xml", sg.sip_port, "-s", CALLEE, "-m", "1", "-key", "caller",
                       "+3228807241", "-key", "extra", "X-Test: over the limit")
        assert run.returncode == 0, run.stdout[-2000:] + run.errors
        # at the limit, an emergency call is still admitted
        sos = phone.call("112")
        assert sos.status == 200 and phone.hangup(sos) == 200
        # after one BYE a new call is admitted while the other two still hold
        assert phone.hangup(held.pop()) == 200
        _wait_active(sg, "limited", 2)
        again = phone.call(CALLEE)
        assert again.status == 200
        _wait_active(sg, "limited", 3)
        for call in (again, *held):
            assert phone.hangup(call) == 200
    assert sipp.wait(uas) == 0
    _wait_active(sg, "limited", 0)
    rejects = [d for d in sg.decisions() if d["rule"] == "channel_limit"]
    assert len(rejects) == 1 and rejects[0]["account"] == "limited" and rejects[0]["status"] == 486
    assert rejects[0]["evidence"] == {"active": 3, "limit": 3}
    assert sg.metric('sipguard_emergency_calls_total{caller_id="kept",location="unverified"}') == 1

    # CANCEL frees the channel: with one channel, three cancelled calls in a row all get through
    uas = sipp.uas("cancel/uas.xml", ports["cancel_port"], "-m", "3")
    run = sipp.uac("cancel/uac.xml", sg.sip_port, "-s", CALLEE, "-m", "3", "-l", "1", "-key", "caller", "+3228807250",
                   ip="127.0.0.5")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0
    _wait_active(sg, "cancelled", 0)
    # so does a 486 from the UAS: all three reach the UAS (sipguard never refuses one for capacity)
    uas = sipp.uas("reject_486/uas.xml", ports["reject_port"], "-m", "3")
    run = sipp.uac("reject_486/uac.xml", sg.sip_port, "-s", CALLEE, "-m", "3", "-l", "1", "-key", "caller",
                   "+3228807251", ip="127.0.0.6")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0
    _wait_active(sg, "refused", 0)
    assert [d["account"] for d in sg.decisions() if d["rule"] == "channel_limit"] == ["limited"]


def test_caller_id_screening_on_live_calls(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("basic/uas.xml", sipguard.uas_port, "-m", "2")  # type: ignore[attr-defined]
    # a caller ID outside the account's blocks: 403 with the reason (checked by the scenario)
    run = sipp.uac("callerid/uac_forbidden.xml", sipguard.sip_port, "-s", CALLEE, "-m", "1",
                   "-key", "caller", "+3299999999", "-key", "extra", "X-Test: foreign")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # an own number in national format passes
    run = sipp.uac("callerid/uac.xml", sipguard.sip_port, "-s", CALLEE, "-m", "1", "-d", "100",
                   "-key", "caller", "028807241", "-key", "extra", "X-Test: national")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    # anonymous with an own asserted identity passes
    run = sipp.uac("callerid/uac.xml", sipguard.sip_port, "-s", CALLEE, "-m", "1", "-d", "100",
                   "-key", "caller", "anonymous", "-key", "extra", "P-Asserted-Identity: <sip:+3228807242@127.0.0.2>")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0
    rejects = [d for d in sipguard.decisions() if d["rule"] == "caller_id"]
    assert len(rejects) == 1 and rejects[0]["status"] == 403 and "+3299999999" in rejects[0]["reason"]
    assert sipguard.metric('sipguard_decisions_total{outcome="reject",rule="caller_id"}') == 1


EMERGENCY_POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
accounts:
  sites:
    kind: hosted
    match: {{sources: ["127.0.0.5/32", "127.0.0.6/32", "127.0.0.7/32"]}}
    upstream: uas
    users:
      - {{name: A, sip_users: ["201"]}}
    sites:
      a: {{address: "Avenue Léon Champagne 3, 1480 Saintes", sources: ["127.0.0.5/32"], emergency_caller_id: "+3228807240"}}
      b: {{address: "Industrieweg 12, 9000 Gent", sources: ["127.0.0.6/32"], emergency_caller_id: "+3292001100"}}
    numbers:
      - {{range: "+3228807240-+3228807249", site: a}}
      - {{number: "+3292001100", site: b}}
"""


def test_emergency_caller_id_follows_the_callers_site(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(EMERGENCY_POLICY)
    # from site A presenting a site-B number: the UAS gets site A's emergency caller ID
    uas = sipp.uas("emergency/uas_site_a.xml", sg.uas_port, "-m", "1")
    run = sipp.uac("callerid/uac.xml", sg.sip_port, "-s", "112", "-m", "1", "-d", "100", ip="127.0.0.5",
                   *("-key", "caller", "+3292001100", "-key", "extra", "X-Test: site B number"))
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0, "the UAS did not see site A's emergency caller ID"
    # from site A presenting a site-A number: untouched
    uas = sipp.uas("emergency/uas_untouched.xml", sg.uas_port, "-m", "1")
    run = sipp.uac("callerid/uac.xml", sg.sip_port, "-s", "112", "-m", "1", "-d", "100", ip="127.0.0.5",
                   *("-key", "caller", "+3228807243", "-key", "extra", "P-Asserted-Identity: <sip:+3228807243@127.0.0.5>"))
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0, "the UAS did not see the caller's own site-A number"
    # from an address of no site: passes, flagged as unverified
    uas = sipp.uas("basic/uas.xml", sg.uas_port, "-m", "1")
    run = sipp.uac("callerid/uac.xml", sg.sip_port, "-s", "112", "-m", "1", "-d", "100", ip="127.0.0.7",
                   *("-key", "caller", "+3228807244", "-key", "extra", "X-Test: roaming"))
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0
    # every emergency call has its decision-log line, the untouched one too (the audit trail of 112 calls)
    logged = [d for d in sg.decisions() if d["rule"] == "emergency"]
    assert [(d["evidence"]["location"], d["evidence"]["caller_id_action"], d["verdict"]) for d in logged] == [
        ("verified", "rewritten", "rewrite"), ("verified", "kept", "allow"), ("unverified", "kept", "flag")]
    assert logged[0]["evidence"]["caller_id"] == "+3228807240" and logged[0]["evidence"]["site"] == "a"
    assert "None" not in " ".join(d["reason"] for d in logged)
    m = sg.metrics()
    assert m['sipguard_emergency_calls_total{caller_id="rewritten",location="verified"}'] == 1
    assert m['sipguard_emergency_calls_total{caller_id="kept",location="verified"}'] == 1
    assert m['sipguard_emergency_calls_total{caller_id="kept",location="unverified"}'] == 1
    assert m['sipguard_clid_rewrites_total{rule="emergency"}'] == 1


def test_emergency_calls_in_every_form_reach_the_uas_at_the_channel_limit(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(EMERGENCY_POLICY)
    assert sg.metric('sipguard_channels_limit{account="sites"}') == 2
    uas = sipp.uas("emergency/uas_site_a.xml", sg.uas_port, "-m", "5")  # fails a call without site A's caller ID
    own = ["P-Asserted-Identity: <sip:+3228807240@127.0.0.5>"]
    with Phone("127.0.0.5", ("127.0.0.1", sg.sip_port)) as phone:
        held = [phone.call("+3250555555", "+3228807240", extra=own) for _ in range(2)]
        assert [c.status for c in held] == [200, 200]
        assert phone.call("+3250555555", "+3228807240", extra=own).status == 486  # the limit holds
        # at the limit, presenting a site-B number from site A: each form reaches the UAS with site A's number
        for uri in ("urn:service:sos", "sip:+32112@127.0.0.1", "tel:0032112"):
            sos = phone.call("112", "+3292001100", request_uri=uri)
            assert sos.status == 200, (uri, sos.status)
            assert phone.hangup(sos) == 200
        for call in held:
            assert phone.hangup(call) == 200
    assert sipp.wait(uas) == 0, "the UAS did not see site A's emergency caller ID on every call"
    flagged = [d for d in sg.decisions() if d["rule"] == "emergency"]
    assert [d["evidence"]["called"] for d in flagged] == ["urn:service:sos", "+32112", "0032112"]
    assert all(d["evidence"]["caller_id"] == "+3228807240" for d in flagged)
    assert sg.wait_metric('sipguard_channels_active{account="sites"}', 0) == 0


DISPLAY_POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
accounts:
  strict:
    kind: hosted
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: uas
    users: [{{name: Ann, sip_users: ["201"], site: hq}}]
    numbers: [{{range: "+3228807240-+3228807249", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
  lenient:
    kind: hosted
    match: {{sources: ["127.0.0.4/32"]}}
    upstream: uas
    users: [{{name: Bob, sip_users: ["301"], site: hq}}]
    numbers: [{{range: "+3250999000-+3250999009", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels"}}}}
    default_number: "+3250999001"
    on_caller_id_mismatch: rewrite
"""


def test_a_display_name_that_reads_as_a_foreign_number_is_refused_or_removed(sipguard_factory, sipp: Sipp) -> None:
    sg = sipguard_factory(DISPLAY_POLICY)
    uas = sipp.uas("callerid/uas_no_display.xml", sg.uas_port, "-m", "1")
    with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as strict:
        refused = strict.call("+3250555555", "+3228807241", display='"+3299999999"')
        assert refused.status == 403 and "From display name +3299999999" in refused.headers.get("warning", "")
    with Phone("127.0.0.4", ("127.0.0.1", sg.sip_port)) as lenient:
        rewritten = lenient.call("+3250555555", "+3250999002", display='"+3299999999"')
        assert rewritten.status == 200  # the UAS checked: From without the display name
        assert lenient.hangup(rewritten) == 200
    assert sipp.wait(uas) == 0
    decisions = [(d["account"], d["verdict"]) for d in sg.decisions() if d["rule"] == "caller_id"]
    assert decisions == [("strict", "reject"), ("lenient", "rewrite")]


def test_lost_bye_frees_the_channel_at_the_dialog_timeout(sipguard_factory, sipp: Sipp) -> None:
    ports = {"cancel_port": free_udp_port("127.0.0.3"), "reject_port": free_udp_port("127.0.0.3")}
    sg = sipguard_factory(POLICY, dialog_timeout_s=5, **ports)
    uas = sipp.uas("lost_bye/uas.xml", sg.uas_port, "-m", "2")
    run = sipp.uac("lost_bye/uac.xml", sg.sip_port, "-s", CALLEE, "-m", "2")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
    assert sipp.wait(uas) == 0
    assert sg.metric('sipguard_channels_active{account="limited"}') == 2
    _wait_active(sg, "limited", 0, timeout_s=10)
    assert sg.metric('sipguard_dialogs_ended_total{reason="timeout"}') == 2


def test_reload_under_load_drops_no_call_and_a_broken_policy_is_refused(sipguard: Sipguard, sipp: Sipp) -> None:
    uas = sipp.uas("basic/uas.xml", sipguard.uas_port, "-m", "300")  # type: ignore[attr-defined]
    calls = sipp.uac_background("basic/uac.xml", sipguard.sip_port, "-s", CALLEE, "-m", "300", "-r", "100",
                                "-d", "500")
    original = sipguard.policy.read_text()
    started = 'sipguard_dialogs_started_total{direction="outbound"}'
    assert until(lambda: sipguard.metric(started) >= 50), "the calls did not start"
    sipguard.policy.write_text(original + "# reloaded while calls run\n")
    assert sipguard.http("/reload", "POST") == (200, "reloaded\n")
    assert until(lambda: sipguard.metric(started) >= 100) and sipguard.metric("sipguard_dialogs") > 0
    sipguard.policy.write_text(original.replace("kind: hosted", "kind: lots"))
    status, body = sipguard.http("/reload", "POST")
    assert status == 400 and "accounts.office.kind" in body
    assert sipp.finish(calls) == 0, "a call failed during the reloads"
    assert sipp.wait(uas) == 0
    assert sipguard.metric('sipguard_dialogs_ended_total{reason="bye"}') == 300
    # the old policy is still enforced: a foreign caller ID is still refused
    run = sipp.uac("callerid/uac_forbidden.xml", sipguard.sip_port, "-s", CALLEE, "-m", "1",
                   "-key", "caller", "+3299999999", "-key", "extra", "X-Test: after reload")
    assert run.returncode == 0, run.stdout[-2000:] + run.errors
