"""One bounded memo for the pure helpers that header values recur through.

A plain dict that is emptied when full: a hit is one lookup, a miss one insert, and no
bookkeeping (an LRU pays for its order on every miss, and most misses here are values seen
once: a new call's tags).  Exceptions are not cached: an invalid value raises every time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["memoize", "MEMO_SIZE"]

MEMO_SIZE = 16384
F = TypeVar("F", bound=Callable[..., Any])
_MISSING = object()


def memoize(maxsize: int = MEMO_SIZE) -> Callable[[F], F]:
    """Memoise a pure function of hashable positional arguments, keeping at most ``maxsize`` results."""

    def decorate(fn: F) -> F:
        cache: dict[Any, Any] = {}
        get = cache.get

        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            key = args[0] if len(args) == 1 else args
            hit = get(key, _MISSING)
            if hit is not _MISSING:
                return hit
            value = fn(*args)
            if len(cache) >= maxsize:
                cache.clear()
            cache[key] = value
            return value

        wrapper.cache_clear = cache.clear  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
