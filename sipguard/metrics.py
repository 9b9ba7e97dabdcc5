"""Every metric sipguard exposes, in one place.

The registry is passed in (tests use a fresh one).  Counters the SIP core keeps
as plain integers are read at scrape time by ``CoreCollector``, so the hot path
pays nothing for them.  Labels come from bounded sets only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from ._compiled import native_core
from .sip.proxy import ProxyCore

__all__ = ["Metrics", "CoreCollector", "ChannelsCollector", "GuardCollector"]


class CoreCollector(Collector):
    """Reads the core's counters and table sizes when Prometheus scrapes."""

    def __init__(self, core: Callable[[], ProxyCore]) -> None:
        self._core = core

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        core = self._core()
        stats = core.stats
        req = CounterMetricFamily("sipguard_requests", "SIP requests received, by method", labels=["method"])
        for method, n in sorted(stats.requests.items()):
            req.add_metric([method], n)
        yield req
        resp = CounterMetricFamily("sipguard_responses", "SIP responses received, by class", labels=["class"])
        for klass, n in sorted(stats.responses.items()):
            resp.add_metric([klass], n)
        yield resp
        rep = CounterMetricFamily("sipguard_replies", "Responses sipguard generated itself, by status",
                                  labels=["status"])
        for status, n in sorted(stats.replies.items()):
            rep.add_metric([str(status)], n)
        yield rep
        perr = CounterMetricFamily("sipguard_parse_errors", "Messages that failed to parse, by the status earned",
                                   labels=["status"])
        for status, n in sorted(stats.parse_errors.items()):
            perr.add_metric([str(status)], n)
        yield perr
        drops = CounterMetricFamily("sipguard_drops", "Messages dropped without an answer, by reason",
                                    labels=["reason"])
        for reason, n in sorted(stats.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        yield GaugeMetricFamily("sipguard_transactions", "SIP transactions in memory", value=core.transaction_count)
        yield GaugeMetricFamily("sipguard_dialogs", "Dialogs (calls) in memory", value=core.dialog_count)


class ChannelsCollector(Collector):
    """Active channels and the limit per account, read from the store and the policy at scrape time."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        active = GaugeMetricFamily("sipguard_channels_active", "Calls holding a channel, per account",
                                   labels=["account"])
        limit = GaugeMetricFamily("sipguard_channels_limit", "Channel limit per account", labels=["account"])
        for account, n_active, n_limit in self._read():
            active.add_metric([account], n_active)
            limit.add_metric([account], n_limit)
        yield active
        yield limit


class GuardCollector(Collector):
    """Auto-dialer scores per account and the sizes of the bounded edge / detector tables."""

    def __init__(self, read: Callable[[], tuple[list[tuple[str, int]], dict[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        scores, sizes = self._read()
        score = GaugeMetricFamily("sipguard_autodialer_score", "Auto-dialer score of the last attempt, per account",
                                  labels=["account"])
        for account, value in scores:
            score.add_metric([account], value)
        yield score
        table = GaugeMetricFamily("sipguard_table_entries", "Entries in bounded state tables", labels=["table"])
        for name, n in sorted(sizes.items()):
            table.add_metric([name], n)
        yield table


class Metrics:
    """The server's own metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, core: Callable[[], ProxyCore],
                 channels: Callable[[], Iterable[tuple[str, int, int]]] = tuple,
                 guards: Callable[[], tuple[list[tuple[str, int]], dict[str, int]]] = lambda: ([], {})) -> None:
        self.registry = registry
        registry.register(CoreCollector(core))
        registry.register(ChannelsCollector(channels))
        registry.register(GuardCollector(guards))
        self.decisions = Counter("sipguard_decisions", "Policy decisions, by rule and outcome",
                                 ["rule", "outcome"], registry=registry)
        self.dialogs_started = Counter("sipguard_dialogs_started", "Dialogs admitted, by direction",
                                       ["direction"], registry=registry)
        self.dialogs_ended = Counter("sipguard_dialogs_ended", "Dialogs ended, by reason", ["reason"],
                                     registry=registry)
        self.reloads = Counter("sipguard_policy_reloads", "Policy reloads, by result", ["result"],
                               registry=registry)
        self.decision_seconds = Histogram(
            "sipguard_policy_decision_seconds", "Time one policy decision takes",
            buckets=(2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3), registry=registry,
        )
        self.emergency_calls = Counter("sipguard_emergency_calls", "Emergency calls, by location and caller ID",
                                       ["location", "caller_id"], registry=registry)
        self.fax_calls = Counter("sipguard_fax_calls", "Calls offering T.38 fax, per account", ["account"],
                                 registry=registry)
        self.clid_rewrites = Counter("sipguard_clid_rewrites", "Caller IDs rewritten, by rule", ["rule"],
                                     registry=registry)
        self.autodialer_detections = Counter("sipguard_autodialer_detections",
                                             "Auto-dialer detections, by level", ["level"], registry=registry)
        self._children: dict[tuple[object, ...], Counter] = {}
        build = Gauge("sipguard_build_info", "What runs: the version and the SIP core (native: compiled by mypyc)",
                      ["version", "core"], registry=registry)
        build.labels(__version__, "native" if native_core() else "python").set(1)
        self.internal_errors = Counter("sipguard_internal_errors", "Bugs caught by the transport guard",
                                       registry=registry)

    def child(self, counter: Counter, *labels: str) -> Counter:
        """``counter.labels(*labels)``, memoised: label sets are bounded, and labels() is slow."""
        key = (id(counter), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = counter.labels(*labels)
        return found
