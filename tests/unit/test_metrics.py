"""Metrics: an injected registry, core counters collected at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest

from helpers import UAC, Wire, feed, request
from sipguard.metrics import Metrics


def test_core_counters_appear_in_the_exposition(core, clock, registry) -> None:
    Metrics(registry, lambda: core)
    wire = Wire()
    feed(core, request(), UAC, clock.now, wire)
    feed(core, request("OPTIONS", call_id="o1", branch="z9hG4bK-o1", max_forwards=0), UAC, clock.now, wire)
    feed(core, b"garbage\r\n\r\n", UAC, clock.now, wire)
    text = generate_latest(registry).decode()
    assert 'sipguard_requests_total{method="INVITE"} 1.0' in text
    assert 'sipguard_requests_total{method="OPTIONS"} 1.0' in text
    assert 'sipguard_replies_total{status="483"} 1.0' in text
    assert 'sipguard_parse_errors_total{status="400"} 1.0' in text
    assert 'sipguard_drops_total{reason="malformed"} 1.0' in text
    assert "sipguard_transactions 1.0" in text  # the INVITE; the 483 is stateless
    assert "sipguard_dialogs 1.0" in text


def test_labels_are_bounded(core, clock, registry) -> None:
    Metrics(registry, lambda: core)
    wire = Wire()
    for i in range(50):
        feed(core, request(f"XMETHOD{i}", call_id=f"c{i}", branch=f"z9hG4bK-{i}"), UAC, clock.now, wire)
    text = generate_latest(registry).decode()
    assert 'sipguard_requests_total{method="other"} 50.0' in text
    assert "XMETHOD" not in text
