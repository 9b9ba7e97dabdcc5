"""A channel claim: one call holding one channel of an account (state/base.py has the contract).

Its own module so that it can be compiled with the hot path (scripts/native.py): an engine makes
one per INVITE, and the stores built on ``SyncStore`` stay interpreted classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ChannelClaim"]


@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class ChannelClaim:
    account: Final[str]
    limit: Final[int]
    call_key: Final[str]
    emergency: Final[bool]
    enforce: Final[bool]  # False in shadow mode: always admitted, counted, logged when over the limit

    def __init__(self, account: str, limit: int, call_key: str, emergency: bool = False, enforce: bool = True) -> None:
        self.account = account
        self.limit = limit
        self.call_key = call_key
        self.emergency = emergency
        self.enforce = enforce
