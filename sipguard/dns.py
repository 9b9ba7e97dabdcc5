"""Next hops by name (RFC 3263): NAPTR, then SRV, then A/AAAA, asked of the resolvers asynchronously, cached
by TTL (README, "Next hops by name").

``Resolver.targets(host, port, transport, secure)`` gives the ordered list of ``Peer``s to try for a SIP URI
whose host is a name (RFC 3263 §4):
- a port in the URI: no NAPTR nor SRV, the name's addresses (A, then AAAA), transport as given (UDP);
- a transport parameter and no port: the SRV records of ``_sip._udp`` / ``_sip._tcp`` / ``_sips._tcp``;
- neither: the NAPTR records with the services sipguard serves (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``),
  by order and preference, whose replacements name SRV records; without NAPTR records the SRV records of
  each transport sipguard listens on; without SRV records, the name's addresses on 5060 (5061 for sips).
SRV targets are ordered by priority, and within one priority by a weighted random draw (RFC 2782); each
target's addresses follow in turn.  The core tries them in that order: the next one after a 503, a
transport error or a transaction timeout (sip/proxy.py).

The wire format (RFC 1035 §4, RFC 3596, RFC 2782, RFC 3403) is written and read here: a query per
question over UDP, 1 s per try, each resolver tried twice.  No dependency beyond the standard library and
asyncio-dgram.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import asyncio_dgram

from .sip.actions import Peer

__all__ = ["Resolver", "DnsError", "split_server", "system_resolvers", "A", "AAAA", "SRV", "NAPTR"]

log = logging.getLogger("sipguard")

A, AAAA, SRV, NAPTR = 1, 28, 33, 35
NEGATIVE_TTL_S = 30  # how long "no such records" is remembered (RFC 2308 lets the SOA say; this is simpler)
MAX_TTL_S = 3600
_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
_SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}


class DnsError(Exception):
    """No answer from any resolver, or an answer that does not parse."""


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


@dataclass(frozen=True, slots=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


def split_server(text: str) -> tuple[str, int]:
    """A resolver's address from ``service.dns.servers``: 'IP', 'IP:PORT', '[IPv6]:PORT' (port 53 by default)."""
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest[1:].isdigit() else 53
    host, _sep, port = text.partition(":")
    return host, int(port) if port.isdigit() else 53


