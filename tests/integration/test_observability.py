"""A real Prometheus (Debian's ``prometheus``, on loopback) scraping sipguard with two workers, with the alert
and recording rules of deploy/prometheus/ and the dashboard of deploy/grafana/ (docs/observability.md):
every rule and every panel's expression evaluates, ``sum(sipguard_channels_active)`` is the calls really
up, and an account driven to its limit fires the channel alert.  Also promtool's checks of the rules and
their unit tests."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import CALLER2_IP, ROOT, UAC_IP, Sipp, free_tcp_port, office_users, require, until
from .phone import Phone

pytestmark = pytest.mark.integration

CALLEE = "+3250123400"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = require("promtool")
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_name("rules_test.yml"))]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS" in proc.stdout + proc.stderr


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            answer = json.loads(resp.read())
        assert answer["status"] == "success", answer
        return answer["data"]  # type: ignore[no-any-return]

    def value(self, expr: str) -> float | None:
        result = self.api("query", query=expr)["result"]
        return float(result[0]["value"][1]) if result else None

    def firing(self, alert: str) -> list[dict]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == alert and a["state"] == "firing"]


def _start_prometheus(tmp_path: Path, targets: list[str]) -> tuple[subprocess.Popen[bytes], Prometheus]:
    binary = require("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "sipguard", "static_configs": [{"targets": targets}]}],
    }))
    port = free_tcp_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(port)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prom.base}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    assert until(ready, 30), (tmp_path / "prometheus.log").read_text()[-2000:]
    return proc, prom


def test_prometheus_scrapes_two_workers_evaluates_every_rule_and_panel_and_fires_the_limit_alert(
        sipguard_factory, sipp: Sipp, tmp_path: Path) -> None:
    sg = sipguard_factory(workers=2, users=office_users(2))  # two people: 4 channels
    uas = sipp.uas("basic/uas.xml", sg.uas_port)  # type: ignore[attr-defined]
    targets = [f"127.0.0.1:{w.admin_port}" for w in sg.workers]  # type: ignore[attr-defined]
    proc, prom = _start_prometheus(tmp_path, targets)
    try:
        assert until(lambda: prom.value('sum(up{job="sipguard"})') == 2, 30)
        with Phone(UAC_IP, ("127.0.0.1", sg.sip_port)) as one, Phone(CALLER2_IP, ("127.0.0.1", sg.sip_port)) as two:
            held = [(p, p.call(CALLEE)) for p in (one, two, one)]
            assert [c.status for _p, c in held] == [200] * 3
            # the sum over the workers is the calls really up (each worker counts the calls it holds)
            assert until(lambda: prom.value("sum(sipguard_channels_active)") == 3, 20)
            # the recording rule catches up within an evaluation (1 s here)
            assert until(lambda: prom.value("account:sipguard_channels_in_use:max") == 3, 10)
            assert prom.firing("SipguardAccountAtChannelLimit") == []
            held.append((two, two.call(CALLEE)))
            assert held[-1][1].status == 200
            assert one.call(CALLEE).status == 486  # at the limit
            assert until(lambda: prom.firing("SipguardAccountAtChannelLimit"), 30)
            (alert,) = prom.firing("SipguardAccountAtChannelLimit")
            assert alert["labels"]["account"] == "office"
            assert until(lambda: prom.value("sum(sipguard_channels_active)") == 4, 10)
            # every rule has been evaluated without error
            assert until(lambda: all(r.get("lastEvaluation", "").startswith("20") for g in prom.api("rules")["groups"]
                                     for r in g["rules"]), 20)
            rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
            assert len(rules) == 16 and {r["health"] for r in rules} == {"ok"}, [r for r in rules if r["health"] != "ok"]
            # every dashboard panel's expression evaluates
            dashboard = json.loads((ROOT / "deploy" / "grafana" / "sipguard.json").read_text())
            exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
            assert len(exprs) >= 10
            for expr in exprs:
                prom.api("query", query=expr.replace("$__rate_interval", "1m"))
            for phone, call in held:
                assert phone.hangup(call) == 200
            assert until(lambda: prom.value("sum(sipguard_channels_active)") == 0, 20)
            assert until(lambda: prom.firing("SipguardAccountAtChannelLimit") == [], 20)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        uas.kill()
    # the exposition Prometheus asked for: OpenMetrics (it says so in its Accept header)
    assert "openmetrics" in urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{sg.workers[0].admin_port}/metrics",  # type: ignore[attr-defined]
        headers={"Accept": "application/openmetrics-text; version=1.0.0"}), timeout=5).headers["Content-Type"]


def test_metrics_in_gzip_and_with_the_process_series(sipguard) -> None:
    import gzip

    req = urllib.request.Request(f"http://127.0.0.1:{sipguard.admin_port}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(resp.read()).decode()
    for series in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info",
                   "sipguard_policy_last_reload_success 1.0", "sipguard_policy_last_reload_timestamp_seconds"):
        assert series in text, series
    assert sipguard.http("/reload", "POST")[0] == 200 and sipguard.metric("sipguard_policy_last_reload_success") == 1
    sipguard.policy.write_text(sipguard.policy.read_text() + "\nnonsense: [\n")
    assert sipguard.http("/reload", "POST")[0] == 400
    assert sipguard.metric("sipguard_policy_last_reload_success") == 0
    assert sipguard.metric('sipguard_policy_reloads_total{result="refused"}') == 1
