"""Wiring: sockets -> ProxyCore -> actions; one timer; admin HTTP; reload.

Owns every side effect of the proxy: the sockets (the pump sends through them),
the single loop timer armed at ``core.next_deadline()``, the channel store, the
decision log, the metrics, SIGHUP reload and graceful stop.  The per-call part
of that (settling claims, counting dialogs, timing decisions) runs compiled in
``outcomes.py``, which hands back to ``_record`` what is rare.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import hashlib
import ipaddress
import json
import logging
import mmap
import os
import secrets
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Final, TextIO

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .config import Settings
from .dns import DnsError, Resolver, split_server, system_resolvers
from .decisionlog import DecisionLog
from .metrics import Metrics
from .policy import Engine, Policy, PolicyError, Service, load
from .policy.edge import EdgeEvent
from .policy.loader import unreachable
from . import __version__, systemd
from ._compiled import native_core
from .outcomes import Outcomes, TimedRouter
from .policy.decision import Decision, Mode, Verdict
from .sip.actions import Peer, Reject, Resolve, Settle
from .sip.message import ip_literal
from .sip.proxy import Local, ProxyCore
from .sip.pump import Dispatch, Pump, SendTo
from .sip.shed import TICK_S as OVERLOAD_TICK_S, WINDOW_S as OVERLOAD_WINDOW_S, Shedder
from .sip.timers import TimerConfig
from .state import InMemoryStore
from .state.redis_store import RedisStore
from .state.shared import SharedCounts, SharedStore
from .transport import UdpListener, parse_listen
from .transport.stream import StreamListener
from .transport.tls import contexts as tls_contexts
from .transport.udp import SO_TIMESTAMPNS, head_age

__all__ = ["Server", "WorkerSlot", "timer_config", "tune_gc"]

log = logging.getLogger("sipguard")

LIMIT_LOG_EVERY_S = 60  # an account at its channel limit: one log line per this many seconds
RECV_MAX = 65536 + 64  # a hand-off: the largest UDP datagram and the line naming its peer
LISTEN_BATCH = 64  # datagrams a worker reads from its listen socket per turn of the loop (sip/pump.py drain)
MIRROR = b"\0"  # starts a message of auto-dialer records between workers (no SIP datagram starts so)
EDGE_SWEEP_S = 1.0  # how often ended bans are found and the edge's events logged
LEARN_EVERY_S = 60.0  # how often the addresses of the upstreams named by DNS are looked up again
MACHINE_ID = Path("/etc/machine-id")
GC_YOUNG_THRESHOLD = 5_000  # tracked objects allocated (net) between collections of the youngest generation
GC_FULL_EVERY_S = 600.0  # a full collection this often, instead of ones triggered by allocation counts


# The service keys read when the process starts only (sockets, the channel store, the transaction timers and
# the parser's bound are built from them): a reload that changes one is refused by name.  Every other key is
# put in force by a reload (Server._put_in_force; README, "Policy files").
READ_AT_START: Final = ("listen", "admin", "advertise", "state", "sip_timers", "max_message_bytes")


def timer_config(policy: Policy) -> TimerConfig:
    t = policy.service.sip_timers
    return TimerConfig(
        t1_s=t.t1_ms / 1000, t2_s=t.t2_ms / 1000, t4_s=t.t4_ms / 1000, timer_c_s=t.timer_c_s,
        dialog_timeout_s=policy.service.dialog_timeout_s,
    )


def route_key(policy: Policy, machine_id: Path = MACHINE_ID, state_dir: Path | None = None) -> tuple[bytes, str]:
    """The secret of the route tokens (sip/dialog.py) and where it came from.

    ``service.route_secret`` when the policy has one (a pair of nodes shares it); else one derived from
    this machine's /etc/machine-id, so that a restart of sipguard on the same machine still verifies the
    tokens of the calls it admitted before; else a random key kept in ``route.key`` under the state
    directory ($STATE_DIRECTORY, as systemd's StateDirectory= sets it, else /var/lib/sipguard), made on
    the first start; else a random one that dies with the process."""
    secret = policy.service.route_secret
    if secret:
        return hashlib.sha256(b"sipguard route token\x00" + secret.encode()).digest(), "service.route_secret"
    try:
        machine = machine_id.read_bytes().strip()
    except OSError:
        machine = b""
    if machine:
        return hashlib.sha256(b"sipguard route token\x00machine\x00" + machine).digest(), str(machine_id)
    folder = state_dir or Path(os.environ.get("STATE_DIRECTORY", "/var/lib/sipguard").split(":")[0])
    path = folder / "route.key"
    try:
        if path.exists() and len(key := path.read_bytes()) == 32:
            return key, str(path)
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        key = secrets.token_bytes(32)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key, str(path)
    except OSError:
        return secrets.token_bytes(32), "random"


def policy_changes(old: Policy, new: Policy) -> list[str]:
    """What a reload changes, for its log line: accounts added, removed and changed, service keys changed."""
    before, after = {a.name: a for a in old.accounts}, {a.name: a for a in new.accounts}
    out = []
    for what, names in (("accounts added", sorted(after.keys() - before.keys())),
                        ("accounts removed", sorted(before.keys() - after.keys())),
                        ("accounts changed", sorted(n for n in before.keys() & after.keys() if before[n] != after[n]))):
        if names:
            out.append(f"{what}: {', '.join(names)}")
    keys = [f.name for f in fields(Service) if getattr(old.service, f.name) != getattr(new.service, f.name)]
    if keys:
        out.append(f"service: {', '.join(keys)}")
    return out


def _auto_address(family: int) -> str:
    """A concrete address of this host for Via/Record-Route when listening on a wildcard."""
    target = ("2001:db8::1", 9) if family == 6 else ("192.0.2.1", 9)  # documentation ranges: no packet is sent
    with socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(target)
            return str(s.getsockname()[0])
        except OSError:
            return "::1" if family == 6 else "127.0.0.1"


def _split_hostport(text: str) -> tuple[str, int | None]:
    """'[::1]:5060' / '192.0.2.1:5060' / 'sip.example.com' -> (host, port or None)."""
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if text.count(":") == 1:
        host, _sep, port = text.partition(":")
        return host, int(port) if port.isdigit() else None
    return text, None


def tune_gc() -> None:
    """Set the cyclic GC up for the hot path (the server at start; bench/call.py likewise).

    The cyclic GC is for cycles, and the hot path makes none (bench/call.py: 0 cyclic objects over
    thousands of calls): what it keeps alive (transactions, dialogs) is freed by reference counting.
    A collection of an older generation walks every live object it tracks, and those walks were the
    INVITE->200 p99 under load (BENCHMARKS.md); compiled, the transactions, dialogs and messages are not
    tracked at all (docs/compiled.md, "Objects the GC never sees").  So: freeze what startup made, let the
    youngest generation be collected often and briefly (what dies young, such as an admin connection's
    cycles, is reclaimed there), and never collect the older ones on their own: the server runs a
    full collection every GC_FULL_EVERY_S instead, for the rare cycle that aged.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 1_000_000_000, 1_000_000_000)


