"""Protection of the edge (terms: general 5): scanners and floods never reach the PBX, and a
customer's own traffic is never banned.

Two kinds of source, two kinds of protection (README, "Edge protection"):

* **Trusted sources** (an address in an account's ``match.sources``, an upstream): never banned,
  never dropped silently.  Only their *new* requests (out of dialog) meet a budget, a token
  bucket of ``trusted_requests_per_s`` / ``trusted_burst``; over it, the engine answers ``503``
  with ``Retry-After``.  Their responses and in-dialog requests are not counted, and emergency
  calls never meet the budget.  A stretch over the budget is one episode: it starts with the
  first refused request and ends once ``EPISODE_GAP_S`` passed without a refusal (a source just
  over its rate has every other request refused: still one episode).
* **Unknown sources** (everything else, including a roaming phone matched only by its From
  domain: a domain is the caller's claim, not proof): a token bucket over every packet
  (``packets_per_s`` / ``burst``); a source that runs dry is banned for ``ban_s``, and a
  User-Agent with a scanner's name bans it for ``scanner_ban_s`` at once.  A banned source's
  packets are dropped before they are parsed, except an INVITE whose request line names an
  emergency service (at most ``EMERGENCY_BURST`` of them, then one a second).

``exempt`` networks are never limited at all.  Bans and episodes are reported as ``EdgeEvent``
values, collected until the server drains them (one log line each); ``bans()`` lists the bans
in force and ``lift()`` ends one (the admin API).

Memory is bounded whatever the number of sources: at most ``max_sources`` entries per table; when
full, the oldest tenth is evicted (a flood from spoofed addresses can evict entries, never grow
the tables).  Every method takes ``now``: no clock is read here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = ["EdgeConfig", "EdgeGuard", "EdgeEvent", "Ban", "DEFAULT_SCANNERS", "EMERGENCY_BURST", "WITHIN", "OVER",
           "STILL_OVER"]

V = TypeVar("V")

DEFAULT_SCANNERS = (
    "friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipscan", "iwar", "sipsak", "smap",
    "sundayddr", "vaxsipuseragent", "pplsip", "sipbomber", "siparmyknife", "cisco-sipcli", "voipbuster",
)
EMERGENCY_BURST: Final = 5.0  # emergency INVITEs a banned source may still send at once, then one a second
EPISODE_GAP_S: Final = 1.0  # a stretch over the budget ends after this long without a refusal
# EdgeGuard.new_request: within the budget; over it (the first refusal of a stretch); over it again
WITHIN: Final = 0
OVER: Final = 1
STILL_OVER: Final = 2


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    packets_per_s: float = 20.0  # unknown sources: every packet
    burst: float = 20.0
    ban_s: float = 60.0
    scanner_ban_s: float = 3600.0
    user_agents: tuple[str, ...] = DEFAULT_SCANNERS
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_sources: int = 50000
    trusted_requests_per_s: float = 300.0  # account sources and upstreams: new requests only
    trusted_burst: float = 300.0
    retry_after_s: int = 5


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """Something to log: ``kind`` ban | unban | over_budget | under_budget.

    ``count``: packets dropped (unban) or requests refused (under_budget); ``duration_s``: of the ban
    (ban: as set; unban: as served) or of the episode (under_budget)."""

    kind: str
    host: str
    reason: str
    duration_s: float
    count: int


class Ban:
    """A ban in force: why, since and until when, and how many packets it dropped."""

    __slots__ = ("reason", "since", "until", "dropped")

    def __init__(self, reason: str, since: float, until: float) -> None:
        self.reason = reason
        self.since = since
        self.until = until
        self.dropped = 0


def _never(host: str) -> bool:
    return False


def _no_emergency(data: bytes) -> bool:
    return False


class EdgeGuard:
    """Per-source budgets and bans; explicit timestamps.

    trusted: whether a host is an account source or an upstream (the engine knows);
    emergency: whether a datagram is an INVITE to an emergency service (read from its request line).
    """

    __slots__ = ("config", "_buckets", "_budgets", "_bans", "_sos", "_exempt_hosts", "_needles", "_trusted",
                 "_emergency", "events")

    def __init__(self, config: EdgeConfig | None = None, trusted: Callable[[str], bool] = _never,
                 emergency: Callable[[bytes], bool] = _no_emergency) -> None:
        self.config = config or EdgeConfig()
        self._buckets: dict[str, list[float]] = {}  # unknown host -> [tokens, last refill]
        # trusted host -> [tokens, last refill, over since (-1: not over), refused, last refusal]
        self._budgets: dict[str, list[float]] = {}
        self._bans: dict[str, Ban] = {}
        self._sos: dict[str, list[float]] = {}  # banned host -> [tokens, last refill] for emergency INVITEs
        self._exempt_hosts: dict[str, bool] = {}
        self._needles = tuple(ua.lower() for ua in self.config.user_agents)
        self._trusted = trusted
        self._emergency = emergency
        self.events: list[EdgeEvent] = []

    def reconfigure(self, config: EdgeConfig, trusted: Callable[[str], bool], emergency: Callable[[bytes], bool],
                    now: float) -> None:
        """A new policy: new limits and a new idea of who is trusted; bans stay in force, except those of
        a source the new policy trusts."""
        self.config = config
        self._exempt_hosts = {}
        self._needles = tuple(ua.lower() for ua in config.user_agents)
        self._trusted = trusted
        self._emergency = emergency
        for host in [h for h in self._bans if self._exempt(h) or trusted(h)]:
            self.lift(host, now, "trusted by the new policy")

    @property
    def sizes(self) -> dict[str, int]:
        """The tables' sizes, as ``sipguard_table_entries{table}`` shows them."""
        return {"edge_buckets": len(self._buckets), "edge_budgets": len(self._budgets), "edge_bans": len(self._bans),
                "edge_emergency": len(self._sos)}

    def _exempt(self, host: str) -> bool:
        hit = self._exempt_hosts.get(host)
        if hit is None:
            try:
                ip = ipaddress.ip_address(host)
                hit = any(ip.version == n.version and ip in n for n in self.config.exempt)
            except ValueError:
                hit = False
            if len(self._exempt_hosts) < self.config.max_sources:
                self._exempt_hosts[host] = hit
        return hit

    def packet(self, host: str, data: bytes, now: float) -> str | None:
        """Admit one packet from ``host``: None, or the reason it is dropped (banned | flood)."""
        ban = self._bans.get(host)
        if ban is not None:
            if ban.until > now:
                if self._emergency_passes(host, data, now):
                    return None
                ban.dropped += 1
                return "banned"
            self._end_ban(host, ban, now)
        if self._trusted(host) or self._exempt(host):
            return None
        c = self.config
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= c.max_sources:
                _evict(self._buckets, c.max_sources)
            self._buckets[host] = [c.burst - 1.0, now]
            return None
        tokens = min(c.burst, bucket[0] + (now - bucket[1]) * c.packets_per_s)
        if tokens < 1.0:
            self.ban(host, "flood", now, c.ban_s)  # the bucket goes with the ban
            if self._emergency_passes(host, data, now):
                return None
            self._bans[host].dropped += 1
            return "flood"
        bucket[0] = tokens - 1.0
        bucket[1] = now
        return None

    def _emergency_passes(self, host: str, data: bytes, now: float) -> bool:
        """An emergency INVITE from a banned source passes, at most EMERGENCY_BURST at once, then one a second
        (a person who dials 112 sends one INVITE and its retransmissions).  ``emergency`` reads the request line."""
        if not self._emergency(data):
            return False
        bucket = self._sos.get(host)
        if bucket is None:  # bounded: only a banned source has one, and it goes with the ban
            bucket = self._sos[host] = [EMERGENCY_BURST, now]
        tokens = min(EMERGENCY_BURST, bucket[0] + (now - bucket[1]))
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def new_request(self, host: str, now: float) -> int:
        """A new (out-of-dialog, non-emergency) request of a trusted source: WITHIN its budget, OVER it (the
        first refusal of a stretch: the one to log), or STILL_OVER."""
        c = self.config
        budget = self._budgets.get(host)
        if budget is None:
            if len(self._budgets) >= c.max_sources:
                _evict(self._budgets, c.max_sources)
            self._budgets[host] = [c.trusted_burst - 1.0, now, -1.0, 0.0, 0.0]
            return WITHIN
        tokens = min(c.trusted_burst, budget[0] + (now - budget[1]) * c.trusted_requests_per_s)
        budget[1] = now
        if budget[2] >= 0.0 and now - budget[4] >= EPISODE_GAP_S:
            self._end_episode(host, budget)
        if tokens < 1.0:
            budget[0] = tokens
            budget[3] += 1.0
            budget[4] = now
            if budget[2] >= 0.0:
                return STILL_OVER
            budget[2] = now
            self.events.append(EdgeEvent("over_budget", host, self._budget_words(), 0.0, 0))
            return OVER
        budget[0] = tokens - 1.0
        return WITHIN

    def _end_episode(self, host: str, budget: list[float]) -> None:
        self.events.append(EdgeEvent("under_budget", host, self._budget_words(), budget[4] - budget[2],
                                     int(budget[3])))
        budget[2] = -1.0
        budget[3] = 0.0

    def _budget_words(self) -> str:
        c = self.config
        return f"over {c.trusted_requests_per_s:g} new requests/s (burst {c.trusted_burst:g})"

    def user_agent(self, host: str, user_agent: str | None, now: float) -> str | None:
        """A scanner's User-Agent bans an unknown source; returns the matched name or None.  Trusted and
        exempt sources are never banned (an operator's monitoring may well run sipsak)."""
        if not user_agent or self._trusted(host) or self._exempt(host):
            return None
        lower = user_agent.lower()
        for needle in self._needles:
            if needle in lower:
                self.ban(host, f"scanner User-Agent {needle!r}", now, self.config.scanner_ban_s)
                return needle
        return None

    def ban(self, host: str, reason: str, now: float, duration_s: float) -> None:
        """Ban ``host`` (an unknown source: the callers never ban a trusted one) for ``duration_s``."""
        if host not in self._bans and len(self._bans) >= self.config.max_sources:
            for evicted in list(self._bans)[: max(1, self.config.max_sources // 10)]:
                self._end_ban(evicted, self._bans[evicted], now, "evicted: the table of bans is full")
        self._bans[host] = Ban(reason, now, now + duration_s)
        self._buckets.pop(host, None)
        self.events.append(EdgeEvent("ban", host, reason, duration_s, 0))

    def _end_ban(self, host: str, ban: Ban, now: float, why: str = "") -> None:
        del self._bans[host]
        self._sos.pop(host, None)
        reason = ban.reason if not why else f"{ban.reason}; {why}"
        self.events.append(EdgeEvent("unban", host, reason, max(0.0, min(now, ban.until) - ban.since), ban.dropped))

    def lift(self, host: str, now: float, why: str = "lifted by the operator") -> bool:
        """End a ban before its time (the admin API); False when the host is not banned."""
        ban = self._bans.get(host)
        if ban is None:
            return False
        self._end_ban(host, ban, now, why)
        return True

    def is_banned(self, host: str, now: float) -> bool:
        """Whether ``host`` is banned now (a TCP or TLS connection from it is refused at once)."""
        ban = self._bans.get(host)
        return ban is not None and ban.until > now

    def bans(self, now: float) -> list[tuple[str, Ban]]:
        """The bans in force, oldest first."""
        return [(host, ban) for host, ban in self._bans.items() if ban.until > now]

    def drain(self, now: float) -> list[EdgeEvent]:
        """The events since the last drain, after ending the bans whose time is up and the stretches over
        the budget that have been quiet for EPISODE_GAP_S."""
        for host in [h for h, ban in self._bans.items() if ban.until <= now]:
            self._end_ban(host, self._bans[host], now)
        for host, budget in self._budgets.items():
            if budget[2] >= 0.0 and now - budget[4] >= EPISODE_GAP_S:
                self._end_episode(host, budget)
        events, self.events = self.events, []
        return events


def _evict(table: dict[str, V], cap: int) -> None:
    for key in list(table)[: max(1, cap // 10)]:
        del table[key]
