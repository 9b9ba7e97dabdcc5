"""The state-store contract: channel claims per account.

A claim is one call holding one channel of an account, from admission until
its dialog ends.  Stores keep the *set* of live call keys per account, never a
bare counter, so a release is idempotent and a count cannot drift.

Two kinds of store keep that contract: in-process ones, whose operations complete at
once (``SyncStore``: the default ``InMemoryStore``, the workers' ``SharedStore``), which
the server calls on its hot path without awaiting; and the shared ``RedisStore``, whose
claim is one round trip to Redis, awaited.
"""

from __future__ import annotations

from typing import Protocol

from .claim import ChannelClaim

__all__ = ["ChannelClaim", "StateStore", "StoreUnavailable", "SyncStore"]


class StoreUnavailable(Exception):
    """The shared store could not be reached (Redis down); the store's fallback decides what then."""


class StateStore(Protocol):
    async def claim(self, claim: ChannelClaim) -> tuple[bool, int]:
        """Add the call if the account is under its limit (always for emergency and shadow claims, which are
        counted too): whether it is admitted, and how many calls the account holds now."""
        ...

    def release_key(self, account: str, call_key: str) -> None:
        """Remove the call (now, or as soon as the store can); releasing an unknown call is a no-op."""
        ...

    def active_now(self, account: str) -> int:
        """How many calls the account holds, as the store knows it now (every worker, every node)."""
        ...

    def held_here(self, account: str) -> int:
        """How many of them this process holds (summed over the workers and nodes: the account's count)."""
        ...


class SyncStore:
    """A store whose operations complete at once (no I/O): ``claim_now`` is the hot path's claim."""

    def claim_now(self, claim: ChannelClaim) -> bool:
        raise NotImplementedError

    def release_key(self, account: str, call_key: str) -> None:
        raise NotImplementedError

    def active_now(self, account: str) -> int:
        raise NotImplementedError

    def held_here(self, account: str) -> int:
        return self.active_now(account)

    def release_now(self, claim: ChannelClaim) -> None:
        self.release_key(claim.account, claim.call_key)

    async def claim(self, claim: ChannelClaim) -> tuple[bool, int]:
        return self.claim_now(claim), self.active_now(claim.account)