class WorkerSlot:
    """Which worker this process is, the channel table the workers share, and the sockets the supervisor
    bound for them (workers.py): the listen sockets by spec, this worker's inbox, every worker's outbox."""

    __slots__ = ("index", "counts", "listen", "inbox", "outboxes", "drained")

    def __init__(self, index: int, counts: SharedCounts, listen: dict[str, socket.socket], inbox: socket.socket,
                 outboxes: list[socket.socket], drained: mmap.mmap) -> None:
        self.index = index
        self.counts = counts
        self.listen = listen
        self.inbox = inbox
        self.outboxes = outboxes
        self.drained = drained  # a byte per worker: 1 once it has no call left (workers.py)

    def all_drained(self, calls_here: int) -> bool:
        """Say whether this worker has calls left; whether no worker has."""
        self.drained[self.index] = 0 if calls_here else 1
        return self.drained[:].count(0) == 0

    def private_port(self, port: int) -> int:
        """The worker's own port beside a shared one (0 stays 0: any free port)."""
        return port + 1 + self.index if port else 0


class Server:
    """One sipguard process.  ``await start()``, then ``await serve_forever()`` or ``stop()``."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None,
                 decision_stream: TextIO | None = None, worker: WorkerSlot | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.policy = load(settings.policy_path)  # PolicyError propagates: nothing started yet
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, lambda: self.core, self._channel_rows, self._state_rows,
                               self._store_rows, self._overload_row, self._stream_rows)
        self._decision_file: TextIO | None = None
        if decision_stream is None and settings.decision_log:
            self._decision_file = open(settings.decision_log, "a", encoding="utf-8")  # noqa: SIM115
            decision_stream = self._decision_file
        # without a file, decisions go to stdout: JSON lines of their own, apart from the log on stderr
        self.decisions = DecisionLog(decision_stream or sys.stdout)
        self.store: InMemoryStore | SharedStore | RedisStore = self._make_store()
        self.engine = Engine(self.policy)  # owns the EdgeGuard and DialerDetector, handed on at reload
        m = self.metrics
        self.outcomes = Outcomes(self.engine, self.store, m.decisions, m.dialogs_started, m.dialogs_ended,
                                 self._record, self.policy.service.reject.channel_limit,
                                 self._settle_async if isinstance(self.store, RedisStore) else None)
        self._renewal: asyncio.Task[None] | None = None
        self.listeners: list[UdpListener] = []
        self.streams: list[StreamListener] = []  # TCP and TLS listeners (transport/stream.py)
        self.tls_peers: dict[tuple[str, int], list[str]] = {}  # TLS clients' certificate names (_tls_peer)
        self.tls_hosts: dict[str, int] = {}
        self._tls_trusted: set[tuple[str, int]] = set()
        self.resolver: Resolver | None = None  # next hops by name (dns.py), made in start()
        self.upstream_addresses: set[str] = set()  # what the upstreams named by DNS resolve to: trusted
        self._learning: asyncio.Task[None] | None = None
        self.shared_listeners: list[UdpListener] = []  # with --workers: the listen sockets every worker reads
        self.dispatch: Dispatch | None = None
        overload = self.policy.service.overload
        self.shedder = Shedder()
        self.shedder.configure(overload.queue_delay_ms / 1000, overload.retry_after_s)
        # a test hook (docs/overload.md): while the file this names exists, every new non-emergency INVITE is shed
        self._force_overload = os.environ.get("SIPGUARD_FORCE_OVERLOAD") or None
        self._overload_timer: asyncio.TimerHandle | None = None
        # auto-dialer records for the other workers: the detector appends (a C call, where a method of this class
        # would run interpreted for every attempt and end), the overload tick sends them (_send_mirrored)
        self._mirrored: list[bytes] = []
        self.mirror_lost = 0
        self._overload_due = 0.0
        self._by_family: dict[tuple[str, int], UdpListener | StreamListener] = {}
        self.core: ProxyCore = None  # type: ignore[assignment]  # set in start()
        self.pump: Pump = None  # type: ignore[assignment]  # set in start()
        self._full_gc: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admin: asyncio.base_events.Server | None = None
        self.admin_port: int | None = None
        self._stopped = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None  # the drain, once a stop signal came
        self._watchdog: asyncio.TimerHandle | None = None  # systemd's, when the unit sets WatchdogSec
        self._limits_logged: dict[str, float] = {}  # account -> when its channel limit was last logged

    def _make_store(self) -> InMemoryStore | SharedStore | RedisStore:
        """The channel store the policy names: memory (a table shared by the workers), or Redis (docs/pair.md)."""
        state, worker = self.policy.service.state, self.worker
        if state.store == "redis":
            specs = self.settings.listen or self.policy.service.listen
            node = state.node or f"{socket.gethostname()}:{specs[0].rpartition(':')[2]}"
            if worker is not None:
                node += f"/{worker.index}"
            return RedisStore(state.url, node, prefix=state.prefix, lease_s=state.lease_s, timeout_ms=state.timeout_ms)
        return InMemoryStore() if worker is None else SharedStore(worker.counts, worker.index)

    # ------------------------------------------------------------------ the shared store
    def _settle_async(self, action: Settle) -> None:
        """A claim the shared store answers later (in its next batch): then handed to the core."""
        assert isinstance(self.store, RedisStore)
        self.store.claim_soon(action.claim, functools.partial(self._claimed, action))

    def _claimed(self, action: Settle, granted: bool, active: int) -> None:
        try:
            self.outcomes.claimed(action.ticket, action.claim, granted, active)
        except Exception:  # a bug: logged and counted, and the loop goes on (the INVITE times out upstream)
            self._internal_error(None)
        if self.store.outages:  # type: ignore[union-attr]
            self._log_outages()

    async def _renew(self, every_s: float) -> None:
        """Every ``every_s``: this node's calls renewed in Redis (and put back after Redis lost them)."""
        assert isinstance(self.store, RedisStore)
        while True:
            await asyncio.sleep(every_s)
            await self.store.renew(list(self.engine.views))
            self._log_outages()

    def _log_outages(self) -> None:
        store = self.store
        if not isinstance(store, RedisStore):
            return
        for outage in store.outages:
            if outage.ended:
                log.warning("state: Redis at %s is back after %.1f s: this node's calls are in it again, and "
                            "the shared limits hold", self.policy.service.state.url, outage.duration_s)
            else:
                log.error("state: Redis at %s cannot be reached (%s): each node admits its share of an account's "
                          "limit (%d nodes known) until it is back; emergency calls pass",
                          self.policy.service.state.url, outage.why, len(store.nodes))
        store.outages.clear()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        service = self.policy.service
        specs: Sequence[str] = self.settings.listen or service.listen
        next_hops = [(f"service.upstreams.{name}", peer) for name, peer in service.upstreams.items()]
        next_hops += [(f"accounts.{a.name}.deliver_to", a.deliver_to) for a in self.policy.accounts if a.deliver_to]
        for what, peer in next_hops:
            why = unreachable(peer, tuple(specs))
            if why is not None:
                raise ValueError(f"{what}: {why}")
        advertise = self.settings.advertise or service.advertise
        locals_: list[Local] = []
        aliases: list[str] = list(self.settings.extra_aliases)
        worker = self.worker
        shared_locals: list[Local] = []
        try:
            for spec in specs:
                transport, host, port = parse_listen(spec)
                listener: UdpListener | StreamListener
                if transport != "udp":
                    # TCP and TLS (transport/stream.py): with workers, every worker accepts on the supervisor's
                    # socket and serves the connections it accepted; Via and Record-Route name its own port
                    listener = self._stream_listener(
                        transport, host, port if worker is None else worker.private_port(port),
                        None if worker is None else worker.listen[spec])
                elif worker is None:
                    listener = UdpListener(host, port)
                else:
                    # workers: new requests arrive on the shared address, bound by the supervisor: this worker's
                    # socket of a group the kernel steers by Call-ID, or one every worker reads; either way each
                    # datagram is dispatched by its Call-ID (workers.py, sip/pump.py Dispatch); Via and Record-Route
                    # name the worker's own port, so that responses and in-dialog requests come back to the
                    # worker that holds the transaction and dialog
                    shared = UdpListener(host, port, sock=worker.listen[spec])
                    await shared.start(batch=LISTEN_BATCH)
                    self.shared_listeners.append(shared)
                    listener = UdpListener(host, worker.private_port(port))
                await listener.start()
                if isinstance(listener, StreamListener):
                    self.streams.append(listener)
                else:
                    self.listeners.append(listener)
                self._by_family.setdefault((transport, listener.family), listener)  # sends leave by the own port
                adv_host, adv_port, shared_port = host, listener.port, port
                if host in ("0.0.0.0", "::"):
                    adv_host = _auto_address(listener.family)
                    aliases.append(adv_host)
                if advertise:
                    a_host, a_port = _split_hostport(advertise)
                    # a name applies to every listener, an address to those of its family
                    if ip_literal(a_host) is None or (6 if ":" in a_host else 4) == listener.family:
                        aliases.append(adv_host)
                        if transport != "udp":
                            a_port = None  # an advertised port is the UDP one's; a stream listener keeps its own
                        if worker is not None and a_port:
                            shared_port, a_port = a_port, worker.private_port(a_port)
                        adv_host, adv_port = a_host, a_port or adv_port
                locals_.append(Local(transport, adv_host, adv_port))
                if worker is not None:  # the shared address is ours too (Route, OPTIONS, loops)
                    shared_locals.append(Local(transport, adv_host, shared_port))
        except Exception:
            self._close_listeners()
            raise
        key, key_source = route_key(self.policy)
        if key_source == "random":
            log.warning("no service.route_secret and no %s: the route tokens of this process die with it, and "
                        "in-dialog requests of calls it admitted will be refused after a restart", MACHINE_ID)
        self.core = ProxyCore(
            locals_ + shared_locals, self.router(), timer_config(self.policy),
            max_message_bytes=service.max_message_bytes, aliases=aliases, route_key=key,
        )
        self.resolver = self._make_resolver(self.policy)
        self.outcomes.resolve = self._resolve
        self.pump = self.make_pump({key: sending.sender() for key, sending in self._by_family.items()})
        for receiving in self.listeners:
            receiving.set_receiver(self.pump.datagram_received)
        for stream in self.streams:
            stream.set_receiver(self.pump.receive)
            stream.set_failed(self.pump.stream_failed)
            stream.admit_source = self._admit_connection
            stream.peer_names = self._tls_peer
        if worker is not None:
            dispatch = Dispatch(self.pump, worker.index,
                                [None if i == worker.index else box.send for i, box in enumerate(worker.outboxes)],
                                self.engine.is_trusted)
            self.dispatch = dispatch
            for shared in self.shared_listeners:
                shared.set_receiver(dispatch.datagram_received)
            worker.inbox.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._loop.add_reader(worker.inbox.fileno(), self._read_inbox)
            if len(worker.outboxes) > 1:  # the auto-dialer sees the machine's attempts, not this worker's share
                self.engine.dialer.mirror = self._mirrored.append
        self._put_in_force(self.policy, self.engine)
        self._overload_due = self._loop.time() + OVERLOAD_TICK_S
        self._overload_timer = self._loop.call_at(self._overload_due, self._overload_tick)
        admin = self.settings.admin or service.admin
        admin_host, _sep, admin_port = admin.rpartition(":")
        admin_port_no = int(admin_port) if worker is None else worker.private_port(int(admin_port))
        self._admin = await asyncio.start_server(self._admin_conn, admin_host.strip("[]"), admin_port_no)
        self.admin_port = self._admin.sockets[0].getsockname()[1]
        try:
            self._loop.add_signal_handler(signal.SIGHUP, self._sighup)
            self._loop.add_signal_handler(signal.SIGUSR1, self.reopen_decision_log)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
        tune_gc()
        self._full_gc = self._loop.call_later(GC_FULL_EVERY_S, self._collect_all)
        self._sweep = self._loop.call_later(EDGE_SWEEP_S, self._sweep_edge)
        self._learning = self._loop.create_task(self._learn_upstreams())
        if isinstance(self.store, RedisStore):
            await self.store.start(list(self.engine.views))
            self._log_outages()
            self._renewal = self._loop.create_task(self._renew(service.state.renew_s))
        who = "sipguard" if worker is None else f"sipguard worker {worker.index} (pid {os.getpid()})"
        shared_note = "" if not shared_locals else " (shared: " + ", ".join(l.hostport for l in shared_locals) + ")"
        if worker is None:  # under systemd (Type=notify): ready, and the watchdog fed while the loop runs
            systemd.notify(f"READY=1\nSTATUS=listening on {', '.join(l.hostport for l in locals_)}")
            period = systemd.watchdog_period_s()
            if period is not None:
                self._watchdog = self._loop.call_later(period, self._feed_watchdog, period)
        log.info("%s %s listening on %s%s, admin on %s:%s; policy %s (%d accounts); SIP core: %s; channel store: %s",
                 who, __version__, ", ".join(l.hostport for l in locals_), shared_note, admin_host, self.admin_port,
                 self.settings.policy_path, len(self.policy.accounts), "compiled" if native_core() else "pure Python",
                 service.state.store)

    def _read_inbox(self) -> None:
        """Datagrams another worker read from the shared socket and handed to this one (sip/pump.py), and the
        other workers' auto-dialer records (``_send_mirrored``)."""
        assert self.worker is not None and self.dispatch is not None
        recv, handed_over = self.worker.inbox.recv, self.dispatch.handed_over
        for _ in range(64):  # then back to the loop: the other sockets get their turn
            try:
                message = recv(RECV_MAX)
            except OSError:  # BlockingIOError: read them all
                return
            if message[:1] == MIRROR:
                apply = self.engine.dialer.apply
                for record in message[1:].split(b"\n"):
                    apply(record)
            else:
                handed_over(message)

    def _send_mirrored(self) -> None:
        """The auto-dialer records of this worker's attempts since the last overload tick (OVERLOAD_TICK_S), to the
        other workers: one send and one wake-up of each per tick, not per INVITE (a dialer's pattern takes
        seconds to show)."""
        assert self.worker is not None
        records = self._mirrored[:]
        self._mirrored.clear()  # the same list: the detector's ``mirror`` is its append
        messages: list[bytes] = []
        while records:  # in messages of at most 60,000 bytes (a burst of thousands of attempts in one pass)
            size, n = 0, 0
            while n < len(records) and (n == 0 or size + len(records[n]) < 60_000):
                size += len(records[n]) + 1
                n += 1
            messages.append(MIRROR + b"\n".join(records[:n]))
            records = records[n:]
        for i, box in enumerate(self.worker.outboxes):
            if i == self.worker.index:
                continue
            for message in messages:
                try:
                    box.send(message)
                except OSError:  # its queue is full: those attempts are missing from its windows for a while
                    self.mirror_lost += 1

    def _overload_tick(self) -> None:
        """Every TICK_S: the age of the oldest datagram waiting for this process, and the loop's own lateness,
        to the overload control (sip/shed.py); its start and end logged once each."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        delay = max(0.0, now - self._overload_due)  # the loop's lateness: busy elsewhere all that time
        now_ns = time.time_ns()
        for listener in (*self.listeners, *self.shared_listeners):
            if isinstance(listener, UdpListener):
                delay = max(delay, listener.head_age(now_ns))
        if self.worker is not None:
            delay = max(delay, head_age(self.worker.inbox, now_ns))
        shedder = self.shedder
        if self._force_overload is not None:
            shedder.forced = os.path.exists(self._force_overload)
        event = shedder.tick(now, delay)
        if event == "start":
            log.warning("overload: the oldest datagram waiting has waited %.0f ms (threshold %d ms, "
                        "service.overload.queue_delay_ms): new INVITEs over %d per %.1f s are answered 503 with "
                        "Retry-After, shared fairly among sources; emergency calls and every request of a call "
                        "already up still pass", delay * 1000, self.policy.service.overload.queue_delay_ms,
                        shedder.budget, OVERLOAD_WINDOW_S)
        elif event == "end":
            log.warning("overload ended after %.1f s: %d new INVITEs were answered 503", now - shedder.started,
                        shedder.shed - shedder.shed_at_start)
        if self._mirrored:
            self._send_mirrored()
        self._overload_due = now + OVERLOAD_TICK_S
        self._overload_timer = loop.call_at(self._overload_due, self._overload_tick)

    def _overload_row(self) -> tuple[int, bool, float, int, int]:
        dispatch = self.dispatch
        return (self.shedder.shed, self.shedder.active, self.shedder.delay_s,
                dispatch.handed if dispatch is not None else 0, dispatch.lost if dispatch is not None else 0)

    def _feed_watchdog(self, period: float) -> None:
        systemd.notify("WATCHDOG=1")
        assert self._loop is not None
        self._watchdog = self._loop.call_later(period, self._feed_watchdog, period)

    def _sweep_edge(self) -> None:
        """Once a second: end the bans whose time is up, and log what the edge did."""
        assert self._loop is not None
        for event in self.engine.edge.drain(self._loop.time()):
            self._edge_event(event)
        self._sweep = self._loop.call_later(EDGE_SWEEP_S, self._sweep_edge)

    def _edge_event(self, event: EdgeEvent) -> None:
        self.metrics.edge_events.labels(event.kind).inc()
        if event.kind == "ban":
            log.warning("edge: banned %s for %.0f s: %s", event.host, event.duration_s, event.reason)
        elif event.kind == "unban":
            log.warning("edge: ban of %s ended after %.1f s (%s): %d packets dropped", event.host, event.duration_s,
                        event.reason, event.count)
        elif event.kind == "over_budget":
            log.warning("edge: trusted source %s %s: its new requests get 503 until it slows down", event.host,
                        event.reason)
        else:
            log.warning("edge: trusted source %s back within its budget after %.1f s: %d new requests refused",
                        event.host, event.duration_s, event.count)

    def _collect_all(self) -> None:
        gc.collect()
        assert self._loop is not None
        self._full_gc = self._loop.call_later(GC_FULL_EVERY_S, self._collect_all)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self.stop_soon)
            except (NotImplementedError, RuntimeError):
                pass
        await self._stopped.wait()
        await self.stop()

    def stop_soon(self) -> None:
        """SIGTERM: the first one drains (docs/service.md), a second one stops at once."""
        assert self._loop is not None
        if self._drain is None:
            self._drain = self._loop.create_task(self._drain_then_stop())
        elif not self._stopped.is_set():
            log.warning("stopping now (a second signal): %d calls in progress are left to the next process",
                        self.core.dialog_count)
            self._stopped.set()

    async def _drain_then_stop(self) -> None:
        """No new calls (503 with Retry-After, emergency calls excepted; OPTIONS to sipguard 503, so that
        dispatchers and SRV clients move away); the calls in progress go on until they end or
        ``service.drain_timeout_s``; then stop."""
        assert self._loop is not None
        service = self.policy.service
        unavailable = Reject(503, "Service Unavailable", (
            ("warning", '399 sipguard "this server is stopping; use another"'),
            ("retry-after", str(service.edge.retry_after_s))))
        self.engine.draining = self.core.unavailable = unavailable
        if self.worker is None:
            systemd.notify(f"STOPPING=1\nSTATUS=draining {self.core.dialog_count} calls")
        deadline = self._loop.time() + service.drain_timeout_s
        log.info("stopping: new calls get 503; waiting for %d calls in progress to end (at most %g s)",
                 self.core.dialog_count, service.drain_timeout_s)
        worker = self.worker
        # with workers, each stays until every one has drained: another still reads the listen socket and hands
        # it the new INVITEs its Call-IDs own, which it answers 503 (gone, they would go unanswered)
        while self._loop.time() < deadline and not self._stopped.is_set() and (
                self.core.dialog_count if worker is None else not worker.all_drained(self.core.dialog_count)):
            await asyncio.sleep(0.05)
        if self.core.dialog_count and not self._stopped.is_set():
            log.warning("stopping: drain_timeout_s (%g s) reached with %d calls in progress; their in-dialog "
                        "requests are left to the next process (route tokens)", service.drain_timeout_s,
                        self.core.dialog_count)
        elif not self._stopped.is_set():
            log.info("stopping: the last call ended")
        self._stopped.set()

    async def stop(self) -> None:
        self._stopped.set()
        if self._drain is not None and not self._drain.done():
            self._drain.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self.pump is not None:
            self.pump.close()
        if self._full_gc is not None:
            self._full_gc.cancel()
            self._full_gc = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._learning is not None:
            self._learning.cancel()
            self._learning = None
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        if self._overload_timer is not None:
            self._overload_timer.cancel()
            self._overload_timer = None
        if self.worker is not None and self._loop is not None:
            self._loop.remove_reader(self.worker.inbox.fileno())
        self._close_listeners()
        if isinstance(self.store, RedisStore):
            await self.store.close()
        if self._admin is not None:
            self._admin.close()
            await self._admin.wait_closed()
            self._admin = None
        if self._decision_file is not None:
            self._decision_file.close()
            self._decision_file = None
        log.info("%s stopped", "sipguard" if self.worker is None else f"sipguard worker {self.worker.index}")

    def _close_listeners(self) -> None:
        for listener in (*self.listeners, *self.shared_listeners):
            listener.close()
        for stream in self.streams:
            stream.close()
        self.listeners.clear()
        self.streams.clear()
        self.shared_listeners.clear()
        self._by_family.clear()

    # ------------------------------------------------------------------ hot path
    def make_pump(self, senders: dict[tuple[str, int], SendTo]) -> Pump:
        """The compiled datagram path (sip/pump.py) over ``self.core``; ``senders`` by (transport, family)."""
        loop = self._loop
        assert loop is not None
        self.shedder.emergency = self.engine.emergency.datagram
        pump = Pump(self.core, senders, self.outcomes.on_action, self._internal_error, loop.call_at, loop.time,
                    shedder=self.shedder)
        self.outcomes.attach(self.core, pump, loop.time)
        return pump

    def router(self) -> TimedRouter:
        """The core's hook: the engine, each decision timed."""
        return TimedRouter(self.engine, self.metrics.decision_seconds)

    def _internal_error(self, peer: Peer | None) -> None:
        self.metrics.internal_errors.inc()
        if peer is None:
            log.exception("internal error in a timer")
        else:
            log.exception("internal error on a message from %s:%s", peer.host, peer.port)

    def _record(self, decision: Decision, call_id: str, account: str | None) -> None:
        """The rest of a decision once outcomes.py has counted it: the counters of emergency calls, fax,
        detections and rewrites, and the decision log."""
        m = self.metrics
        if decision.rule == "emergency" and decision.verdict is Verdict.REJECT:
            cause = str(dict(decision.evidence).get("refused_for"))
            m.emergency_refused.labels(cause).inc()
            log.warning("emergency call %s refused (%s): %s", call_id, cause, decision.reason)
        elif decision.rule == "emergency":
            ev = dict(decision.evidence)
            m.emergency_calls.labels(str(ev.get("location")), str(ev.get("caller_id_action"))).inc()
        elif decision.rule == "fax":
            m.fax_calls.labels(account or "").inc()
        elif decision.rule == "autodialer":
            m.autodialer_detections.labels(str(dict(decision.evidence).get("level"))).inc()
        elif decision.rule == "channel_limit":
            self._limit_hit(decision, account)
        if decision.verdict is Verdict.REWRITE and decision.mode is Mode.ENFORCE:
            m.clid_rewrites.labels(decision.rule).inc()
        if decision.logged:
            self.decisions.write(decision, call_id, account)

    def _limit_hit(self, decision: Decision, account: str | None) -> None:
        """One log line when an account reaches its channel limit; its next refusals within a minute are only
        counted (and in the decision log)."""
        assert self._loop is not None
        now = self._loop.time()
        name = account or ""
        if now - self._limits_logged.get(name, -LIMIT_LOG_EVERY_S) < LIMIT_LOG_EVERY_S:
            return
        self._limits_logged[name] = now
        what = "a call let through (shadow mode)" if decision.mode is Mode.SHADOW else "a call refused"
        log.warning("channels: account %s: %s, %s; the next ones within %d s are only counted", name,
                    decision.reason, what, LIMIT_LOG_EVERY_S)

    def _channel_rows(self) -> list[tuple[str, int, int, int]]:
        store = self.store
        return [(name, store.held_here(name), store.active_now(name), limit)
                for name, limit in self.engine.limits().items()]

    def _store_rows(self) -> tuple[str, int, bool, int]:
        """The channel store for the metrics: its kind, its errors, whether it is reachable, the nodes it knows."""
        store = self.store
        if isinstance(store, RedisStore):
            return "redis", store.errors, store.available, len(store.nodes)
        return "memory", 0, True, 1

    def _state_rows(self) -> tuple[list[tuple[str, int]], dict[str, int]]:
        engine = self.engine
        scores = [(name, engine.dialer.score_of(name)) for name in engine.views]
        return scores, {**engine.edge.sizes, "autodialer_keys": len(engine.dialer)}

    # ------------------------------------------------------------------ reload
    def reload(self) -> list[str]:
        """Validate the policy file again and swap it in.  Returns the problems (empty: swapped)."""
        try:
            policy = load(self.settings.policy_path)
        except PolicyError as err:
            self.metrics.reloaded(False)
            problems = [str(p) for p in err.problems]
            log.error("policy reload refused; the running policy stays in force:\n%s", "\n".join(problems))
            return problems
        except OSError as err:
            self.metrics.reloaded(False)
            log.error("policy reload refused: %s", err)
            return [str(err)]
        # what is read at start only: a change is refused by name, not reported applied and ignored
        overridden = {"listen": bool(self.settings.listen), "admin": bool(self.settings.admin),
                      "advertise": bool(self.settings.advertise)}
        restart = [key for key in READ_AT_START if not overridden.get(key, False)
                   and getattr(policy.service, key) != getattr(self.policy.service, key)]
        if restart:
            self.metrics.reloaded(False)
            problems = [f"{self.settings.policy_path}: service.{key}: changed, and needs a restart (it is read at "
                        "start only); the running policy stays in force" for key in restart]
            log.error("policy reload refused:\n%s", "\n".join(problems))
            return problems
        changes = policy_changes(self.policy, policy)
        assert self._loop is not None
        engine = Engine(policy, self.engine.edge, self.engine.dialer, self._loop.time())
        engine.draining = self.engine.draining
        self._put_in_force(policy, engine)
        self.metrics.reloaded(True)
        log.info("policy reloaded from %s: %s", self.settings.policy_path, "; ".join(changes) or "no change")
        return []

    def _stream_rows(self) -> list[tuple[str, int, int, int, dict[str, int], dict[str, int]]]:
        return [(s.transport, s.count(), s.accepted, s.opened, dict(s.refused), dict(s.closed)) for s in self.streams]

    def _stream_listener(self, transport: str, host: str, port: int, shared: socket.socket | None) -> StreamListener:
        server_ssl = client_ssl = None
        if transport == "tls":
            server_ssl, client_ssl = tls_contexts(self.policy.service.tls)
        return StreamListener(transport, host, port, self.policy.service.connections,
                              self.policy.service.max_message_bytes, server_ssl=server_ssl, client_ssl=client_ssl,
                              shared=shared)

    def _make_resolver(self, policy: Policy) -> Resolver:
        dns = policy.service.dns
        servers = [split_server(s) for s in dns.servers] or system_resolvers()
        transports = tuple(sorted({key[0] for key in self._by_family}))
        return Resolver(servers, transports, dns.timeout_ms / 1000)

    def _resolve(self, action: Resolve) -> None:
        """A request for a next hop given by name (core: Resolve): looked up (dns.py), then handed back."""
        assert self._loop is not None
        self._loop.create_task(self._resolve_task(action))

    async def _resolve_task(self, action: Resolve) -> None:
        target = action.target
        assert self.resolver is not None and self._loop is not None
        why = ""
        try:
            peers = await self.resolver.targets(target.host, target.port or None, target.transport or None,
                                                target.transport == "tls")
            if not peers:
                why = f"{target.host} has no NAPTR, SRV or address records"
        except DnsError as err:
            peers, why = [], f"DNS: {err}"
        except Exception:  # a bug must not leave the call hanging: 503
            log.exception("resolving %s", target.host)
            peers, why = [], f"could not resolve {target.host}"
        if why:
            log.warning("next hop %s: %s: the call gets 503", target.host, why)
        self.pump.resolved(action.ticket, peers, why)

    async def _learn_upstreams(self) -> None:
        """Every LEARN_EVERY_S: the addresses of the upstreams named by DNS, so that requests from them (calls
        coming in from a carrier) are known as the upstream's."""
        assert self._loop is not None
        while True:
            names = [peer for peer in self.policy.service.upstreams.values() if ip_literal(peer.host) is None]
            found: set[str] = set()
            for peer in names:
                assert self.resolver is not None
                try:
                    found |= {p.host for p in await self.resolver.targets(
                        peer.host, peer.port or None, peer.transport or None, peer.transport == "tls")}
                except DnsError as err:
                    log.warning("upstream %s: %s (requests from its addresses are not recognised until it "
                                "resolves)", peer.host, err)
            if found or not names:
                self.upstream_addresses.clear()
                self.upstream_addresses.update(found)
            await asyncio.sleep(LEARN_EVERY_S)

    def _tls_peer(self, peer: Peer, names: list[str], up: bool) -> None:
        """A TLS client with a verified certificate came or went: the account its names match (match.tls_names)
        is its account for the requests on that connection, and its address is trusted while it is connected."""
        key = (peer.host, peer.port)
        if up:
            self.tls_peers[key] = names
            if self.engine.account_for_names(names) is not None:
                self._tls_trusted.add(key)
                self.tls_hosts[peer.host] = self.tls_hosts.get(peer.host, 0) + 1
            return
        self.tls_peers.pop(key, None)
        if key in self._tls_trusted:
            self._tls_trusted.discard(key)
            left = self.tls_hosts.get(peer.host, 1) - 1
            if left > 0:
                self.tls_hosts[peer.host] = left
            else:
                self.tls_hosts.pop(peer.host, None)

    def _admit_connection(self, host: str) -> bool:
        """A new TCP or TLS connection from ``host``: refused while the edge bans the address (policy/edge.py)."""
        assert self._loop is not None
        return not self.engine.edge.is_banned(host, self._loop.time())

    def _put_in_force(self, policy: Policy, engine: Engine) -> None:
        """Hand every part of the running process what it takes from the policy: the same code at start and at
        every reload, so that no reloadable key is reported applied and left out (a key read at start only
        is refused by ``reload`` before this)."""
        self.policy = policy
        self.engine = engine
        service = policy.service
        self.shedder.emergency = engine.emergency.datagram
        self.shedder.configure(service.overload.queue_delay_ms / 1000, service.overload.retry_after_s)
        if self.dispatch is not None:
            self.dispatch.trusted = engine.is_trusted
        self.outcomes.reconfigure(engine, service.reject.channel_limit)
        self.core.set_router(self.router())
        self.core.set_dialog_timeout(service.dialog_timeout_s)
        engine.tls_peers, engine.tls_hosts = self.tls_peers, self.tls_hosts
        engine.upstream_addresses = self.upstream_addresses
        if self.resolver is not None:
            dns = service.dns
            self.resolver.servers = [split_server(s) for s in dns.servers] or system_resolvers()
            self.resolver.timeout_s = dns.timeout_ms / 1000
        for stream in self.streams:
            stream.set_limits(service.connections)
            stream.set_tls(service.tls)  # the files read again: a renewed certificate is taken
        key, key_source = route_key(policy)
        if key_source != "random":  # a random key is kept: a new one would orphan the tokens of calls up now
            self.core.route_key = key

    def _sighup(self) -> None:
        self.reload()

    def reopen_decision_log(self) -> None:
        """SIGUSR1 (logrotate's postrotate): the decision log file opened again by its name, so that lines go
        to the new file once the old one was renamed."""
        if self._decision_file is None or not self.settings.decision_log:
            return
        fresh = open(self.settings.decision_log, "a", encoding="utf-8")  # noqa: SIM115
        self._decision_file.close()
        self._decision_file = fresh
        self.decisions.reopen(fresh)
        log.info("decision log reopened: %s", self.settings.decision_log)

    # ------------------------------------------------------------------ admin HTTP
    def _bans_json(self) -> bytes:
        """The bans in force (GET /bans): source, reason, since / until (seconds ago / from now), packets dropped."""
        assert self._loop is not None
        now = self._loop.time()
        rows = [{"source": host, "reason": ban.reason, "since_s": round(now - ban.since, 1),
                 "remaining_s": round(ban.until - now, 1), "dropped": ban.dropped}
                for host, ban in self.engine.edge.bans(now)]
        return (json.dumps({"bans": rows}, indent=1) + "\n").encode()

    def _accounts_json(self) -> bytes:
        """GET /accounts: per account its limit, the calls up (shared count: every worker and node), the calls
        this process holds (as the metrics count them: sipguard_channels_in_use, sipguard_channels_active)."""
        store = self.store
        rows = [{"account": name, "kind": view.account.kind, "limit": view.limit.limit,
                 "active": store.active_now(name), "held_here": store.held_here(name)}
                for name, view in self.engine.views.items()]
        return (json.dumps({"accounts": rows}, indent=1) + "\n").encode()

    def _calls_json(self, account: str | None) -> bytes:
        """GET /calls[?account=NAME]: the calls this process holds (answered or still ringing)."""
        assert self._loop is not None
        wall = time.time() - self._loop.time()  # loop time -> Unix time
        rows = [{"call_id": d.call_id, "account": d.account, "direction": d.direction, "state": str(d.state.value),
                 "caller": d.caller_host, "callee": d.callee_host, "started": round(wall + d.started_at, 3),
                 "answered": round(wall + d.answered_at, 3) if d.answered_at is not None else None,
                 "worker": self.worker.index if self.worker is not None else None}
                for d in self.core.dialogs() if account in (None, d.account)]
        rows.sort(key=lambda r: r["started"])  # type: ignore[arg-type,return-value]
        return (json.dumps({"calls": rows}, indent=1) + "\n").encode()

    def _lift_ban(self, address: str) -> tuple[str, str, bytes]:
        """POST /bans/<address>/delete: lift a ban before its time."""
        assert self._loop is not None
        try:
            host = str(ipaddress.ip_address(address.strip("[]")))
        except ValueError:
            return "400 Bad Request", "text/plain", f"not an IP address: {address!r}\n".encode()
        if not self.engine.edge.lift(host, self._loop.time()):
            return "404 Not Found", "text/plain", f"{host} is not banned\n".encode()
        for event in self.engine.edge.drain(self._loop.time()):
            self._edge_event(event)
        return "200 OK", "text/plain", f"ban of {host} lifted\n".encode()

    async def _admin_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path, _q, query = path.partition("?")
            headers = {k.strip().lower(): v.strip() for k, _s, v in (
                line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:] if ":" in line)}
            extra = ""
            if method == "GET" and path == "/metrics":
                # OpenMetrics when Prometheus asks for it, gzip when the client takes it (prometheus_client's way)
                encoder, ctype = choose_encoder(headers.get("accept", ""))
                status, body = "200 OK", encoder(self.registry)
                if "gzip" in headers.get("accept-encoding", ""):
                    body, extra = gzip.compress(body), "Content-Encoding: gzip\r\n"
            elif method == "GET" and path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif method == "GET" and path == "/bans":
                status, ctype, body = "200 OK", "application/json", self._bans_json()
            elif method == "GET" and path == "/accounts":
                status, ctype, body = "200 OK", "application/json", self._accounts_json()
            elif method == "GET" and path == "/calls":
                wanted = urllib.parse.parse_qs(query).get("account", [None])[0]
                status, ctype, body = "200 OK", "application/json", self._calls_json(wanted)
            elif method == "POST" and path.startswith("/bans/") and path.endswith("/delete"):
                status, ctype, body = self._lift_ban(path[len("/bans/"):-len("/delete")])
            elif method == "POST" and path == "/reload":
                problems = self.reload()
                if not problems and self.worker is not None:
                    os.kill(os.getppid(), signal.SIGHUP)  # the supervisor reloads every worker
                if problems:
                    status, body = "400 Bad Request", ("\n".join(problems) + "\n").encode()
                else:
                    status, body = "200 OK", b"reloaded\n"
                ctype = "text/plain"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
                f"Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
