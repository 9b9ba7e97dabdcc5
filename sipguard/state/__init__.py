"""Shared state behind one contract: in memory (default) and Redis (issue 3+)."""

from .._compiled import refuse_stale as _refuse_stale

_refuse_stale(__path__[0])

from .base import ChannelClaim, StateStore, StoreUnavailable
from .memory import InMemoryStore

__all__ = ["ChannelClaim", "StateStore", "StoreUnavailable", "InMemoryStore"]
