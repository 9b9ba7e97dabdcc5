"""Timer values (RFC 3261 §17, Table 4) and one heap of deadlines.

The core never sleeps: it records deadlines here and reports the earliest via
``ProxyCore.next_deadline()``; the server arms one loop timer for it and calls
``ProxyCore.on_timer(now)``.  Entries are cancelled lazily: each owner keeps
the deadline it currently wants per timer name, and a popped entry that no
longer matches is ignored.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Protocol

__all__ = ["TimerConfig", "TimerHeap", "TimerOwner"]


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


class TimerHeap:
    """Deadlines of many owners; pops the due ones that are still wanted."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, TimerOwner]] = []
        self._seq = itertools.count()

    def set(self, owner: TimerOwner, name: str, at: float) -> None:
        owner.deadlines[name] = at
        heapq.heappush(self._heap, (at, next(self._seq), name, owner))

    @staticmethod
    def cancel(owner: TimerOwner, name: str) -> None:
        owner.deadlines.pop(name, None)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            at, _seq, name, owner = heap[0]
            if owner.alive and owner.deadlines.get(name) == at:
                return at
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> list[tuple[TimerOwner, str]]:
        """Every (owner, timer name) due at ``now``, earliest first; each is cleared."""
        heap = self._heap
        due: list[tuple[TimerOwner, str]] = []
        while heap and heap[0][0] <= now:
            at, _seq, name, owner = heapq.heappop(heap)
            if owner.alive and owner.deadlines.get(name) == at:
                del owner.deadlines[name]
                due.append((owner, name))
        return due

    def __len__(self) -> int:
        return len(self._heap)
