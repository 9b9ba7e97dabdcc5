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


def test_per_call_counters_and_the_decision_histogram_are_exposed_at_scrape_time(core, registry) -> None:
    m = Metrics(registry, lambda: core)
    m.decisions.inc("caller_id", "reject")
    m.decisions.inc("caller_id", "reject")
    m.dialogs_ended.inc("bye")
    for seconds in (1e-6, 2e-6, 3e-6, 1.5e-5, 0.01):  # 2e-6 sits on a bound: it belongs to that bucket
        m.decision_seconds.observe(seconds)
    text = generate_latest(registry).decode()
    assert 'sipguard_decisions_total{outcome="reject",rule="caller_id"} 2.0' in text
    assert 'sipguard_dialogs_ended_total{reason="bye"} 1.0' in text
    assert "# TYPE sipguard_policy_decision_seconds histogram" in text
    assert 'sipguard_policy_decision_seconds_bucket{le="2e-06"} 2.0' in text
    assert 'sipguard_policy_decision_seconds_bucket{le="5e-06"} 3.0' in text
    assert 'sipguard_policy_decision_seconds_bucket{le="2e-05"} 4.0' in text
    assert 'sipguard_policy_decision_seconds_bucket{le="0.005"} 4.0' in text
    assert 'sipguard_policy_decision_seconds_bucket{le="+Inf"} 5.0' in text
    assert "sipguard_policy_decision_seconds_count 5.0" in text
    assert registry.get_sample_value("sipguard_policy_decision_seconds_sum") == sum((1e-6, 2e-6, 3e-6, 1.5e-5, 0.01))


def test_the_route_key_comes_from_the_policy_the_machine_or_a_kept_file(tmp_path) -> None:
    from sipguard.policy import load_text
    from sipguard.server import route_key

    text = 'service: {{listen: ["udp:127.0.0.1:5060"]{extra}}}\n'
    plain, shared = load_text(text.format(extra="")), load_text(text.format(extra=', route_secret: "0123456789abcdef"'))
    machine = tmp_path / "machine-id"
    machine.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    assert route_key(shared, machine)[1] == "service.route_secret"
    assert route_key(shared, machine)[0] != route_key(plain, machine)[0]
    key, source = route_key(plain, machine)
    assert source == str(machine) and route_key(plain, machine)[0] == key  # the same after a restart
    # no machine id (a container): a key file made once in the state directory, then read back
    missing = tmp_path / "no-machine-id"
    key1, source1 = route_key(plain, missing, tmp_path / "state")
    key2, source2 = route_key(plain, missing, tmp_path / "state")
    assert key1 == key2 and source1 == source2 == str(tmp_path / "state" / "route.key") and len(key1) == 32
    assert (tmp_path / "state" / "route.key").stat().st_mode & 0o777 == 0o600
    # nowhere to keep one: random, and said so
    (tmp_path / "ro").write_text("a file, not a folder")
    assert route_key(plain, missing, tmp_path / "ro")[1] == "random"
