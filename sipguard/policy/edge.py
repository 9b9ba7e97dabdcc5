"""Protection of the edge (terms: general 5): scanners and floods never reach the PBX.

Owns: a token bucket per source address over every packet it sends (requests
and responses alike), a temporary ban when a bucket runs dry, and a
User-Agent blocklist (scanner names, matched case-insensitively as
substrings) that bans the source at once.  Banned sources are dropped silently,
before their packets are even parsed.  Upstreams and ``exempt`` networks are
never limited.

Memory is bounded whatever the number of sources: at most ``max_sources``
buckets and ``max_sources`` bans; when full, the oldest tenth is evicted (a
flood from spoofed addresses can evict buckets, never grow the tables).
Every method takes ``now``: no clock is read here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["EdgeConfig", "EdgeGuard", "DEFAULT_SCANNERS"]

V = TypeVar("V")

DEFAULT_SCANNERS = (
    "friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipscan", "iwar", "sipsak", "smap",
    "sundayddr", "vaxsipuseragent", "pplsip", "sipbomber", "siparmyknife", "cisco-sipcli", "voipbuster",
)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    packets_per_s: float = 100.0
    burst: float = 200.0
    ban_s: float = 60.0
    scanner_ban_s: float = 3600.0
    user_agents: tuple[str, ...] = DEFAULT_SCANNERS
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_sources: int = 50000


class EdgeGuard:
    """Per-source budgets and bans; explicit timestamps."""

    __slots__ = ("config", "_buckets", "_bans", "_exempt_hosts", "_needles")

    def __init__(self, config: EdgeConfig | None = None, exempt_hosts: frozenset[str] = frozenset()) -> None:
        self.config = config or EdgeConfig()
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill]
        self._bans: dict[str, float] = {}  # host -> until
        self._exempt_hosts: dict[str, bool] = dict.fromkeys(exempt_hosts, True)
        self._needles = tuple(ua.lower() for ua in self.config.user_agents)

    def reconfigure(self, config: EdgeConfig, exempt_hosts: frozenset[str]) -> None:
        """A new policy: new limits, same tables (bans stay in force)."""
        self.config = config
        self._exempt_hosts = dict.fromkeys(exempt_hosts, True)
        self._needles = tuple(ua.lower() for ua in config.user_agents)

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self._buckets), len(self._bans)

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

    def packet(self, host: str, now: float) -> str | None:
        """Admit one packet from ``host``: None, or the reason it is dropped (banned | flood)."""
        until = self._bans.get(host)
        if until is not None:
            if until > now:
                return "banned"
            del self._bans[host]
        if self._exempt(host):
            return None
        c = self.config
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= c.max_sources:
                _evict(self._buckets, c.max_sources)
            self._buckets[host] = [c.burst - 1.0, now]
            return None
        tokens = min(c.burst, bucket[0] + (now - bucket[1]) * c.packets_per_s)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.ban(host, now + c.ban_s)
            return "flood"
        bucket[0] = tokens - 1.0
        return None

    def user_agent(self, host: str, user_agent: str | None, now: float) -> str | None:
        """A scanner's User-Agent bans its source; returns the matched name or None."""
        if not user_agent or self._exempt(host):
            return None
        lower = user_agent.lower()
        for needle in self._needles:
            if needle in lower:
                self.ban(host, now + self.config.scanner_ban_s)
                return needle
        return None

    def ban(self, host: str, until: float) -> None:
        if host not in self._bans and len(self._bans) >= self.config.max_sources:
            _evict(self._bans, self.config.max_sources)
        self._bans[host] = until
        self._buckets.pop(host, None)


def _evict(table: dict[str, V], cap: int) -> None:
    for key in list(table)[: max(1, cap // 10)]:
        del table[key]
