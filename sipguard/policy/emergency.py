"""Emergency calls (terms: Business Telephony 7, SIP Trunking 4).

An emergency call must present a caller ID whose number block's postal address
is the caller's real address.  The caller's site comes from its device or user
(``site`` of the entry whose ``sip_users`` holds the From user), else from the
site whose ``sources`` hold the source address.  When the presented number
(P-Asserted-Identity, else From) is not at that site's address, the asserted
identity becomes the site's ``emergency_caller_id``.  With no site (a roaming
softphone, hot-desking), the call goes through with the presented number when it
is the account's, else the account's default number, flagged unverified.
Emergency calls are never blocked by any rule.

Which calls are emergency calls (``EmergencyNumbers``): the Request-URI ``urn:service:sos`` or one
of its sub-services (RFC 5031, ``urn:service:sos.police``), or a number of
``service.emergency_numbers`` in every form a phone or a PBX dials it: ``112``, ``tel:112``,
``sip:112@host``, with the country's prefix (``+32112``, ``0032112``) and with visual separators.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

import phonenumbers

from ..sip.message import Request
from .model import Account, Site
from .numbers import NumberIndex, NumberPlan, identity_of, uri_user, without_separators

__all__ = ["EmergencyOutcome", "EmergencyNumbers", "called_number", "locate", "route_identity"]

_SOS: Final = "urn:service:sos"


class EmergencyNumbers:
    """Recognises an emergency call by its Request-URI, in every form it is dialled."""

    def __init__(self, numbers: tuple[str, ...], country: str) -> None:
        code = phonenumbers.country_code_for_region(country.upper())
        forms: set[str] = set()
        for number in numbers:
            forms.add(number)
            if code and not number.startswith("+"):
                forms.add(f"+{code}{number}")
                forms.add(f"00{code}{number}")
        self.forms = frozenset(forms)

    def uri(self, uri: str) -> bool:
        """Whether a Request-URI (``sip:``, ``sips:``, ``tel:`` or ``urn:``) names an emergency service."""
        if uri[:4].lower() == "urn:":
            lower = uri.lower()
            return lower.startswith(_SOS) and (len(lower) == len(_SOS) or lower[len(_SOS)] == ".")
        user = uri_user(uri)
        return user is not None and without_separators(user) in self.forms

    def datagram(self, data: bytes) -> bool:
        """Whether a datagram is an INVITE to an emergency service, read from its request line alone."""
        if data[:7] != b"INVITE ":
            return False
        end = data.find(b" ", 7, 520)
        return end > 7 and self.uri(data[7:end].decode("latin-1"))


@dataclass(frozen=True, slots=True)
class EmergencyOutcome:
    site: Site | None
    how_located: str  # device | user | source | unverified
    presented: str | None
    caller_id: str | None  # what the call will assert
    rewritten: bool


def called_number(request: Request) -> str | None:
    """The Request-URI user (or tel: number) without parameters; the URN itself for a ``urn:``."""
    ruri = request.ruri
    if ruri is not None:
        user = ruri.user
        return user.split(";", 1)[0] if user else None
    if request.uri[:4].lower() == "tel:":
        return request.uri[4:].split(";", 1)[0]
    if request.uri[:4].lower() == "urn:":
        return request.uri
    return None


def locate(account: Account, from_user: str | None, source_host: str) -> tuple[Site | None, str]:
    if from_user:
        for device in account.devices:
            if from_user in device.sip_users and device.site:
                return account.sites[device.site], "device"
        for user in account.users:
            if from_user in user.sip_users and user.site:
                return account.sites[user.site], "user"
    try:
        ip = ipaddress.ip_address(source_host)
    except ValueError:
        return None, "unverified"
    best: tuple[int, Site] | None = None
    for site in account.sites.values():
        for net in site.sources:
            if ip.version == net.version and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, site)
    if best is not None:
        return best[1], "source"
    return None, "unverified"


def route_identity(request: Request, account: Account, plan: NumberPlan, index: NumberIndex,
                   source_host: str, default_number: str | None) -> EmergencyOutcome:
    _d, from_user = identity_of(request.get("from") or "")
    pai = request.get("p-asserted-identity")
    presented = plan.normalize(identity_of(pai)[1]) if pai else None
    if presented is None:
        presented = plan.normalize(from_user)
    site, how = locate(account, from_user, source_host)
    found = index.find(presented)
    own = found is not None and found[1] is account
    if site is None:
        caller_id = presented if own else default_number
        return EmergencyOutcome(None, how, presented, caller_id, caller_id != presented)
    block = found[0] if found is not None and own else None
    block_site = account.sites.get(block.site) if block is not None and block.site else None
    if block_site is not None and block_site.address == site.address:
        return EmergencyOutcome(site, how, presented, presented, False)
    caller_id = site.emergency_caller_id or default_number
    return EmergencyOutcome(site, how, presented, caller_id, caller_id != presented)
