"""YAML policy files -> Policy, with every error named by file, line and key.

``load(path)`` reads one file or every ``*.yaml``/``*.yml`` in a folder (in
name order: ``service`` may stand in one file, accounts in others).  All
errors are collected before anything is raised, so ``sipguard check`` shows
them at once.  Unknown keys are errors: a typo must not silently disable a rule.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import phonenumbers
import yaml

from ..sip.actions import Peer
from ..sip.errors import ParseError
from ..sip.message import ip_literal, parse_uri
from .autodialer import DialerConfig, Thresholds
from .edge import EdgeConfig
from .model import (
    DEVICE_TYPES,
    REFUSED_DEVICE_TYPES,
    RULES,
    USER_KINDS,
    Account,
    Band,
    Connections,
    Device,
    Dns,
    InboundCallerId,
    OverloadConfig,
    Network,
    NumberBlock,
    Policy,
    RejectCodes,
    RuleMode,
    Service,
    SipTimers,
    Site,
    StateConfig,
    Tls,
    User,
)

__all__ = ["PolicyError", "Problem", "load", "load_text", "unreachable"]

_E164 = re.compile(r"\+[1-9]\d{3,14}")
_HOST_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]{0,61}"
                        r"[A-Za-z0-9])?\.?")


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key + ': ' if self.key else ''}{self.message}"


class PolicyError(Exception):
    """A policy that cannot be loaded; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class _Ctx:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.blocks: list[tuple[str, str, str, yaml.Node, str]] = []  # first, last, account, node, key
        self.misspelt: set[str] = set()  # keys a misspelling stood for: not also reported missing

    def missing(self, node: yaml.Node, key: str) -> None:
        """A required key that is not there (unless a misspelling of it was reported already)."""
        if key not in self.misspelt:
            self.error(node, key, "missing")

    def error(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.file, line, key, message))

    # -- typed readers; each returns None after recording an error
    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, key, "must be a mapping")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            name = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if not isinstance(name, str):
                self.error(knode, key, "keys must be strings")
                continue
            sub = f"{key}.{name}" if key else name
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
                if close:
                    self.misspelt.add(f"{key}.{close[0]}" if key else close[0])
                    self.error(knode, sub, f"unknown key: did you mean {close[0]!r}?")
                else:
                    self.error(knode, sub, f"unknown key (expected one of: {', '.join(allowed)})")
                continue
            if name in out:
                self.error(knode, sub, "given twice")
                continue
            out[name] = (knode, vnode)
        return out

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, key, "must be a single value")
            return None
        return yaml.safe_load(yaml.serialize(node))

    def string(self, node: yaml.Node, key: str) -> str | None:
        value = self.scalar(node, key)
        if value is None and isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return None
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            if value is not None:
                self.error(node, key, "must be a string")
            return None
        return str(value)

    def number(self, node: yaml.Node, key: str, *, minimum: float = 0, integer: bool = False) -> float | None:
        value = self.scalar(node, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            self.error(node, key, "must be a whole number" if integer else "must be a number")
            return None
        if value < minimum:
            self.error(node, key, f"must be at least {minimum}")
            return None
        return value

    def seq(self, node: yaml.Node, key: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, key, "must be a list")
            return None
        return list(node.value)

    def strings(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        items = self.seq(node, key)
        out = []
        for i, item in enumerate(items or []):
            s = self.string(item, f"{key}[{i}]")
            if s is not None:
                out.append(s)
        return tuple(out)

    def strings_like(self, node: yaml.Node, key: str, pattern: str, what: str) -> tuple[str, ...]:
        """A list of strings, each matching ``pattern`` (an error per one that does not, saying ``what``)."""
        items = self.strings(node, key)
        for i, item in enumerate(items):
            if not re.fullmatch(pattern, item):
                self.error(node, f"{key}[{i}]", f"{what}, got {item!r}")
        return items

    def networks(self, node: yaml.Node, key: str) -> tuple[Network, ...]:
        out = []
        for i, item in enumerate(self.seq(node, key) or []):
            s = self.string(item, f"{key}[{i}]")
            if s is None:
                continue
            try:
                network = ipaddress.ip_network(s, strict=False)
            except ValueError:
                self.error(item, f"{key}[{i}]", f"not an IP network: {s!r}")
                continue
            if str(network) != s and network.network_address != ipaddress.ip_interface(s).ip:
                # 192.0.2.5/28 would silently mean 192.0.2.0/28: say it, the author may have meant another block
                self.error(item, f"{key}[{i}]", f"host bits set: {s!r} is the network {str(network)!r}; "
                           "write that, or the address as /32 (/128)")
                continue
            out.append(network)
        return tuple(out)

    def mode(self, node: yaml.Node, key: str) -> RuleMode | None:
        # YAML 1.1 reads a bare `off` as false: take it as the mode it was meant to be
        text = "off" if self.scalar(node, key) is False else self.string(node, key)
        try:
            return RuleMode(text)
        except ValueError:
            self.error(node, key, "must be enforce, shadow or off")
            return None

    def number_range(self, node: yaml.Node, key: str) -> tuple[str, str] | None:
        """``+FIRST-+LAST`` (equal length) or one ``+E164`` number."""
        text = self.string(node, key) or ""
        first, sep, last = text.partition("-")
        if not sep:
            last = first
        if not (_E164.fullmatch(first) and _E164.fullmatch(last) and len(first) == len(last) and first <= last):
            self.error(node, key, f"must be +E164 or +FIRST-+LAST of equal length, FIRST <= LAST: {text!r}")
            return None
        return first, last

    def sip_peer(self, node: yaml.Node, key: str) -> Peer | None:
        s = self.string(node, key)
        if s is None:
            self.error(node, key, "must be a SIP URI like sip:192.0.2.10:5060")
            return None
        try:
            uri = parse_uri(s)
        except ParseError:
            self.error(node, key, f"not a SIP URI: {s!r}")
            return None
        host = uri.host.strip("[]")
        transport = (uri.param("transport") or ("tls" if uri.scheme == "sips" else "")).lower()
        if transport not in ("", "udp", "tcp", "tls"):
            self.error(node, key, f"unknown transport {transport!r}")
            return None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOST_NAME.fullmatch(host):
                self.error(node, key, f"neither an IP address nor a host name: {s!r}")
                return None
            # a name (README, "Next hops by name"): resolved when a call goes there (RFC 3263); the port and
            # transport only when the URI gives them (0 and "": NAPTR and SRV decide)
            return Peer(transport, host.lower(), uri.port or 0)
        ip = ipaddress.ip_address(host)
        if ip.is_multicast or ip.is_unspecified or host == "255.255.255.255":
            self.error(node, key, f"not a unicast address: {s!r}")
            return None
        transport = transport or "udp"
        if uri.port == 0:
            self.error(node, key, f"port 0 cannot be sent to: {s!r}")
            return None
        return Peer(transport, host, uri.port or (5061 if transport == "tls" else 5060))

    def reachable(self, node: yaml.Node, key: str, peer: Peer, listen: tuple[str, ...]) -> None:
        why = unreachable(peer, listen)
        if why is not None:
            self.error(node, key, why)


def _country(ctx: _Ctx, node: yaml.Node, path: str) -> str | None:
    """An ISO 3166 alpha-2 code that phonenumbers knows.  YAML 1.1 reads a bare NO (Norway) as false: say so."""
    if isinstance(node, yaml.ScalarNode) and isinstance(ctx.scalar(node, path), bool):
        ctx.error(node, path, f"{node.value} is read by YAML as {str(ctx.scalar(node, path)).lower()}: write the "
                  f"country code in quotes: country: \"{node.value.upper()}\"")
        return None
    code = ctx.string(node, path)
    if code is not None and code.upper() not in phonenumbers.SUPPORTED_REGIONS:
        ctx.error(node, path, f"not an ISO 3166 country code with a numbering plan: {code!r} (e.g. BE, NL, FR)")
        return None
    return code


def unreachable(peer: Peer, listen: tuple[str, ...]) -> str | None:
    """Why no listen address can send to ``peer`` (no listen address of its transport and family), or None.
    The loader refuses such a policy, and the server a command line whose --listen leaves one unreachable."""
    family = 6 if ":" in peer.host else 4
    named = ip_literal(peer.host) is None  # a name: its family is the DNS's to say
    for spec in listen:
        transport, _sep, rest = spec.partition(":")
        host = rest.rpartition(":")[0].strip("[]")
        if (transport == peer.transport or not peer.transport) and (named or (6 if ":" in host else 4) == family):
            return None
    if named:
        return (f"no listen address can reach {peer.host}: service.listen has no "
                f"{peer.transport or 'udp, tcp or tls'} address")
    port = 5061 if peer.transport == "tls" else 5060
    example = f"{peer.transport}:[::]:{port}" if family == 6 else f"{peer.transport}:0.0.0.0:{port}"
    return (f"no listen address can reach {_bracketed(peer.host)}:{peer.port}: service.listen has no "
            f"{peer.transport} address of IPv{family} (add one, e.g. {example!r})")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def load(path: str | os.PathLike[str]) -> Policy:
    """Load a policy file or folder.  Raises PolicyError (every problem) or OSError."""
    p = Path(path)
    if p.is_dir():
        files = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        if not files:
            raise PolicyError([Problem(str(p), 1, "", "no *.yaml files in this folder")])
    else:
        files = [p]
    return _load_many([(str(f), f.read_text(encoding="utf-8")) for f in files])


def load_text(text: str, name: str = "<policy>") -> Policy:
    """Load a policy from a YAML string (tests, admin API)."""
    return _load_many([(name, text)])


def _load_many(sources: list[tuple[str, str]]) -> Policy:
    problems: list[Problem] = []
    service: Service | None = None
    service_seen = False
    accounts: list[Account] = []
    account_nodes: list[tuple[_Ctx, str, yaml.Node, yaml.Node]] = []
    for name, text in sources:
        ctx = _Ctx(name)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as err:
            problems.append(_yaml_problem(name, err))
            continue
        if root is None:
            continue
        top = ctx.mapping(root, "", ("service", "accounts"))
        if top is not None:
            if "service" in top:
                if service_seen:
                    ctx.error(top["service"][0], "service", "given in more than one file")
                service_seen = True
                before = len(ctx.problems)
                service = _service(ctx, top["service"][1])
                if service is None and len(ctx.problems) == before:  # never the defaults in silence
                    ctx.error(top["service"][0], "service", "could not be read (a value was refused without a "
                              "reason: please report this)")
            if "accounts" in top:
                accs = ctx.mapping(top["accounts"][1], "accounts", None)
                for acc_name, (knode, vnode) in (accs or {}).items():
                    account_nodes.append((ctx, acc_name, knode, vnode))
        problems.extend(ctx.problems)
    if not service_seen and not problems:
        problems.append(Problem(sources[0][0] if sources else "<policy>", 1, "service", "missing"))
    service_ok = service is not None  # else the accounts are not checked against a service that is not there
    if service is None:
        service = Service()
    seen_names: set[str] = set()
    for ctx, acc_name, knode, vnode in account_nodes:
        before = len(ctx.problems)
        if acc_name in seen_names:
            ctx.error(knode, f"accounts.{acc_name}", "account defined twice")
        seen_names.add(acc_name)
        acc = _account(ctx, acc_name, vnode, service, service_ok)
        problems.extend(ctx.problems[before:])
        if acc is not None:
            accounts.append(acc)
    problems.extend(_overlaps([ctx for ctx, *_rest in account_nodes]))
    if problems:
        order = {name: i for i, (name, _text) in enumerate(sources)}
        raise PolicyError(sorted(problems, key=lambda p: (order.get(p.file, 0), p.line)))
    return Policy(service, tuple(accounts), tuple(name for name, _t in sources))


def _yaml_problem(name: str, err: yaml.YAMLError) -> Problem:
    """One line, at the line of the mistake: for a bracket or a quote never closed, where it was opened (the
    parser only gives up further down); else where the parser stopped."""
    problem = str(getattr(err, "problem", "") or err).strip()
    context = str(getattr(err, "context", "") or "")
    mark = getattr(err, "problem_mark", None)
    opened = getattr(err, "context_mark", None)
    if opened is not None and any(w in context for w in ("flow", "quoted", "block mapping", "block collection")):
        mark = opened
        problem = f"{problem} ({context} opened here)"
    line = mark.line + 1 if mark is not None else 1
    return Problem(name, line, "", f"YAML syntax: {' '.join(problem.split())}")


def _overlaps(ctxs: list[_Ctx]) -> list[Problem]:
    """A number belongs to one block of one account: overlapping blocks are an error."""
    rows: list[tuple[int, str, str, str, yaml.Node, str, _Ctx]] = []
    seen_ctx: set[int] = set()
    for ctx in ctxs:
        if id(ctx) in seen_ctx:
            continue
        seen_ctx.add(id(ctx))
        rows.extend((len(first), first, last, account, node, key, ctx) for first, last, account, node, key in ctx.blocks)
    rows.sort(key=lambda r: (r[0], r[1]))
    problems = []
    for prev, row in zip(rows, rows[1:]):
        if prev[0] == row[0] and row[1] <= prev[2]:
            ctx = row[6]
            line = row[4].start_mark.line + 1
            problems.append(Problem(ctx.file, line, row[5],
                                    f"{row[1]}-{row[2]} overlaps {prev[1]}-{prev[2]} of account {prev[3]}"))
    return problems


_SERVICE_KEYS = tuple(f.name for f in fields(Service) if f.name != "international")


def _service(ctx: _Ctx, node: yaml.Node) -> Service | None:
    m = ctx.mapping(node, "service", _SERVICE_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    next_hops: list[tuple[yaml.Node, str, Peer]] = []  # checked against the listen addresses at the end
    for key, (_k, v) in m.items():
        path = f"service.{key}"
        if key == "listen":
            listen = ctx.strings(v, path)
            for i, item in enumerate(listen):
                if not re.fullmatch(r"(udp|tcp|tls):(\[[0-9A-Fa-f:.]+\]|[0-9.]+):\d{1,5}", item):
                    ctx.error(v, f"{path}[{i}]", f"expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT "
                              f"(IPv6 in brackets), got {item!r}")
            if not listen:
                ctx.error(v, path, "must name at least one address")
            kw[key] = listen
        elif key == "advertise":
            kw[key] = ctx.string(v, path)
        elif key == "country":
            kw[key] = _country(ctx, v, path)
        elif key == "admin":
            s = ctx.string(v, path)
            if s is not None and not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+|localhost):\d{1,5}", s):
                ctx.error(v, path, f"expected HOST:PORT, got {s!r}")
            kw[key] = s
        elif key == "upstreams":
            upstreams: dict[str, Peer] = {}
            international: set[str] = set()
            for name, (_k2, v2) in (ctx.mapping(v, path, None) or {}).items():
                sub = f"{path}.{name}"
                uri_node = v2
                if isinstance(v2, yaml.MappingNode):  # the long form: {uri, international}
                    um = ctx.mapping(v2, sub, ("uri", "international")) or {}
                    if "uri" not in um:
                        ctx.missing(v2, f"{sub}.uri")
                        continue
                    uri_node = um["uri"][1]
                    if "international" in um:
                        flag = ctx.scalar(um["international"][1], f"{sub}.international")
                        if not isinstance(flag, bool):
                            ctx.error(um["international"][1], f"{sub}.international", "must be true or false")
                        elif flag:
                            international.add(name)
                    sub = f"{sub}.uri"
                peer = ctx.sip_peer(uri_node, sub)
                if peer is not None:
                    upstreams[name] = peer
                    next_hops.append((uri_node, sub, peer))
            kw[key] = upstreams
            kw["international"] = frozenset(international)
        elif key == "inbound_caller_id":
            im = ctx.mapping(v, path, ("mode", "allow")) or {}
            mode = ctx.mode(im["mode"][1], f"{path}.mode") if "mode" in im else RuleMode.ENFORCE
            allow = []
            allow_nodes = (ctx.seq(im["allow"][1], f"{path}.allow") or []) if "allow" in im else []
            for i, allow_node in enumerate(allow_nodes):
                rng = ctx.number_range(allow_node, f"{path}.allow[{i}]")
                if rng is not None:
                    allow.append(NumberBlock(rng[0], rng[1], None))
            kw[key] = InboundCallerId(mode, tuple(allow)) if mode is not None else None
        elif key == "state":
            kw[key] = _state(ctx, v, path)
        elif key == "route_secret":
            secret = ctx.string(v, path)
            if secret is not None and len(secret) < 16:
                ctx.error(v, path, "must be at least 16 characters (it signs the route tokens of every call)")
            kw[key] = secret
        elif key == "emergency_numbers":
            kw[key] = ctx.strings_like(v, path, r"\+?\d{2,15}", "not a dialable number")
        elif key == "channel_bands":
            kw[key] = _bands(ctx, v, path)
        elif key == "channel_rounding":
            s = ctx.string(v, path)
            if s not in ("floor", "round", "ceil"):
                ctx.error(v, path, "must be floor, round or ceil")
            kw[key] = s
        elif key == "rewrite_from":
            value = ctx.scalar(v, path)
            if not isinstance(value, bool):
                ctx.error(v, path, "must be true or false")
            kw[key] = value
        elif key == "dialog_timeout_s":
            kw[key] = ctx.number(v, path, minimum=1)
        elif key == "drain_timeout_s":
            kw[key] = ctx.number(v, path, minimum=0)
        elif key == "max_message_bytes":
            kw[key] = ctx.number(v, path, minimum=1024, integer=True)
        elif key == "reject":
            codes = ctx.mapping(v, path, tuple(f.name for f in fields(RejectCodes))) or {}
            rk = {}
            for ckey, (_k2, v2) in codes.items():
                code = ctx.number(v2, f"{path}.{ckey}", minimum=400, integer=True)
                if code is not None and code > 699:
                    ctx.error(v2, f"{path}.{ckey}", "must be a SIP final status 400-699")
                rk[ckey] = code
            kw[key] = RejectCodes(**{k: int(c) for k, c in rk.items() if c is not None})
        elif key == "edge":
            kw[key] = _edge(ctx, v, path)
        elif key == "overload":
            kw[key] = OverloadConfig(**_settings(ctx, v, path, OverloadConfig, lambda name: True))
        elif key == "autodialer":
            kw[key] = _autodialer(ctx, v, path)
        elif key == "connections":
            kw[key] = Connections(**_settings(ctx, v, path, Connections, lambda name: name.startswith("max_")))
        elif key == "tls":
            kw[key] = _tls(ctx, v, path)
        elif key == "dns":
            kw[key] = _dns(ctx, v, path)
        elif key == "sip_timers":
            kw[key] = SipTimers(**_settings(ctx, v, path, SipTimers, lambda name: name.endswith("_ms")))
    listen_specs = kw.get("listen") or Service().listen
    for hop_node, hop_key, peer in next_hops:
        ctx.reachable(hop_node, hop_key, peer, listen_specs)
    if any(spec.startswith("tls:") for spec in listen_specs) and isinstance(kw.get("tls", Tls()), Tls):
        from ..transport.tls import problems as tls_problems  # here: the transports import the SIP core
        tls_node = m["tls"][1] if "tls" in m else m["listen"][1] if "listen" in m else node
        for tkey, message in tls_problems(kw.get("tls", Tls())):
            ctx.error(tls_node, f"service.tls.{tkey}", message)
    if any(value is None and key not in ("advertise",) for key, value in kw.items()) or \
            any(key == "rewrite_from" and not isinstance(value, bool) for key, value in kw.items()):
        return None
    return Service(**kw)


def _settings(ctx: _Ctx, node: yaml.Node, path: str, cls: type, integer: Callable[[str], bool]) -> dict[str, Any]:
    """A mapping of numbers of at least 1, its keys the fields of ``cls`` (``integer``: those that are whole)."""
    out: dict[str, Any] = {}
    for key, (_k, v) in (ctx.mapping(node, path, tuple(f.name for f in fields(cls))) or {}).items():
        val = ctx.number(v, f"{path}.{key}", minimum=1, integer=integer(key))
        if val is not None:
            out[key] = val
    return out


def _dns(ctx: _Ctx, node: yaml.Node, path: str) -> Dns | None:
    m = ctx.mapping(node, path, tuple(f.name for f in fields(Dns))) or {}
    kw: dict[str, Any] = {}
    errors = len(ctx.problems)
    for key, (_k, v) in m.items():
        sub = f"{path}.{key}"
        if key == "servers":
            kw[key] = ctx.strings_like(v, sub, r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(:\d{1,5})?",
                                       "expected IP or IP:PORT (IPv6 in brackets)")
        elif key == "timeout_ms":
            kw[key] = ctx.number(v, sub, minimum=1, integer=True)
    return Dns(**kw) if len(ctx.problems) == errors else None


def _tls(ctx: _Ctx, node: yaml.Node, path: str) -> Tls | None:
    """service.tls; None when a value was refused (the error says which)."""
    m = ctx.mapping(node, path, tuple(f.name for f in fields(Tls))) or {}
    kw: dict[str, Any] = {}
    errors = len(ctx.problems)
    for key, (_k, v) in m.items():
        sub = f"{path}.{key}"
        if key in ("cert", "key", "ca"):
            text = ctx.string(v, sub)  # null: none (ca: the system's CAs)
            # a relative path is the policy file's neighbour, wherever sipguard was started from
            kw[key] = None if text is None else str(Path(ctx.file).parent / Path(text).expanduser())
        elif key == "verify_clients":
            value = ctx.scalar(v, sub)
            if not isinstance(value, bool):
                ctx.error(v, sub, "must be true or false")
            kw[key] = value
        elif key == "min_version":
            text = str(ctx.scalar(v, sub))
            if text not in ("1.2", "1.3"):
                ctx.error(v, sub, f"must be 1.2 or 1.3, got {text!r}")
            kw[key] = text
    return Tls(**kw) if len(ctx.problems) == errors else None


def _state(ctx: _Ctx, node: yaml.Node, path: str) -> StateConfig:
    m = ctx.mapping(node, path, tuple(f.name for f in fields(StateConfig))) or {}
    kw: dict[str, Any] = {}
    for key, (_k, v) in m.items():
        sub = f"{path}.{key}"
        if key == "store":
            store = ctx.string(v, sub)
            if store not in ("memory", "redis"):
                ctx.error(v, sub, "must be memory or redis")
            else:
                kw[key] = store
        elif key == "url":
            url = ctx.string(v, sub) or ""
            if not re.fullmatch(r"(redis|rediss)://[^\s/]+(/\d+)?|unix://\S+", url):
                ctx.error(v, sub, f"expected redis://HOST:PORT/DB, rediss://... or unix:///path, got {url!r}")
            else:
                kw[key] = url
        elif key in ("prefix", "node"):
            text = ctx.string(v, sub)
            if text is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]+", text):
                ctx.error(v, sub, f"letters, digits and _ . : - only, got {text!r}")
            elif text is not None:
                kw[key] = text
        else:
            value = ctx.number(v, sub, minimum=10 if key == "timeout_ms" else 0.1, integer=key == "timeout_ms")
            if value is not None:
                kw[key] = value
    config = StateConfig(**kw)
    if config.renew_s * 2 > config.lease_s:
        where = m.get("renew_s", m.get("lease_s", (node, node)))[1]
        ctx.error(where, f"{path}.renew_s", f"renew at least twice per lease: renew_s {config.renew_s:g} > "
                  f"lease_s {config.lease_s:g} / 2 would let live calls expire between renewals")
    return config


def _edge(ctx: _Ctx, node: yaml.Node, path: str) -> EdgeConfig:
    m = ctx.mapping(node, path, tuple(f.name for f in fields(EdgeConfig))) or {}
    kw: dict[str, Any] = {}
    for key, (_k, v) in m.items():
        sub = f"{path}.{key}"
        if key == "user_agents":
            kw[key] = tuple(ctx.strings(v, sub))
        elif key == "exempt":
            kw[key] = ctx.networks(v, sub)
        else:
            value = ctx.number(v, sub, minimum=1, integer=key in ("max_sources", "retry_after_s"))
            if value is not None:
                kw[key] = value
    return EdgeConfig(**kw)


_ACTIONS = ("log", "throttle", "block")


def _autodialer(ctx: _Ctx, node: yaml.Node, path: str) -> DialerConfig:
    names = tuple(f.name for f in fields(DialerConfig) if f.name not in ("warning_action", "critical_action"))
    m = ctx.mapping(node, path, (*names, "actions")) or {}
    kw: dict[str, Any] = {}
    defaults = DialerConfig()
    for key, (_k, v) in m.items():
        sub = f"{path}.{key}"
        if key == "actions":
            acts = ctx.mapping(v, sub, ("warning", "critical")) or {}
            for level, (_k2, v2) in acts.items():
                action = ctx.string(v2, f"{sub}.{level}")
                if action not in _ACTIONS:
                    ctx.error(v2, f"{sub}.{level}", f"must be one of {', '.join(_ACTIONS)}")
                else:
                    kw[f"{level}_action"] = action
        elif isinstance(getattr(defaults, key), Thresholds):
            t = ctx.mapping(v, sub, ("warning", "critical")) or {}
            if set(t) != {"warning", "critical"}:
                ctx.error(v, sub, "needs warning and critical")
                continue
            floor = -1.0 if getattr(defaults, key).low_is_bad else 0.0  # below 0: never (a CV is >= 0)
            warning = ctx.number(t["warning"][1], f"{sub}.warning", minimum=floor)
            critical = ctx.number(t["critical"][1], f"{sub}.critical", minimum=floor)
            if warning is None or critical is None:
                continue
            low = getattr(defaults, key).low_is_bad
            if (critical > warning) if low else (critical < warning):
                ctx.error(t["critical"][1], f"{sub}.critical",
                          "must be below warning (lower is worse)" if low else "must be at least warning")
            kw[key] = Thresholds(float(warning), float(critical), low)
        else:
            integer = isinstance(getattr(defaults, key), int)
            value = ctx.number(v, sub, minimum=1, integer=integer)
            if value is not None:
                kw[key] = value
    return DialerConfig(**kw)


def _bands(ctx: _Ctx, node: yaml.Node, path: str) -> tuple[Band, ...]:
    bands = []
    previous = 0
    items = ctx.seq(node, path) or []
    for i, item in enumerate(items):
        bp = f"{path}[{i}]"
        m = ctx.mapping(item, bp, ("up_to", "per_user"))
        if m is None:
            continue
        if "per_user" not in m:
            ctx.missing(item, f"{bp}.per_user")
            continue
        per_user = ctx.number(m["per_user"][1], f"{bp}.per_user")
        up_to = None
        if "up_to" in m:
            up_to_v = ctx.number(m["up_to"][1], f"{bp}.up_to", minimum=1, integer=True)
            if up_to_v is not None:
                up_to = int(up_to_v)
                if up_to <= previous:
                    ctx.error(m["up_to"][1], f"{bp}.up_to", "bands must increase")
                previous = up_to
        elif i != len(items) - 1:
            ctx.error(item, f"{bp}.up_to", "only the last band may leave up_to out")
        if per_user is not None:
            bands.append(Band(up_to, float(per_user)))
    if items and "up_to" in (ctx.mapping(items[-1], path, None) or {}):
        ctx.error(items[-1], f"{path}[{len(items) - 1}]", "the last band must have no up_to")
    return tuple(bands)


_ACCOUNT_KEYS = ("kind", "match", "upstream", "deliver_to", "channels", "users", "devices", "sites", "numbers", "rules",
                 "default_number", "on_caller_id_mismatch")


def _account(ctx: _Ctx, name: str, node: yaml.Node, service: Service, service_ok: bool = True) -> Account | None:
    path = f"accounts.{name}"
    before = len(ctx.problems)
    m = ctx.mapping(node, path, _ACCOUNT_KEYS)
    if m is None:
        return None
    kind = "hosted"
    if "kind" in m:
        kind = ctx.string(m["kind"][1], f"{path}.kind") or ""
        if kind not in ("hosted", "trunk"):
            ctx.error(m["kind"][1], f"{path}.kind", "must be hosted or trunk")
    sources: tuple[Network, ...] = ()
    domains: tuple[str, ...] = ()
    tls_names: tuple[str, ...] = ()
    if "match" in m:
        mm = ctx.mapping(m["match"][1], f"{path}.match", ("sources", "domains", "tls_names")) or {}
        if "sources" in mm:
            sources = ctx.networks(mm["sources"][1], f"{path}.match.sources")
        if "domains" in mm:
            domains = tuple(d.lower() for d in ctx.strings(mm["domains"][1], f"{path}.match.domains"))
        if "tls_names" in mm:
            tls_names = tuple(n.lower() for n in ctx.strings(mm["tls_names"][1], f"{path}.match.tls_names"))
            if tls_names and not service.tls.ca:
                ctx.error(mm["tls_names"][1], f"{path}.match.tls_names", "a certificate proves a name only when it "
                          "chains to the CAs in service.tls.ca: set them (and verify_clients, or clients may "
                          "present none)")
    if not sources and not domains and not tls_names:
        ctx.error(node, f"{path}.match", "an account needs match.sources, match.domains or match.tls_names")
    upstream = ""
    if "upstream" not in m:
        ctx.missing(node, f"{path}.upstream")
    else:
        upstream = ctx.string(m["upstream"][1], f"{path}.upstream") or ""
        if service_ok and upstream not in service.upstreams:
            ctx.error(m["upstream"][1], f"{path}.upstream", f"no upstream named {upstream!r} in service.upstreams")
    deliver_to = ctx.sip_peer(m["deliver_to"][1], f"{path}.deliver_to") if "deliver_to" in m else None
    if deliver_to is not None:
        ctx.reachable(m["deliver_to"][1], f"{path}.deliver_to", deliver_to, service.listen)
    channels = None
    if "channels" in m:
        ch = ctx.number(m["channels"][1], f"{path}.channels", integer=True)
        channels = int(ch) if ch is not None else None
        if kind != "trunk":
            ctx.error(m["channels"][1], f"{path}.channels", "only a trunk may declare its channels")
    sites: dict[str, Site] = {}
    if "sites" in m:
        networks: dict[Network, str] = {}  # a network in two sites: at which address is the caller?
        for sname, (_k, sv) in (ctx.mapping(m["sites"][1], f"{path}.sites", None) or {}).items():
            site = _site(ctx, sname, sv, f"{path}.sites.{sname}")
            if site is not None:
                sites[sname] = site
                for net in site.sources:
                    if net in networks:
                        ctx.error(sv, f"{path}.sites.{sname}.sources", f"{net} is a network of site "
                                  f"{networks[net]!r} too: a caller there would be at two addresses")
                    networks.setdefault(net, sname)
    users = tuple(_users(ctx, m["users"][1], f"{path}.users", sites)) if "users" in m else ()
    devices = tuple(_devices(ctx, m["devices"][1], f"{path}.devices", sites)) if "devices" in m else ()
    numbers = tuple(_numbers(ctx, m["numbers"][1], f"{path}.numbers", sites)) if "numbers" in m else ()
    rules: dict[str, RuleMode] = {}
    if "rules" in m:
        for rname, (_k, rv) in (ctx.mapping(m["rules"][1], f"{path}.rules", RULES) or {}).items():
            mode = ctx.mode(rv, f"{path}.rules.{rname}")
            if mode is RuleMode.OFF and rname == "emergency":
                ctx.error(rv, f"{path}.rules.{rname}", "emergency calls cannot be switched off (terms: BT7, ST4): "
                          "enforce puts the site's caller ID on them, shadow only records what it would put")
            elif mode is not None:
                rules[rname] = mode
    default_number = None
    if "default_number" in m:
        default_number = ctx.string(m["default_number"][1], f"{path}.default_number")
        if default_number is not None and not _in_blocks(default_number, numbers):
            ctx.error(m["default_number"][1], f"{path}.default_number", f"{default_number} is in none of the account's numbers")
    mismatch = "reject"
    if "on_caller_id_mismatch" in m:
        mismatch = ctx.string(m["on_caller_id_mismatch"][1], f"{path}.on_caller_id_mismatch") or ""
        if mismatch not in ("reject", "rewrite"):
            ctx.error(m["on_caller_id_mismatch"][1], f"{path}.on_caller_id_mismatch", "must be reject or rewrite")
    if "sites" in m:
        for sname, (_k, sv) in (ctx.mapping(m["sites"][1], f"{path}.sites", None) or {}).items():
            site = sites.get(sname)
            ecid = site.emergency_caller_id if site is not None else None
            if ecid and not _in_blocks(ecid, numbers):
                ctx.error(sv, f"{path}.sites.{sname}.emergency_caller_id", f"{ecid} is in none of the account's numbers")
            elif ecid and not _in_blocks(ecid, tuple(b for b in numbers if b.site == sname)):
                other = next(b.site for b in numbers if b.holds(ecid))
                ctx.error(sv, f"{path}.sites.{sname}.emergency_caller_id",
                          f"{ecid} is a number of site {other!r}, not of {sname!r}: emergency services would "
                          f"look for the caller at the address of {other!r}")
    if kind == "trunk" and channels is None and not users:
        ctx.error(node, f"{path}.channels", "a trunk needs its channels, or users to count them from")
    if len(ctx.problems) > before:
        return None
    return Account(name, kind, sources, domains, upstream, deliver_to, channels, users, devices, sites, numbers, rules,
                   default_number, mismatch, tls_names)


def _in_blocks(number: str, blocks: tuple[NumberBlock, ...]) -> bool:
    return any(b.holds(number) for b in blocks)


def _site(ctx: _Ctx, name: str, node: yaml.Node, path: str) -> Site | None:
    m = ctx.mapping(node, path, ("address", "sources", "emergency_caller_id"))
    if m is None:
        return None
    if "address" not in m:
        ctx.error(node, f"{path}.address", "a site needs its postal address")
        return None
    address = ctx.string(m["address"][1], f"{path}.address") or ""
    sources = ctx.networks(m["sources"][1], f"{path}.sources") if "sources" in m else ()
    ecid = None
    if "emergency_caller_id" in m:
        ecid = ctx.string(m["emergency_caller_id"][1], f"{path}.emergency_caller_id")
        if ecid is not None and not _E164.fullmatch(ecid):
            ctx.error(m["emergency_caller_id"][1], f"{path}.emergency_caller_id", f"must be E.164 (+...): {ecid!r}")
    return Site(name, address, sources, ecid)


def _site_ref(ctx: _Ctx, m: dict[str, tuple[yaml.Node, yaml.Node]], path: str, sites: dict[str, Site]) -> str | None:
    if "site" not in m:
        return None
    site = ctx.string(m["site"][1], f"{path}.site")
    if site is not None and site not in sites:
        ctx.error(m["site"][1], f"{path}.site", f"no site named {site!r} in this account")
    return site


def _users(ctx: _Ctx, node: yaml.Node, path: str, sites: dict[str, Site]) -> list[User]:
    out = []
    for i, item in enumerate(ctx.seq(node, path) or []):
        ip = f"{path}[{i}]"
        m = ctx.mapping(item, ip, ("name", "kind", "sip_users", "site", "phones"))
        if m is None:
            continue
        if "name" not in m:
            ctx.missing(item, f"{ip}.name")
            continue
        uname = ctx.string(m["name"][1], f"{ip}.name") or ""
        kind = ctx.string(m["kind"][1], f"{ip}.kind") if "kind" in m else "person"
        if kind not in USER_KINDS:
            ctx.error(m["kind"][1], f"{ip}.kind", f"must be one of {', '.join(USER_KINDS)}")
            continue
        sip_users = ctx.strings(m["sip_users"][1], f"{ip}.sip_users") if "sip_users" in m else ()
        phones = len(sip_users) or 1
        if "phones" in m:
            ph = ctx.number(m["phones"][1], f"{ip}.phones", minimum=1, integer=True)
            phones = int(ph) if ph is not None else phones
        out.append(User(uname, kind, sip_users, _site_ref(ctx, m, ip, sites), phones))
    return out


def _devices(ctx: _Ctx, node: yaml.Node, path: str, sites: dict[str, Site]) -> list[Device]:
    out = []
    for i, item in enumerate(ctx.seq(node, path) or []):
        ip = f"{path}[{i}]"
        m = ctx.mapping(item, ip, ("name", "type", "sip_users", "site"))
        if m is None:
            continue
        dname = ctx.string(m["name"][1], f"{ip}.name") if "name" in m else None
        if dname is None:
            ctx.missing(item, f"{ip}.name")
            continue
        dtype = ctx.string(m["type"][1], f"{ip}.type") if "type" in m else None
        if dtype in REFUSED_DEVICE_TYPES:
            ctx.error(m["type"][1], f"{ip}.type",
                      f"{dtype} lines may not be provisioned on this service (terms of use: alarm-system and "
                      "lift emergency lines are refused by law)")
            continue
        if dtype not in DEVICE_TYPES:
            ctx.error(item if "type" not in m else m["type"][1], f"{ip}.type",
                      f"must be one of {', '.join(DEVICE_TYPES)}")
            continue
        sip_users = ctx.strings(m["sip_users"][1], f"{ip}.sip_users") if "sip_users" in m else ()
        out.append(Device(dname, dtype, sip_users, _site_ref(ctx, m, ip, sites)))
    return out


def _numbers(ctx: _Ctx, node: yaml.Node, path: str, sites: dict[str, Site]) -> list[NumberBlock]:
    out = []
    for i, item in enumerate(ctx.seq(node, path) or []):
        ip = f"{path}[{i}]"
        m = ctx.mapping(item, ip, ("range", "number", "site"))
        if m is None:
            continue
        if ("range" in m) == ("number" in m):
            ctx.error(item, ip, "give exactly one of range or number")
            continue
        if "number" in m:
            num = ctx.string(m["number"][1], f"{ip}.number") or ""
            if not _E164.fullmatch(num):
                ctx.error(m["number"][1], f"{ip}.number", f"must be E.164 (+...): {num!r}")
                continue
            first = last = num
        else:
            rng = ctx.number_range(m["range"][1], f"{ip}.range")
            if rng is None:
                continue
            first, last = rng
        if "site" not in m:
            ctx.error(item, f"{ip}.site", "a number block needs its site: the postal address emergency services "
                      "are given for its numbers (terms: BT7, ST4)")
        out.append(NumberBlock(first, last, _site_ref(ctx, m, ip, sites)))
        ctx.blocks.append((first, last, path.split(".")[1], item, ip))
    return out
