"""Every metric sipguard exposes, in one place.

The registry is passed in (tests use a fresh one).  Counters the SIP core keeps
as plain integers are read at scrape time by ``CoreCollector``, so the hot path
pays nothing for them; the server's per-call counters and the decision-time
histogram are kept the same way (``Tally``, ``Timings``: one dict or list update,
no lock, no prometheus_client code per call; each process is one thread).  The
rare ones (reloads, emergency calls...) are prometheus_client metrics.  Labels come
from bounded sets only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, PlatformCollector, \
    ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from ._compiled import native_core
from .outcomes import Tally, Timings
from .sip.proxy import ProxyCore

__all__ = ["Metrics", "StreamCollector", "CoreCollector", "ChannelsCollector", "GuardCollector", "StoreCollector", "Tally", "Timings"]


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
        yield CounterMetricFamily("sipguard_responses_light", "Responses to sipguard's own transactions read by the "
                                  "light path (status, top Via, CSeq, To, framing) instead of parsed whole",
                                  value=stats.light_responses)
        yield CounterMetricFamily("sipguard_requests_light", "In-dialog ACKs and BYEs read by the light path "
                                  "(sipguard's own Routes, a dialog it holds, no body) instead of parsed whole",
                                  value=stats.light_requests)
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
        yield CounterMetricFamily("sipguard_failovers", "Requests sent on to the next target of a next hop named by "
                                  "DNS after a 503, a timeout or a transport error (RFC 3263)", value=stats.failovers)
        yield CounterMetricFamily("sipguard_token_relays", "In-dialog requests relayed on the proof of sipguard's "
                                  "route token, with no dialog held (after a restart, or of another node)",
                                  value=stats.token_relays)
        yield GaugeMetricFamily("sipguard_transactions", "SIP transactions in memory", value=core.transaction_count)
        yield GaugeMetricFamily("sipguard_dialogs", "Dialogs (calls) in memory", value=core.dialog_count)


def _family(metric: Tally | Timings) -> CounterMetricFamily | HistogramMetricFamily:
    """A compiled per-call counter or histogram (outcomes.py), as Prometheus reads it."""
    if isinstance(metric, Tally):
        counter = CounterMetricFamily(metric.name, metric.doc, labels=metric.labels)
        for values, n in sorted(metric.counts.items()):
            counter.add_metric(list(values), n)
        return counter
    cumulative, buckets = 0, []
    for bound, n in zip([*metric.bounds, float("inf")], metric.counts):
        cumulative += n
        buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
    family = HistogramMetricFamily(metric.name, metric.doc)
    family.add_metric([], buckets, sum_value=metric.total)
    return family


class _OwnCollector(Collector):
    def __init__(self, metrics: Sequence[Tally | Timings]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        for metric in self._metrics:
            yield _family(metric)


class ChannelsCollector(Collector):
    """Channels per account, read from the store and the policy at scrape time.

    ``sipguard_channels_active`` counts the calls this process holds, so that ``sum()`` over the workers and
    the nodes of a pair is the account's count; ``sipguard_channels_in_use`` is the account's count as the
    channel store has it (the same on every worker and node: ``max()`` it), what the limit is checked
    against; ``sipguard_channels_limit`` the limit (``max()`` it too)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, int, int, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        active = GaugeMetricFamily("sipguard_channels_active", "Calls holding a channel that this process relays, "
                                   "per account (sum over workers and nodes)", labels=["account"])
        in_use = GaugeMetricFamily("sipguard_channels_in_use", "The account's calls holding a channel, as the "
                                   "channel store counts them across workers and nodes (max over them)",
                                   labels=["account"])
        limit = GaugeMetricFamily("sipguard_channels_limit", "Channel limit per account", labels=["account"])
        for account, n_here, n_store, n_limit in self._read():
            active.add_metric([account], n_here)
            in_use.add_metric([account], n_store)
            limit.add_metric([account], n_limit)
        yield active
        yield in_use
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


