"""Channel claims shared by several sipguard machines through Redis (docs/pair.md).

Owns, in Redis: per account a sorted set ``PREFIX:{ACCOUNT}:calls`` whose members are the account's live
calls (``Call-ID;caller's tag``) and whose scores are the end of each call's lease (milliseconds of Redis's
own clock, ``TIME``: the nodes' clocks never meet); and ``PREFIX:nodes``, the live nodes with the end of
their heartbeat.  The braces are Redis Cluster hash tags (all of an account's keys in one slot), kept so
that sharding by account stays possible; this store speaks to one Redis endpoint (docs/pair.md).  In this
process: the calls this node holds (its dialog table is the truth for them), the last count Redis gave per
account, the live nodes as last seen.

* A claim is one atomic script (``_CLAIM``): leases that ended leave the set, then the call is added while
  the set is below the limit, or always for an emergency or shadow claim.  It answers with whether the call
  is admitted and the account's count.  Claims go in batches on one connection of their own, one batch in
  flight: the claims that arrive while a batch is on its way form the next one (``claim_soon``), so each
  INVITE waits at most one round trip plus the batch before it, and the client's cost per claim falls as
  the load grows (BENCHMARKS.md: redis-py's pipeline object cost ~300 µs of CPU per claim; its packed
  commands on a connection, 30-110 µs).
* A release is ``ZREM``, sent in the next batch on the same connection, ahead of its claims (``release_key``).
* ``renew()``, every ``renew_s``: one pipeline that puts every call this node holds back into its account's
  set with a fresh lease (``ZADD``, which also rebuilds what Redis lost: a restart empty, a failover, a
  ``FLUSHALL``), reads every account's count, and renews the node's heartbeat.  A node that dies stops
  renewing: its calls leave the count within ``lease_s``.  Nobody keeps a counter that could drift.
* When Redis cannot be reached (connection refused, a reply slower than ``timeout_ms``), the store falls
  back at once and says so once: each node admits, per account, its share of the limit from the calls it
  holds itself (``limit // nodes``, the remainder to the first nodes by name; the nodes as last seen), so
  the machines together never exceed the limit; emergency and shadow claims are admitted.  The claim path
  then does not wait on Redis at all; ``renew()`` probes it, and the first renewal that works puts every
  live call back and ends the outage.

Leaves to the server: when to claim and release (the core's ``Settle`` and ``DialogEnded``), the loop
that calls ``renew()``, and logging (``outages`` lists the outages' starts and ends to log).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .claim import ChannelClaim

__all__ = ["RedisStore", "share_of"]

Command = tuple[str | int, ...]

# KEYS[1]: the account's calls.  ARGV: the call, the limit, "1" when the limit applies, the lease in ms.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, member, lease = KEYS[1], ARGV[1], tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local n = redis.call('ZCARD', key)
if redis.call('ZSCORE', key, member) then
  redis.call('ZADD', key, now + lease, member)
  return {1, n}
end
if ARGV[3] == '1' and n >= tonumber(ARGV[2]) then
  return {0, n}
end
redis.call('ZADD', key, now + lease, member)
redis.call('PEXPIRE', key, lease * 2)
return {1, n + 1}
"""

# KEYS[1]: the account's calls.  ARGV: the lease in ms, then this node's calls of the account (maybe none).
# Their leases renewed (or the calls put back), ended leases gone: the account's count.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key, lease = KEYS[1], tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', key, now + lease, ARGV[i])
end
if #ARGV > 1 then
  redis.call('PEXPIRE', key, lease * 2)
end
return redis.call('ZCARD', key)
"""

# KEYS[1]: the nodes.  ARGV: this node, the lease in ms.  The live nodes, this one renewed.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def share_of(limit: int, nodes: list[str], node: str) -> int:
    """This node's share of an account's limit while Redis is away: ``limit // len(nodes)``, and one more for
    each of the first ``limit % len(nodes)`` nodes by name, so that the shares add up to the limit."""
    live = sorted(set(nodes) | {node})
    rank = live.index(node)
    whole, rest = divmod(limit, len(live))
    return whole + (1 if rank < rest else 0)


@dataclass(frozen=True, slots=True)
class Outage:
    """An outage's start (``ended`` False) or end, to log: what failed, and how long it lasted."""

    ended: bool
    why: str
    duration_s: float


