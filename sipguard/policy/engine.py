"""The policy engine: implements the core's Router hook over a loaded Policy.

``admit`` decides a new out-of-dialog request in a fixed order (README, "The policies"):

1. attribution: outbound when the source address is in an account's
   ``match.sources`` (else its From domain in ``match.domains``); inbound when it
   comes from an upstream; otherwise an unknown source -> ``reject.unknown_source``;
2. the edge budget of a trusted source (an account's network or an upstream):
   over it, a new request gets 503 with Retry-After (never an emergency call);
3. routing: an outbound request goes to the account's upstream, an inbound one to
   the ``deliver_to`` of the account whose block holds the called number, and a
   preloaded Route may name nothing else (``routing``: 403; an emergency call's
   foreign Routes are removed instead);
4. for an INVITE: emergency (terms BT7, ST4) — the caller ID is kept or rewritten
   to the caller's site, and no later rule may block the call; otherwise caller-ID
   screening (terms general 4) of outbound calls, and the inbound caller-ID rule
   (Royal Decree of 12 May 2024) of calls from an international upstream;
5. fax: a T.38 offer is recognised and counted, never blocked;
6. auto-dialers (terms ST5), outbound INVITEs of accounts with the rule on (trunks
   by default), never emergency calls: the detector's level and its action (log,
   throttle with 503 + Retry-After, block with 403 for a cool-down);
7. channels (terms BT4a): every admitted INVITE, inbound or outbound, carries a
   ChannelClaim that the server settles in the state store; a refused claim
   becomes ``reject.channel_limit`` with a Warning naming the limit.

Before all that, ``screen_packet`` and ``screen_user_agent`` (terms general 5) drop
banned, flooding and scanning unknown sources silently (EdgeGuard); the core asks
``refused`` for the decisions to record when it refuses a request itself.

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

import phonenumbers

from ..sip.actions import Admission, Peer, Reject
from ..sip.dialog import account_tag
from ..sip.errors import ParseError
from ..sip.message import Request, ip_literal, parse_name_addr, parse_uri
from ..sip.serializer import Edit, RemoveAll, SetHeader
from ..state.base import ChannelClaim
from .autodialer import DialerDetector
from .callerid import screen
from .channels import ChannelLimit, channel_limit
from .decision import Decision, Mode, Verdict
from .edge import OVER, WITHIN, EdgeGuard
from .emergency import EmergencyNumbers, called_number, route_identity
from .model import RULES, Account, Network, Policy, RuleMode
from .numbers import NumberIndex, NumberPlan, display_number, identity_of

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

    def __init__(self, policy: Policy, edge: EdgeGuard | None = None, dialer: DialerDetector | None = None,
                 now: float = 0.0) -> None:
        self.policy = policy
        service = policy.service
        self.plan = NumberPlan(service.country)
        self.emergency = EmergencyNumbers(service.emergency_numbers, service.country)
        self._nets: list[tuple[Network, Account]] = [(n, a) for a in policy.accounts for n in a.sources]
        self._nets.sort(key=lambda na: na[0].prefixlen, reverse=True)  # most specific first
        self._domains = {d: a for a in policy.accounts for d in a.domains}
        self._tls_names = {n: a for a in policy.accounts for n in a.tls_names}
        # the names in the verified certificates of TLS peers (host, port), and how many connections with a
        # certificate that names an account each address has: the server's (connections outlive a reload)
        self.tls_peers: dict[tuple[str, int], list[str]] = {}
        self.tls_hosts: dict[str, int] = {}
        # the addresses the upstreams named by DNS resolve to (the server's, kept up to date): trusted as upstreams
        self.upstream_addresses: set[str] = set()
        self._upstream_hosts = {p.host for p in service.upstreams.values()}
        self._international = frozenset(service.upstreams[n].host for n in service.international
                                        if n in service.upstreams)
        self._country_prefix = f"+{phonenumbers.country_code_for_region(service.country.upper())}"
        self._allowed_inbound = NumberIndex((b, b) for b in service.inbound_caller_id.allow)
        self._by_source: dict[str, Account | None] = {}
        if edge is None:
            edge = EdgeGuard(service.edge, self.is_trusted, self.emergency.datagram)
        else:  # a reload: the same tables (bans, budgets), the new policy's limits and idea of who is trusted
            edge.reconfigure(service.edge, self.is_trusted, self.emergency.datagram, now)
        self.edge = edge
        if dialer is None:
            dialer = DialerDetector(service.autodialer)
        else:
            dialer.set_config(service.autodialer)
        self.dialer = dialer
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
        self._tags = {account_tag(a.name): a.name for a in policy.accounts}
        retry = str(service.edge.retry_after_s)
        self._over_budget = Reject(503, "Service Unavailable", (
            ("warning", '399 sipguard "too many new requests from this source; retry later"'),
            ("retry-after", retry)))
        # set while the process drains on its way out (docs/service.md): new requests get it
        self.draining: Reject | None = None

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

    def account_of_tag(self, tag: str) -> str | None:
        """The account whose tag a route token carries (sip/dialog.py), if this policy has it."""
        return self._tags.get(tag)

    def account_for_names(self, names: list[str]) -> Account | None:
        """The account a TLS client certificate names (its subject's CN or a subjectAltName in match.tls_names)."""
        for name in names:
            account = self._tls_names.get(name.lower())
            if account is not None:
                return account
        return None

    def is_trusted(self, host: str) -> bool:
        """An upstream, an address in an account's networks, or one with a TLS connection whose certificate names
        an account: never banned by the edge (a domain is no proof)."""
        return (host in self._upstream_hosts or host in self.upstream_addresses
                or self.account_for_source(host) is not None or host in self.tls_hosts)

    def is_emergency(self, request: Request) -> bool:
        return self.emergency.uri(request.uri)

    # ------------------------------------------------------------------ the hook
    def screen_packet(self, data: bytes, source: Peer, now: float) -> str | None:
        return self.edge.packet(source.host, data, now)

    def screen_user_agent(self, user_agent: str | None, source: Peer, now: float) -> str | None:
        if user_agent is not None and self.edge.user_agent(source.host, user_agent, now) is not None:
            return "scanner"
        return None

    def admit(self, request: Request, source: Peer, now: float, routes: tuple[str, ...] = ()) -> Admission:
        """Route and decide a new out-of-dialog request; ``routes``: its Route values after sipguard's own."""
        host = source.host
        account = self.account_for_source(host)
        if account is None and source.transport == "tls" and self.tls_peers:
            account = self.account_for_names(self.tls_peers.get((host, source.port)) or [])
        trusted = account is not None
        if account is None and self._domains:
            account = self._account_for_domain(request)
        upstream = account is None and (host in self._upstream_hosts or host in self.upstream_addresses)
        if account is None and not upstream:
            return self._unknown_source(request, source)
        emergency = request.method == "INVITE" and self.is_emergency(request)
        if self.draining is not None and not emergency:
            return self._drain_refusal(request, host, account)
        if (trusted or upstream) and not emergency:
            budget = self.edge.new_request(host, now)
            if budget != WITHIN:
                return self._budget_refusal(request, host, account, budget == OVER)
        if account is not None:
            return self._outbound(request, source, account, emergency, routes, now)
        return self._inbound(request, source, routes)

    def in_dialog(self, request: Request, account: str | None) -> tuple[Decision, ...]:
        """Decisions about a request inside a dialog (a re-INVITE switching to T.38)."""
        if request.method in ("INVITE", "UPDATE") and is_t38(request.body):
            return (Decision(Verdict.FLAG, "fax", "T.38 fax offer in a re-INVITE", account,
                             (("method", request.method),)),)
        return ()

    def refused(self, method: str, uri: str, source: Peer, status: int, why: str, cause: str) -> tuple[Decision, ...]:
        """The core refused a request itself: the decisions to record.

        cause: ``in_dialog`` (no dialog sipguard admitted, or a route that leaves it), ``unroutable`` (no way to
        send it on), or what was wrong with the request (``malformed``, ``too_many_hops``, ``loop_detected``...).
        An emergency call refused for any cause is a decision of its own (logged at WARNING, counted); of the
        rest only ``in_dialog`` and ``unroutable`` refusals are logged (a malformed packet is only counted).
        """
        out: list[Decision] = []
        if method == "INVITE" and self.emergency.uri(uri):
            out.append(_emergency_refused(cause, uri, source, status, why))
        if cause in ("in_dialog", "unroutable"):
            out.append(Decision(Verdict.REJECT, "routing", why, None,
                                (("method", method), ("source", source.host), ("uri", uri[:200])), status=status))
        return tuple(out)

    # ------------------------------------------------------------------ attribution and routing
    def _unknown_source(self, request: Request, source: Peer) -> Admission:
        code = self.policy.service.reject.unknown_source
        decision = Decision(Verdict.REJECT, "attribution", "unknown source", None,
                            (("source", source.host),), status=code)
        decisions: tuple[Decision, ...] = (decision,)
        if request.method == "INVITE" and self.is_emergency(request):
            decisions = (decision, _emergency_refused("unknown_source", request.uri, source, code,
                                                      f"source {source.host} belongs to no account"))
        warning = f'399 sipguard "source {source.host} belongs to no account"'
        return Admission(reject=Reject(code, "Forbidden", (("warning", warning),)), decisions=decisions)

    def _drain_refusal(self, request: Request, host: str, account: Account | None) -> Admission:
        """503 while the process stops: the caller (or its SRV client) tries another server; emergency calls are
        still admitted."""
        decision = Decision(Verdict.REJECT, "service", "stopping: new requests go to another server",
                            account.name if account else None,
                            (("source", host), ("method", request.method)), status=503)
        return Admission(reject=self.draining, account=account.name if account else None, decisions=(decision,))

    def _budget_refusal(self, request: Request, host: str, account: Account | None, first: bool) -> Admission:
        """503 for a trusted source over its budget; the first refusal of a stretch is logged, every one counted."""
        edge = self.edge.config
        decision = Decision(Verdict.REJECT, "edge", f"source {host} over its budget of "
                            f"{edge.trusted_requests_per_s:g} new requests/s: 503 until it slows down",
                            account.name if account else None,
                            (("source", host), ("method", request.method),
                             ("requests_per_s", edge.trusted_requests_per_s), ("burst", edge.trusted_burst)),
                            status=503, logged=first)
        return Admission(account=decision.account, reject=self._over_budget, decisions=(decision,))

    def _account_for_domain(self, request: Request) -> Account | None:
        try:
            host = parse_uri.call(parse_name_addr(request.get("from") or "").uri).host
        except ParseError:
            return None
        return self._domains.get(host)

    @staticmethod
    def _foreign_route(routes: tuple[str, ...], next_hop: Peer) -> str | None:
        """The first Route value that does not name ``next_hop`` (None: every one does)."""
        for value in routes:
            try:
                uri = parse_uri.call(parse_name_addr(value).uri)
            except ParseError:
                return value
            transport = (uri.param("transport") or ("tls" if uri.scheme == "sips" else "udp")).lower()
            host = ip_literal(uri.host) or uri.host.lower()
            port = uri.port or (5061 if transport == "tls" else 5060)
            if host != next_hop.host or (next_hop.port and port != next_hop.port):  # port 0: a name's, by SRV
                return value
        return None

    def _routing_refusal(self, source: Peer, account: Account | None, route: str, next_hop: Peer) -> Admission:
        reason = f"preloaded Route {route[:100]} leaves the route to {next_hop.host}:{next_hop.port}"
        decision = Decision(Verdict.REJECT, "routing", reason, account.name if account else None,
                            (("source", source.host), ("route", route[:200]),
                             ("next_hop", f"{next_hop.host}:{next_hop.port}")), status=403)
        return Admission(account=decision.account, reject=_reject(403, "Forbidden", "Route not allowed"),
                         decisions=(decision,))

    def _outbound(self, request: Request, source: Peer, account: Account, emergency: bool, routes: tuple[str, ...],
                  now: float) -> Admission:
        target = self.policy.service.upstreams[account.upstream]
        drop_routes = False
        if routes:
            foreign = self._foreign_route(routes, target)
            if foreign is not None:
                if not emergency:
                    return self._routing_refusal(source, account, foreign, target)
                drop_routes = True  # an emergency call goes to the upstream whatever its Routes say
        if request.method != "INVITE":
            return Admission(target=target, account=account.name, direction="outbound")
        view = self.views[account.name]
        decisions: list[Decision] = []
        edits: list[Edit] = []
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
                         claim=claim, claim_reject=claim_reject, emergency=emergency, decisions=tuple(decisions),
                         drop_routes=drop_routes)

    def _inbound(self, request: Request, source: Peer, routes: tuple[str, ...]) -> Admission:
        """From an upstream: only to the ``deliver_to`` of the account whose number block holds the called number."""
        called = self.plan.normalize(called_number(request))
        account = self.account_for_number(called)
        if account is None or account.deliver_to is None:
            why = "no account holds the called number" if account is None else f"account {account.name} has no deliver_to"
            decision = Decision(Verdict.REJECT, "attribution", f"inbound call not delivered: {why}",
                                account.name if account else None,
                                (("called", called or called_number(request)), ("source", source.host)), status=404)
            return Admission(account=decision.account, direction="inbound", reject=_reject(404, "Not Found", why),
                             decisions=(decision,))
        target = account.deliver_to
        if routes:
            foreign = self._foreign_route(routes, target)
            if foreign is not None:
                return self._routing_refusal(source, account, foreign, target)
        if request.method != "INVITE":
            return Admission(target=target, account=account.name, direction="inbound")
        decisions: list[Decision] = []
        if source.host in self._international:
            rejected = self._inbound_caller_id(request, source, account, decisions)
            if rejected is not None:
                return Admission(account=account.name, direction="inbound", reject=rejected, decisions=tuple(decisions))
        self._fax(request, account, decisions, "inbound")
        claim, claim_reject = self._claim(request, self.views[account.name], False)
        return Admission(target=target, account=account.name, direction="inbound", claim=claim,
                         claim_reject=claim_reject, decisions=tuple(decisions))

    # ------------------------------------------------------------------ rules
    def _inbound_caller_id(self, request: Request, source: Peer, account: Account,
                           decisions: list[Decision]) -> Reject | None:
        """A call from abroad may not present a number of ``service.country`` (Royal Decree of 12 May 2024),
        except the registered bona fide numbers of ``inbound_caller_id.allow``."""
        rule = self.policy.service.inbound_caller_id
        if rule.mode is _OFF:
            return None
        presented: list[tuple[str, str]] = []
        for key in ("from", "p-asserted-identity", "p-preferred-identity", "remote-party-id"):
            for value in request.get_all(key) if key != "from" else [request.get("from") or ""]:
                display, user = identity_of(value)
                for what, number in ((key, self.plan.normalize(user)), (f"{key} display name", display_number(display, self.plan))):
                    if number is not None:
                        presented.append((what, number))
        national = [(what, n) for what, n in presented
                    if n.startswith(self._country_prefix) and self._allowed_inbound.find(n) is None]
        if not national:
            return None
        what, number = national[0]
        code = self.policy.service.reject.inbound_spoofing
        reason = (f"call from international upstream {source.host} presents {number} ({what}), a number of "
                  f"{self.policy.service.country}")
        decisions.append(Decision(Verdict.REJECT, "inbound_caller_id", reason, account.name,
                                  (("source", source.host), ("presented", number), ("field", what)),
                                  Mode(rule.mode.value), status=code))
        if rule.mode is _SHADOW:
            return None
        return _reject(code, "Forbidden", f"caller ID {number} not allowed from abroad")

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
                edits.extend(self._identity_edits(request, number, result.foreign_display))
            return None
        decisions.append(Decision(Verdict.REJECT, "caller_id", result.reason, account.name, result.evidence,
                                  Mode(mode.value), status=code))
        if mode is _SHADOW:
            return None
        warning = f'399 sipguard "caller ID not allowed: {_quote(result.reason)}"'
        return Reject(code, "Forbidden", (("warning", warning),))

    def _identity_edits(self, request: Request, number: str, drop_display: bool = False) -> list[Edit]:
        edits: list[Edit] = [
            SetHeader("p-asserted-identity", _identity_uri(number, request)),
            RemoveAll("p-preferred-identity"),
            RemoveAll("remote-party-id"),
        ]
        from_value = request.get("from") or ""
        new_from = _without_display(from_value) if drop_display else from_value
        if self.policy.service.rewrite_from:
            new_from = _with_user(new_from, number)
        if new_from != from_value:
            edits.append(SetHeader("from", new_from))
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
            presented = f"caller ID {outcome.presented} is not at the caller's address" if outcome.presented \
                else "no caller ID presented"
            reason = f"emergency call: {presented}; asserted {outcome.caller_id}"
            verdict = Verdict.REWRITE
            if mode is not _SHADOW:  # never off: the law wants the right address
                edits.extend(self._identity_edits(request, outcome.caller_id))
        elif outcome.caller_id:
            reason = f"emergency call: caller ID {outcome.caller_id} kept"
            verdict = Verdict.ALLOW
        else:
            reason = "emergency call without a caller ID (the account has none to assert)"
            verdict = Verdict.ALLOW
        if not verified:
            reason += "; location unverified"
            verdict = Verdict.FLAG if verdict is Verdict.ALLOW else verdict
        # every emergency call has its decision-log line, allowed or not: the audit trail of 112 calls
        decisions.append(Decision(verdict, "emergency", reason, account.name, evidence,
                                  Mode.SHADOW if mode is _SHADOW else Mode.ENFORCE, logged=True))

    def _autodialer(self, request: Request, source: Peer, account: Account, mode: RuleMode, now: float,
                    decisions: list[Decision]) -> Reject | None:
        dialer = self.dialer
        config = dialer.config
        keys = (account.name, f"{account.name}|{source.host}")
        blocked = dialer.blocked_until(keys, now)
        number = called_number(request)
        called = self.plan.normalize(number) or number
        assessment = dialer.attempt(keys, called, f"{request.call_id};{request.from_tag or ''}", now)
        if blocked is None and assessment.level == "none":
            return None  # the common case: no evidence to build
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


def _emergency_refused(cause: str, uri: str, source: Peer, status: int, why: str) -> Decision:
    """An emergency call that sipguard refused (it should never happen: logged at WARNING, counted by cause)."""
    return Decision(Verdict.REJECT, "emergency", f"emergency call refused: {why}", None,
                    (("refused_for", cause), ("called", uri[:200]), ("source", source.host)), status=status)


def _without_display(value: str) -> str:
    """A From value without its display name (tag and parameters kept)."""
    try:
        addr = parse_name_addr(value)
    except ParseError:
        return value
    params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in addr.params)
    return f"<{addr.uri}>{params}"


def _reject(status: int, reason: str, why: str) -> Reject:
    return Reject(status, reason, (("warning", f'399 sipguard "{why}"'),))


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")[:200]
