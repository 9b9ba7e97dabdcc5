"""What the server does with the core's actions other than sends, compiled with the hot path.

Every call hands the server a policy decision to time (``TimedRouter.admit``), a channel claim to
settle (``Settle``), a dialog that starts and one that ends (``DialogStarted``, ``DialogEnded``),
and, for every rule that rejects, rewrites or flags, a ``Decided``.  Interpreted, that glue cost
about 36,000 instructions per call in ``bench.call`` (measured when it was compiled: ``git log -p
BENCHMARKS.md``): here it is one compiled dispatch, with the per-call counters (``Tally``) and the
decision-time histogram (``Timings``) as compiled classes too.  What is rare (the decision log, the prometheus_client
counters of emergency calls, fax, rewrites and detections) goes back to the server through
``record``, interpreted.

The store stays behind its contract (state/base.py; the in-process stores are compiled too, the Redis
store is not).  An in-process store settles a claim at once (``claim_now``); the Redis store's claim is a
round trip, so the server awaits it (``settle_async``) and hands the answer back to ``claimed``, which the
synchronous path uses too: the core hears of a settled claim the same way either way, never from inside
the store.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from time import monotonic, perf_counter
from typing import Any

from .policy.decision import Decision, Mode, Verdict
from .policy.engine import Engine
from .sip.actions import Action, Admission, Decided, DialogEnded, DialogStarted, EndedByToken, Peer, Resolve, Settle
from .sip.message import Request
from .sip.proxy import ProxyCore
from .sip.pump import Pump
from .state.claim import ChannelClaim

__all__ = ["Outcomes", "Tally", "TimedRouter", "Timings"]


class Tally:
    """A labelled counter kept as plain integers; exposed as ``<name>_total`` at scrape time (metrics.py)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name = name
        self.doc = doc
        self.labels = list(labels)
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str) -> None:
        counts = self.counts
        counts[values] = counts.get(values, 0) + 1

    def inc1(self, value: str) -> None:
        """``inc(value)`` without the argument tuple a ``*values`` call builds (the hot path's one-label tallies)."""
        counts = self.counts
        key = (value,)
        counts[key] = counts.get(key, 0) + 1


class Timings:
    """A histogram kept as a list of bucket counts (``le`` bounds in seconds) and a sum."""

    def __init__(self, name: str, doc: str, bounds: Sequence[float]) -> None:
        self.name = name
        self.doc = doc
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # a value equal to a bound is in that bucket
        self.total += seconds


class TimedRouter:
    """The Engine as the core's router, with each decision timed into the latency histogram."""

    def __init__(self, engine: Engine, timings: Timings) -> None:
        self.engine = engine
        self.timings = timings
        # the rest of the hook goes straight to the engine (bound methods: no extra call on the hot path)
        self.screen_packet = engine.screen_packet
        self.screen_user_agent = engine.screen_user_agent
        self.in_dialog = engine.in_dialog
        self.refused = engine.refused

    def admit(self, request: Request, source: Peer, now: float, routes: tuple[str, ...]) -> Admission:
        t0 = perf_counter()
        adm = self.engine.admit(request, source, now, routes)
        self.timings.observe(perf_counter() - t0)
        return adm


