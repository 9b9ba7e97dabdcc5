"""A channel claim: one call holding one channel of an account (state/base.py has the contract).

Its own module so that the Redis store, which stays interpreted, imports it without the in-process
stores; compiled with the hot path (docs/compiled.md) like them: an engine makes one per INVITE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"

__all__ = ["ChannelClaim"]


@mypyc_attr(acyclic=True)
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
