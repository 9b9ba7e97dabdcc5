"""One contract, two stores: the in-memory store and the Redis store (a real redis-server) pass the same tests;
then what only the shared store does: leases, renewal after Redis lost everything, the fallback while it is
away, a race between processes for the last channels."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncIterator

import pytest

from sipguard.state import InMemoryStore
from sipguard.state.claim import ChannelClaim
from sipguard.state.redis_store import RedisStore, share_of

from .conftest import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "redis"])
async def store(request, tmp_path) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield InMemoryStore()
        return
    server = RedisServer(tmp_path)
    server.start()
    redis_store = RedisStore(server.url, "node-a", lease_s=30)
    await redis_store.start(["a"])
    yield redis_store
    await redis_store.close()
    server.stop()


async def _settle(store: object) -> None:
    """Let a Redis store send what it queued (its releases go once per loop turn)."""
    await asyncio.sleep(0.05)


async def test_a_claim_is_admitted_under_the_limit_and_counted_once(store) -> None:
    assert await store.claim(ChannelClaim("a", 2, "k1")) == (True, 1)
    assert await store.claim(ChannelClaim("a", 2, "k1")) == (True, 1)  # the same call again: still one
    assert await store.claim(ChannelClaim("a", 2, "k2")) == (True, 2)
    assert await store.claim(ChannelClaim("a", 2, "k3")) == (False, 2)
    assert store.active_now("a") == 2 and store.active_now("other") == 0


@pytest.mark.parametrize("emergency,enforce", [(True, True), (False, False)])
async def test_emergency_and_shadow_claims_pass_the_limit_and_are_counted(store, emergency, enforce) -> None:
    assert (await store.claim(ChannelClaim("a", 1, "first")))[0]
    assert await store.claim(ChannelClaim("a", 1, "second", emergency, enforce)) == (True, 2)
    assert await store.claim(ChannelClaim("a", 1, "third")) == (False, 2)  # they count against the limit


async def test_a_release_is_idempotent_and_frees_the_channel(store) -> None:
    await store.claim(ChannelClaim("a", 1, "k1"))
    store.release_key("a", "k1")
    store.release_key("a", "k1")
    store.release_key("a", "never-claimed")
    await _settle(store)
    assert store.active_now("a") == 0
    assert await store.claim(ChannelClaim("a", 1, "k2")) == (True, 1)


# ---------------------------------------------------------------- what only the shared store does
async def _pair(server: RedisServer, lease_s: float = 30) -> tuple[RedisStore, RedisStore]:
    a, b = RedisStore(server.url, "node-a", lease_s=lease_s), RedisStore(server.url, "node-b", lease_s=lease_s)
    await a.start(["acme"])
    await b.start(["acme"])
    await a.renew(["acme"])  # a renewal: a learns of b (in service: within renew_s)
    return a, b


async def test_two_nodes_share_one_limit_and_a_release_frees_it_for_the_other(redis_server) -> None:
    a, b = await _pair(redis_server)
    try:
        assert [await a.claim(ChannelClaim("acme", 4, f"a{i}")) for i in range(2)] == [(True, 1), (True, 2)]
        assert [await b.claim(ChannelClaim("acme", 4, f"b{i}")) for i in range(2)] == [(True, 3), (True, 4)]
        assert (await a.claim(ChannelClaim("acme", 4, "a9")))[0] is False
        assert (await b.claim(ChannelClaim("acme", 4, "b9")))[0] is False
        a.release_key("acme", "a0")
        await _settle(a)
        assert await b.claim(ChannelClaim("acme", 4, "b9")) == (True, 4)
        await a.renew(["acme"])
        assert a.active_now("acme") == b.active_now("acme") == 4 and a.nodes == ["node-a", "node-b"]
    finally:
        await a.close()
        await b.close()


async def test_a_release_before_the_store_first_reached_redis_is_sent_once_it_does(redis_server) -> None:
    """A node taking over an address hears the BYE of a call another node admitted (its route token) and
    releases it; if that comes while the node's store is still starting, the release waits, not lost."""
    a, b = await _pair(redis_server)
    c = RedisStore(redis_server.url, "node-c", lease_s=30)
    try:
        assert await a.claim(ChannelClaim("acme", 1, "a0")) == (True, 1)
        c.release_key("acme", "a0")  # before c.start(): Redis not reached yet
        await c.start(["acme"])
        await _settle(c)
        assert await b.claim(ChannelClaim("acme", 1, "b0")) == (True, 1)
    finally:
        await a.close()
        await b.close()
        await c.close()