class StoreCollector(Collector):
    """The channel store: its errors, whether it is reachable, the nodes sharing it (docs/pair.md)."""

    def __init__(self, read: Callable[[], tuple[str, int, bool, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        kind, errors, available, nodes = self._read()
        yield CounterMetricFamily("sipguard_state_errors", "Calls to the shared channel store (Redis) that failed",
                                  value=errors)
        up = GaugeMetricFamily("sipguard_state_available", "1 while the channel store is reachable (0: each node "
                               "admits its share of the limits)", labels=["store"])
        up.add_metric([kind], 1 if available else 0)
        yield up
        yield GaugeMetricFamily("sipguard_state_nodes", "Nodes sharing the channel store, as last seen", value=nodes)


class OverloadCollector(Collector):
    """Overload control (docs/overload.md) and, with ``--workers``, the hand-off between workers."""

    def __init__(self, read: Callable[[], tuple[int, bool, float, int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        shed, active, delay_s, handed, lost = self._read()
        yield CounterMetricFamily("sipguard_overload_shed", "New INVITEs answered 503 because this process was "
                                  "overloaded", value=shed)
        yield GaugeMetricFamily("sipguard_overload_active", "1 while this process sheds new INVITEs (overloaded)",
                                value=1 if active else 0)
        yield GaugeMetricFamily("sipguard_overload_queue_delay_seconds", "How long the oldest datagram waiting in "
                                "this process's receive queues had waited, at the last sample", value=delay_s)
        yield CounterMetricFamily("sipguard_worker_handoffs", "Datagrams read from the shared listen socket and "
                                  "handed to the worker that owns their call", value=handed)
        yield CounterMetricFamily("sipguard_worker_handoffs_lost", "Hand-offs the owner's queue refused (the peer "
                                  "retransmits)", value=lost)


StreamRow = tuple[str, int, int, int, dict[str, int], dict[str, int]]  # transport, open, accepted, opened, refused, closed


class StreamCollector(Collector):
    """TCP and TLS connections (transport/stream.py): open now, accepted, opened, refused and closed by reason."""

    def __init__(self, read: Callable[[], Iterable[StreamRow]]) -> None:
        self._read = read

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        rows = list(self._read())
        live = GaugeMetricFamily("sipguard_connections", "TCP and TLS connections open", labels=["transport"])
        made = CounterMetricFamily("sipguard_connections_made", "TCP and TLS connections accepted (inbound) and "
                                   "opened (outbound)", labels=["transport", "direction"])
        refused = CounterMetricFamily("sipguard_connections_refused", "Inbound connections closed as soon as they "
                                      "were accepted: max_connections, max_per_source, banned", labels=["transport",
                                                                                                        "reason"])
        closed = CounterMetricFamily("sipguard_connections_closed", "Connections sipguard closed: framing (not SIP, "
                                     "or its framing lost), deadline (a message unfinished: slow-loris), idle, "
                                     "connect (an outbound connection that could not be made)",
                                     labels=["transport", "reason"])
        for transport, open_now, accepted, opened, refused_by, closed_by in rows:
            live.add_metric([transport], open_now)
            made.add_metric([transport, "inbound"], accepted)
            made.add_metric([transport, "outbound"], opened)
            for reason, n in sorted(refused_by.items()):
                refused.add_metric([transport, reason], n)
            for reason, n in sorted(closed_by.items()):
                closed.add_metric([transport, reason], n)
        yield from (live, made, refused, closed)


class Metrics:
    """The server's own metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry, core: Callable[[], ProxyCore],
                 channels: Callable[[], Iterable[tuple[str, int, int, int]]] = tuple,
                 guards: Callable[[], tuple[list[tuple[str, int]], dict[str, int]]] = lambda: ([], {}),
                 store: Callable[[], tuple[str, int, bool, int]] = lambda: ("memory", 0, True, 1),
                 overload: Callable[[], tuple[int, bool, float, int, int]] = lambda: (0, False, 0.0, 0, 0),
                 streams: Callable[[], Iterable[StreamRow]] = tuple) -> None:
        self.registry = registry
        registry.register(OverloadCollector(overload))
        registry.register(StreamCollector(streams))
        registry.register(CoreCollector(core))
        registry.register(ChannelsCollector(channels))
        registry.register(GuardCollector(guards))
        registry.register(StoreCollector(store))
        self.decisions = Tally("sipguard_decisions", "Policy decisions, by rule and outcome", ["rule", "outcome"])
        self.dialogs_started = Tally("sipguard_dialogs_started", "Dialogs admitted, by direction", ["direction"])
        self.dialogs_ended = Tally("sipguard_dialogs_ended", "Dialogs ended, by reason", ["reason"])
        self.decision_seconds = Timings("sipguard_policy_decision_seconds", "Time one policy decision takes",
                                        (2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3))
        registry.register(_OwnCollector((self.decisions, self.dialogs_started, self.dialogs_ended,
                                         self.decision_seconds)))
        self.reloads = Counter("sipguard_policy_reloads", "Policy reloads, by result", ["result"],
                               registry=registry)
        self.reload_ok = Gauge("sipguard_policy_last_reload_success", "1 if the last policy load (start or reload) "
                               "was applied, 0 if it was refused (the policy before it stays in force)",
                               registry=registry)
        self.reload_ok.set(1)
        self.reload_time = Gauge("sipguard_policy_last_reload_timestamp_seconds", "When the policy was last loaded "
                                 "or a reload refused (Unix time)", registry=registry)
        self.reload_time.set_to_current_time()
        # the standard process and interpreter series (a custom registry has none of its own)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.emergency_calls = Counter("sipguard_emergency_calls", "Emergency calls, by location and caller ID",
                                       ["location", "caller_id"], registry=registry)
        self.fax_calls = Counter("sipguard_fax_calls", "Calls offering T.38 fax, per account", ["account"],
                                 registry=registry)
        self.clid_rewrites = Counter("sipguard_clid_rewrites", "Caller IDs rewritten, by rule", ["rule"],
                                     registry=registry)
        self.autodialer_detections = Counter("sipguard_autodialer_detections",
                                             "Auto-dialer detections, by level", ["level"], registry=registry)
        self.emergency_refused = Counter("sipguard_emergency_refused", "Emergency calls sipguard refused, by cause "
                                         "(unknown_source, malformed, unroutable, in_dialog, too_many_hops, ...): "
                                         "alert on any", ["reason"], registry=registry)
        self.edge_events = Counter("sipguard_edge_events", "Bans of unknown sources and their ends, and trusted "
                                   "sources going over and back under their budget of new requests",
                                   ["event"], registry=registry)
        build = Gauge("sipguard_build_info", "What runs: the version and the SIP core (native: compiled by mypyc)",
                      ["version", "core"], registry=registry)
        build.labels(__version__, "native" if native_core() else "python").set(1)
        self.internal_errors = Counter("sipguard_internal_errors", "Bugs caught by the transport guard",
                                       registry=registry)

    def reloaded(self, applied: bool) -> None:
        """A reload applied or refused: counted, and the last one's result and time."""
        self.reloads.labels("applied" if applied else "refused").inc()
        self.reload_ok.set(1 if applied else 0)
        self.reload_time.set_to_current_time()