def system_resolvers(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The nameservers of resolv.conf (port 53); 127.0.0.1 when it names none."""
    servers = []
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                servers.append((parts[1], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


def _name(labels: str) -> bytes:
    out = b""
    for label in labels.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not raw or len(raw) > 63:
            raise DnsError(f"not a host name: {labels!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def query_bytes(qid: int, name: str, qtype: int) -> bytes:
    """A query (RFC 1035 §4.1): one question, recursion desired."""
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + _name(name) + struct.pack("!HH", qtype, 1)


def _read_name(data: bytes, at: int) -> tuple[str, int]:
    """A (maybe compressed) name at ``at``: the name and where what follows it starts."""
    labels: list[str] = []
    end = -1
    for _hop in range(64):  # a loop of pointers is an error, not a hang
        length = data[at]
        if length & 0xC0 == 0xC0:
            if end < 0:
                end = at + 2
            at = ((length & 0x3F) << 8) | data[at + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), (at + 1 if end < 0 else end)
        labels.append(data[at + 1:at + 1 + length].decode("ascii", "replace"))
        at += 1 + length
    raise DnsError("a loop of name pointers")


def parse_answer(data: bytes, qid: int, qtype: int) -> tuple[int, list[tuple[int, int, object]]]:
    """(rcode, [(type, ttl, value)]) of a response to query ``qid``: value a str address (A, AAAA), a Srv or a
    Naptr; other types and classes are left out.  Raises DnsError."""
    try:
        rid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
        if rid != qid or not flags & 0x8000:
            raise DnsError("not the answer to this query")
        if flags & 0x0200:
            raise DnsError("truncated (TC): the answer does not fit a datagram")
        at = 12
        for _q in range(qd):
            _n, at = _read_name(data, at)
            at += 4
        records: list[tuple[int, int, object]] = []
        for _r in range(an):
            _n, at = _read_name(data, at)
            rtype, rclass, ttl, length = struct.unpack("!HHIH", data[at:at + 10])
            at += 10
            rdata = at
            at += length
            if rclass != 1:
                continue
            if rtype == A and length == 4:
                records.append((A, ttl, str(ipaddress.IPv4Address(data[rdata:rdata + 4]))))
            elif rtype == AAAA and length == 16:
                records.append((AAAA, ttl, str(ipaddress.IPv6Address(data[rdata:rdata + 16]))))
            elif rtype == SRV:
                priority, weight, port = struct.unpack("!HHH", data[rdata:rdata + 6])
                target, _end = _read_name(data, rdata + 6)
                records.append((SRV, ttl, Srv(priority, weight, port, target)))
            elif rtype == NAPTR:
                order, preference = struct.unpack("!HH", data[rdata:rdata + 4])
                p = rdata + 4
                strings = []
                for _s in range(3):  # flags, services, regexp
                    n = data[p]
                    strings.append(data[p + 1:p + 1 + n].decode("ascii", "replace"))
                    p += 1 + n
                replacement, _end = _read_name(data, p)
                records.append((NAPTR, ttl, Naptr(order, preference, strings[0].upper(), strings[1].upper(),
                                                   replacement)))
        return flags & 0x000F, records
    except (IndexError, struct.error, ValueError) as err:
        raise DnsError(f"a malformed answer: {err}") from None


def srv_order(records: list[Srv], rng: random.Random) -> list[Srv]:
    """RFC 2782: by priority; within one priority, a weighted random draw (weight 0 rarely first)."""
    out: list[Srv] = []
    for priority in sorted({r.priority for r in records}):
        pool = [r for r in records if r.priority == priority]
        while pool:
            total = sum(r.weight for r in pool)
            if total == 0:
                out.append(pool.pop(0))
                continue
            pick = rng.uniform(0, total)
            running = 0
            for i, r in enumerate(pool):
                running += r.weight
                if running >= pick:
                    out.append(pool.pop(i))
                    break
            else:
                out.append(pool.pop())
    return out


class Resolver:
    """Asks ``servers`` ((host, port) pairs) and caches the answers for their TTL.

    transports: the transports sipguard listens on (a NAPTR or SRV for another is of no use to it)."""

    def __init__(self, servers: list[tuple[str, int]], transports: tuple[str, ...] = ("udp",),
                 timeout_s: float = 1.0, clock: object = None, rng: random.Random | None = None) -> None:
        self.servers = servers
        self.transports = transports
        self.timeout_s = timeout_s
        self._cache: dict[tuple[str, int], tuple[float, list[tuple[int, int, object]]]] = {}
        self._rng = rng or random.Random()
        self.queries = 0  # sent (a cached answer is not)
        self.failures = 0  # questions no resolver answered

    def _now(self) -> float:
        return time.monotonic()

    async def lookup(self, name: str, qtype: int) -> list[tuple[int, int, object]]:
        """The records of ``name`` of ``qtype`` (cached by their TTL).  Raises DnsError when no resolver answers."""
        key = (name.lower().rstrip("."), qtype)
        hit = self._cache.get(key)
        now = self._now()
        if hit is not None and hit[0] > now:
            return hit[1]
        last: Exception | None = None
        for _attempt in range(2):
            for server in self.servers:
                qid = secrets.randbelow(65536)
                try:
                    self.queries += 1
                    stream = await asyncio_dgram.connect(server)
                    try:
                        await stream.send(query_bytes(qid, key[0], qtype))
                        while True:  # an answer to another query (a late one) is skipped
                            data, _addr = await asyncio.wait_for(stream.recv(), self.timeout_s)
                            try:
                                rcode, records = parse_answer(data, qid, qtype)
                                break
                            except DnsError as err:
                                if "not the answer" not in str(err):
                                    raise
                    finally:
                        stream.close()
                except (OSError, asyncio.TimeoutError, DnsError) as err:
                    last = err
                    continue
                if rcode not in (0, 3):  # SERVFAIL, REFUSED...: the next resolver
                    last = DnsError(f"rcode {rcode}")
                    continue
                wanted = [r for r in records if r[0] == qtype]
                ttl = min((r[1] for r in wanted), default=NEGATIVE_TTL_S)
                self._cache[key] = (now + min(max(ttl, 0), MAX_TTL_S), wanted)
                if len(self._cache) > 10000:
                    self._cache.clear()
                return wanted
        self.failures += 1
        raise DnsError(f"no answer for {key[0]} ({_TYPE_NAMES.get(qtype, qtype)}): {last}")

    async def addresses(self, name: str, port: int, transport: str) -> list[Peer]:
        """A, then AAAA records of ``name``, as peers on ``port``."""
        out = [Peer(transport, str(v), port) for _t, _ttl, v in await self.lookup(name, A)]
        try:
            out += [Peer(transport, str(v), port) for _t, _ttl, v in await self.lookup(name, AAAA)]
        except DnsError:
            if not out:
                raise
        return out

    async def _srv(self, name: str, transport: str) -> list[Peer]:
        records = [v for _t, _ttl, v in await self.lookup(name, SRV) if isinstance(v, Srv)]
        out: list[Peer] = []
        for srv in srv_order(records, self._rng):
            if srv.target in ("", "."):
                continue  # "." : the service is decidedly not available here
            try:
                out += await self.addresses(srv.target, srv.port, transport)
            except DnsError as err:
                log.warning("DNS: SRV target %s of %s: %s", srv.target, name, err)
        return out

    async def targets(self, host: str, port: int | None, transport: str | None, secure: bool) -> list[Peer]:
        """Where a SIP URI with host name ``host`` goes, in the order to try (RFC 3263 §4).  Empty when the name
        has no usable records; DnsError when no resolver answered."""
        if port is not None:
            return await self.addresses(host, port, transport or ("tls" if secure else "udp"))
        if transport is not None:
            return await self._srv(_SRV_PREFIX[transport] + host, transport)
        served = [t for t in (("tls",) if secure else ("udp", "tcp", "tls")) if t in self.transports]
        naptrs = [v for _t, _ttl, v in await self.lookup(host, NAPTR) if isinstance(v, Naptr)]
        usable = sorted((n for n in naptrs if n.flags == "S" and _SERVICES.get(n.service) in served),
                        key=lambda n: (n.order, n.preference))
        out: list[Peer] = []
        if usable:
            for n in usable:
                out += await self._srv(n.replacement, _SERVICES[n.service])
            return out
        for t in served:
            out += await self._srv(_SRV_PREFIX[t] + host, t)
        if out:
            return out
        return await self.addresses(host, 5061 if secure else 5060, "tls" if secure else "udp")


_TYPE_NAMES = {A: "A", AAAA: "AAAA", SRV: "SRV", NAPTR: "NAPTR"}
