"""The embedded default store: one process, sets of call keys per account.  Compiled with the hot path
(docs/compiled.md)."""

from __future__ import annotations

from .base import ChannelClaim, SyncStore

__all__ = ["InMemoryStore"]


class InMemoryStore(SyncStore):
    def __init__(self) -> None:
        self._calls: dict[str, set[str]] = {}

    def _of(self, account: str) -> set[str]:
        calls = self._calls.get(account)
        if calls is None:
            calls = self._calls[account] = set()  # not setdefault(account, set()): a set made per claim
        return calls

    def claim_now(self, claim: ChannelClaim) -> bool:
        calls = self._of(claim.account)
        if claim.call_key in calls:
            return True
        if claim.enforce and not claim.emergency and len(calls) >= claim.limit:
            return False
        calls.add(claim.call_key)
        return True

    def hold(self, account: str, call_key: str) -> None:
        """Count the call, whatever the limit (a claim another count has admitted: state/shared.py)."""
        self._of(account).add(call_key)

    def holds(self, claim: ChannelClaim) -> bool:
        return claim.call_key in self._calls.get(claim.account, ())

    def release_key(self, account: str, call_key: str) -> None:
        calls = self._calls.get(account)
        if calls is not None:
            calls.discard(call_key)

    def active_now(self, account: str) -> int:
        return len(self._calls.get(account, ()))
