"""The embedded default store: one process, sets of call keys per account."""

from __future__ import annotations

from .base import ChannelClaim, SyncStore

__all__ = ["InMemoryStore"]


class InMemoryStore(SyncStore):
    def __init__(self) -> None:
        self._calls: dict[str, set[str]] = {}

    def claim_now(self, claim: ChannelClaim) -> bool:
        calls = self._calls.get(claim.account)
        if calls is None:
            calls = self._calls[claim.account] = set()  # not setdefault(account, set()): a set made per claim
        if claim.call_key in calls:
            return True
        if claim.enforce and not claim.emergency and len(calls) >= claim.limit:
            return False
        calls.add(claim.call_key)
        return True

    def holds(self, claim: ChannelClaim) -> bool:
        return claim.call_key in self._calls.get(claim.account, ())

    def release_now(self, claim: ChannelClaim) -> None:
        calls = self._calls.get(claim.account)
        if calls is not None:
            calls.discard(claim.call_key)

    def active_now(self, account: str) -> int:
        return len(self._calls.get(account, ()))
