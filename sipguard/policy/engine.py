"""The policy engine: implements the core's Router hook over a loaded Policy.

Attribution (SPEC §3): an out-of-dialog request is outbound when its source
address is in an account's ``match.sources`` (else, when its From domain is in
an account's ``match.domains``); inbound when it comes from a configured
upstream.  Anything else is an unknown source: ``reject.unknown_source``.

Routing: outbound requests go to the account's upstream (the Request-URI is
left as the caller wrote it, the upstream is the next hop).  Inbound requests
go by the Request-URI when it names another host, else to the ``deliver_to``
of the account whose number block holds the called number.

Pure: reads only the policy and its arguments (a per-source lookup cache is a
memo of the policy, rebuilt with it).
"""

from __future__ import annotations

import ipaddress

from ..sip.actions import Admission, Peer, Reject
from ..sip.message import Request, ip_literal, parse_name_addr, parse_uri
from ..sip.errors import ParseError
from .decision import Decision, Verdict
from .model import Account, Network, Policy

__all__ = ["Engine"]

_CACHE_MAX = 65536


class Engine:
    """Router for ProxyCore built from one Policy; replace it whole on reload."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._nets: list[tuple[Network, Account]] = [(n, a) for a in policy.accounts for n in a.sources]
        # most specific network first
        self._nets.sort(key=lambda na: na[0].prefixlen, reverse=True)
        self._domains = {d: a for a in policy.accounts for d in a.domains}
        self._upstream_hosts = {p.host for p in policy.service.upstreams.values()}
        self._by_source: dict[str, Account | None] = {}
        self._accounts = {a.name: a for a in policy.accounts}
        self._numbers = sorted(
            ((b.first, b.last, a) for a in policy.accounts for b in a.numbers), key=lambda t: t[0]
        )

    def account(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def account_for_source(self, host: str) -> Account | None:
        acc = self._by_source.get(host, False)
        if acc is not False:
            return acc  # type: ignore[return-value]
        found: Account | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is not None:
            for net, account in self._nets:
                if ip.version == net.version and ip in net:
                    found = account
                    break
        if len(self._by_source) >= _CACHE_MAX:
            self._by_source.clear()
        self._by_source[host] = found
        return found

    def account_for_number(self, e164: str) -> Account | None:
        for first, last, account in self._numbers:
            if len(first) == len(e164) and first <= e164 <= last:
                return account
        return None

    def is_known(self, source: Peer) -> bool:
        return source.host in self._upstream_hosts or self.account_for_source(source.host) is not None

    def admit(self, request: Request, source: Peer, now: float) -> Admission:
        account = self.account_for_source(source.host)
        if account is None and self._domains:
            account = self._account_for_domain(request)
        if account is not None:
            target = self.policy.service.upstreams[account.upstream]
            decision = Decision(Verdict.ALLOW, "attribution", "outbound", account.name)
            return Admission(target=target, account=account.name, direction="outbound", decision=decision)
        if source.host in self._upstream_hosts:
            return self._inbound(request)
        code = self.policy.service.reject.unknown_source
        decision = Decision(
            Verdict.REJECT, "attribution", "unknown source", None,
            (("source", source.host),), status=code,
        )
        warning = f'399 sipguard "source {source.host} belongs to no account"'
        return Admission(reject=Reject(code, "Forbidden", (("warning", warning),)), decision=decision)

    def _account_for_domain(self, request: Request) -> Account | None:
        try:
            host = parse_uri(parse_name_addr(request.get("from") or "").uri).host
        except ParseError:
            return None
        return self._domains.get(host)

    def _inbound(self, request: Request) -> Admission:
        ruri = request.ruri
        user = ruri.user if ruri is not None else None
        account = self.account_for_number(_e164_guess(user)) if user else None
        if account is not None and account.deliver_to is not None:
            decision = Decision(Verdict.ALLOW, "attribution", "inbound", account.name)
            return Admission(target=account.deliver_to, account=account.name, direction="inbound", decision=decision)
        if ruri is not None and ruri.user is not None:
            ip = ip_literal(ruri.host)
            if ip is not None:
                transport = (ruri.param("transport") or "udp").lower()
                target = Peer(transport, ip, ruri.port or 5060)
                name = account.name if account is not None else None
                decision = Decision(Verdict.ALLOW, "attribution", "inbound by Request-URI", name)
                return Admission(target=target, account=name, direction="inbound", decision=decision)
        decision = Decision(Verdict.REJECT, "attribution", "inbound for no known number", None, status=404)
        return Admission(reject=Reject(404, "Not Found"), decision=decision)


def _e164_guess(user: str) -> str:
    """A called number as E.164 when it already is one (full normalisation: issue 3)."""
    digits = user.split(";", 1)[0]
    if digits.startswith("00"):
        return "+" + digits[2:]
    return digits
