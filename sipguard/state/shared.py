"""Channel claims shared by the worker processes of one sipguard instance.

Owns: a table in anonymous shared memory, made by the supervisor before it forks,
with one row per account and one column per worker, and the lock that makes a
claim atomic across workers.  Each worker keeps the *set* of its own live calls
(an ``InMemoryStore``: idempotent, cannot drift) and publishes only its count in
its own column; a claim sums the row under the lock, so the account's limit holds
across workers exactly.  When a worker dies, the supervisor zeroes its column: its
calls died with it, and no channel stays held.

Leaves to Redis (docs/pair.md): sharing between machines.
"""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing
import struct

from .base import ChannelClaim, SyncStore
from .memory import InMemoryStore

__all__ = ["SharedCounts", "SharedStore", "TableFull"]

_ROW_KEY = struct.Struct("=Q")


class TableFull(Exception):
    """More accounts than the shared table has rows for."""


class SharedCounts:
    """Per-account, per-worker call counts in shared memory.  Create before forking."""

    def __init__(self, workers: int, rows: int = 8192) -> None:
        if workers < 1 or rows < 1:
            raise ValueError("workers and rows must be positive")
        self.workers = workers
        self.rows = rows
        self._row_bytes = 8 + 4 * workers  # key hash, then one int32 per worker
        self._mem = mmap.mmap(-1, rows * self._row_bytes)  # MAP_SHARED | MAP_ANONYMOUS: inherited by fork
        self._lock = multiprocessing.get_context("fork").Lock()
        self._row_of: dict[str, int] = {}  # per process: account -> row (rows never move)
        self._row_counts = struct.Struct(f"={workers}i")
        self._count = struct.Struct("=i")

    def _key(self, account: str) -> int:
        return int.from_bytes(hashlib.blake2b(account.encode(), digest_size=8).digest(), "little") | 1

    def _row(self, account: str) -> int:
        """The account's row, made on first use (callers hold the lock).  Open addressing, linear probing."""
        row = self._row_of.get(account)
        if row is not None:
            return row
        key = self._key(account)
        start = key % self.rows
        for i in range(self.rows):
            row = (start + i) % self.rows
            offset = row * self._row_bytes
            (found,) = _ROW_KEY.unpack_from(self._mem, offset)
            if found == 0:
                _ROW_KEY.pack_into(self._mem, offset, key)
            if found in (0, key):
                self._row_of[account] = row
                return row
        raise TableFull(f"the shared channel table holds {self.rows} accounts")

    def _counts(self, row: int) -> tuple[int, ...]:
        return self._row_counts.unpack_from(self._mem, row * self._row_bytes + 8)

    def _set(self, row: int, worker: int, count: int) -> None:
        self._count.pack_into(self._mem, row * self._row_bytes + 8 + 4 * worker, count)

    def total(self, account: str) -> int:
        with self._lock:
            return sum(self._counts(self._row(account)))

    def claim(self, account: str, worker: int, local_count: int, limit: int | None) -> bool:
        """Publish ``local_count + 1`` for ``worker`` if the row's sum is under ``limit`` (None: always)."""
        with self._lock:
            row = self._row(account)
            if limit is not None and sum(self._counts(row)) >= limit:
                return False
            self._set(row, worker, local_count + 1)
            return True

    def publish(self, account: str, worker: int, local_count: int) -> None:
        with self._lock:
            self._set(self._row(account), worker, local_count)

    def forget_worker(self, worker: int) -> None:
        """Zero a dead worker's column (its calls ended with it)."""
        with self._lock:
            for row in range(self.rows):
                self._set(row, worker, 0)


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
        limit = claim.limit if claim.enforce and not claim.emergency else None
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
