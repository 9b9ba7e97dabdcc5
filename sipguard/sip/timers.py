"""Timer values (RFC 3261 §17, Table 4) and the wheel of deadlines.

The core never sleeps: it records deadlines here and reports the earliest via
``ProxyCore.next_deadline()``; the server arms one loop timer for it and calls
``ProxyCore.on_timer(now)``.  Each owner (a transaction, a dialog: both are ``TimerOwner``s) keeps the
deadline it wants per timer name in ``owner.deadlines``; the wheel files the owner once, in the bucket
of the tick (10 ms) of its earliest deadline, and drops it as soon as it has no deadline left or ends
(``cancel_all``), so a finished call leaves nothing behind.  (A heap with lazy cancellation kept every
ended dialog alive until its 2-hour timeout came round: at 1,000 calls/s, millions of dead objects.)

Setting a later deadline or cancelling one only writes ``owner.deadlines``: the owner stays filed where
it was, and when that moment comes the wheel finds nothing due and files it again at its earliest
deadline.  A transaction's timers mostly go that way (A and B cancelled by the first response, C
restarted by each provisional and cancelled by the final, L and M set together), so a call costs a
few dictionary writes where filing each timer in its bucket cost two dictionary operations and a
tuple per set and per cancel.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"

__all__ = ["TimerConfig", "TimerWheel", "TimerOwner", "TICK_S"]

TICK_S = 0.01  # timer resolution: deadlines within one tick share a bucket and one wake-up of the loop


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """SIP timer base values in seconds.

    t1_s: RTT estimate (500 ms); t2_s: cap on non-INVITE retransmits (4 s);
    t4_s: how long a message may stay in the network (5 s);
    timer_c_s: proxy INVITE timeout after a provisional (RFC 3261 §16.6: > 3 min);
    dialog_timeout_s: a dialog with no in-dialog request for this long is ended
    (a lost BYE).
    """

    t1_s: float = 0.5
    t2_s: float = 4.0
    t4_s: float = 5.0
    timer_c_s: float = 180.0
    dialog_timeout_s: float = 7200.0

    @property
    def t64_s(self) -> float:
        """64*T1: Timers B, F, H, J, L, M (and D, which we tie to it)."""
        return 64 * self.t1_s

    def __post_init__(self) -> None:
        for name in ("t1_s", "t2_s", "t4_s", "timer_c_s", "dialog_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


# acyclic: an owner's own part holds a dict of floats (docs/compiled.md, "Objects the GC never sees")
@mypyc_attr(acyclic=True)
class TimerOwner:
    """What the wheel keeps deadlines for (``Txn``, ``Dialog`` inherit it): a deadline per timer name, whether
    it still lives, and the moment the wheel has it filed under."""

    __slots__ = ("deadlines", "alive", "filed")

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}
        self.alive = True
        self.filed = -1.0  # its earliest deadline, or earlier (a later one set, one cancelled); -1.0: not filed


class TimerWheel:
    """Deadlines of many owners; each owner filed once, in the bucket of its earliest deadline's tick.

    A bucket is a dict ``owner -> filed deadline`` (insertion-ordered); a heap of tick numbers finds the
    earliest bucket.  ``set`` of a deadline earlier than the owner's filed one moves the owner (two dict
    operations, plus a heap push when a tick gets its first owner); any other ``set`` or ``cancel`` is a
    write to ``owner.deadlines``; ``next_deadline`` is cached (and may be early: see the module's note).
    """

    __slots__ = ("_buckets", "_ticks", "_tick_s", "_next", "_count", "_owners")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._buckets: dict[int, dict[TimerOwner, float]] = {}
        self._ticks: list[int] = []  # heap of ticks with a bucket (an emptied bucket's tick lingers until reached)
        self._tick_s = tick_s
        self._next = -1.0  # the earliest filed deadline, or -1.0: not known (recomputed when asked)
        self._count = 0  # deadlines
        self._owners = 0  # owners filed

    def set(self, owner: TimerOwner, name: str, at: float) -> None:
        """Want timer ``name`` of ``owner`` at ``at`` (replacing the one it had)."""
        deadlines = owner.deadlines
        if name not in deadlines:
            self._count += 1
        deadlines[name] = at
        filed = owner.filed
        if filed < 0.0:
            self._file(owner, at)
        elif at < filed:
            self._unfile(owner, filed)
            self._file(owner, at)

    def cancel(self, owner: TimerOwner, name: str) -> None:
        deadlines = owner.deadlines
        if name in deadlines:
            del deadlines[name]
            self._count -= 1
            if not deadlines:  # nothing left: not kept until its filed moment
                self._unfile(owner, owner.filed)

    def cancel_all(self, owner: TimerOwner) -> None:
        """Drop every deadline of an owner that ends."""
        if owner.filed >= 0.0:
            self._unfile(owner, owner.filed)
        self._count -= len(owner.deadlines)
        owner.deadlines.clear()

    def _file(self, owner: TimerOwner, at: float) -> None:
        # ``at / tick`` truncated, not ``at // tick``: float floor division is an fmod call (~170 instructions);
        # for the loop's clock (positive) both are monotonic in ``at``, which is all the buckets need
        tick = int(at / self._tick_s)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            ticks = self._ticks
            if len(ticks) > 2 * len(self._buckets) + 1024:  # emptied ticks pile up: keep the live ones
                ticks[:] = list(self._buckets)
                heapq.heapify(ticks)
            else:
                heapq.heappush(ticks, tick)
        bucket[owner] = at
        owner.filed = at
        self._owners += 1
        if self._owners == 1 or (self._next >= 0.0 and at < self._next):
            self._next = at

    def _unfile(self, owner: TimerOwner, at: float) -> None:
        owner.filed = -1.0
        tick = int(at / self._tick_s)  # as in _file()
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop(owner, None) is not None:
            self._owners -= 1
            if not bucket:
                del self._buckets[tick]
            if at == self._next:
                self._next = -1.0

    def next_deadline(self) -> float | None:
        """The earliest moment an owner is filed under: its earliest deadline, or before it (a wake-up that
        finds nothing due)."""
        if self._owners == 0:
            return None
        if self._next >= 0.0:
            return self._next
        ticks = self._ticks
        while ticks:
            bucket = self._buckets.get(ticks[0])
            if bucket:
                self._next = min(bucket.values())
                return self._next
            heapq.heappop(ticks)
        return None

    def pop_due(self, now: float) -> list[tuple[TimerOwner, str]]:
        """Every (owner, timer name) due at ``now``, each cleared: the owners in the order of the moments they
        were filed under (ties: in the order filed), an owner's due timers together, earliest first (ties: in
        the order set).  An owner with deadlines left is filed again at its earliest."""
        ticks = self._ticks
        buckets = self._buckets
        due: list[tuple[TimerOwner, str]] = []
        popped = False
        while ticks:
            tick = ticks[0]
            bucket = buckets.get(tick)
            if bucket is None:
                heapq.heappop(ticks)
                continue
            ready = [(at, owner) for owner, at in bucket.items() if at <= now]
            if not ready:
                break
            popped = True
            ready.sort(key=_moment)  # stable: equal moments stay in the order filed
            for _at, owner in ready:
                del bucket[owner]
                self._owners -= 1
                owner.filed = -1.0
                self._fire(owner, now, due)  # may file it again, in this tick (later than now) or a later one
            if bucket:  # the rest of this tick is not due yet, nor is any later tick
                break
            del buckets[tick]
            heapq.heappop(ticks)  # ``tick``: files made meanwhile went to this bucket or later ticks
        if popped:
            self._next = -1.0
        return due

    def _fire(self, owner: TimerOwner, now: float, due: list[tuple[TimerOwner, str]]) -> None:
        """An owner's filed moment came: its due timers to ``due``; filed again at the earliest one left."""
        deadlines = owner.deadlines
        ready = [(at, name) for name, at in deadlines.items() if at <= now]
        if ready:
            ready.sort(key=_moment)  # stable: equal deadlines stay in the order set
            for _at, name in ready:
                del deadlines[name]
                due.append((owner, name))
            self._count -= len(ready)
        if deadlines:
            self._file(owner, min(deadlines.values()))

    def __len__(self) -> int:
        return self._count


def _moment(entry: tuple[float, object]) -> float:
    """The sort key of a ``(moment, owner or timer name)`` pair."""
    return entry[0]