class RedisStore:
    """The shared store of one node.  ``await start()`` before the first claim; ``renew()`` every ``renew_s``."""

    def __init__(self, url: str, node: str, *, prefix: str = "sipguard", lease_s: float = 30.0,
                 timeout_ms: int = 250) -> None:
        self.node = node
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        timeout = timeout_ms / 1000
        # no retries (redis-py's default is 10, with backoff): a failed call falls back at once, and renew()
        # is what tries again
        self.redis = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                       retry=Retry(NoBackoff(), 0))
        self.own: dict[str, dict[str, ChannelClaim]] = {}  # account -> call key -> claim: the calls held here
        self.counts: dict[str, int] = {}  # account -> its count, as Redis last said (or estimated since)
        self.nodes: list[str] = [node]  # the live nodes, as last seen
        self.available = False
        self.down_since = 0.0  # monotonic start of the current outage
        self.errors = 0  # Redis calls that failed (sipguard_state_errors_total)
        self.outages: list[Outage] = []  # starts and ends not yet logged
        self._releases: list[tuple[str, str]] = []  # calls ended here, their ZREM not yet sent
        self._pending: set[asyncio.Task[None]] = set()
        self._queue: list[tuple[ChannelClaim, Callable[[bool, int], None]]] = []  # claims waiting for a batch
        self._sending = False  # a batch is on its way
        self._conn: Connection | None = None  # the claims' own connection (one Redis)

    def key(self, account: str) -> str:
        return f"{self.prefix}:{{{account}}}:calls"

    # ------------------------------------------------------------------ lifecycle
    async def start(self, accounts: list[str]) -> None:
        """Register this node and read the counts (an unreachable Redis starts the fallback)."""
        await self.renew(accounts)

    async def close(self) -> None:
        """The batches on their way and the releases not yet sent, then the connections closed."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._releases and self.available:
            await self._batches()
        if self._conn is not None:
            await self._conn.disconnect()
        await self.redis.aclose()

    # ------------------------------------------------------------------ the contract
    async def claim(self, claim: ChannelClaim) -> tuple[bool, int]:
        """Admitted or not, and the account's count (the contract; the server uses ``claim_soon``)."""
        answer: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        self.claim_soon(claim, lambda granted, count: answer.set_result((granted, count)))
        return await answer

    def claim_soon(self, claim: ChannelClaim, done: Callable[[bool, int], None]) -> None:
        """Claim in the next batch and call ``done(granted, count)`` with the answer; at once while Redis is away
        (the node's share)."""
        if not self.available:
            done(*self._share(claim))
            return
        self._queue.append((claim, done))
        self._send_soon()

    def release_key(self, account: str, call_key: str) -> None:
        """Forget the call here at once; its ``ZREM`` goes in the next batch, before the claims."""
        held = self.own.get(account)
        if held is not None and held.pop(call_key, None) is not None and self.counts.get(account, 0) > 0:
            self.counts[account] -= 1
        # while Redis is away the leases of released calls run out (nobody renews them); before its first answer
        # (a node starting, in service already: another node's call ended here) the release waits for it
        if self.available or not self.down_since:
            self._releases.append((account, call_key))
            if self.available:
                self._send_soon()

    def release_now(self, claim: ChannelClaim) -> None:
        self.release_key(claim.account, claim.call_key)

    def held_here(self, account: str) -> int:
        return len(self.own.get(account, ()))

    def active_now(self, account: str) -> int:
        """The account's count across the nodes as Redis last said it (claims and renewals update it); while
        Redis is away, the calls this node holds."""
        if not self.available:
            return len(self.own.get(account, ()))
        return self.counts.get(account, 0)

    # ------------------------------------------------------------------ claims and releases, in batches
    def _send_soon(self) -> None:
        if not self._sending:
            self._sending = True
            self._spawn(self._batches())

    async def _batches(self) -> None:
        """Batch after batch on the claims' connection until nothing waits: the releases first (a slot freed
        is there for a claim of the same batch), then the claims."""
        batch: list[tuple[ChannelClaim, Callable[[bool, int], None]]] = []
        try:
            while self._queue or self._releases:
                batch, self._queue = self._queue, []
                releases, self._releases = self._releases, []
                lease = self.lease_ms
                commands: list[Command] = [("ZREM", self.key(account), key) for account, key in releases]
                commands += [("EVALSHA", _SHA[_CLAIM], 1, self.key(c.account), c.call_key, c.limit,
                              "1" if c.enforce and not c.emergency else "0", lease) for c, _done in batch]
                replies = (await self._scripted(commands, fast=True))[len(releases):]
                for (claim, done), reply in zip(batch, replies):
                    if not isinstance(reply, list) or len(reply) != 2:
                        raise RedisError(f"unexpected reply to the claim script: {reply!r}"[:200])
                    granted, count = bool(reply[0]), int(reply[1])
                    self.counts[claim.account] = count
                    if granted:
                        self.own.setdefault(claim.account, {})[claim.call_key] = claim
                    done(granted, count)
                batch = []
        except (RedisError, OSError, asyncio.TimeoutError) as err:
            self._down(err)
            waiting, self._queue, self._releases = batch + self._queue, [], []
            for claim, done in waiting:
                done(*self._share(claim))
        finally:
            self._sending = False

    def _share(self, claim: ChannelClaim) -> tuple[bool, int]:
        """The claim while Redis is away: within this node's share of the limit, from the calls it holds."""
        held = self.own.setdefault(claim.account, {})
        gate = claim.enforce and not claim.emergency
        if claim.call_key not in held and gate and len(held) >= share_of(claim.limit, self.nodes, self.node):
            return False, len(held)
        held[claim.call_key] = claim
        return True, len(held)

    # ------------------------------------------------------------------ off the hot path
    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def renew(self, accounts: list[str]) -> None:
        """Every call held here back in Redis with a fresh lease, every account's count read, the heartbeat;
        after an outage, this is what ends it."""
        names = sorted(set(accounts) | set(self.own))
        lease = self.lease_ms
        commands: list[Command] = [
            ("EVALSHA", _SHA[_RENEW], 1, self.key(account), lease, *self.own.get(account, {})) for account in names]
        commands.append(("EVALSHA", _SHA[_HEARTBEAT], 1, f"{self.prefix}:nodes", self.node, lease))
        try:
            replies = await self._scripted(commands)
        except (RedisError, OSError, asyncio.TimeoutError) as err:
            self._down(err)
            return
        for account, count in zip(names, replies):
            self.counts[account] = int(count)  # type: ignore[call-overload]
        live = replies[-1]
        assert isinstance(live, list)
        self.nodes = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in live)
        if not self.available:
            if self.down_since:
                self.outages.append(Outage(True, "", time.monotonic() - self.down_since))
            self.available = True
            self.down_since = 0.0
            if self._releases:  # the releases that came before Redis first answered
                self._send_soon()

    def _down(self, err: BaseException) -> None:
        self.errors += 1
        if self.available or not self.down_since:
            self.outages.append(Outage(False, f"{type(err).__name__}: {err}"[:200], 0.0))
            self.down_since = time.monotonic()
        self.available = False

    # ------------------------------------------------------------------ the wire
    async def _scripted(self, commands: Sequence[Command], fast: bool = False) -> list[object]:
        """The commands in one pipeline, their replies; the scripts loaded again if Redis lost them (a restart,
        a failover).  Raises the first error a command got."""
        replies = await self._pipeline(commands, fast)
        if any(isinstance(r, NoScriptError) for r in replies):
            for script in _SCRIPTS:
                await self.redis.script_load(script)
            replies = await self._pipeline(commands, fast)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def _pipeline(self, commands: Sequence[Command], fast: bool) -> list[object]:
        """One round trip.  ``fast``: on the claims' own connection, the commands packed at
        once and the replies read in order (redis-py's pipeline object costs several times as much per command);
        a connection Redis closed since the last batch is replaced once."""
        if not fast:
            pipe = self.redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute(raise_on_error=False))
        for attempt in (1, 2):
            conn = self._conn
            fresh = conn is None
            if conn is None:
                conn = self._conn = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(conn.pack_commands(commands))
                replies: list[object] = []
                for _ in commands:
                    try:
                        replies.append(await conn.read_response())
                    except RedisError as err:  # an error reply (NOSCRIPT...): this command's answer
                        if isinstance(err, RedisConnectionError):
                            raise
                        replies.append(err)
                return replies
            except BaseException as err:
                self._conn = None
                await conn.disconnect()
                if fresh or attempt == 2 or not isinstance(err, RedisConnectionError):
                    raise
        raise AssertionError("unreachable")


_SCRIPTS = (_CLAIM, _RENEW, _HEARTBEAT)
_SHA = {script: hashlib.sha1(script.encode()).hexdigest() for script in _SCRIPTS}
