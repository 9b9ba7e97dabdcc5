"""Timer values (RFC 3261 §17, Table 4) and the wheel of deadlines.

The core never sleeps: it records deadlines here and reports the earliest via
``ProxyCore.next_deadline()``; the server arms one loop timer for it and calls
``ProxyCore.on_timer(now)``.  Each owner (a transaction, a dialog) keeps the deadline it
wants per timer name in ``owner.deadlines``; the wheel files it in the bucket of its tick
(10 ms) and removes it as soon as it is cancelled, replaced, or its owner ends
(``cancel_all``), so a finished call leaves nothing behind.  (A heap with lazy
cancellation kept every ended dialog alive until its 2-hour timeout came round: at
1,000 calls/s, millions of dead objects.)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Protocol

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


class TimerOwner(Protocol):
    deadlines: dict[str, float]
    alive: bool


class TimerWheel:
    """Deadlines of many owners, in one bucket per tick; due ones popped earliest first.

    A bucket is a dict ``(owner, name) -> deadline`` (insertion-ordered); a heap of tick
    numbers finds the earliest bucket.  set / cancel are O(1) dict operations (plus a heap
    push when a tick gets its first deadline); ``next_deadline`` is cached.
    """

    __slots__ = ("_buckets", "_ticks", "_tick_s", "_next", "_count")

    def __init__(self, tick_s: float = TICK_S) -> None:
        self._buckets: dict[int, dict[tuple[TimerOwner, str], float]] = {}
        self._ticks: list[int] = []  # heap of ticks with a bucket (an emptied bucket's tick lingers until reached)
        self._tick_s = tick_s
        self._next = -1.0  # the earliest deadline, or -1.0: not known (recomputed when asked)
        self._count = 0

    def set(self, owner: TimerOwner, name: str, at: float) -> None:
        """Want timer ``name`` of ``owner`` at ``at`` (replacing the one it had)."""
        old = owner.deadlines.get(name)
        if old is not None:
            self._remove(owner, name, old)
        owner.deadlines[name] = at
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
        bucket[(owner, name)] = at
        self._count += 1
        if self._count == 1 or (self._next >= 0.0 and at < self._next):
            self._next = at

    def cancel(self, owner: TimerOwner, name: str) -> None:
        at = owner.deadlines.pop(name, None)
        if at is not None:
            self._remove(owner, name, at)

    def cancel_all(self, owner: TimerOwner) -> None:
        """Drop every deadline of an owner that ends."""
        for name, at in owner.deadlines.items():
            self._remove(owner, name, at)
        owner.deadlines.clear()

    def _remove(self, owner: TimerOwner, name: str, at: float) -> None:
        tick = int(at / self._tick_s)  # as in set()
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop((owner, name), None) is not None:
            self._count -= 1
            if not bucket:
                del self._buckets[tick]
            if at == self._next:
                self._next = -1.0

    def next_deadline(self) -> float | None:
        if self._count == 0:
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
        """Every (owner, timer name) due at ``now``, earliest first (ties: in the order set); each is cleared."""
        ticks = self._ticks
        buckets = self._buckets
        due: list[tuple[TimerOwner, str]] = []
        while ticks:
            tick = ticks[0]
            bucket = buckets.get(tick)
            if bucket is None:
                heapq.heappop(ticks)
                continue
            ready = [(at, key) for key, at in bucket.items() if at <= now]
            if not ready:
                break
            ready.sort(key=_deadline)  # stable: equal deadlines stay in the order they were set
            for _at, key in ready:
                del bucket[key]
                owner, name = key
                del owner.deadlines[name]
                due.append(key)
            self._count -= len(ready)
            if bucket:  # the rest of this tick is not due yet, nor is any later tick
                break
            del buckets[tick]
            heapq.heappop(ticks)
        if due:
            self._next = -1.0
        return due

    def __len__(self) -> int:
        return self._count


def _deadline(entry: tuple[float, tuple[TimerOwner, str]]) -> float:
    return entry[0]
