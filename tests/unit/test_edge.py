"""Edge protection (SPEC §4.6): per-source budgets, bans, scanner User-Agents, bounded tables."""

from __future__ import annotations

from helpers import UAC, Wire, as_request, feed, request
from sipguard.policy import Engine, load_text
from sipguard.policy.edge import EdgeConfig, EdgeGuard
from sipguard.sip import Local, Peer, ProxyCore, TimerConfig

POLICY = """
service:
  listen: ["udp:127.0.0.1:5060"]
  upstreams: {uas: "sip:127.0.0.3:5063"}
  edge: {packets_per_s: 10, burst: 20, ban_s: 30, max_sources: 1000, exempt: ["10.9.0.0/16"]}
accounts:
  a:
    kind: trunk
    channels: 100
    match: {sources: ["127.0.0.2/32", "10.0.0.0/8"]}
    upstream: uas
    numbers: [{range: "+3228807240-+3228807249"}]
"""


def test_budget_then_ban_then_released() -> None:
    guard = EdgeGuard(EdgeConfig(packets_per_s=10, burst=20, ban_s=30))
    results = [guard.packet("192.0.2.1", 0.0) for _ in range(25)]
    assert results[:20] == [None] * 20 and results[20] == "flood" and results[21:] == ["banned"] * 4
    assert guard.packet("192.0.2.1", 29.9) == "banned"
    assert guard.packet("192.0.2.1", 30.1) is None  # the ban is over, a fresh budget
    assert guard.packet("192.0.2.2", 0.0) is None  # other sources are not affected


def test_the_budget_refills_with_time() -> None:
    guard = EdgeGuard(EdgeConfig(packets_per_s=10, burst=20))
    for i in range(1000):  # 9 packets a second for 111 s: always within the rate
        assert guard.packet("192.0.2.1", i / 9) is None


def test_exempt_sources_and_upstreams_are_never_limited() -> None:
    engine = Engine(load_text(POLICY))
    for i in range(500):
        assert engine.screen_packet(Peer("udp", "127.0.0.3", 5063), 0.0) is None  # the upstream
        assert engine.screen_packet(Peer("udp", "10.9.1.1", 5060), 0.0) is None  # exempt network


def test_scanner_user_agent_bans_the_source() -> None:
    engine = Engine(load_text(POLICY))
    scanner = Peer("udp", "192.0.2.66", 5060)
    req = as_request(request("OPTIONS", extra=["User-Agent: friendly-scanner"]))
    assert engine.screen_request(req, scanner, 0.0) == "scanner"
    assert engine.screen_packet(scanner, 1.0) == "banned"
    assert engine.screen_request(as_request(request("OPTIONS", extra=["User-Agent: Yealink SIP-T46S"])),
                                 Peer("udp", "192.0.2.67", 5060), 0.0) is None


def test_unknown_sources_get_their_403_within_the_same_budget() -> None:
    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(POLICY)), TimerConfig())
    wire = Wire()
    stranger = Peer("udp", "192.0.2.9", 5062)
    for i in range(40):
        feed(core, request(call_id=f"u{i}", branch=f"z9hG4bK-u{i}", via_host="192.0.2.9:5062"), stranger, 0.0, wire)
    assert [s.status for s in wire.sent] == [403] * 20  # then nothing: banned
    assert core.stats.drops["flood"] == 1 and core.stats.drops["banned"] == 19


def test_100000_sources_leave_the_tables_capped() -> None:
    engine = Engine(load_text(POLICY))
    for i in range(100_000):
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        engine.screen_packet(Peer("udp", host, 5060), i / 1000)
        if i % 3 == 0:  # every third source also floods and gets banned
            engine.edge.ban(host, 1e9)
        if i % 7 == 0:  # and some dial: one detector window per account and source
            req = as_request(request(call_id=f"d{i}", from_user="+3228807241"))
            engine.admit(req, Peer("udp", host, 5060), i / 1000)
    buckets, bans = engine.edge.sizes
    assert buckets <= 1000 and bans <= 1000
    assert len(engine.dialer) <= engine.dialer.config.max_keys


def test_banned_packets_are_dropped_before_parsing() -> None:
    core = ProxyCore([Local("udp", "127.0.0.1", 5060)], Engine(load_text(POLICY)), TimerConfig())
    core.router.edge.ban("127.0.0.2", 1e9)  # type: ignore[attr-defined]
    wire = Wire()
    feed(core, b"not even SIP", UAC, 0.0, wire)
    assert wire.sent == [] and core.stats.parse_errors.total() == 0 and core.stats.drops["banned"] == 1
