"""The state-store contract: channel claims per account.

A claim is one call holding one channel of an account, from admission until
its dialog ends.  Stores keep the *set* of live call keys per account, never a
bare counter, so a release is idempotent and a count cannot drift.
"""

from __future__ import annotations

from typing import Protocol

from .claim import ChannelClaim

__all__ = ["ChannelClaim", "StateStore", "StoreUnavailable", "SyncStore"]


class StoreUnavailable(Exception):
    """The shared store could not be reached (Redis down); policy decides what then."""


class StateStore(Protocol):
    async def claim(self, claim: ChannelClaim, now: float) -> bool:
        """Add the call if the account is under its limit (always for emergency and shadow claims)."""
        ...

    async def release(self, claim: ChannelClaim) -> None:
        """Remove the call; releasing an unknown call is a no-op."""
        ...

    async def active(self, account: str) -> int:
        """How many calls the account holds now."""
        ...


class SyncStore:
    """The async contract for a store whose operations complete at once (``*_now``: no I/O)."""

    def claim_now(self, claim: ChannelClaim) -> bool:
        raise NotImplementedError

    def release_now(self, claim: ChannelClaim) -> None:
        raise NotImplementedError

    def active_now(self, account: str) -> int:
        raise NotImplementedError

    async def claim(self, claim: ChannelClaim, now: float) -> bool:
        return self.claim_now(claim)

    async def release(self, claim: ChannelClaim) -> None:
        self.release_now(claim)

    async def active(self, account: str) -> int:
        return self.active_now(account)
