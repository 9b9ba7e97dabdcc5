"""Every proxy rule (README, "SIP behaviour") on the pure core, driven with a manual clock."""

from __future__ import annotations

import re

import pytest

from helpers import UAC, UAS, Wire, as_request, feed, request, response_to, run_timers
from sipguard.policy import Engine, load_text
from sipguard.sip import (Decided, DialogEnded, DialogStarted, EndedByToken, Local, Peer, ProxyCore, Reject, Request,
                          Send, Settle, SipError, TimerConfig, parse)
from sipguard.sip.message import parse_name_addr
from sipguard.sip.parser import peek_response

ROUTE = "Route: <sip:127.0.0.1:5060;lr>"


def call_up(core: ProxyCore, clock, wire: Wire, **kw) -> Request:
    """INVITE -> 180 -> 200 through the core; returns the INVITE as the UAS got it."""
    feed(core, request(**kw), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    assert isinstance(fwd, Request) and fwd.method == "INVITE"
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    feed(core, response_to(fwd, 200, "OK"), UAS, clock.advance(0.01), wire)
    return fwd


def in_dialog(method: str, branch: str, cseq: int, **kw) -> bytes:
    return request(method, ruri="sip:uas@127.0.0.3:5063", branch=branch, to_tag="uas-tag", cseq=cseq,
                   extra=[ROUTE], **kw)


# ---------------------------------------------------------------- forwarding an INVITE
def test_invite_gets_100_trying_and_is_forwarded_with_via_rr_and_mf(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [100]
    fwd = wire.last_to(UAS)
    top = fwd.vias[0]
    assert (top.host, top.port) == ("127.0.0.1", 5060)
    assert top.branch.startswith("z9hG4bK") and len(top.branch) > len("z9hG4bK") + 4  # RFC 3261 branch
    assert fwd.vias[1].branch == "z9hG4bK-uac-1"
    assert fwd.max_forwards == 69
    rr = fwd.get_all("record-route")
    assert len(rr) == 1 and re.fullmatch(r"<sip:127\.0\.0\.1:5060;lr;sgt=[0-9a-f]{28}>", rr[0]), rr
    assert fwd.uri == "sip:+3250123400@127.0.0.3:5063"  # Request-URI untouched


def test_missing_max_forwards_is_added_as_70(core, clock) -> None:
    wire = Wire()
    feed(core, request(max_forwards=None), UAC, clock.now, wire)
    assert wire.last_to(UAS).max_forwards == 70


def test_max_forwards_zero_gets_483_and_is_not_forwarded(core, clock) -> None:
    wire = Wire()
    feed(core, request(max_forwards=0), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [483]
    assert wire.to(UAS) == []


def test_options_to_sipguard_itself_gets_200(core, clock) -> None:
    wire = Wire()
    feed(core, request("OPTIONS", ruri="sip:127.0.0.1:5060"), Peer("udp", "198.51.100.99", 5060), clock.now, wire)
    sends = wire.to(Peer("udp", "198.51.100.99", 5062))
    assert [s.status for s in sends] == [200]
    resp = parse(sends[0].data)
    assert "INVITE" in (resp.get("allow") or "")


def test_options_with_max_forwards_zero_to_itself_still_gets_200(core, clock) -> None:
    wire = Wire()
    feed(core, request("OPTIONS", ruri="sip:127.0.0.1:5060", max_forwards=0), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [200]


STOPPING = Reject(503, "Service Unavailable", (("retry-after", "5"),))


def test_while_stopping_new_calls_and_options_get_503_but_calls_up_and_emergency_calls_go_on(core, clock) -> None:
    """The drain (docs/service.md): what a stopping sipguard refuses, and what it still carries."""
    wire = Wire()
    up = call_up(core, clock, wire)
    core.router.draining = core.unavailable = STOPPING
    feed(core, request(call_id="new-1", branch="z9hG4bK-new-1"), UAC, clock.advance(0.1), wire)
    refused = parse(wire.to(UAC)[-1].data)
    assert refused.status == 503 and refused.get("retry-after") == "5"
    feed(core, request("OPTIONS", ruri="sip:127.0.0.1:5060", call_id="probe", branch="z9hG4bK-probe"), UAC,
         clock.advance(0.01), wire)
    assert wire.statuses_to(UAC)[-1] == 503
    feed(core, request(ruri="sip:112@127.0.0.1:5060", call_id="sos-1", branch="z9hG4bK-sos-1"), UAC,
         clock.advance(0.01), wire)
    assert wire.last_to(UAS).call_id == "sos-1"  # an emergency call is never refused for the stop
    feed(core, in_dialog("BYE", "z9hG4bK-bye-1", 2), UAC, clock.advance(0.01), wire)
    bye = wire.last_to(UAS)
    assert bye.method == "BYE" and bye.call_id == up.call_id  # the call up ends as usual


def test_rport_and_received_are_set_on_the_forwarded_via(core, clock) -> None:
    wire = Wire()
    nat = Peer("udp", "127.0.0.2", 40000)  # the UAC is behind a NAT: port differs from its Via
    feed(core, request(rport=True, via_host="10.1.1.1:5062"), nat, clock.now, wire)
    # replies go to the source address and port (RFC 3581 §4)
    assert [s.dest for s in wire.sent if s.status == 100] == [nat]
    via = wire.last_to(UAS).vias[1]
    assert via.param("received") == "127.0.0.2" and via.param("rport") == "40000"


def test_received_without_rport_replies_to_the_via_port(core, clock) -> None:
    wire = Wire()
    feed(core, request(via_host="uac.example.com:5070"), Peer("udp", "127.0.0.2", 40000), clock.now, wire)
    assert [s.dest for s in wire.sent if s.status == 100] == [Peer("udp", "127.0.0.2", 5070)]
    assert wire.last_to(UAS).vias[1].param("received") == "127.0.0.2"


def test_loop_is_detected_with_482(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    looped = wire.to(UAS)[-1].data  # as if the next hop sent it straight back to us
    wire.clear()
    feed(core, looped, UAC, clock.advance(0.01), wire)
    assert [s.status for s in wire.sent] == [482]  # answered, not forwarded again


def test_a_loop_hash_that_only_starts_like_ours_is_not_a_loop(core, clock) -> None:
    """Our branch is the loop hash (decimal, of varying length), a dot, then a counter: a Via of ours whose
    branch holds a longer hash that starts with this request's is another request, not this one looped."""
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    looped = wire.to(UAS)[-1].data
    ours = parse(looped).vias[0].branch
    assert ours is not None and ours.startswith("z9hG4bK")
    loop, dot, counter = ours[len("z9hG4bK"):].partition(".")
    assert dot and loop.isdigit() and counter.isdigit()
    longer = looped.replace(ours.encode(), f"z9hG4bK{loop}7.{counter}".encode(), 1)
    wire.clear()
    feed(core, longer, UAC, clock.advance(0.01), wire)
    assert 482 not in [s.status for s in wire.sent]
    wire.clear()
    feed(core, looped, UAC, clock.advance(0.01), wire)  # the same Via with the branch as written: a loop
    assert [s.status for s in wire.sent] == [482]


def test_spiral_with_a_changed_request_uri_is_not_a_loop(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    spiral = wire.to(UAS)[-1].data.replace(b"INVITE sip:+3250123400@", b"INVITE sip:+3250123401@", 1)
    wire.clear()
    feed(core, spiral, UAC, clock.advance(0.01), wire)
    assert 482 not in [s.status for s in wire.sent]


def test_proxy_require_gets_420_with_unsupported(core, clock) -> None:
    wire = Wire()
    feed(core, request(extra=["Proxy-Require: foo, bar"]), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [420]
    assert parse(wire.sent[0].data).get("unsupported") == "foo, bar"


def test_unknown_source_gets_403_and_is_not_forwarded(core, clock) -> None:
    wire = Wire()
    stranger = Peer("udp", "127.0.0.9", 5062)
    feed(core, request(), stranger, clock.now, wire)
    sends = wire.to(Peer("udp", "127.0.0.9", 5062))
    assert [s.status for s in sends] == [403]
    assert "belongs to no account" in (parse(sends[0].data).get("warning") or "")
    assert wire.to(UAS) == []


# ---------------------------------------------------------------- responses
def test_responses_follow_the_via_path_and_100_is_hop_by_hop(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 100, "Trying"), UAS, clock.advance(0.01), wire)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC) == [100, 180]  # our 100, not the UAS's
    ringing = wire.last_to(UAC)
    assert [v.branch for v in ringing.vias] == ["z9hG4bK-uac-1"]  # our Via removed


def test_response_whose_top_via_is_not_ours_is_dropped(core, clock) -> None:
    wire = Wire()
    stray = response_to(as_request(request()), 200, "OK")
    feed(core, stray, UAS, clock.now, wire)
    assert wire.sent == []
    assert core.stats.drops["not_our_via"] == 1


def test_stray_2xx_with_our_via_is_forwarded_statelessly(core, clock) -> None:
    wire = Wire()
    fwd = call_up(core, clock, wire)
    run_timers(core, clock.advance(100), wire)  # every transaction gone
    assert core.transaction_count == 0
    wire.clear()
    feed(core, response_to(fwd, 200, "OK"), UAS, clock.advance(0.1), wire)  # a late 2xx retransmission
    assert wire.statuses_to(UAC) == [200]


# ---------------------------------------------------------------- retransmissions
def test_retransmitted_invite_is_absorbed_and_gets_the_last_response(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    wire.clear()
    feed(core, request(), UAC, clock.advance(0.01), wire)
    assert wire.to(UAS) == []
    assert wire.statuses_to(UAC) == [180]


def test_an_rfc_2543_invite_is_matched_by_its_fields(core, clock) -> None:
    """Without the magic cookie in its branch (RFC 3261 §17.2.3, last paragraph): the same Call-ID, CSeq,
    From tag, Via and Request-URI is a retransmission; another From tag is another request."""
    wire = Wire()
    feed(core, request(branch="2543-1"), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    wire.clear()
    feed(core, request(branch="2543-1"), UAC, clock.advance(0.01), wire)
    assert wire.to(UAS) == [] and wire.statuses_to(UAC) == [180]
    wire.clear()
    feed(core, request(branch="2543-1", from_tag="ft2"), UAC, clock.advance(0.01), wire)
    assert len(wire.to(UAS)) == 1, "another From tag: a new request, forwarded"


def test_retransmitted_bye_gets_the_final_again(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    feed(core, in_dialog("BYE", "z9hG4bK-bye", 2), UAC, clock.advance(0.1), wire)
    bye = wire.last_to(UAS)
    feed(core, response_to(bye, 200, "OK"), UAS, clock.advance(0.01), wire)
    wire.clear()
    feed(core, in_dialog("BYE", "z9hG4bK-bye", 2), UAC, clock.advance(0.01), wire)
    assert wire.to(UAS) == [] and wire.statuses_to(UAC) == [200]


def test_uas_retransmitting_its_200_reaches_the_uac_each_time(core, clock) -> None:
    wire = Wire()
    fwd = call_up(core, clock, wire)
    feed(core, response_to(fwd, 200, "OK"), UAS, clock.advance(0.5), wire)
    assert wire.statuses_to(UAC).count(200) == 2


def test_invite_is_retransmitted_downstream_on_timer_a_and_times_out_408(core, clock) -> None:
    wire = Wire()
    start = clock.now
    actions = feed(core, request(), UAC, start, wire)
    assert any(isinstance(a, DialogStarted) for a in actions)
    actions = run_timers(core, start + 40, wire)
    sent_times = len(wire.to(UAS))
    assert sent_times == 7  # the INVITE and 6 retransmissions within Timer B (0.5,1,2,4,8,16 s)
    assert 408 in wire.statuses_to(UAC)
    ended = [a for a in actions if isinstance(a, DialogEnded)]
    assert [e.reason for e in ended] == ["no_response"]


# ---------------------------------------------------------------- finals, ACK, CANCEL
@pytest.mark.parametrize("status", [404, 486, 503, 603])
def test_non_2xx_is_acked_hop_by_hop_and_forwarded(core, clock, status) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    actions = feed(core, response_to(fwd, status, "No"), UAS, clock.advance(0.01), wire)
    ack = wire.last_to(UAS)
    assert ack.method == "ACK" and ack.vias[0].branch == fwd.vias[0].branch  # same branch as the INVITE
    assert ack.to_tag == "uas-tag"
    assert wire.statuses_to(UAC) == [100, status]
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["rejected"]
    # the UAC's ACK is absorbed, not forwarded
    wire.clear()
    feed(core, request("ACK", to_tag="uas-tag"), UAC, clock.advance(0.01), wire)
    assert wire.sent == []


def test_final_non_2xx_is_retransmitted_upstream_until_ack(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    feed(core, response_to(wire.last_to(UAS), 486, "Busy"), UAS, clock.advance(0.01), wire)
    run_timers(core, clock.now + 1.6, wire)  # Timer G at 0.5, 1.5
    assert wire.statuses_to(UAC).count(486) == 3
    feed(core, request("ACK", to_tag="uas-tag"), UAC, clock.advance(1.7), wire)
    run_timers(core, clock.now + 100, wire)
    assert wire.statuses_to(UAC).count(486) == 3
    assert core.transaction_count == 0 and core.dialog_count == 0


def test_cancel_after_provisional_is_relayed_and_487_comes_back(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    feed(core, request("CANCEL"), UAC, clock.advance(0.5), wire)
    assert wire.statuses_to(UAC)[-1] == 200  # the CANCEL answered hop-by-hop
    cancel = wire.last_to(UAS)
    assert cancel.method == "CANCEL" and cancel.vias[0].branch == fwd.vias[0].branch
    feed(core, response_to(cancel, 200, "OK"), UAS, clock.advance(0.01), wire)
    actions = feed(core, response_to(fwd, 487, "Request Terminated"), UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC)[-1] == 487
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["cancelled"]
    feed(core, request("ACK", to_tag="uas-tag"), UAC, clock.advance(0.01), wire)
    run_timers(core, clock.now + 100, wire)
    assert core.transaction_count == 0 and core.dialog_count == 0


def test_cancel_before_any_provisional_waits_for_one(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, request("CANCEL"), UAC, clock.advance(0.1), wire)
    assert [s.data[:6] for s in wire.to(UAS)] == [b"INVITE"]  # no CANCEL yet (RFC 3261 §9.1)
    feed(core, response_to(fwd, 100, "Trying"), UAS, clock.advance(0.01), wire)
    assert wire.last_to(UAS).method == "CANCEL"


def test_cancel_for_no_transaction_gets_481(core, clock) -> None:
    wire = Wire()
    feed(core, request("CANCEL"), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [481]


def test_ack_for_2xx_is_routed_end_to_end(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    feed(core, in_dialog("ACK", "z9hG4bK-ack", 1), UAC, clock.advance(0.01), wire)
    ack = wire.last_to(UAS)
    assert ack.method == "ACK" and ack.get_all("route") == []  # our Route entry stripped
    assert ack.vias[0].host == "127.0.0.1"
    # a retransmitted ACK gets the same branch (stateless, deterministic)
    feed(core, in_dialog("ACK", "z9hG4bK-ack", 1), UAC, clock.advance(0.01), wire)
    assert wire.last_to(UAS).vias[0].branch == ack.vias[0].branch


def test_ack_with_max_forwards_zero_is_dropped_not_forwarded(core, clock) -> None:
    # §16.3 item 3: a request with Max-Forwards 0 is not forwarded; an ACK cannot be answered 483
    wire = Wire()
    call_up(core, clock, wire)
    sent = len(wire.sent)
    feed(core, in_dialog("ACK", "z9hG4bK-ack0", 1, max_forwards=0), UAC, clock.advance(0.01), wire)
    assert wire.sent[sent:] == []
    assert core.stats.drops["too_many_hops"] == 1
    feed(core, in_dialog("ACK", "z9hG4bK-ack1", 1, max_forwards=1), UAC, clock.advance(0.01), wire)
    ack = wire.last_to(UAS)
    assert ack.method == "ACK" and ack.max_forwards == 0


def test_loose_routing_forwards_to_the_next_route(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    # the callee's side record-routed too (a proxy on the callee's host): the BYE goes there
    data = request("BYE", ruri="sip:uas@127.0.0.3:5063", branch="z9hG4bK-b", to_tag="uas-tag", cseq=2,
                   extra=["Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.3:5070;lr>"])
    feed(core, data, UAC, clock.advance(0.01), wire)
    nxt = Peer("udp", "127.0.0.3", 5070)
    bye = wire.last_to(nxt)
    assert bye.get_all("route") == ["<sip:127.0.0.3:5070;lr>"]


def test_an_in_dialog_route_to_a_third_address_is_refused_and_the_call_stays_up(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    data = request("INVITE", ruri="sip:uas@127.0.0.3:5063", branch="z9hG4bK-b", to_tag="uas-tag", cseq=2,
                   extra=["Route: <sip:127.0.0.1:5060;lr>, <sip:198.51.100.66:5060;lr>"])
    actions = feed(core, data, UAC, clock.advance(0.01), wire)
    assert wire.to(Peer("udp", "198.51.100.66", 5060)) == [] and wire.statuses_to(UAC)[-1] == 403
    assert "leaves its dialog" in wire.last_to(UAC).get("warning")
    assert [(a.decision.rule, a.decision.status) for a in actions if isinstance(a, Decided)] == [("routing", 403)]
    # a BYE from a third host, with the right Call-ID and tags, does not end the call either
    bye = request("BYE", ruri="sip:uas@127.0.0.3:5063", branch="z9hG4bK-x", to_tag="uas-tag", cseq=3,
                  extra=[ROUTE], via_host="127.0.0.9:5062")
    actions = feed(core, bye, Peer("udp", "127.0.0.9", 5062), clock.advance(0.01), wire)
    assert not [a for a in actions if isinstance(a, DialogEnded)] and core.dialog_count == 1
    assert wire.statuses_to(Peer("udp", "127.0.0.9", 5062)) == [403]


def test_bye_from_the_callee_ends_the_dialog_too(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    data = ("BYE sip:uac@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5063;branch=z9hG4bK-cb\r\n"
            "Route: <sip:127.0.0.1:5060;lr>\r\nFrom: <sip:+3250123400@127.0.0.3>;tag=uas-tag\r\n"
            "To: <sip:+3228807240@127.0.0.2>;tag=ft1\r\nCall-ID: call-1@127.0.0.2\r\nCSeq: 7 BYE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    actions = feed(core, data, UAS, clock.advance(1), wire)
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["bye"]
    assert wire.last_to(UAC).method == "BYE"


def test_in_dialog_request_from_a_stranger_for_no_dialog_gets_481(core, clock) -> None:
    wire = Wire()
    stranger = Peer("udp", "127.0.0.9", 5062)
    feed(core, in_dialog("BYE", "z9hG4bK-x", 2), stranger, clock.now, wire)
    assert [s.status for s in wire.sent] == [481]


# ---------------------------------------------------------------- Timer C, dialogs
def test_timer_c_cancels_downstream_and_answers_408(core, clock) -> None:
    wire = Wire()
    start = clock.now
    feed(core, request(), UAC, start, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, clock.advance(0.01), wire)
    actions = run_timers(core, start + 181, wire)
    assert wire.last_to(UAS).method == "CANCEL"
    assert wire.statuses_to(UAC)[-1] == 408
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["timer_c"]
    run_timers(core, start + 400, wire)
    assert core.transaction_count == 0 and core.dialog_count == 0


def test_each_provisional_restarts_timer_c(core, clock) -> None:
    wire = Wire()
    start = clock.now
    feed(core, request(), UAC, start, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 180, "Ringing"), UAS, start + 0.01, wire)
    run_timers(core, start + 170, wire)
    feed(core, response_to(fwd, 183, "Progress"), UAS, start + 170, wire)
    run_timers(core, start + 300, wire)
    assert 408 not in wire.statuses_to(UAC)


def test_bye_ends_the_dialog_and_all_state_is_freed(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    assert core.dialog_count == 1
    feed(core, in_dialog("ACK", "z9hG4bK-ack", 1), UAC, clock.advance(0.01), wire)
    actions = feed(core, in_dialog("BYE", "z9hG4bK-bye", 2), UAC, clock.advance(5), wire)
    ended = [a for a in actions if isinstance(a, DialogEnded)]
    assert [e.reason for e in ended] == ["bye"] and ended[0].duration_s == pytest.approx(5.0, abs=0.1)
    feed(core, response_to(wire.last_to(UAS), 200, "OK"), UAS, clock.advance(0.01), wire)
    assert core.dialog_count == 0
    run_timers(core, clock.now + 100, wire)
    assert core.transaction_count == 0


def test_lost_bye_ends_the_dialog_at_the_dialog_timeout(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    actions = run_timers(core, clock.now + 59, wire)
    assert not [a for a in actions if isinstance(a, DialogEnded)]
    actions = run_timers(core, clock.now + 61, wire)
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["timeout"]
    assert core.dialog_count == 0


def test_in_dialog_requests_refresh_the_dialog_timeout(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    feed(core, in_dialog("INVITE", "z9hG4bK-re", 2), UAC, clock.advance(50), wire)
    actions = run_timers(core, clock.now + 55, wire)  # past the first timeout (60 s after the 200): moved on
    assert not [a for a in actions if isinstance(a, DialogEnded)] and core.dialog_count == 1
    actions = run_timers(core, clock.now + 61, wire)  # 60 s of silence since the re-INVITE
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["timeout"]
    assert core.dialog_count == 0


def test_reinvite_is_proxied_without_a_new_dialog(core, clock) -> None:
    wire = Wire()
    call_up(core, clock, wire)
    actions = feed(core, in_dialog("INVITE", "z9hG4bK-re", 2), UAC, clock.advance(1), wire)
    assert not [a for a in actions if isinstance(a, DialogStarted)]
    reinv = wire.last_to(UAS)
    assert reinv.method == "INVITE" and reinv.to_tag == "uas-tag"
    feed(core, response_to(reinv, 200, "OK"), UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC)[-1] == 200 and core.dialog_count == 1


def test_malformed_request_gets_400_and_the_core_keeps_serving(core, clock) -> None:
    wire = Wire()
    feed(core, request().replace(b"Content-Length: 0", b"Content-Length: zero"), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [400]
    assert "Content-Length" in (parse(wire.sent[0].data).get("warning") or "")
    # a request whose CSeq is broken cannot get a well-formed answer: dropped
    feed(core, request().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), UAC, clock.now, wire)
    feed(core, b"\x00garbage\r\n\r\n", UAC, clock.now, wire)
    assert len(wire.sent) == 1 and core.stats.drops["malformed"] == 2
    feed(core, request(call_id="c2"), UAC, clock.now, wire)
    assert wire.last_to(UAS).method == "INVITE"


def test_oversized_request_gets_513(core, clock) -> None:
    wire = Wire()
    feed(core, request(body=b"x" * 20000), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [513] and wire.to(UAS) == []


def test_keepalive_crlf_is_ignored(core, clock) -> None:
    wire = Wire()
    assert feed(core, b"\r\n\r\n", UAC, clock.now, wire) == []
    assert core.stats.parse_errors.total() == 0


# ---------------------------------------------------------------- IPv6 and double Record-Route
def test_ipv4_to_ipv6_gets_two_record_routes() -> None:
    policy = load_text("""
service:
  listen: ["udp:127.0.0.1:5060", "udp:[::1]:5060"]
  upstreams: {uas: "sip:[::1]:5063"}
accounts:
  a: {match: {sources: ["127.0.0.2/32"]}, upstream: uas, rules: {caller_id: off, channel_limit: off}}
""")
    core = ProxyCore([Local("udp", "127.0.0.1", 5060), Local("udp", "::1", 5060)], Engine(policy), TimerConfig())
    wire = Wire()
    feed(core, request(), UAC, 0.0, wire)
    uas6 = Peer("udp", "::1", 5063)
    fwd = wire.last_to(uas6)
    assert fwd.vias[0].host == "[::1]"
    rr = fwd.get_all("record-route")
    token = rr[0].split("sgt=")[1].rstrip(">")
    assert rr == [f"<sip:[::1]:5060;lr;sgt={token}>", f"<sip:127.0.0.1:5060;lr;sgt={token}>"]
    # the response goes back over IPv4 to the caller
    feed(core, response_to(fwd, 200, "OK"), uas6, 0.1, wire)
    assert wire.statuses_to(UAC) == [100, 200]
    # a BYE from the callee with both routes pops both of ours
    bye = ("BYE sip:uac@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP [::1]:5063;branch=z9hG4bK-6b\r\n"
           "Route: <sip:[::1]:5060;lr>, <sip:127.0.0.1:5060;lr>\r\n"
           "From: <sip:x@[::1]>;tag=uas-tag\r\nTo: <sip:y@127.0.0.2>;tag=ft1\r\nCall-ID: call-1@127.0.0.2\r\n"
           "CSeq: 9 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    feed(core, bye, uas6, 0.2, wire)
    out = wire.last_to(UAC)
    assert out.method == "BYE" and out.get_all("route") == []


def test_name_addr_helper_reads_display_and_params() -> None:
    na = parse_name_addr('"Alice" <sip:alice@example.com;transport=udp>;tag=abc;x')
    assert na.display == '"Alice"' and na.tag == "abc" and na.param("x") == ""


def test_finished_transactions_are_slim_but_still_absorb_retransmissions(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    feed(core, response_to(fwd, 486, "Busy"), UAS, clock.advance(0.01), wire)
    feed(core, request("ACK", to_tag="uas-tag"), UAC, clock.advance(0.01), wire)
    txn = core.transactions()[0]
    assert txn.request is None and txn.admission is None  # only retransmission absorption is left
    acks = len([s for s in wire.to(UAS) if s.method == "ACK"])
    feed(core, response_to(fwd, 486, "Busy"), UAS, clock.advance(0.5), wire)  # the UAS retransmits
    assert len([s for s in wire.to(UAS) if s.method == "ACK"]) == acks + 1  # ACKed again, same bytes
    assert wire.to(UAS)[-1].data == [s for s in wire.to(UAS) if s.method == "ACK"][0].data
    feed(core, request(), UAC, clock.advance(0.01), wire)  # a late INVITE retransmission
    assert wire.statuses_to(UAC)[-1] == 486 and len([s for s in wire.to(UAS) if s.method == "INVITE"]) == 1


def test_a_local_reply_to_a_request_with_undecodable_bytes_echoes_them(core, clock) -> None:
    """Found by the property test: a Call-ID byte that is not UTF-8 broke the To tag of a local reply."""
    wire = Wire()
    data = request(max_forwards=0, call_id="undecodable-call").replace(b"undecodable-call", b"\x80call")
    feed(core, data, UAC, clock.now, wire)
    (reply,) = wire.sent
    assert reply.status == 483
    assert b"\r\nCall-ID: \x80call\r\n" in reply.data and b";tag=sg" in reply.data  # the bytes as received


# ---------------------------------------------------------------- the light path of responses (parser.peek_response)
OUR_VIA = re.compile(rb"\r\nVia: SIP/2\.0/UDP 127\.0\.0\.1:5060;branch=[^\r]*")


def test_a_plain_response_is_forwarded_byte_for_byte_minus_our_via(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    ok = response_to(fwd, 200, "OK", extra=["X-Odd: <not a URI", "Content-Type: application/sdp"])
    ok = ok.replace(b"Content-Length: 0\r\n\r\n", b"Content-Length: 4\r\n\r\nv=0\n")
    feed(core, ok, UAS, clock.advance(0.01), wire)
    assert wire.to(UAC)[-1].data == OUR_VIA.sub(b"", ok, count=1)  # headers in their order, as received
    assert core.stats.parse_errors == {}


def test_a_malformed_header_the_proxy_does_not_read_passes_in_a_response(core, clock) -> None:
    """Like Kamailio's tm: of a response to its transaction, the proxy reads the status line, the top
    Via, CSeq, To and the framing; a broken Contact is the UAC's business."""
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    bad = response_to(fwd, 180, "Ringing").replace(b"Contact: <sip:uas@127.0.0.3:5063>", b"Contact: <sip:uas@")
    feed(core, bad, UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC) == [100, 180]
    with pytest.raises(SipError):
        parse(wire.to(UAC)[-1].data)  # forwarded as it came


@pytest.mark.parametrize("where", ["status line", "header", "before its CRLF"])
def test_a_response_with_a_bare_lf_is_not_forwarded(core, clock, where) -> None:
    """An LF without its CR would end a header line at the next hop and begin one of the sender's choosing:
    neither light path takes it (they find each line's end by its LF and look for the CR before it), and
    parse() refuses it: dropped, counted, never relayed."""
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    ringing = response_to(fwd, 180, "Ringing")
    bad = {"status line": ringing.replace(b"180 Ringing", b"180 Ring\ning", 1),
           "header": ringing.replace(b"\r\nContact:", b"\r\nX-Injected: a\nVia: SIP/2.0/UDP 6.6.6.6\r\nContact:", 1),
           "before its CRLF": ringing.replace(b"\r\nContact:", b"\r\nX-Injected: a\n\r\nContact:", 1)}[where]
    assert bad != ringing and peek_response(bad) is None
    feed(core, bad, UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC) == [100]
    assert sum(core.stats.parse_errors.values()) == 1
    feed(core, ringing, UAS, clock.advance(0.01), wire)  # and the transaction goes on
    assert wire.statuses_to(UAC) == [100, 180]


_CONTROLS = [bytes([b]) for b in [*range(0x0A), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F]] + [b"\r", b"\r\r"]


@pytest.mark.parametrize("ctl", _CONTROLS, ids=lambda b: b.hex())
@pytest.mark.parametrize("where", ["status line", "a header it reads", "a header it does not read", "a line end"])
def test_a_control_byte_anywhere_in_a_response_head_leaves_it_to_parse(core, clock, ctl: bytes, where: str) -> None:
    """Every control byte but the CRLFs (a tab, NUL, DEL, a bare CR, a CR before the CRLF) sends the response
    to parse(), which decides: the light path relays only heads whose only control bytes are their CRLFs."""
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    ringing = response_to(wire.last_to(UAS), 180, "Ringing")
    assert peek_response(ringing) is not None
    bad = {"status line": ringing.replace(b"180 Ringing", b"180 Ring" + ctl + b"ing", 1),
           "a header it reads": ringing.replace(b"\r\nCSeq: 1 ", b"\r\nCSeq: 1 " + ctl, 1),
           "a header it does not read": ringing.replace(b"\r\nContact: <", b"\r\nContact: " + ctl + b"<", 1),
           "a line end": ringing.replace(b"\r\nContact:", ctl + b"\r\nContact:", 1)}[where]
    assert bad != ringing and peek_response(bad) is None


def _unusual(ok: bytes, our_via: bytes, variant: str) -> bytes:
    if variant == "compact":
        return (ok.replace(b"\r\nVia:", b"\r\nv:").replace(b"\r\nTo:", b"\r\nt:")
                .replace(b"\r\nContent-Length:", b"\r\nl:"))
    if variant == "lower-case":
        return ok.replace(b"\r\nVia:", b"\r\nVIA :").replace(b"\r\nCSeq:", b"\r\ncseq:").replace(b"\r\nTo:", b"\r\nto:")
    if variant == "folded-to":
        return ok.replace(b";tag=uas-tag", b"\r\n ;tag=uas-tag")
    if variant == "folded-via":
        return ok.replace(our_via, our_via.replace(b";branch", b"\r\n\t;branch"))
    if variant == "via-param-added":
        return ok.replace(our_via, our_via + b";received=127.0.0.1")
    if variant == "vias-on-one-line":
        return ok.replace(our_via + b"\r\nVia: ", our_via + b", ")
    if variant == "trailing-octets":
        return ok + b"junk after the message"
    if variant == "no-content-length":
        return ok.replace(b"Content-Length: 0\r\n", b"")
    raise AssertionError(variant)


@pytest.mark.parametrize("variant", ["compact", "lower-case", "folded-to", "folded-via", "via-param-added",
                                     "vias-on-one-line", "trailing-octets", "no-content-length"])
def test_unusual_but_valid_responses_are_handled_alike(core, clock, variant) -> None:
    """Whichever path reads a response (the light one or the full parse), the same thing happens."""
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    ok = response_to(fwd, 200, "OK")
    our_via = OUR_VIA.search(ok).group()[2:]
    feed(core, _unusual(ok, our_via, variant), UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC) == [100, 200]
    forwarded = wire.last_to(UAC)
    assert [v.branch for v in forwarded.vias] == ["z9hG4bK-uac-1"]
    assert forwarded.to_tag == "uas-tag" and forwarded.body == b""
    (dialog,) = core.dialogs()
    assert dialog.callee_tag == "uas-tag"


@pytest.mark.parametrize("status", [180, 200, 486])
def test_a_response_with_one_via_is_dropped_on_either_path(core, clock, status) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    lone = re.sub(rb"\r\nVia: SIP/2\.0/UDP 127\.0\.0\.2[^\r]*", b"", response_to(fwd, status, "X"))
    feed(core, lone, UAS, clock.advance(0.01), wire)
    assert wire.statuses_to(UAC) == [100]
    assert core.stats.drops["no_upstream_via"] == 1


def test_vias_sharing_a_line_as_sipp_writes_them_lose_only_ours(core, clock) -> None:
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    ok = response_to(fwd, 200, "OK")
    ours = OUR_VIA.search(ok).group()[2:]
    shared = ok.replace(ours + b"\r\nVia: ", ours + b",  ")  # 'Via: ours,  the caller's'
    assert shared.count(b"Via:") == 1
    feed(core, shared, UAS, clock.advance(0.01), wire)
    assert wire.to(UAC)[-1].data == shared.replace(ours[len(b"Via: "):] + b",  ", b"")
    assert wire.last_to(UAC).vias[0].branch == "z9hG4bK-uac-1"


# ---------------------------------------------------------------- every route is ours
KEY = b"k" * 32


def _core_with_key(policy_text: str, key: bytes = KEY, locals_: tuple[Local, ...] = (Local("udp", "127.0.0.1", 5060),)
                   ) -> ProxyCore:
    timers = TimerConfig(t1_s=0.5, t2_s=4, t4_s=5, timer_c_s=180, dialog_timeout_s=60)
    return ProxyCore(list(locals_), Engine(load_text(policy_text)), timers, route_key=key)


def _bye_from_callee(route: str, *, ruri: str = "sip:uac@127.0.0.2:5062", via: str = "127.0.0.3:5063") -> bytes:
    return (f"BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK-rb{abs(hash(route + ruri + via))}\r\n"
            f"Route: {route}\r\nFrom: <sip:+3250123400@127.0.0.3>;tag=uas-tag\r\n"
            "To: <sip:+3228807240@127.0.0.2>;tag=ft1\r\nCall-ID: call-1@127.0.0.2\r\nCSeq: 7 BYE\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_forged_in_dialog_invite_from_an_account_source_never_leaves(core, clock) -> None:
    wire = Wire()
    # a To tag that matches no dialog, a Route and a Request-URI of the caller's choosing
    forged = request(ruri="sip:+3250555555@198.51.100.66:5060", to_tag="forged",
                     extra=["Route: <sip:127.0.0.1:5060;lr>, <sip:198.51.100.67:5060;lr>"])
    actions = feed(core, forged, UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [481] and [s for s in wire.sent if s.status == 0] == []
    decisions = [a.decision for a in actions if isinstance(a, Decided)]
    assert [(d.rule, d.status) for d in decisions] == [("routing", 481)]
    assert "matches no dialog sipguard admitted" in decisions[0].reason
    assert not [a for a in actions if isinstance(a, (DialogStarted,))] and core.dialog_count == 0
    # the same as an ACK: dropped, counted
    feed(core, request("ACK", ruri="sip:x@198.51.100.66", to_tag="forged", branch="z9hG4bK-fa"), UAC, clock.now, wire)
    assert [s for s in wire.sent if s.status == 0] == [] and core.stats.drops["unknown_dialog"] == 1


def test_after_a_restart_a_bye_proves_its_dialog_by_the_route_token(policy_text, clock) -> None:
    wire = Wire()
    before = _core_with_key(policy_text)
    fwd = call_up(before, clock, wire)
    record_route = fwd.get("record-route")
    assert record_route is not None and ";sgt=" in record_route
    after = _core_with_key(policy_text)  # a new process: no dialog held, the same secret
    feed(after, _bye_from_callee(record_route), UAS, clock.advance(1), wire)
    relayed = wire.last_to(UAC)
    assert relayed.method == "BYE" and relayed.get_all("route") == []
    assert after.stats.token_relays == 1
    # its 200 goes back to the callee
    feed(after, response_to(relayed, 200, "OK", to_tag=None), UAC, clock.advance(0.01), wire)
    assert wire.statuses_to(UAS)[-1] == 200


@pytest.mark.parametrize("from_callee", [True, False])
def test_a_bye_relayed_on_a_token_names_the_call_and_its_account_to_release(policy_text, clock, from_callee) -> None:
    wire = Wire()
    fwd = call_up(_core_with_key(policy_text), clock, wire)
    record_route = fwd.get("record-route")
    after = _core_with_key(policy_text)
    if from_callee:
        actions = feed(after, _bye_from_callee(record_route), UAS, clock.advance(1), wire)
    else:
        bye = request("BYE", ruri="sip:uas@127.0.0.3:5063", branch="z9hG4bK-cb2", to_tag="uas-tag", cseq=2,
                      extra=[f"Route: {record_route}"])
        actions = feed(after, bye, UAC, clock.advance(1), wire)
    (ended,) = [a for a in actions if isinstance(a, EndedByToken)]
    # the claim's key (the caller's From tag, whichever end hangs up) and the tag of account "a" (conftest policy)
    assert ended.call_key == "call-1@127.0.0.2;ft1"
    assert Engine(load_text(policy_text)).account_of_tag(ended.account_tag) == "a"
    # an in-dialog request other than BYE ends nothing
    info = request("INFO", ruri="sip:uas@127.0.0.3:5063", branch="z9hG4bK-i", to_tag="uas-tag", cseq=3,
                   extra=[f"Route: {record_route}"])
    assert not [a for a in feed(after, info, UAC, clock.advance(1), wire) if isinstance(a, EndedByToken)]


def test_our_route_in_another_spelling_still_proves_its_dialog(policy_text, clock) -> None:
    wire = Wire()
    record_route = call_up(_core_with_key(policy_text), clock, wire).get("record-route")
    token = record_route.split("sgt=")[1].rstrip(">")
    respelled = f"<sip:127.0.0.1:5060;sgt={token};lr;x=1>"  # a peer that reordered the parameters
    after = _core_with_key(policy_text)
    feed(after, _bye_from_callee(respelled), UAS, clock.advance(1), wire)
    assert wire.last_to(UAC).method == "BYE" and after.stats.token_relays == 1


@pytest.mark.parametrize("case", ["tampered token", "another secret", "to a third address", "from a third address",
                                  "no token"])
def test_a_bad_route_token_is_refused_and_nothing_is_relayed(policy_text, clock, case) -> None:
    wire = Wire()
    fwd = call_up(_core_with_key(policy_text), clock, wire)
    record_route = fwd.get("record-route")
    token = record_route.split("sgt=")[1].rstrip(">")
    route, ruri, source, via = record_route, "sip:uac@127.0.0.2:5062", UAS, "127.0.0.3:5063"
    key = KEY
    if case == "tampered token":
        route = record_route.replace(token, ("0" if token[0] != "0" else "1") + token[1:])
    elif case == "another secret":
        key = b"x" * 32
    elif case == "to a third address":
        ruri = "sip:uac@198.51.100.66:5062"
    elif case == "from a third address":
        source, via = Peer("udp", "127.0.0.9", 5063), "127.0.0.9:5063"
    elif case == "no token":
        route = "<sip:127.0.0.1:5060;lr>"
    after = _core_with_key(policy_text, key)
    wire.clear()
    actions = feed(after, _bye_from_callee(route, ruri=ruri, via=via), source, clock.advance(1), wire)
    assert [s for s in wire.sent if s.status == 0] == [], "nothing is relayed"
    assert wire.statuses_to(source) == [481 if case == "no token" else 403]
    assert [a.decision.rule for a in actions if isinstance(a, Decided)] == ["routing"]


def test_an_emergency_call_with_a_foreign_route_goes_to_the_upstream_without_it(core, clock) -> None:
    wire = Wire()
    feed(core, request(ruri="urn:service:sos", extra=["Route: <sip:198.51.100.66:5060;lr>"]), UAC, clock.now, wire)
    fwd = wire.last_to(UAS)
    assert fwd.method == "INVITE" and fwd.uri == "urn:service:sos" and fwd.get_all("route") == []
    assert wire.to(Peer("udp", "198.51.100.66", 5060)) == []


def test_a_malformed_emergency_invite_is_reported_as_a_refused_emergency_call(core, clock) -> None:
    wire = Wire()
    bad = request(ruri="sip:112@127.0.0.1").replace(b"CSeq: 1 INVITE", b"CSeq: 1 BYE")
    actions = feed(core, bad, UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [400]
    refusal = [a.decision for a in actions if isinstance(a, Decided)]
    assert [(d.rule, dict(d.evidence)["refused_for"]) for d in refusal] == [("emergency", "malformed")]
    # one that does not even parse far enough to be answered is reported all the same
    worse = request(ruri="tel:+32112").replace(b"Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-uac-1\r\n", b"")
    actions = feed(core, worse, UAC, clock.now, wire)
    assert [a.decision.rule for a in actions if isinstance(a, Decided)] == ["emergency"]


IPV6_UPSTREAM = """
service:
  listen: ["udp:127.0.0.1:5060", "udp:[::1]:5060"]
  upstreams: {uas: "sip:[::1]:5063"}
accounts:
  a:
    kind: trunk
    channels: 2
    match: {sources: ["127.0.0.2/32"]}
    upstream: uas
    numbers: [{range: "+3228807240-+3228807249", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels"}}
"""


def test_a_next_hop_no_listen_address_reaches_gets_503_and_holds_no_channel(clock) -> None:
    # the policy listens on IPv6 too, but this process was started with --listen on IPv4 only
    core = _core_with_key(IPV6_UPSTREAM)
    wire = Wire()
    actions = feed(core, request(), UAC, clock.now, wire)
    assert wire.statuses_to(UAC) == [503] and [s for s in wire.sent if s.status == 0] == []
    assert "no listen address reaches udp:[::1]:5063" in wire.last_to(UAC).get("warning")
    assert not [a for a in actions if isinstance(a, (Settle, DialogStarted))]
    assert [a.decision.rule for a in actions if isinstance(a, Decided)] == ["routing"]


def test_a_send_failure_answers_503_and_ends_the_dialog_with_its_channel(core, clock) -> None:
    from sipguard.state import InMemoryStore

    store, wire = InMemoryStore(), Wire()
    feed(core, request(), UAC, clock.now, wire, store)
    assert store.active_now("a") == 1
    invite = next(s for s in wire.sent if s.status == 0)
    actions = core.send_failed(invite, "Invalid argument", clock.advance(0.001))
    wire.sent.extend(a for a in actions if isinstance(a, Send))
    for action in actions:
        if isinstance(action, DialogEnded):
            store.release_now(action.claim)
    assert wire.statuses_to(UAC) == [100, 503]
    assert "sending to 127.0.0.3:5063 failed: Invalid argument" in wire.last_to(UAC).get("warning")
    assert [a.reason for a in actions if isinstance(a, DialogEnded)] == ["send_failed"]
    assert store.active_now("a") == 0 and core.dialog_count == 0
    assert core.stats.drops["send_failed"] == 1
    # no retransmission follows: the client transaction is over
    wire.clear()
    run_timers(core, clock.advance(40), wire)
    assert wire.to(UAS) == []
