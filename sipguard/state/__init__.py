"""Shared state behind one contract: in memory (default) and Redis (issue 3+)."""

from .base import ChannelClaim, StateStore, StoreUnavailable
from .memory import InMemoryStore

__all__ = ["ChannelClaim", "StateStore", "StoreUnavailable", "InMemoryStore"]
