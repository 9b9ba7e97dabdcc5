"""Caller-ID screening (terms: general 4): an end user presents only its own numbers.

The presented identities of an outbound call are P-Asserted-Identity,
P-Preferred-Identity, Remote-Party-ID and the From user, and the display name of
each of them that reads as a phone number (a callee's phone shows a From
``"+3299999999" <sip:201@pbx>`` as +3299999999).  Each that is a number (after
normalisation to E.164 in the account's country) must fall in one of the
account's number blocks.  A From user that is not a number is an
extension or SIP user name: on a hosted account it must be one of the
account's ``sip_users``; on a trunk it says nothing about the caller ID.

Anonymous presentation (``Privacy: id``, RFC 3323 / 3325, or an anonymous From
user, ``anonymous@anonymous.invalid``) passes while an identity of the account is
asserted (PAI, PPI or RPID) or the From user is an own number; with no such
identity it is a mismatch (nobody could tell whose call it is).  Privacy never
hides a From number from screening (the callee's phone may show it), and a
display name saying "Anonymous" makes no call anonymous.

Forwarded calls (RFC 5806 Diversion, RFC 7044 History-Info): when a Diversion
or History-Info entry names one of the account's numbers, the account is
forwarding a call it received, and the presented identity is the original
caller's; it passes, flagged as forwarded with the diverting number as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"
from ..sip.errors import ParseError
from ..sip.message import Request, parse_name_addr, split_list
from .model import Account
from .numbers import NumberIndex, NumberPlan, display_number, identity_of, uri_user

__all__ = ["Screening", "screen"]

_IDENTITY_HEADERS: Final = frozenset(("p-asserted-identity", "p-preferred-identity", "remote-party-id"))


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class Screening:
    ok: Final[bool]
    reason: Final[str]
    evidence: Final[tuple[tuple[str, str | None], ...]]
    forwarded_by: Final[str | None]
    foreign_display: Final[bool]  # the From display name reads as a number that is not the account's

    def __init__(self, ok: bool, reason: str, evidence: tuple[tuple[str, str | None], ...],
                 forwarded_by: str | None = None, foreign_display: bool = False) -> None:
        self.ok = ok
        self.reason = reason
        self.evidence = evidence
        self.forwarded_by = forwarded_by
        self.foreign_display = foreign_display


def _is_anonymous(request: Request, from_user: str | None) -> bool:
    """Privacy: id (among the Privacy values, ``;`` or ``,`` separated), or the From user ``anonymous``."""
    privacy = (request.get("privacy") or "").lower()
    if "id" in [p.strip() for p in privacy.replace(";", ",").split(",")]:
        return True
    return from_user is not None and from_user.lower() == "anonymous"


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
            number = plan.normalize(uri_user(uri))
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
    asserted_seen = False  # any identity header at all: one that is no number is itself a mismatch
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
    anonymous = _is_anonymous(request, from_user)
    number = plan.normalize(from_user)
    if number is not None:  # screened whatever Privacy says: the callee's phone may show it
        evidence.append(("from_number", number))
        if not _owns(index, account, number):
            foreign.append(f"From {number} is not a number of {account.name}")
    elif anonymous:
        evidence.append(("anonymous", "yes"))
        if not asserted_own and not foreign:
            foreign.append("anonymous call without an asserted identity of the account"
                           if not asserted_seen else "anonymous call whose asserted identity is not the account's")
    elif account.kind == "hosted" and from_user not in sip_users:
        foreign.append(f"From user {from_user!r} is no number and no SIP user of {account.name}")
    elif account.kind == "trunk" and not asserted_seen:
        foreign.append("the trunk presents no number")
    if foreign:
        diverted = _own_diversion(request, plan, index, account)
        if diverted is not None:
            evidence.append(("diverted_from", diverted))
            return Screening(True, f"forwarded call from {diverted}", tuple(evidence), diverted)
        return Screening(False, "; ".join(foreign), tuple(evidence), None, foreign_display)
    return Screening(True, "own identity" + (" (anonymous)" if anonymous else ""), tuple(evidence))
