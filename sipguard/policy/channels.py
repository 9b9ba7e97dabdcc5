"""Who counts as a user, and the channel limit that follows (terms: Business Telephony 4a).

Each user adds the channels of the band it falls in (1st and 2nd user: 2 each;
3rd-5th: 1; 6th-10th: 0.5; beyond: 0.25, by default), so 1 user -> 2, 5 -> 7,
10 -> 9.5, 14 -> 10.5; fractions are rounded by ``service.channel_rounding``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .model import Account, Band

__all__ = ["Counted", "ChannelLimit", "count_users", "channels_for", "channel_limit"]

# user kind -> (users per entry, reason)
_USER_RULES = {
    "person": "a natural person who uses the service: one user whatever number of devices",
    "shared_room": "a room used by people who are not users: one user per phone",
    "meeting_room": "a meeting room used by people who already are users: no user",
    "admin_no_service": "administrator with the no-service option: created, not billed, no channels",
    "supervisor_no_service": "supervisor with the no-service option: created, not billed, no channels",
}


@dataclass(frozen=True, slots=True)
class Counted:
    name: str
    kind: str
    users: int
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelLimit:
    account: str
    users: int
    exact: float  # before rounding
    limit: int
    explanation: str
    entries: tuple[Counted, ...]


def count_users(account: Account) -> list[Counted]:
    out = []
    for user in account.users:
        if user.kind == "person":
            n = 1
        elif user.kind == "shared_room":
            n = user.phones
        else:
            n = 0
        out.append(Counted(user.name, user.kind, n, _USER_RULES[user.kind]))
    for device in account.devices:
        out.append(Counted(device.name, device.type, 0, "a device not linked to a user is not a user"))
    return out


def channels_for(users: int, bands: tuple[Band, ...]) -> tuple[float, str]:
    """Channels for ``users`` under progressive ``bands``, and how they were added up."""
    total = 0.0
    parts = []
    lower = 0
    for band in bands:
        upper = users if band.up_to is None else min(users, band.up_to)
        n = upper - lower
        if n > 0:
            total += n * band.per_user
            label = f"{lower + 1}-{band.up_to}" if band.up_to is not None else f">{lower}"
            parts.append(f"{n} x {band.per_user:g} ({label})")
        if band.up_to is None or users <= band.up_to:
            break
        lower = band.up_to
    return total, " + ".join(parts) if parts else "no users"


def _round(value: float, rounding: str) -> int:
    if rounding == "ceil":
        return math.ceil(value)
    if rounding == "round":
        return math.floor(value + 0.5)
    return math.floor(value)


def channel_limit(account: Account, bands: tuple[Band, ...], rounding: str) -> ChannelLimit:
    entries = tuple(count_users(account))
    users = sum(e.users for e in entries)
    if account.channels is not None:
        return ChannelLimit(account.name, users, float(account.channels), account.channels,
                            f"{account.channels} channels declared by the trunk", entries)
    exact, how = channels_for(users, bands)
    limit = _round(exact, rounding)
    return ChannelLimit(account.name, users, exact, limit, f"{users} users: {how} = {exact:g} -> {rounding} {limit}",
                        entries)
