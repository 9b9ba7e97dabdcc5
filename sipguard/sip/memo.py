"""One bounded memo for the pure helpers that header values recur through.

A plain dict that is emptied when full: a hit is one lookup, a miss one insert, and no
bookkeeping (an LRU pays for its order on every miss, and most misses here are values seen
once: a new call's tags).  Exceptions are not cached: an invalid value raises every time.

The memo is a small class, not a closure over ``*args``: compiled, a call is one typed dict
lookup with no argument tuple built (each helper takes one argument; a pair is one tuple).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

__all__ = ["Memo", "MEMO_SIZE"]

MEMO_SIZE = 16384
A = TypeVar("A")
R = TypeVar("R")
_MISSING: Final[Any] = object()


class Memo(Generic[A, R]):
    """``fn(arg)``, remembered for at most ``maxsize`` distinct arguments."""

    def __init__(self, fn: Callable[[A], R], maxsize: int = MEMO_SIZE) -> None:
        self.fn = fn
        self.maxsize = maxsize
        self.cache: dict[Any, Any] = {}

    def __call__(self, arg: A) -> R:
        return self.call(arg)

    def call(self, arg: A) -> R:
        """``fn(arg)``, remembered.  Compiled callers use this: ``memo.call(x)`` is a native method call,
        where ``memo(x)`` is a generic Python call through ``__call__``."""
        cache = self.cache
        hit = cache.get(arg, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[no-any-return]
        value = self.fn(arg)
        if len(cache) >= self.maxsize:
            cache.clear()
        cache[arg] = value
        return value

    def cache_clear(self) -> None:
        self.cache.clear()
