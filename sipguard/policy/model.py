"""The policy as frozen values: what the YAML files say, validated.

YAML key names are the field names (README, "Policy files": the public interface).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..sip.actions import Peer
from ..sip.symbol import Symbol
from .autodialer import DialerConfig
from .edge import EdgeConfig

__all__ = [
    "Network",
    "RuleMode",
    "InboundCallerId",
    "StateConfig",
    "Band",
    "RejectCodes",
    "SipTimers",
    "Service",
    "User",
    "Device",
    "Site",
    "NumberBlock",
    "Account",
    "Policy",
    "USER_KINDS",
    "DEVICE_TYPES",
    "REFUSED_DEVICE_TYPES",
    "RULES",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleMode(Symbol):
    ENFORCE = "enforce"
    SHADOW = "shadow"
    OFF = "off"


RULES = ("channel_limit", "caller_id", "emergency", "autodialer")  # the rules an account switches (Account.mode)
USER_KINDS = ("person", "shared_room", "meeting_room", "admin_no_service", "supervisor_no_service")
DEVICE_TYPES = ("door_phone", "fax", "emergency_phone", "pager", "buzzer", "flasher", "other")
# alarm-system and lift emergency lines may not be carried by law (README, "Lines that may not be carried")
REFUSED_DEVICE_TYPES = ("alarm", "lift")


@dataclass(frozen=True, slots=True)
class Band:
    up_to: int | None  # None: the last, open band
    per_user: float


@dataclass(frozen=True, slots=True)
class RejectCodes:
    channel_limit: int = 486
    caller_id: int = 403
    unknown_source: int = 403
    inbound_spoofing: int = 403


@dataclass(frozen=True, slots=True)
class NumberBlock:
    first: str  # E.164 with '+'
    last: str
    site: str | None

    def holds(self, e164: str) -> bool:
        return len(e164) == len(self.first) and self.first <= e164 <= self.last


@dataclass(frozen=True, slots=True)
class StateConfig:
    """Where channel claims are kept: ``memory`` (one machine; its workers share a table) or ``redis``
    (several machines share one set of limits: docs/pair.md)."""

    store: str = "memory"  # memory | redis
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "sipguard"  # key prefix: PREFIX:{account}:calls, PREFIX:nodes
    lease_s: float = 30.0  # a call's entry expires this long after its node last renewed it
    renew_s: float = 10.0  # how often a node renews its calls (and puts them back after Redis lost them)
    timeout_ms: int = 250  # a Redis call slower than this counts as an outage
    node: str | None = None  # this node's name in Redis; default: host name and listen port


@dataclass(frozen=True, slots=True)
class OverloadConfig:
    """Overload control (docs/overload.md): past this queueing delay, excess new INVITEs are answered 503."""

    queue_delay_ms: int = 40  # the oldest waiting datagram has waited longer (3 samples in a row): overloaded
    retry_after_s: int = 2  # the Retry-After of the 503


@dataclass(frozen=True, slots=True)
class Connections:
    """TCP and TLS connections (README, "TCP and TLS"): the bounds every stream listener keeps."""

    idle_timeout_s: float = 300.0  # no byte either way for this long: closed (RFC 5626 keep-alives: every 95-120 s)
    message_deadline_s: float = 5.0  # from a message's first byte to its last; slower is closed (slow-loris)
    handshake_timeout_s: float = 5.0  # a TLS handshake, either way
    connect_timeout_s: float = 5.0  # an outbound connection (then 503 upstream, as any transport error)
    max_connections: int = 4096  # per listen address, inbound and outbound
    max_per_source: int = 64  # inbound from one address


@dataclass(frozen=True, slots=True)
class Tls:
    """The TLS listeners' certificate, and whom they trust (files; read again at every reload)."""

    cert: str | None = None  # PEM: the certificate (chain) sipguard presents
    key: str | None = None  # PEM: its private key
    ca: str | None = None  # PEM: the CAs a peer's certificate must chain to (default: the system's)
    verify_clients: bool = False  # a client without a certificate that chains to ``ca`` is refused
    min_version: str = "1.2"  # 1.2 or 1.3


