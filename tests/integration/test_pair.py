"""Several sipguard processes, one set of limits, through a real redis-server (docs/pair.md): a limit shared
exactly, a dead node's calls that leave the count when their leases end, counts rebuilt after Redis restarts
empty, the fallback while Redis is away, and a node that takes over an address ending the calls of the one
before it.  Calls are held by ``phone.Phone`` until the test hangs them up."""

from __future__ import annotations

import subprocess

import pytest

from .conftest import UAC_IP, RedisServer, Sipguard, Sipp, office_users, until
from .phone import Call, Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000}}
  route_secret: "the secret this pair shares"
  state: {{store: redis, url: "{redis_url}", lease_s: {lease_s}, renew_s: 1}}
accounts:
  acme:
    kind: hosted
    match: {{sources: ["127.0.0.2/32"]}}
    upstream: uas
    users: {users}
    numbers: [{{range: "+3228807240-+3228807249", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3228807240"}}}}
"""
ACTIVE = 'sipguard_channels_in_use{account="acme"}'  # the shared count, the same on every node
HELD = 'sipguard_channels_active{account="acme"}'  # the calls a node holds: summed over the nodes, the count
ACK_SEEN = 'sipguard_requests_total{method="ACK"}'  # read and relayed in the same callback


def _node(factory, redis: RedisServer, uas_port: int, lease_s: float = 3) -> Sipguard:
    # two people: 4 channels
    return factory(POLICY, uas_port=uas_port, redis_url=redis.url, lease_s=lease_s,  # type: ignore[no-any-return]
                   users=office_users(2))


def _pair(factory, redis: RedisServer, sipp: Sipp, lease_s: float = 3) -> tuple[Sipguard, Sipguard, subprocess.Popen[bytes]]:
    """Two nodes sharing the Redis and one UAS behind them."""
    a = _node(factory, redis, 0, lease_s)
    b = _node(factory, redis, a.uas_port, lease_s)  # type: ignore[attr-defined]
    return a, b, sipp.uas("basic/uas.xml", a.uas_port)  # type: ignore[attr-defined]


def _calls(phone: Phone, n: int) -> list[Call]:
    calls = [phone.call(CALLEE) for _ in range(n)]
    assert [c.status for c in calls] == [200] * n, [c.status for c in calls]
    return calls


def _zcard(redis: RedisServer) -> int:
    return int(redis.command("ZCARD", "sipguard:{acme}:calls").strip()[1:])


def test_two_nodes_share_one_limit(sipguard_factory, sipp: Sipp, redis_server: RedisServer) -> None:
    a, b, uas = _pair(sipguard_factory, redis_server, sipp)
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as via_a, Phone(UAC_IP, ("127.0.0.1", b.sip_port)) as via_b:
        held_a, held_b = _calls(via_a, 2), _calls(via_b, 2)
        # the fifth call is refused on either node, with the Warning naming the limit
        for phone in (via_a, via_b):
            refused = phone.call(CALLEE)
            assert refused.status == 486 and "channel limit of 4" in refused.headers.get("warning", "")
        # both nodes report the shared count
        assert a.wait_metric(ACTIVE, 4) == 4 and b.wait_metric(ACTIVE, 4) == 4
        assert a.metric(HELD) == 2 and b.metric(HELD) == 2
        # a BYE on node a: node b admits
        assert via_a.hangup(held_a.pop()) == 200
        # the release reaches Redis within a round trip (docs/pair.md); then node b admits
        assert until(lambda: _zcard(redis_server) == 3, 5)
        again = via_b.call(CALLEE)
        assert again.status == 200
        for phone, call in [(via_a, held_a[0]), *((via_b, c) for c in (*held_b, again))]:
            assert phone.hangup(call) == 200
    assert a.wait_metric(ACTIVE, 0) == 0 and b.wait_metric(ACTIVE, 0) == 0 and _zcard(redis_server) == 0
    uas.kill()


def test_a_killed_nodes_calls_leave_the_count_within_their_lease(sipguard_factory, sipp: Sipp,
                                                                  redis_server: RedisServer) -> None:
    a, b, uas = _pair(sipguard_factory, redis_server, sipp)
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as via_a, Phone(UAC_IP, ("127.0.0.1", b.sip_port)) as via_b:
        _calls(via_a, 2)
        held_b = _calls(via_b, 2)
        assert via_b.call(CALLEE).status == 486
        a.proc.kill()  # kill -9: its two calls are never released, only no longer renewed
        a.proc.wait()
        # within the lease (3 s here): node b admits up to the full limit again
        assert b.wait_metric(ACTIVE, 2, timeout_s=10) == 2
        held_b += _calls(via_b, 2)
        assert via_b.call(CALLEE).status == 486
        for call in held_b:
            assert via_b.hangup(call) == 200
    uas.kill()


def test_redis_restarted_empty_gets_every_live_call_back_within_one_renewal(sipguard_factory, sipp: Sipp,
                                                                            redis_server: RedisServer) -> None:
    a, b, uas = _pair(sipguard_factory, redis_server, sipp, lease_s=30)
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as via_a, Phone(UAC_IP, ("127.0.0.1", b.sip_port)) as via_b:
        held = [(via_a, c) for c in _calls(via_a, 2)] + [(via_b, c) for c in _calls(via_b, 1)]
        redis_server.command("FLUSHALL")
        redis_server.stop()
        redis_server.start()  # empty: nothing was saved
        assert _zcard(redis_server) == 0
        # within one renewal (1 s here; a few s allowed for a loaded machine): the three calls, on both nodes
        assert until(lambda: _zcard(redis_server) == 3, 10)
        assert a.wait_metric(ACTIVE, 3) == 3 and b.wait_metric(ACTIVE, 3) == 3
        fourth = via_a.call(CALLEE)  # the fourth channel is free...
        assert fourth.status == 200
        held.append((via_a, fourth))
        assert via_b.call(CALLEE).status == 486  # ...and then none
        for phone, call in held:  # no call was cut
            assert phone.hangup(call) == 200
    uas.kill()


def test_while_redis_is_away_calls_go_on_under_each_nodes_share(sipguard_factory, sipp: Sipp,
                                                                redis_server: RedisServer) -> None:
    a, b, uas = _pair(sipguard_factory, redis_server, sipp, lease_s=30)
    assert until(lambda: a.metric("sipguard_state_nodes") == 2 and b.metric("sipguard_state_nodes") == 2, 10)
    redis_server.stop()
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as via_a, Phone(UAC_IP, ("127.0.0.1", b.sip_port)) as via_b:
        held = [(via_a, c) for c in _calls(via_a, 2)] + [(via_b, c) for c in _calls(via_b, 2)]
        # each node's share of the 4 channels is 2: the next call is refused on both
        assert via_a.call(CALLEE).status == 486 and via_b.call(CALLEE).status == 486
        sos = via_a.call("112")  # emergency calls pass
        assert sos.status == 200 and via_a.hangup(sos) == 200
        assert a.metric('sipguard_state_available{store="redis"}') == 0 and a.metric("sipguard_state_errors_total") >= 1
        assert "state: Redis at redis://127.0.0.1:" in a.log.read_text()
        # Redis back: the counts are right again, without a restart of sipguard
        redis_server.start()
        assert until(lambda: _zcard(redis_server) == 4, 10)
        assert a.wait_metric(ACTIVE, 4) == 4 and b.wait_metric(ACTIVE, 4) == 4
        assert a.metric('sipguard_state_available{store="redis"}') == 1
        assert "is back after" in a.log.read_text()
        for phone, call in held:
            assert phone.hangup(call) == 200
    assert until(lambda: _zcard(redis_server) == 0, 10)
    uas.kill()


def test_a_node_taking_over_an_address_ends_the_calls_of_the_one_before(sipguard_factory, sipp: Sipp,
                                                                        redis_server: RedisServer) -> None:
    a = _node(sipguard_factory, redis_server, 0, lease_s=30)  # long leases: the release is what frees the channel
    uas = sipp.uas("basic/uas.xml", a.uas_port, "-m", "1")  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as phone:
        (call,) = _calls(phone, 1)
        assert _zcard(redis_server) == 1
        assert a.wait_metric(ACK_SEEN, 1) == 1  # the ACK relayed before a dies (the UAS waits for it)
        b = sipguard_factory.restart(a)  # node a killed; node b started on the same address
        assert b.metric("sipguard_dialogs") == 0
        assert phone.hangup(call) == 200  # relayed by b on the proof of the route token, answered by the UAS
    assert sipp.wait(uas) == 0
    assert b.metric("sipguard_token_relays_total") == 1
    assert until(lambda: _zcard(redis_server) == 0, 5), "node b did not release the call in Redis"
    assert b.wait_metric(ACTIVE, 0) == 0


def test_the_callees_bye_after_a_takeover_is_relayed_and_releases_the_channel(sipguard_factory, sipp: Sipp,
                                                                              redis_server: RedisServer) -> None:
    """The issue's failover case the other way round: the UAS hangs up a call node a admitted, after node b
    took over a's address; b relays the BYE to the caller on the token, and the count goes down."""
    a = _node(sipguard_factory, redis_server, 0, lease_s=30)
    uas = sipp.uas("basic/uas_hangs_up.xml", a.uas_port, "-m", "1", "-d", "4000")  # type: ignore[attr-defined]
    with Phone(UAC_IP, ("127.0.0.1", a.sip_port)) as phone:
        (call,) = _calls(phone, 1)
        assert _zcard(redis_server) == 1
        # the ACK relayed before a dies: the UAS's 200 is not retransmitted, and without the ACK it never hangs up
        assert a.wait_metric(ACK_SEEN, 1) == 1
        b = sipguard_factory.restart(a)  # within the UAS's 4 s pause
        byes = phone.serve(15)  # the UAS's BYE, through b, answered 200 by the phone
        assert [r.method for r in byes] == ["BYE"] and byes[0].call_id == call.call_id
    assert sipp.wait(uas) == 0, "the UAS did not get the 200 to its BYE"
    assert b.metric("sipguard_token_relays_total") == 1
    assert until(lambda: _zcard(redis_server) == 0, 5), "node b did not release the call in Redis"
    assert b.wait_metric(ACTIVE, 0) == 0
