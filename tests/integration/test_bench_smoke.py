"""The benchmarks themselves are tested: a short, low-rate run of each must work (timings are not asserted)."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, require

pytestmark = pytest.mark.integration


def test_load_benchmark_smoke_run(tmp_path: Path) -> None:
    require("sipp")
    require("kamailio")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--json", str(out), "--targets",
                           "direct,sipguard,sipguard-2w,kamailio,kamailio-htable"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    targets = {step["target"] for step in report["steps"]}
    assert targets == {"direct", "sipguard", "sipguard-2w", "kamailio", "kamailio-htable"}, proc.stdout[-2000:]
    for step in report["steps"]:
        assert step["failed"] == 0 and step["ok"] == step["calls"] > 0, step
        assert step["invite_p50_ms"] is not None, step
        assert step["probe_invite_p50_us"] is not None and step["probe_invite_p99_us"] > 0, step  # the µs probe
        # sipguard's 503s of its overload control are read from its workers (none at 50/s); no one else's
        assert step["shed"] == (0 if step["target"].startswith("sipguard") else None), step
    assert report["capacity"] == {"direct": 50, "sipguard": 50, "sipguard-2w": 50, "kamailio": 50, "kamailio-htable": 50}
    assert report["held"]["concurrent"] == 200 and report["held"]["kb_per_dialog"] > 0
    assert "ratio sipguard/kamailio" in proc.stdout and "ratio sipguard-2w/kamailio" in proc.stdout
    assert "ratio sipguard-2w/kamailio-htable" in proc.stdout
    assert "SIPp transport u1" in proc.stdout  # every call from one socket, as a trunk sends them
    assert "sipguard at 50/s adds INVITE->200 p50" in proc.stdout


@pytest.mark.parametrize("in_dialog", ["route", "listen"])
def test_the_uac_sends_in_dialog_requests_where_it_is_told(tmp_path: Path, in_dialog: str) -> None:
    """--in-dialog route: SIPp's UAC sends ACK and BYE to the Record-Route (a worker's own port); listen: to the
    listen address, where they carry the INVITE's Call-ID.  Either way the kernel steers every datagram of a
    call to the worker that owns it (transport/steer.py): no hand-off (before the steering, about half a
    hand-off per call with two workers, and one and a half with listen)."""
    require("sipp")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--probe-rate", "0", "--json", str(out),
                           "--targets", "sipguard-2w", "--in-dialog", in_dialog], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (step,) = json.loads(out.read_text())["steps"]
    assert step["failed"] == 0 and step["ok"] == step["calls"] == 100, step
    assert step["handoffs"] == 0, step
    assert f"sipguard-2w at 50/s hands {step['handoffs']:.2f} datagrams per call" in proc.stdout


def test_a_single_round_says_which_failed_calls_were_shed(tmp_path: Path) -> None:
    """With sipguard forced into overload (its test hook), every call fails as a 503 of the overload control,
    and a one-round run says so beside the table (with rounds, the medians' lines do)."""
    require("sipp")
    force = tmp_path / "overloaded"
    force.touch()
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--probe-rate", "0", "--targets",
                           "sipguard-2w"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SIPGUARD_FORCE_OVERLOAD": str(force)})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the first rate failed: exit 1
    assert "sipguard-2w at 50/s: 100 of the 100 failed calls were 503s of its overload control" in proc.stdout


@pytest.mark.parametrize("link", ["tcp", "tls"])
def test_load_benchmark_smoke_run_over_tcp_and_tls(tmp_path: Path, link: str) -> None:
    """--link: SIPp over TCP (TLS: through stunnel) to sipguard and to Kamailio over the same transport."""
    require("sipp")
    require("kamailio")
    if link == "tls":
        require("stunnel4")
        if not glob.glob("/usr/lib/*/kamailio/modules/tls.so"):  # Debian's kamailio-tls-modules
            if os.environ.get("CI") == "true":
                pytest.fail("kamailio-tls-modules is required in CI but is not installed", pytrace=False)
            pytest.skip("kamailio-tls-modules not installed")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--link", link, "--json", str(out),
                           "--targets", "direct,sipguard,kamailio-htable"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {step["target"] for step in report["steps"]} == {"direct", "sipguard", "kamailio-htable"}
    for step in report["steps"]:
        assert step["failed"] == 0 and step["ok"] == step["calls"] > 0, step
        assert step["probe_invite_p50_us"] is not None and step["probe_invite_p99_us"] > 0, step  # over the link
    assert f"link {link}" in proc.stdout and "sipguard at 50/s adds INVITE->200 p50" in proc.stdout


def test_mirror_benchmark_smoke_run() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.mirror", "--calls", "300", "--repeat", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "300 calls x 2 repeats" in proc.stdout and "2.0 records" in proc.stdout, proc.stdout


def test_micro_benchmark_smoke_run() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.micro", "--n", "300", "--repeat", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0] for line in proc.stdout.splitlines()[2:]}
    assert {"parse", "decide", "serialize", "core.receive"} <= rows, proc.stdout


@pytest.mark.parametrize("handoff", [[], ["--handoff"]])
def test_whole_call_benchmark_smoke_run(handoff: list[str]) -> None:
    """Without and with the workers' hand-off of INVITEs (the calls complete either way: else it raises)."""
    proc = subprocess.run([sys.executable, "-m", "bench.call", "--calls", "400", "--repeat", "2", *handoff], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "µs per call inside the server" in proc.stdout
    assert ("dispatched as by 2 workers" in proc.stdout) == bool(handoff)
    median = float(proc.stdout.split("median")[1].split()[0])
    assert median > 0, proc.stdout


def test_gc_pause_benchmark_smoke_run() -> None:
    """bench.call --gc-pause: one worker's 32 s of calls, and what the cyclic GC makes of them.  Compiled, the
    transactions, dialogs and messages are classes the GC never tracks (docs/compiled.md)."""
    from sipguard._compiled import native_core

    proc = subprocess.run([sys.executable, "-m", "bench.call", "--gc-pause", "100"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "one worker at 100 calls/s, 3200 calls (32 s of transactions)" in proc.stdout, proc.stdout
    tracked = int(proc.stdout.split("objects the GC tracks more than before the calls: ")[1].split(";")[0])
    assert "a full collection: median" in proc.stdout
    if native_core():  # the timer wheel's buckets stay (one per 10-ms tick: 3,200), no longer the calls' objects
        assert tracked < 2 * 3200, proc.stdout  # pure Python: 35,708 (11 per call)


def test_claims_benchmark_smoke_run() -> None:
    require("redis-server")
    proc = subprocess.run([sys.executable, "-m", "bench.claims", "--claims", "300", "--in-flight", "1,8"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "8"] and all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), proc.stdout


def test_in_dialog_benchmark_smoke_run() -> None:
    # the script itself checks that every ACK and BYE was relayed (it raises otherwise)
    proc = subprocess.run([sys.executable, "-m", "bench.indialog", "--dialogs", "200"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    per_ack, per_bye = (float(proc.stdout.split(f"per {kind} ")[1].split(",")[0].split()[0]) for kind in ("ACK", "BYE"))
    assert per_ack > 0 and per_bye > 0, proc.stdout


def test_loopwatch_smoke_run(tmp_path: Path) -> None:
    """bench.run --loopwatch: each worker's callbacks are recorded and summarised, one record per datagram."""
    require("sipp")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--json", str(out), "--targets", "sipguard-2w",
                           "--loopwatch", "--probe-rate", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    step = json.loads(out.read_text())["steps"][0]
    assert step["failed"] == 0 and step["ok"] == step["calls"] == 100, step
    text = proc.stdout.split("where the workers' time went", 1)[1]
    workers = re.split(r"\n\s+loopwatch\.\d+\.json: ", text)[1:]
    assert len(workers) == 2, text  # one dump per worker
    counts: dict[str, int] = {}
    for block in workers:
        assert "loop busy" in block and "busy periods" in block and "callbacks per ms" in block, block
        for line in block.splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[0] in ("INVITE", "ACK", "BYE", "response", "handed"):
                counts[parts[0]] = counts.get(parts[0], 0) + int(parts[1])
    # every datagram of the 100 calls, once: INVITE, ACK and BYE each 100 times, responses 180/200/200 at least
    assert counts["INVITE"] == counts["ACK"] == counts["BYE"] == 100, text
    assert counts["response"] >= 300, text
    assert counts["handed"] > 0, text  # one socket: the INVITEs of the other worker's calls handed over


@pytest.mark.parametrize("variant", ["kamailio", "kamailio-htable"])
def test_kamailio_configurations_enforce_a_channel_limit(tmp_path: Path, variant: str, monkeypatch) -> None:
    """The comparison is fair only if Kamailio really checks the limit: with 3 channels, 10 calls/s held 1 s,
    calls beyond 3 in progress are refused (486), and once they end the account's count is back to 0."""
    require("sipp")
    require("kamailio")
    from bench import run

    monkeypatch.setitem(run.SIPP_TRANSPORT, "mode", "un")
    uas_port = run.free_port(run.UAS_IP)
    uas = run.start_uas(tmp_path, uas_port)
    kind = {"kamailio": run.Kamailio, "kamailio-htable": run.KamailioHtable}[variant]
    target = kind(tmp_path, uas_port, run.free_port(run.PROBE_UAS_IP))
    target.channels = 3
    try:
        target.start()
        ok, failed, _invite, _bye = run.run_uac(tmp_path, target, 10, 30, 1000, 60, "over")
        assert ok + failed == 30 and 3 <= ok <= 15 and failed >= 15, (ok, failed)
        # the dialogs end (BYE), and with them their channels: once Kamailio has let them go, 4 calls pass
        for attempt in range(20):
            ok, failed, _invite, _bye = run.run_uac(tmp_path, target, 2, 4, 200, 60, f"after{attempt}")
            if (ok, failed) == (4, 0):
                break
            time.sleep(0.5)
        assert (ok, failed) == (4, 0)
    finally:
        target.stop()
        uas.kill()
        uas.wait()


def test_rounds_alternate_the_targets_and_report_medians(tmp_path: Path) -> None:
    require("sipp")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--rounds", "2", "--json", str(out),
                           "--targets", "direct,sipguard-2w", "--sipp-transport", "un"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    # direct, sipguard-2w, direct, sipguard-2w: each round a fresh pass over every target
    assert [(s["round"], s["target"]) for s in steps] == [
        (1, "direct"), (1, "sipguard-2w"), (2, "direct"), (2, "sipguard-2w")], steps
    assert all(s["failed"] == 0 for s in steps)
    assert "round 2 of 2" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if x.startswith("sipguard-2w at 50/s over 2 of 2 rounds:"))
    assert "failed 0/0" in line and "CPU s/1k" in line and "adds p99" in line, line
    assert "adds INVITE->200" in proc.stdout and "(round 2)" in proc.stdout


def test_overload_benchmark_smoke_run(tmp_path: Path) -> None:
    """bench.overload --smoke: the offered load, the 112 calls beside it and the load after, from one socket."""
    require("sipp")
    out = tmp_path / "overload.json"
    proc = subprocess.run([sys.executable, "-m", "bench.overload", "--smoke", "--targets", "direct,sipguard-2w",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    direct, o = json.loads(out.read_text())
    # the baseline: SIPp's UAS answers a random half of the INVITEs 503 at once (1 - 1/factor), never a 112 call
    assert direct["target"] == "direct" and direct["calls"] == 600, direct
    assert 200 < direct["shed"] < 400 and direct["completed"] + direct["shed"] == 600 and direct["failed"] == 0, direct
    assert direct["shed_p99_ms"] is not None and direct["emergency_failed"] == 0, direct
    assert direct["cpu_cores"] is None and direct["after_failed"] is None, direct
    # 100/s is far under capacity: 2 x 100 for 3 s all completed, nothing shed or failed, every 112 call through
    assert (o["capacity"], o["offered"], o["calls"], o["completed"]) == (100, 200, 600, 600), o
    assert o["shed"] == o["failed"] == o["after_failed"] == 0 and o["last_shed_after_drop_s"] is None, o
    assert o["emergency_sent"] == 30 and o["emergency_failed"] == 0, o
    assert o["cpu_cores"] > 0 and "sipguard-2w" in proc.stdout
