"""Channel claims shared by the worker processes of one sipguard instance.

Owns: a table in anonymous shared memory, made by the supervisor before it forks,
with one row per account and one column per worker, and the lock that makes a
claim atomic across workers.  Each worker keeps the *set* of its own live calls
(an ``InMemoryStore``: idempotent, cannot drift) and publishes only its count in
its own column; a claim sums the row under the lock, so the account's limit holds
across workers exactly.  When a worker dies, the supervisor zeroes its column: its
calls died with it, and no channel stays held.

Leaves to Redis (docs/pair.md): sharing between machines.

Compiled with the hot path (docs/compiled.md): a call claims and releases once each.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct
from typing import Final

from .base import ChannelClaim, SyncStore
from .memory import InMemoryStore

__all__ = ["SharedCounts", "SharedStore", "TableFull"]

_KEY_CELLS: Final = 2  # a row: the account's key hash (64 bits in two int32 cells), then one int32 per worker
_KEY: Final = struct.Struct("=ii")  # those two cells, read from the hash's 8 bytes


class TableFull(Exception):
    """More accounts than the shared table has rows for."""


class SharedCounts:
    """Per-account, per-worker call counts in shared memory.  Create before forking."""

    def __init__(self, workers: int, rows: int = 8192) -> None:
        if workers < 1 or rows < 1:
            raise ValueError("workers and rows must be positive")
        self.workers = workers
        self.rows = rows
        self._row_cells = _KEY_CELLS + workers
        self._mem = mmap.mmap(-1, rows * self._row_cells * 4)  # MAP_SHARED | MAP_ANONYMOUS: inherited by fork
        self._cells = memoryview(self._mem).cast("i")  # native int32 cells over the shared pages
        self._lock = multiprocessing.get_context("fork").Lock()
        self._first: dict[str, int] = {}  # per process: account -> the index of its row's first count (rows never move)

    def _key(self, account: str) -> tuple[int, int]:
        """The account's key hash as two int32 cells; never (0, 0), which marks a free row (the first is odd)."""
        low, high = _KEY.unpack(hashlib.blake2b(account.encode(), digest_size=8).digest())
        return low | 1, high

    def _first_count(self, account: str) -> int:
        """The cell of the account's first count, its row made on first use (callers hold the lock).  Open
        addressing, linear probing over the rows."""
        first = self._first.get(account, -1)
        if first >= 0:
            return first
        low, high = self._key(account)
        cells = self._cells
        start = (low & 0x7FFFFFFF) % self.rows
        for i in range(self.rows):
            at = ((start + i) % self.rows) * self._row_cells
            if cells[at] == 0 and cells[at + 1] == 0:
                cells[at] = low
                cells[at + 1] = high
            if cells[at] == low and cells[at + 1] == high:
                first = at + _KEY_CELLS
                self._first[account] = first
                return first
        raise TableFull(f"the shared channel table holds {self.rows} accounts")

    def _sum(self, first: int) -> int:
        cells = self._cells
        total = 0
        for i in range(first, first + self.workers):
            total += cells[i]
        return total

    # The lock is taken with acquire() and release(), the semaphore's own C methods: ``with`` would go through
    # multiprocessing's Lock.__enter__ and __exit__, interpreted Python on every claim.

    def total(self, account: str) -> int:
        self._lock.acquire()
        try:
            return self._sum(self._first_count(account))
        finally:
            self._lock.release()

    def claim(self, account: str, worker: int, local_count: int, limit: int) -> bool:
        """Publish ``local_count + 1`` for ``worker`` if the row's sum is under ``limit`` (-1: always)."""
        self._lock.acquire()
        try:
            first = self._first_count(account)
            if limit >= 0 and self._sum(first) >= limit:
                return False
            self._cells[first + worker] = local_count + 1
            return True
        finally:
            self._lock.release()

    def publish(self, account: str, worker: int, local_count: int) -> None:
        self._lock.acquire()
        try:
            self._cells[self._first_count(account) + worker] = local_count
        finally:
            self._lock.release()

    def forget_worker(self, worker: int) -> None:
        """Zero a dead worker's column (its calls ended with it)."""
        self._lock.acquire()
        try:
            cells = self._cells
            for row in range(self.rows):
                cells[row * self._row_cells + _KEY_CELLS + worker] = 0
        finally:
            self._lock.release()


class SharedStore(SyncStore):
    """The store of one worker: its own calls as sets, the limit checked against every worker's."""

    def __init__(self, counts: SharedCounts, worker: int) -> None:
        if not 0 <= worker < counts.workers:
            raise ValueError(f"worker {worker} out of range")
        self.counts = counts
        self.worker = worker
        self._own = InMemoryStore()

    def claim_now(self, claim: ChannelClaim) -> bool:
        if self._own.holds(claim):
            return True
        own = self._own.active_now(claim.account)
        limit = claim.limit if claim.enforce and not claim.emergency else -1
        if not self.counts.claim(claim.account, self.worker, own, limit):
            return False
        self._own.hold(claim.account, claim.call_key)
        return True

    def release_key(self, account: str, call_key: str) -> None:
        before = self._own.active_now(account)
        self._own.release_key(account, call_key)
        after = self._own.active_now(account)
        if after != before:
            self.counts.publish(account, self.worker, after)

    def active_now(self, account: str) -> int:
        return self.counts.total(account)

    def held_here(self, account: str) -> int:
        return self._own.active_now(account)
