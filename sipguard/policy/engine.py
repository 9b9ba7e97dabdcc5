"""The policy engine: implements the core's Router hook over a loaded Policy.

``admit`` decides a new out-of-dialog request in a fixed order:

1. attribution (SPEC §3): outbound when the source address is in an account's
   ``match.sources`` (else its From domain in ``match.domains``); inbound when it
   comes from an upstream; otherwise an unknown source -> ``reject.unknown_source``;
2. for an INVITE: emergency (SPEC §4.4) — the caller ID is kept or rewritten to
   the caller's site, and no later rule may block the call; otherwise caller-ID
   screening (§4.2) of outbound calls;
3. fax (§4.5): a T.38 offer is recognised and counted, never blocked;
4. auto-dialers (§4.3), outbound INVITEs of accounts with the rule on (trunks by
   default), never emergency calls: the detector's level and its action (log,
   throttle with 503 + Retry-After, block with 403 for a cool-down);
5. channels (§4.1): every admitted INVITE, inbound or outbound, carries a
   ChannelClaim that the server settles in the state store; a refused claim
   becomes ``reject.channel_limit`` with a Warning naming the limit.

Before all that, ``screen_packet`` and ``screen_request`` (§4.6) drop banned,
flooding and scanning sources silently (EdgeGuard).

Each rule has a mode per account (enforce | shadow | off): shadow records what
enforce would have done and lets the call through unchanged.

Reads only the policy and its arguments, plus two state machines that outlive
a reload and are passed in (EdgeGuard, DialerDetector): both take ``now`` and
do no I/O.  Lookup tables built from the policy are memos, rebuilt with it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from ..sip.actions import Admission, Peer, Reject
from ..sip.errors import ParseError
from ..sip.message import Request, ip_literal, parse_name_addr, parse_uri
from ..sip.serializer import Edit, RemoveAll, SetHeader
from ..state.base import ChannelClaim
from .autodialer import DialerDetector
from .callerid import screen
from .channels import ChannelLimit, channel_limit
from .decision import Decision, Mode, Verdict
from .edge import EdgeGuard
from .emergency import called_number, route_identity
from .model import RULES, Account, Network, Policy, RuleMode
from .numbers import NumberIndex, NumberPlan

__all__ = ["Engine", "AccountView", "is_t38"]

_CACHE_MAX: Final = 65536
# the rule modes as C statics (compiled, ``RuleMode.OFF`` is a globals lookup and an attribute lookup)
_ENFORCE: Final = RuleMode.ENFORCE
_SHADOW: Final = RuleMode.SHADOW
_OFF: Final = RuleMode.OFF
_URI_USER_RE: Final = re.compile(r"(<?\s*(?:sips?|tel):)([^@;>]*@)?")


def is_t38(body: bytes) -> bool:
    """A T.38 fax offer in an SDP body (m=image ... udptl t38)."""
    if b"m=image" not in body:
        return False
    return b"t38" in body.lower()


@dataclass(frozen=True, slots=True)
class AccountView:
    account: Account
    limit: ChannelLimit
    sip_users: frozenset[str]
    claim_reject: Reject  # the rejection of a refused channel claim (fixed for a policy)
    modes: dict[str, RuleMode]  # Account.mode of every rule, read once (model.py stays interpreted)


def _identity_uri(number: str, request: Request) -> str:
    try:
        host = parse_uri.call(parse_name_addr(request.get("from") or "").uri).host
    except ParseError:
        host = "invalid"
    return f"<sip:{number}@{host};user=phone>"


def _with_user(from_value: str, number: str) -> str:
    """The From value with its URI user replaced (tag and parameters kept)."""

    def repl(m: re.Match[str]) -> str:
        return f"{m.group(1)}{number}@" if "tel:" not in m.group(1) else f"{m.group(1)}{number}"

    return _URI_USER_RE.sub(repl, from_value, count=1)


class Engine:
    """Router for ProxyCore built from one Policy; replace it whole on reload."""

    def __init__(self, policy: Policy, edge: EdgeGuard | None = None, dialer: DialerDetector | None = None) -> None:
        self.policy = policy
        service = policy.service
        upstream_hosts = frozenset(p.host for p in service.upstreams.values())
        self.edge = edge or EdgeGuard(service.edge, upstream_hosts)
        self.edge.reconfigure(service.edge, upstream_hosts)
        self.dialer = dialer or DialerDetector(service.autodialer)
        self.dialer.set_config(service.autodialer)
        self.plan = NumberPlan(service.country)
        self.emergency_numbers = frozenset(service.emergency_numbers)
        self._nets: list[tuple[Network, Account]] = [(n, a) for a in policy.accounts for n in a.sources]
        self._nets.sort(key=lambda na: na[0].prefixlen, reverse=True)  # most specific first
        self._domains = {d: a for a in policy.accounts for d in a.domains}
        self._upstream_hosts = {p.host for p in service.upstreams.values()}
        self._by_source: dict[str, Account | None] = {}
        self.views: dict[str, AccountView] = {}
        code = service.reject.channel_limit
        for a in policy.accounts:
            limit = channel_limit(a, service.channel_bands, service.channel_rounding)
            warning = f'399 sipguard "channel limit of {limit.limit} reached for account {a.name}"'
            self.views[a.name] = AccountView(
                a, limit,
                frozenset([*(u for user in a.users for u in user.sip_users),
                           *(u for device in a.devices for u in device.sip_users)]),
                Reject(code, "Busy Here" if code == 486 else "Channel Limit", (("warning", warning),)),
                {rule: a.mode(rule) for rule in RULES},
            )
        self.index = NumberIndex((b, a) for a in policy.accounts for b in a.numbers)

    # ------------------------------------------------------------------ lookups
    def limits(self) -> dict[str, int]:
        return {name: view.limit.limit for name, view in self.views.items()}

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

    def account_for_number(self, e164: str | None) -> Account | None:
        found = self.index.find(e164)
        return found[1] if found is not None else None  # type: ignore[return-value]

    def is_known(self, source: Peer) -> bool:
        return source.host in self._upstream_hosts or self.account_for_source(source.host) is not None

    def is_emergency(self, request: Request) -> bool:
        return self.plan.dialled(called_number(request)) in self.emergency_numbers

    # ------------------------------------------------------------------ the hook
    def screen_packet(self, source: Peer, now: float) -> str | None:
        return self.edge.packet(source.host, now)

    def screen_request(self, request: Request, source: Peer, now: float) -> str | None:
        ua = request.get("user-agent")
        if ua is not None and self.edge.user_agent(source.host, ua, now) is not None:
            return "scanner"
        return None

    def admit(self, request: Request, source: Peer, now: float) -> Admission:
        account = self.account_for_source(source.host)
        if account is None and self._domains:
            account = self._account_for_domain(request)
        if account is not None:
            return self._outbound(request, source, account, now)
        if source.host in self._upstream_hosts:
            return self._inbound(request)
        code = self.policy.service.reject.unknown_source
        decision = Decision(Verdict.REJECT, "attribution", "unknown source", None,
                            (("source", source.host),), status=code)
        warning = f'399 sipguard "source {source.host} belongs to no account"'
        return Admission(reject=Reject(code, "Forbidden", (("warning", warning),)), decisions=(decision,))

    def in_dialog(self, request: Request, account: str | None) -> tuple[Decision, ...]:
        """Decisions about a request inside a dialog (a re-INVITE switching to T.38)."""
        if request.method in ("INVITE", "UPDATE") and is_t38(request.body):
            return (Decision(Verdict.FLAG, "fax", "T.38 fax offer in a re-INVITE", account,
                             (("method", request.method),)),)
        return ()

    def _account_for_domain(self, request: Request) -> Account | None:
        try:
            host = parse_uri.call(parse_name_addr(request.get("from") or "").uri).host
        except ParseError:
            return None
        return self._domains.get(host)

    def _outbound(self, request: Request, source: Peer, account: Account, now: float) -> Admission:
        target = self.policy.service.upstreams[account.upstream]
        if request.method != "INVITE":
            return Admission(target=target, account=account.name, direction="outbound")
        view = self.views[account.name]
        decisions: list[Decision] = []
        edits: list[Edit] = []
        emergency = self.is_emergency(request)
        if emergency:
            self._emergency(request, source, account, view.modes["emergency"], decisions, edits)
        else:
            mode = view.modes["caller_id"]
            if mode is not _OFF:
                rejected = self._caller_id(request, view, mode, decisions, edits)
                if rejected is not None:
                    return Admission(account=account.name, reject=rejected, decisions=tuple(decisions))
            mode = view.modes["autodialer"]
            if mode is not _OFF:
                rejected = self._autodialer(request, source, account, mode, now, decisions)
                if rejected is not None:
                    return Admission(account=account.name, reject=rejected, decisions=tuple(decisions))
        self._fax(request, account, decisions, "outbound")
        claim, claim_reject = self._claim(request, view, emergency)
        return Admission(target=target, account=account.name, direction="outbound", edits=tuple(edits),
                         claim=claim, claim_reject=claim_reject, emergency=emergency, decisions=tuple(decisions))

    def _inbound(self, request: Request) -> Admission:
        ruri = request.ruri
        called = self.plan.normalize(called_number(request))
        account = self.account_for_number(called)
        target: Peer | None = None
        if account is not None and account.deliver_to is not None:
            target = account.deliver_to
        elif ruri is not None and ruri.user is not None:
            ip = ip_literal(ruri.host)
            if ip is not None:
                transport = (ruri.param("transport") or "udp").lower()
                target = Peer(transport, ip, ruri.port or 5060)
        if target is None:
            decision = Decision(Verdict.REJECT, "attribution", "inbound for no known number", None,
                                (("called", called),), status=404)
            return Admission(reject=Reject(404, "Not Found"), decisions=(decision,))
        name = account.name if account is not None else None
        if request.method != "INVITE" or account is None:
            return Admission(target=target, account=name, direction="inbound")
        decisions: list[Decision] = []
        self._fax(request, account, decisions, "inbound")
        claim, claim_reject = self._claim(request, self.views[account.name], False)
        return Admission(target=target, account=name, direction="inbound", claim=claim, claim_reject=claim_reject,
                         decisions=tuple(decisions))

    # ------------------------------------------------------------------ rules
    def _caller_id(self, request: Request, view: AccountView, mode: RuleMode, decisions: list[Decision],
                   edits: list[Edit]) -> Reject | None:
        account = view.account
        result = screen(request, account, self.plan, self.index, view.sip_users)
        if result.ok:
            if result.forwarded_by is not None:
                decisions.append(Decision(Verdict.FLAG, "caller_id", result.reason, account.name, result.evidence,
                                          Mode(mode.value)))
            return None
        code = self.policy.service.reject.caller_id
        if account.on_caller_id_mismatch == "rewrite" and account.default_caller_id:
            number = account.default_caller_id
            decisions.append(Decision(Verdict.REWRITE, "caller_id", f"{result.reason}; rewritten to {number}",
                                      account.name, (*result.evidence, ("rewritten_to", number)), Mode(mode.value)))
            if mode is _ENFORCE:
                edits.extend(self._identity_edits(request, number))
            return None
        decisions.append(Decision(Verdict.REJECT, "caller_id", result.reason, account.name, result.evidence,
                                  Mode(mode.value), status=code))
        if mode is _SHADOW:
            return None
        warning = f'399 sipguard "caller ID not allowed: {_quote(result.reason)}"'
        return Reject(code, "Forbidden", (("warning", warning),))

    def _identity_edits(self, request: Request, number: str) -> list[Edit]:
        edits: list[Edit] = [
            SetHeader("p-asserted-identity", _identity_uri(number, request)),
            RemoveAll("p-preferred-identity"),
            RemoveAll("remote-party-id"),
        ]
        if self.policy.service.rewrite_from:
            edits.append(SetHeader("from", _with_user(request.get("from") or "", number)))
        return edits

    def _emergency(self, request: Request, source: Peer, account: Account, mode: RuleMode,
                   decisions: list[Decision], edits: list[Edit]) -> None:
        outcome = route_identity(request, account, self.plan, self.index, source.host, account.default_caller_id)
        verified = outcome.site is not None
        evidence = (
            ("called", called_number(request)),
            ("location", "verified" if verified else "unverified"),
            ("located_by", outcome.how_located),
            ("site", outcome.site.name if outcome.site else None),
            ("address", outcome.site.address if outcome.site else None),
            ("presented", outcome.presented),
            ("caller_id", outcome.caller_id),
            ("caller_id_action", "rewritten" if outcome.rewritten else "kept"),
        )
        if outcome.rewritten and outcome.caller_id:
            reason = (f"emergency call: caller ID {outcome.presented} is not at the caller's address; "
                      f"asserted {outcome.caller_id}")
            verdict = Verdict.REWRITE
            if mode is not _SHADOW:  # never off: the law wants the right address
                edits.extend(self._identity_edits(request, outcome.caller_id))
        else:
            reason = "emergency call: caller ID kept"
            verdict = Verdict.ALLOW
        if not verified:
            reason += "; location unverified"
            verdict = Verdict.FLAG if verdict is Verdict.ALLOW else verdict
        decisions.append(Decision(verdict, "emergency", reason, account.name, evidence,
                                  Mode.SHADOW if mode is _SHADOW else Mode.ENFORCE))

    def _autodialer(self, request: Request, source: Peer, account: Account, mode: RuleMode, now: float,
                    decisions: list[Decision]) -> Reject | None:
        dialer = self.dialer
        config = dialer.config
        keys = (account.name, f"{account.name}|{source.host}")
        blocked = dialer.blocked_until(keys, now)
        called = self.plan.normalize(called_number(request)) or called_number(request)
        assessment = dialer.attempt(keys, called, f"{request.call_id};{request.from_tag or ''}", now)
        evidence: list[tuple[str, str | int | float | bool | None]] = [
            ("level", assessment.level), ("score", assessment.score), ("source", source.host),
            *assessment.features,
        ]
        shadow = mode is _SHADOW
        if blocked is not None:
            decisions.append(Decision(Verdict.REJECT, "autodialer", "blocked as an auto-dialer (cool-down)",
                                      account.name, (*evidence, ("blocked_for_s", round(blocked - now, 1))),
                                      Mode(mode.value), status=403))
            return None if shadow else _reject(403, "Forbidden", "blocked as an auto-dialer")
        if assessment.level == "none":
            return None
        action = config.critical_action if assessment.level == "critical" else config.warning_action
        evidence.append(("action", action))
        if action == "block":
            if not shadow:
                dialer.block(keys, now)
            decisions.append(Decision(Verdict.REJECT, "autodialer", f"auto-dialer pattern ({assessment.level}): blocked",
                                      account.name, tuple(evidence), Mode(mode.value), status=403))
            return None if shadow else _reject(403, "Forbidden", "auto-dialer pattern: blocked")
        if action == "throttle" and dialer.throttled(assessment):
            decisions.append(Decision(Verdict.REJECT, "autodialer",
                                      f"auto-dialer pattern ({assessment.level}): throttled", account.name,
                                      tuple(evidence), Mode(mode.value), status=503))
            if shadow:
                return None
            rej = _reject(503, "Service Unavailable", "auto-dialer pattern: throttled")
            return Reject(rej.status, rej.reason, (*rej.headers, ("retry-after", str(config.retry_after_s))))
        decisions.append(Decision(Verdict.FLAG, "autodialer", f"auto-dialer pattern ({assessment.level})",
                                  account.name, tuple(evidence), Mode(mode.value)))
        return None

    @staticmethod
    def _fax(request: Request, account: Account, decisions: list[Decision], direction: str) -> None:
        if is_t38(request.body):
            decisions.append(Decision(Verdict.FLAG, "fax", "T.38 fax offer: counted, not blocked", account.name,
                                      (("direction", direction),)))

    def _claim(self, request: Request, view: AccountView, emergency: bool) -> tuple[ChannelClaim | None, Reject | None]:
        mode = view.modes["channel_limit"]
        if mode is _OFF:
            return None, None
        claim = ChannelClaim(view.account.name, view.limit.limit, f"{request.call_id};{request.from_tag or ''}",
                             emergency, enforce=mode is _ENFORCE)
        return claim, view.claim_reject


def _reject(status: int, reason: str, why: str) -> Reject:
    return Reject(status, reason, (("warning", f'399 sipguard "{why}"'),))


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")[:200]