async def test_a_dead_nodes_calls_leave_the_count_when_their_leases_end(redis_server) -> None:
    a, b = await _pair(redis_server, lease_s=1)
    try:
        for i in range(2):
            await a.claim(ChannelClaim("acme", 2, f"a{i}"))
        assert (await b.claim(ChannelClaim("acme", 2, "b0")))[0] is False
        await a.redis.aclose()  # node a dies: nobody renews its calls
        await asyncio.sleep(1.2)
        assert await b.claim(ChannelClaim("acme", 2, "b0")) == (True, 1)
    finally:
        await b.close()


async def test_a_renewal_puts_the_calls_back_after_redis_lost_them(redis_server) -> None:
    a, b = await _pair(redis_server)
    try:
        await a.claim(ChannelClaim("acme", 3, "a0"))
        await b.claim(ChannelClaim("acme", 3, "b0"))
        redis_server.command("FLUSHALL")
        assert (await a.claim(ChannelClaim("acme", 3, "a1"))) == (True, 1)  # Redis forgot a0 and b0
        await a.renew(["acme"])
        await b.renew(["acme"])
        assert redis_server.command("ZCARD", "sipguard:{acme}:calls") == b":3\r\n"
        assert a.active_now("acme") == 3 or b.active_now("acme") == 3
        assert (await b.claim(ChannelClaim("acme", 3, "b1")))[0] is False
    finally:
        await a.close()
        await b.close()


async def test_while_redis_is_away_each_node_admits_its_share_and_emergency_calls(redis_server) -> None:
    a, b = await _pair(redis_server)
    try:
        redis_server.stop()
        claims = [await a.claim(ChannelClaim("acme", 5, f"a{i}")) for i in range(4)]
        assert [granted for granted, _n in claims] == [True, True, True, False]  # 5 // 2 + 1 for the first by name
        assert [(await b.claim(ChannelClaim("acme", 5, f"b{i}")))[0] for i in range(3)] == [True, True, False]
        assert (await b.claim(ChannelClaim("acme", 5, "sos", emergency=True)))[0] is True
        assert not a.available and a.errors >= 1 and [o.ended for o in a.outages] == [False]
        # Redis back, empty: the first renewal puts every live call back and ends the outage
        redis_server.start()
        await a.renew(["acme"])
        await b.renew(["acme"])
        assert a.available and b.available and [o.ended for o in a.outages] == [False, True]
        assert redis_server.command("ZCARD", "sipguard:{acme}:calls") == b":6\r\n"
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("limit,nodes,shares", [(5, 2, [3, 2]), (4, 2, [2, 2]), (1, 3, [1, 0, 0]), (7, 3, [3, 2, 2])])
def test_the_shares_add_up_to_the_limit(limit: int, nodes: int, shares: list[int]) -> None:
    names = [f"n{i}" for i in range(nodes)]
    assert [share_of(limit, names, name) for name in names] == shares


def _race(url: str, node: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue,  # type: ignore[type-arg]
          rounds: int) -> None:
    async def main() -> None:
        store = RedisStore(url, node)
        await store.start([])
        won = []
        for r in range(rounds):
            while not start.is_set():
                await asyncio.sleep(0)
            granted = [(await store.claim(ChannelClaim(f"race{r}", 3, f"{node}-{i}")))[0] for i in range(3)]
            won.append(sum(granted))
        out.put((node, won))
        await store.close()

    start.wait(10)
    asyncio.run(main())


def test_three_processes_racing_for_the_last_channels_never_exceed_the_limit(redis_server) -> None:
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    rounds = 200
    procs = [ctx.Process(target=_race, args=(redis_server.url, f"n{i}", start, out, rounds)) for i in range(3)]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    totals = [sum(results[node][r] for node in results) for r in range(rounds)]
    assert totals == [3] * rounds, totals  # each round: exactly the 3 channels, whoever won them