@dataclass(frozen=True, slots=True)
class Dns:
    """Where next hops named by host name are looked up (README, "Next hops by name")."""

    servers: tuple[str, ...] = ()  # "IP" or "IP:PORT"; default: the nameservers of /etc/resolv.conf
    timeout_ms: int = 1000  # per try; each server is tried twice


@dataclass(frozen=True, slots=True)
class InboundCallerId:
    """The Belgian anti-spoofing rule (Royal Decree of 12 May 2024): calls that enter through an
    international upstream may not present a number of ``service.country``, except the registered
    bona fide numbers in ``allow``."""

    mode: RuleMode = RuleMode.ENFORCE
    allow: tuple[NumberBlock, ...] = ()


@dataclass(frozen=True, slots=True)
class SipTimers:
    t1_ms: int = 500
    t2_ms: int = 4000
    t4_ms: int = 5000
    timer_c_s: float = 180.0


@dataclass(frozen=True, slots=True)
class Service:
    listen: tuple[str, ...] = ("udp:0.0.0.0:5060",)
    advertise: str | None = None
    admin: str = "127.0.0.1:9090"
    upstreams: dict[str, Peer] = field(default_factory=dict)
    country: str = "BE"
    emergency_numbers: tuple[str, ...] = ("112", "100", "101")
    channel_bands: tuple[Band, ...] = (Band(2, 2), Band(5, 1), Band(10, 0.5), Band(None, 0.25))
    channel_rounding: str = "floor"
    dialog_timeout_s: float = 7200.0
    drain_timeout_s: float = 60.0  # on SIGTERM: how long calls in progress may go on before the process exits
    reject: RejectCodes = RejectCodes()
    sip_timers: SipTimers = SipTimers()
    max_message_bytes: int = 16384
    rewrite_from: bool = False  # rewrites of the caller ID change the From user too, not only PAI
    edge: EdgeConfig = EdgeConfig()
    autodialer: DialerConfig = DialerConfig()
    inbound_caller_id: InboundCallerId = InboundCallerId()
    route_secret: str | None = None  # signs the Record-Route token; default: derived from /etc/machine-id
    state: StateConfig = StateConfig()
    overload: OverloadConfig = OverloadConfig()
    connections: Connections = Connections()
    tls: Tls = Tls()
    dns: Dns = Dns()
    # not keys of their own: read from the upstreams' long form ({uri, international})
    international: frozenset[str] = frozenset()  # names of the upstreams through which calls enter from abroad


@dataclass(frozen=True, slots=True)
class User:
    name: str
    kind: str
    sip_users: tuple[str, ...]
    site: str | None
    phones: int  # shared_room: one user per phone


@dataclass(frozen=True, slots=True)
class Device:
    name: str
    type: str
    sip_users: tuple[str, ...]
    site: str | None


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    address: str
    sources: tuple[Network, ...]
    emergency_caller_id: str | None


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    kind: str  # hosted | trunk
    sources: tuple[Network, ...]
    domains: tuple[str, ...]
    upstream: str
    deliver_to: Peer | None
    channels: int | None
    users: tuple[User, ...]
    devices: tuple[Device, ...]
    sites: dict[str, Site]
    numbers: tuple[NumberBlock, ...]
    rules: dict[str, RuleMode]
    default_number: str | None = None  # E.164; default: the first number of the first block
    on_caller_id_mismatch: str = "reject"  # reject | rewrite (to default_number)
    tls_names: tuple[str, ...] = ()  # match.tls_names: a TLS client certificate naming one of these is this account

    def mode(self, rule: str) -> RuleMode:
        if rule == "autodialer":  # on by default for trunks (SIP Trunking 5); hosted accounts may opt in
            return self.rules.get(rule, RuleMode.ENFORCE if self.kind == "trunk" else RuleMode.OFF)
        return self.rules.get(rule, RuleMode.ENFORCE)

    @property
    def default_caller_id(self) -> str | None:
        if self.default_number:
            return self.default_number
        return self.numbers[0].first if self.numbers else None


@dataclass(frozen=True, slots=True)
class Policy:
    service: Service
    accounts: tuple[Account, ...]
    files: tuple[str, ...]
