"""Caller-ID screening (terms: general 4): an end user presents only its own numbers.

The presented identities of an outbound call are P-Asserted-Identity,
P-Preferred-Identity, Remote-Party-ID and the From user, and the display name of
each of them that reads as a phone number (a callee's phone shows a From
``"+3299999999" <sip:201@pbx>`` as +3299999999).  Each that is a number (after
normalisation to E.164 in the account's country) must fall in one of the
account's number blocks.  A From user that is not a number is an
extension or SIP user name: on a hosted account it must be one of the
account's ``sip_users``; on a trunk it says nothing about the caller ID.

Anonymous presentation (``Privacy: id``, or an anonymous From) passes while the
asserted identity (PAI, else PPI / RPID) is the account's; with no asserted
identity at all it is a mismatch (nobody could tell whose call it is).

Forwarded calls (RFC 5806 Diversion, RFC 7044 History-Info): when a Diversion
or History-Info entry names one of the account's numbers, the account is
forwarding a call it received, and the presented identity is the original
caller's; it passes, flagged as forwarded with the diverting number as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..sip.errors import ParseError
from ..sip.message import Request, parse_name_addr, split_list
from .model import Account
from .numbers import NumberIndex, NumberPlan, display_number, identity_of, uri_user

__all__ = ["Screening", "screen"]

_IDENTITY_HEADERS: Final = frozenset(("p-asserted-identity", "p-preferred-identity", "remote-party-id"))


@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class Screening:
    ok: Final[bool]
    reason: Final[str]
    evidence: Final[tuple[tuple[str, str | None], ...]]
    anonymous: Final[bool]
    forwarded_by: Final[str | None]
    calling_user: Final[str | None]
    foreign_display: Final[bool]  # the From display name reads as a number that is not the account's

    def __init__(self, ok: bool, reason: str, evidence: tuple[tuple[str, str | None], ...], anonymous: bool = False,
                 forwarded_by: str | None = None, calling_user: str | None = None,
                 foreign_display: bool = False) -> None:
        self.ok = ok
        self.reason = reason
        self.evidence = evidence
        self.anonymous = anonymous
        self.forwarded_by = forwarded_by
        self.calling_user = calling_user
        self.foreign_display = foreign_display


def _is_anonymous(request: Request, from_display: str | None, from_user: str | None) -> bool:
    privacy = (request.get("privacy") or "").lower()
    if "id" in [p.strip() for p in privacy.replace(";", ",").split(",")]:
        return True
    if from_user and from_user.lower() == "anonymous":
        return True
    return bool(from_display and "anonymous" in from_display.lower())


def _owns(index: NumberIndex, account: Account, number: str) -> bool:
    found = index.find(number)
    return found is not None and found[1] is account


def _own_diversion(request: Request, plan: NumberPlan, index: NumberIndex, account: Account) -> str | None:
    for key in ("diversion", "history-info"):
        for value in request.get_all(key):
            try:
                uri = parse_name_addr(value).uri
            except ParseError:
                continue
            number = plan.normalize(uri_user(uri.split("?", 1)[0]))
            if number is not None and _owns(index, account, number):
                return number
    return None


def screen(request: Request, account: Account, plan: NumberPlan, index: NumberIndex,
           sip_users: frozenset[str]) -> Screening:
    """Check the presented identities of an outbound request against the account's numbers."""
    from_display, from_user = identity_of(request.get("from") or "")
    evidence: list[tuple[str, str | None]] = [("from_user", from_user)]
    foreign: list[str] = []
    asserted_own = False
    asserted_seen = False
    numbers_seen = 0
    for key, value in [(k, v) for k, _n, v in request.headers if k in _IDENTITY_HEADERS]:
        for value in split_list(value):
            display, user = identity_of(value)
            shown = display_number(display, plan)
            if shown is not None and not _owns(index, account, shown):
                evidence.append((f"{key}_display", shown))
                foreign.append(f"{key} display name {shown} is not a number of {account.name}")
            number = plan.normalize(user)
            evidence.append((key, number or user))
            asserted_seen = True
            numbers_seen += number is not None
            if number is None:
                foreign.append(f"{key} {user!r} is not a number")
                continue
            if _owns(index, account, number):
                asserted_own = True
            else:
                foreign.append(f"{key} {number} is not a number of {account.name}")
    foreign_display = False
    shown = display_number(from_display, plan)
    if shown is not None and not _owns(index, account, shown):
        evidence.append(("from_display", shown))
        foreign.append(f"From display name {shown} is not a number of {account.name}")
        foreign_display = True
    anonymous = _is_anonymous(request, from_display, from_user)
    calling_user = from_user if from_user in sip_users else None
    if not anonymous:
        number = plan.normalize(from_user)
        if number is not None:
            numbers_seen += 1
            evidence.append(("from_number", number))
            if not _owns(index, account, number):
                foreign.append(f"From {number} is not a number of {account.name}")
        elif account.kind == "hosted" and calling_user is None:
            foreign.append(f"From user {from_user!r} is no number and no SIP user of {account.name}")
        elif account.kind == "trunk" and numbers_seen == 0:
            foreign.append("the trunk presents no number")
    elif not asserted_own and not foreign:
        foreign.append("anonymous call without an asserted identity of the account"
                       if not asserted_seen else "anonymous call whose asserted identity is not the account's")
    if foreign:
        diverted = _own_diversion(request, plan, index, account)
        if diverted is not None:
            evidence.append(("diverted_from", diverted))
            return Screening(True, f"forwarded call from {diverted}", tuple(evidence), anonymous, diverted,
                             calling_user)
        return Screening(False, "; ".join(foreign), tuple(evidence), anonymous, None, calling_user, foreign_display)
    return Screening(True, "own identity" + (" (anonymous)" if anonymous else ""), tuple(evidence), anonymous,
                     None, calling_user)
