"""Edge protection (terms: general 5): unknown sources meet a packet budget and bans; a customer's own
sources and the upstreams are never banned, and only their new requests meet a budget (503)."""

from __future__ import annotations

import ipaddress

import pytest

from helpers import UAC, Wire, as_request, feed, request
from sipguard.policy import Engine, load_text
from sipguard.policy.decision import Verdict
from sipguard.policy.edge import EMERGENCY_BURST, OVER, STILL_OVER, WITHIN, EdgeConfig, EdgeGuard
from sipguard.sip import Local, Peer, ProxyCore, TimerConfig

POLICY = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {uas: "sip:127.0.0.3:5063"}
  edge: {packets_per_s: 10, burst: 20, ban_s: 30, max_sources: 1000, exempt: ["10.9.0.0/16"],
         trusted_requests_per_s: 50, trusted_burst: 100, retry_after_s: 7}
accounts:
  a:
    kind: hosted
    match: {sources: ["127.0.0.2/32", "10.0.0.0/8"], domains: ["roaming.example"]}
    upstream: uas
    users: [{name: Ann, sip_users: ["201"], site: main}]
    numbers: [{range: "+3228807240-+3228807249", site: main}]
    sites: {main: {address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3228807240"}}
"""
SOS = request(ruri="sip:112@127.0.0.1", from_user="+3228807241")


def test_budget_then_ban_then_released() -> None:
    guard = EdgeGuard(EdgeConfig(packets_per_s=10, burst=20, ban_s=30))
    results = [guard.packet("192.0.2.1", b"", 0.0) for _ in range(25)]
    assert results[:20] == [None] * 20 and results[20] == "flood" and results[21:] == ["banned"] * 4
    assert guard.packet("192.0.2.1", b"", 29.9) == "banned"
    assert guard.packet("192.0.2.1", b"", 30.1) is None  # the ban is over, a fresh budget
    assert guard.packet("192.0.2.2", b"", 0.0) is None  # other sources are not affected
    events = [(e.kind, e.host, e.count) for e in guard.drain(31.0)]
    assert events == [("ban", "192.0.2.1", 0), ("unban", "192.0.2.1", 6)]  # the flood packet, 4, and 1 at 29.9 s


def test_the_budget_refills_with_time() -> None:
    guard = EdgeGuard(EdgeConfig(packets_per_s=10, burst=20))
    for i in range(1000):  # 9 packets a second for 111 s: always within the rate
        assert guard.packet("192.0.2.1", b"", i / 9) is None


def test_the_default_burst_lets_at_most_20_of_a_flood_through() -> None:
    guard = EdgeGuard()
    passed = sum(guard.packet("192.0.2.1", b"INVITE sip:+3250@x SIP/2.0", i / 10_000) is None for i in range(20_000))
    assert passed <= 20  # 0.1% of a flood of 20,000


def test_exempt_sources_upstreams_and_account_networks_are_never_limited() -> None:
    engine = Engine(load_text(POLICY))
    for _ in range(5000):
        assert engine.screen_packet(b"", Peer("udp", "127.0.0.3", 5063), 0.0) is None  # the upstream
        assert engine.screen_packet(b"", Peer("udp", "10.9.1.1", 5060), 0.0) is None  # exempt network
        assert engine.screen_packet(b"", Peer("udp", "10.1.2.3", 5060), 0.0) is None  # an account's network
    assert engine.edge.bans(0.0) == [] and engine.edge.drain(0.0) == []


def test_scanner_user_agent_bans_an_unknown_source_never_a_trusted_one() -> None:
    engine = Engine(load_text(POLICY))
    scanner = Peer("udp", "192.0.2.66", 5060)
    assert engine.screen_user_agent("friendly-scanner", scanner, 0.0) == "scanner"
    assert engine.screen_packet(b"", scanner, 1.0) == "banned"
    assert engine.screen_user_agent("Yealink SIP-T46S", Peer("udp", "192.0.2.67", 5060), 0.0) is None
    assert engine.screen_user_agent(None, Peer("udp", "192.0.2.68", 5060), 0.0) is None
    # the customer's own monitoring may run sipsak: never banned
    assert engine.screen_user_agent("sipsak 0.9.8", Peer("udp", "127.0.0.2", 5060), 0.0) is None
    assert engine.screen_packet(b"", Peer("udp", "127.0.0.2", 5060), 1.0) is None


def test_unknown_sources_get_their_403_within_the_same_budget() -> None:
    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(POLICY)), TimerConfig())
    wire = Wire()
    stranger = Peer("udp", "192.0.2.9", 5062)
    for i in range(40):
        feed(core, request(call_id=f"u{i}", branch=f"z9hG4bK-u{i}", via_host="192.0.2.9:5062"), stranger, 0.0, wire)
    assert [s.status for s in wire.sent] == [403] * 20  # then nothing: banned
    assert core.stats.drops["flood"] == 1 and core.stats.drops["banned"] == 19


def test_a_trusted_source_over_its_budget_gets_503_with_retry_after_and_is_never_banned() -> None:
    engine = Engine(load_text(POLICY))
    pbx = Peer("udp", "127.0.0.2", 5060)
    outcomes = []
    for i in range(150):  # at t=0: the burst of 100, then 503
        adm = engine.admit(as_request(request(call_id=f"c{i}", from_user="+3228807241")), pbx, 0.0)
        outcomes.append(adm)
    admitted = [a for a in outcomes if a.reject is None]
    refused = [a for a in outcomes if a.reject is not None]
    assert len(admitted) == 100 and len(refused) == 50
    assert {a.reject.status for a in refused} == {503}
    assert dict(refused[0].reject.headers)["retry-after"] == "7"
    decisions = [d for a in refused for d in a.decisions]
    assert {(d.rule, d.verdict, d.status) for d in decisions} == {("edge", Verdict.REJECT, 503)}
    assert [d.logged for d in decisions] == [True] + [False] * 49  # one log line for the stretch, all counted
    # an emergency call passes whatever the budget, with the site's caller ID
    sos = engine.admit(as_request(SOS), pbx, 0.0)
    assert sos.reject is None and sos.emergency
    # in-dialog traffic and responses are not counted: the packet screen never stops it
    assert all(engine.screen_packet(b"BYE sip:x SIP/2.0", pbx, 0.0) is None for _ in range(1000))
    # just over the rate (60 a second against 50): every sixth refused, and still the one stretch
    later = [engine.admit(as_request(request(call_id=f"l{i}", from_user="+3228807241")), pbx, i / 60)
             for i in range(1, 60 * 5)]
    assert 240 <= sum(a.reject is None for a in later) <= 250
    assert [e.kind for e in engine.edge.drain(5.0)] == ["over_budget"]
    # quiet for a second: the stretch ends, with how many it refused
    events = [(e.kind, e.host, e.count) for e in engine.edge.drain(6.5)]
    assert events == [("under_budget", "127.0.0.2", 50 + sum(a.reject is not None for a in later))]
    assert engine.edge.bans(6.5) == []


def test_a_roaming_phone_matched_by_domain_is_an_unknown_source_for_the_edge() -> None:
    engine = Engine(load_text(POLICY))
    roaming = Peer("udp", "198.51.100.5", 5060)
    req = request(from_user="201", extra=[], ruri="sip:+3250123400@127.0.0.3").replace(
        b"@127.0.0.2>", b"@roaming.example>")
    assert engine.admit(as_request(req), roaming, 0.0).account == "a"
    assert [engine.screen_packet(req, roaming, 0.0) for _ in range(21)][-1] == "flood"


def test_a_banned_source_still_gets_its_emergency_calls_through_a_few_at_a_time() -> None:
    engine = Engine(load_text(POLICY))
    host = "198.51.100.5"
    engine.edge.ban(host, "flood", 0.0, 60.0)
    sos = SOS.replace(b"sip:+3228807241@127.0.0.2", b"sip:201@roaming.example")
    assert [engine.screen_packet(sos, Peer("udp", host, 5060), 0.0) for _ in range(7)] == \
        [None] * int(EMERGENCY_BURST) + ["banned"] * 2
    assert engine.screen_packet(sos, Peer("udp", host, 5060), 1.0) is None  # one a second after that
    for form in (b"INVITE tel:112 SIP/2.0", b"INVITE urn:service:sos.police SIP/2.0", b"INVITE sip:+32112@x SIP/2.0"):
        engine.edge.ban("198.51.100.6", "flood", 0.0, 60.0)
        assert engine.screen_packet(form + b"\r\n", Peer("udp", "198.51.100.6", 5060), 0.0) is None, form
    # not an emergency call: dropped
    assert engine.screen_packet(request(), Peer("udp", host, 5060), 1.0) == "banned"


def test_bans_are_listed_and_lifted_and_a_reload_lifts_those_of_newly_trusted_sources() -> None:
    policy = load_text(POLICY)
    engine = Engine(policy)
    engine.edge.ban("192.0.2.7", "flood", 0.0, 60.0)
    engine.edge.ban("192.0.2.8", "flood", 0.0, 60.0)
    assert [host for host, _ban in engine.edge.bans(1.0)] == ["192.0.2.7", "192.0.2.8"]
    assert engine.edge.lift("192.0.2.7", 2.0) and not engine.edge.lift("192.0.2.7", 2.0)
    assert engine.screen_packet(b"", Peer("udp", "192.0.2.7", 5060), 2.0) is None
    trusting = load_text(POLICY.replace('"10.0.0.0/8"', '"10.0.0.0/8", "192.0.2.8/32"'))
    engine = Engine(trusting, engine.edge, engine.dialer, 3.0)
    assert engine.edge.bans(3.0) == []
    assert [(e.kind, e.host) for e in engine.edge.drain(3.0)] == [
        ("ban", "192.0.2.7"), ("ban", "192.0.2.8"), ("unban", "192.0.2.7"), ("unban", "192.0.2.8")]


def test_100000_sources_leave_the_tables_capped() -> None:
    engine = Engine(load_text(POLICY))
    for i in range(100_000):
        unknown = f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        trusted = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        engine.screen_packet(b"", Peer("udp", unknown, 5060), i / 1000)
        if i % 3 == 0:  # every third source also floods and gets banned
            engine.edge.ban(unknown, "flood", i / 1000, 1e9)
        if i % 7 == 0:  # and some dial: one detector window and one budget per account and source
            req = as_request(request(call_id=f"d{i}", from_user="+3228807241"))
            engine.admit(req, Peer("udp", trusted, 5060), i / 1000)
    assert all(n <= 1000 for n in engine.edge.sizes.values()), engine.edge.sizes
    assert len(engine.dialer) <= engine.dialer.config.max_keys


def test_banned_packets_are_dropped_before_parsing() -> None:
    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(POLICY)), TimerConfig())
    core.router.edge.ban("192.0.2.9", "flood", 0.0, 1e9)  # type: ignore[attr-defined]
    wire = Wire()
    feed(core, b"not even SIP", Peer("udp", "192.0.2.9", 5060), 0.0, wire)
    assert wire.sent == [] and core.stats.parse_errors.total() == 0 and core.stats.drops["banned"] == 1
    feed(core, b"not even SIP", UAC, 0.0, wire)  # a trusted source's garbage is parsed (and dropped)
    assert core.stats.drops["malformed"] == 1


# ---------------------------------------------------------------- the guard alone, exactly (mutation testing: docs/mutation.md)
T0 = 100.0  # not 0: a mistake that adds a time instead of subtracting it shows


def test_a_flood_over_time_is_banned_and_the_ban_ends_at_its_time_exactly() -> None:
    guard = EdgeGuard(EdgeConfig(packets_per_s=10, burst=20, ban_s=30))
    # 30 packets a second against a refill of 10: the burst of 20 lasts about a second
    results = [guard.packet("192.0.2.1", b"", T0 + i / 30) for i in range(90)]
    k = results.index("flood")
    assert 28 <= k <= 32 and results[:k] == [None] * k and results[k + 1:] == ["banned"] * (89 - k)
    until = T0 + k / 30 + 30
    assert guard.packet("192.0.2.1", b"", until - 0.001) == "banned"
    assert [h for h, _b in guard.bans(until - 0.001)] == ["192.0.2.1"] and guard.bans(until) == []
    assert guard.packet("192.0.2.1", b"", until) is None  # over at its time: a fresh bucket
    events = guard.drain(until)
    assert [(e.kind, e.host, e.reason) for e in events] == [("ban", "192.0.2.1", "flood"), ("unban", "192.0.2.1", "flood")]
    assert events[0].duration_s == 30 and events[1].duration_s == pytest.approx(30)
    assert events[1].count == 90 - k + 1  # the flooding packet, the rest of the 90, the one just before the end


def test_a_ban_ends_in_the_sweep_even_when_the_source_is_silent() -> None:
    guard = EdgeGuard()
    guard.ban("192.0.2.1", "flood", T0, 60)
    assert guard.drain(T0 + 59.9)[0].kind == "ban" and guard.drain(T0 + 59.9) == []
    (unban,) = guard.drain(T0 + 60)
    assert (unban.kind, unban.host, unban.duration_s, unban.count) == ("unban", "192.0.2.1", 60, 0)


def test_exempt_networks_are_never_limited_nor_banned() -> None:
    guard = EdgeGuard(EdgeConfig(burst=5, exempt=(ipaddress.ip_network("192.0.2.128/25"),)))
    assert all(guard.packet("192.0.2.200", b"", T0) is None for _ in range(100))
    assert guard.user_agent("192.0.2.200", "friendly-scanner", T0) is None
    assert guard.bans(T0) == []
    # a neighbour outside the network is not
    assert [guard.packet("192.0.2.10", b"", T0) for _ in range(6)][-1] == "flood"
    assert guard.user_agent("198.51.100.1", "Friendly-Scanner/1.0", T0) == "friendly-scanner"
    assert {(host, ban.reason) for host, ban in guard.bans(T0)} == {
        ("192.0.2.10", "flood"), ("198.51.100.1", "scanner User-Agent 'friendly-scanner'")}


def test_full_tables_evict_their_oldest_tenth() -> None:
    guard = EdgeGuard(EdgeConfig(max_sources=100), emergency=lambda data: True)
    for i in range(100):
        guard.packet(f"198.51.100.{i}", b"", T0)
        guard.new_request(f"203.0.113.{i}", T0)
    assert guard.sizes == {"edge_buckets": 100, "edge_budgets": 100, "edge_bans": 0, "edge_emergency": 0}
    guard.packet("198.51.101.1", b"", T0)
    guard.new_request("203.0.114.1", T0)
    assert guard.sizes == {"edge_buckets": 91, "edge_budgets": 91, "edge_bans": 0, "edge_emergency": 0}
    for i in range(100):
        guard.ban(f"192.0.2.{i}", "flood", T0, 60)
        guard.packet(f"192.0.2.{i}", b"INVITE urn:service:sos SIP/2.0", T0)  # an emergency allowance each
    guard.drain(T0)
    assert guard.sizes["edge_emergency"] == 100
    guard.ban("192.0.3.1", "flood", T0, 60)
    assert guard.sizes["edge_bans"] == 91 and guard.sizes["edge_emergency"] == 90  # an evicted ban's allowance goes
    guard.packet("192.0.3.1", b"INVITE urn:service:sos SIP/2.0", T0)
    guard.ban("192.0.3.2", "flood", T0, 60)
    guard.packet("192.0.3.2", b"INVITE urn:service:sos SIP/2.0", T0)
    assert guard.sizes["edge_emergency"] == 92
    evicted = [e for e in guard.drain(T0) if e.kind == "unban"]
    assert [e.host for e in evicted] == [f"192.0.2.{i}" for i in range(10)]
    assert all(e.reason == "flood; evicted: the table of bans is full" for e in evicted)


def test_budget_episodes_start_and_end_with_what_they_refused() -> None:
    guard = EdgeGuard(EdgeConfig(trusted_requests_per_s=10, trusted_burst=10))
    host = "192.0.2.5"
    assert [guard.new_request(host, T0) for _ in range(13)] == [WITHIN] * 10 + [OVER, STILL_OVER, STILL_OVER]
    assert [guard.new_request(host, T0 + 0.5) for _ in range(6)] == [WITHIN] * 5 + [STILL_OVER]
    assert guard.drain(T0 + 1.49)[0].kind == "over_budget"  # 0.99 s without a refusal: not over yet
    # a full second without a refusal: the stretch is over
    assert guard.new_request(host, T0 + 1.5) == WITHIN
    (ended,) = guard.drain(T0 + 1.5)
    assert (ended.kind, ended.host, ended.duration_s, ended.count) == ("under_budget", host, 0.5, 4)
    assert ended.reason == "over 10 new requests/s (burst 10)"
    # the next stretch counts afresh, and the sweep ends it when the source falls silent
    assert [guard.new_request(host, T0 + 1.5) for _ in range(12)] == [WITHIN] * 9 + [OVER, STILL_OVER, STILL_OVER]
    (started,) = guard.drain(T0 + 2.0)
    assert (started.kind, started.host, started.duration_s, started.count) == ("over_budget", host, 0.0, 0)
    assert started.reason == "over 10 new requests/s (burst 10)"
    (ended,) = guard.drain(T0 + 2.5)
    assert (ended.kind, ended.duration_s, ended.count) == ("under_budget", 0.0, 3)
    assert guard.drain(T0 + 9) == []


def test_a_banned_sources_emergency_invites_pass_five_at_once_then_one_a_second() -> None:
    guard = EdgeGuard(emergency=lambda data: data.startswith(b"INVITE sip:112"))
    host, sos = "198.51.100.5", b"INVITE sip:112@x SIP/2.0"
    guard.ban(host, "flood", T0, 60)
    assert [guard.packet(host, sos, T0) for _ in range(7)] == [None] * 5 + ["banned"] * 2
    assert guard.packet(host, sos, T0 + 0.5) == "banned"
    assert guard.packet(host, sos, T0 + 1.0) is None
    assert guard.packet(host, b"BYE sip:x SIP/2.0", T0 + 1.0) == "banned"
    # lifted, then banned again: a fresh allowance
    assert guard.lift(host, T0 + 2)
    guard.ban(host, "flood", T0 + 2, 60)
    assert [guard.packet(host, sos, T0 + 2) for _ in range(5)] == [None] * 5
    events = guard.drain(T0 + 2)
    assert [(e.kind, e.reason, e.count) for e in events] == [
        ("ban", "flood", 0), ("unban", "flood; lifted by the operator", 4), ("ban", "flood", 0)]
    assert events[1].duration_s == 2.0


def test_an_unknown_sources_flood_of_emergency_invites_keeps_passing_a_few() -> None:
    guard = EdgeGuard(emergency=lambda data: data.startswith(b"INVITE sip:112"))
    sos = b"INVITE sip:112@x SIP/2.0"
    results = [guard.packet("198.51.100.6", sos, T0) for _ in range(30)]
    assert results == [None] * 25 + ["banned"] * 5  # the burst of 20, then (banned) five emergency INVITEs


def test_a_reload_keeps_the_bans_and_brings_its_own_limits_lists_and_trust() -> None:
    first = Engine(load_text(POLICY))
    first.edge.ban("192.0.2.77", "flood", T0, 60)  # becomes exempt
    first.edge.ban("192.0.2.78", "flood", T0, 60)  # becomes an account's source
    first.edge.ban("192.0.2.79", "flood", T0, 60)  # stays a stranger
    reloaded = (POLICY
                .replace('exempt: ["10.9.0.0/16"]', 'exempt: ["10.9.0.0/16", "192.0.2.77/32"], user_agents: [evil-dialer]')
                .replace('"10.0.0.0/8"]', '"10.0.0.0/8", "192.0.2.78/32"]')
                .replace("  edge:", '  emergency_numbers: ["999"]\n  edge:'))
    engine = Engine(load_text(reloaded), first.edge, first.dialer, T0 + 1)
    assert engine.edge is first.edge
    assert [host for host, _ban in engine.edge.bans(T0 + 1)] == ["192.0.2.79"]
    lifted = [(e.host, e.reason) for e in engine.edge.drain(T0 + 1) if e.kind == "unban"]
    assert lifted == [("192.0.2.77", "flood; trusted by the new policy"), ("192.0.2.78", "flood; trusted by the new policy")]
    # the new list of scanners, the new idea of who is trusted, the new emergency numbers
    assert engine.screen_user_agent("friendly-scanner", Peer("udp", "192.0.2.90", 5060), T0 + 1) is None
    assert engine.screen_user_agent("Evil-Dialer 2.0", Peer("udp", "192.0.2.91", 5060), T0 + 1) == "scanner"
    assert all(engine.screen_packet(b"", Peer("udp", "192.0.2.78", 5060), T0 + 1) is None for _ in range(50))
    assert engine.screen_packet(b"INVITE sip:999@x SIP/2.0", Peer("udp", "192.0.2.79", 5060), T0 + 1) is None
    assert engine.screen_packet(b"INVITE sip:112@x SIP/2.0", Peer("udp", "192.0.2.79", 5060), T0 + 1) == "banned"


def test_a_ban_lifted_the_moment_it_began_lasted_no_time() -> None:
    guard = EdgeGuard()
    guard.ban("192.0.2.1", "flood", T0, 60)
    assert guard.lift("192.0.2.1", T0)
    assert [(e.kind, e.duration_s) for e in guard.drain(T0)] == [("ban", 60), ("unban", 0.0)]