class Outcomes:
    """The server's handler of the core's actions (``Pump``'s ``on_action``).

    store: the channel store (``claim_now``, ``release_now``, ``active_now``);
    record: ``record(decision, call_id, account)``, after the count, for the rest: the decision log and
        the prometheus_client counters.  A ``Decided`` is rare (the engine reports rejections, rewrites,
        flags and the emergency / fax / detection outcomes, not a plain allow), so it is handed on whole;
    core, pump and the loop's clock: attached once the server has built them (``attach``);
    settle_async: for a store whose claim is awaited (Redis): the server's ``settle_async(action)``, which calls
        ``claimed`` with the answer; None for an in-process store, settled here at once.
    """

    def __init__(self, engine: Engine, store: Any, decisions: Tally, started: Tally, ended: Tally,
                 record: Callable[[Decision, str, str | None], None], channel_limit_status: int,
                 settle_async: Callable[[Settle], None] | None = None) -> None:
        self.engine = engine
        self.store = store
        self.decisions = decisions
        self.started = started
        self.ended = ended
        self.record = record
        self.clock: Callable[[], float] = monotonic  # asyncio's loop.time until attach() gives the loop's own
        self.channel_limit_status = channel_limit_status
        self.core: ProxyCore | None = None
        self.pump: Pump | None = None
        self.settle_async = settle_async
        self.resolve: Callable[[Resolve], None] | None = None  # the server's: a named next hop (dns.py)

    def attach(self, core: ProxyCore, pump: Pump, clock: Callable[[], float]) -> None:
        self.core = core
        self.pump = pump
        self.clock = clock

    def reconfigure(self, engine: Engine, channel_limit_status: int) -> None:
        """A reloaded policy: its engine, and the status a refused claim is recorded with."""
        self.engine = engine
        self.channel_limit_status = channel_limit_status

    def on_action(self, action: Action) -> None:
        """Every action but Send (the pump sends), in order."""
        if isinstance(action, Settle):
            self.settle(action)
        elif isinstance(action, DialogStarted):
            self.started.inc1(action.direction)
        elif isinstance(action, DialogEnded):
            self.ended.inc1(action.reason)
            claim = action.claim
            if isinstance(claim, ChannelClaim):
                self.store.release_now(claim)
            self.engine.dialer.ended(action.dialog_id, action.duration_s is not None, action.duration_s,
                                     self.clock())
        elif isinstance(action, EndedByToken):
            account = self.engine.account_of_tag(action.account_tag)
            if account is not None:
                self.store.release_key(account, action.call_key)
        elif isinstance(action, Decided):
            decision = action.decision
            if isinstance(decision, Decision):
                self.decided(decision, action.call_id, action.account)
        elif isinstance(action, Resolve):
            if self.resolve is not None:
                self.resolve(action)
            elif self.core is not None and self.pump is not None:
                self.pump.carry_out(self.core.resolved(action.ticket, [], "no resolver", self.clock()))

    def decided(self, decision: Decision, call_id: str, account: str | None) -> None:
        self.decisions.inc(decision.rule, decision.verdict.value)
        self.record(decision, call_id, account)

    def settle(self, action: Settle) -> None:
        claim = action.claim
        if not isinstance(claim, ChannelClaim):
            raise TypeError(f"unknown claim {claim!r}")
        if self.settle_async is not None:
            self.settle_async(action)
            return
        self.claimed(action.ticket, claim, self.store.claim_now(claim), -1)

    def claimed(self, ticket: int, claim: ChannelClaim, granted: bool, active: int) -> None:
        """A settled claim: record what the limit decided, and let the core go on with its INVITE.
        ``active``: the account's count the store answered with; -1 to ask the store (only when needed)."""
        if not granted:
            if active < 0:
                active = self.store.active_now(claim.account)
            self._limit(claim, active, f"channel limit of {claim.limit} reached", Mode.ENFORCE)
        elif not claim.enforce and not claim.emergency:
            # shadow mode: granted whatever the count, so say when it went over.  (An enforced grant
            # cannot exceed the limit, and an emergency call may: neither is recorded, nor counted here.)
            if active < 0:
                active = self.store.active_now(claim.account)
            if active > claim.limit:
                self._limit(claim, active, f"over the channel limit of {claim.limit}", Mode.SHADOW)
        core, pump = self.core, self.pump
        assert core is not None and pump is not None, "attach() first"
        more = core.settled(ticket, granted, self.clock())
        if more:
            pump.carry_out(more)

    def _limit(self, claim: ChannelClaim, active: int, reason: str, mode: Mode) -> None:
        """A channel-limit decision about a settled claim, counted and logged."""
        self.decided(Decision(Verdict.REJECT, "channel_limit", reason, claim.account,
                              (("active", active), ("limit", claim.limit)), mode,
                              status=self.channel_limit_status),
                     claim.call_key.rsplit(";", 1)[0], claim.account)
