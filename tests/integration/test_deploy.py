"""What deploy/ and the Dockerfile ship, checked as far as a machine without a Docker engine or systemd as
PID 1 allows (docs/service.md): the unit verified by systemd-analyze and its ExecStart run under a real
notify socket (READY, WATCHDOG, STOPPING); the image's entry command run outside a container with the same
paths and ports rewritten to free ones, and its health check run against it; the compose file's paths,
grace period, policy and Prometheus configuration."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sipguard.policy import load

from .conftest import ROOT, TEST_POLICY, free_tcp_port, free_udp_port, office_users, require

pytestmark = pytest.mark.integration

UNIT = ROOT / "deploy" / "sipguard.service"


def _unit() -> dict[str, str]:
    text = UNIT.read_text().replace("\\\n", " ")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)=(.*)$", text, re.M)}


def _policy(tmp_path: Path) -> tuple[Path, int, int]:
    """A test policy on free ports (the workers' own ports are the next ones)."""
    sip_port, admin_port = free_udp_port(), free_tcp_port()
    path = tmp_path / "policy.yaml"
    path.write_text(TEST_POLICY.format(sip_port=sip_port, admin_port=admin_port, uas_port=free_udp_port(),
                                       dialog_timeout_s=60, users=office_users(2)))
    return path, sip_port, admin_port


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_unit_is_valid_and_stops_after_the_drain() -> None:
    unit = _unit()
    assert (unit["Type"], unit["KillMode"], unit["ExecReload"]) == ("notify", "mixed", "/bin/kill -HUP $MAINPID")
    drain = load(ROOT / "policies" / "example.yaml").service.drain_timeout_s
    assert int(unit["TimeoutStopSec"]) > drain, "systemd would SIGKILL in the middle of the drain"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (the unit's keys were checked above)")
    copy = Path("/tmp") / f"sipguard-verify-{time.monotonic_ns()}.service"
    copy.write_text(UNIT.read_text().replace("/opt/sipguard/bin/sipguard", shutil.which("sipguard") or sys.executable))
    try:
        proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    finally:
        copy.unlink()
    # verify prints unknown keys and bad values but still exits 0: nothing printed is the check
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", proc.stderr


def test_the_units_command_speaks_sd_notify(tmp_path: Path) -> None:
    """ExecStart as written (two workers, JSON logs, a decision log file), under a notify socket of ours."""
    policy, _sip, _admin = _policy(tmp_path)
    decisions = tmp_path / "decisions.jsonl"
    argv = shlex.split(_unit()["ExecStart"])
    assert argv[0] == "/opt/sipguard/bin/sipguard"
    argv = [sys.executable, "-m", "sipguard", *(
        str(policy) if a == "/etc/sipguard/policy.yaml" else str(decisions) if a.endswith("decisions.jsonl") else a
        for a in argv[1:])]
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(0.5)
    log = tmp_path / "sipguard.log"
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "1000000"})
    seen: list[str] = []

    def wait_for(state: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                seen.extend(sock.recv(4096).decode().splitlines())
            except socket.timeout:
                pass
            if state in seen:
                return True
        return False

    try:
        assert wait_for("READY=1", 20), (seen, log.read_text())
        seen.clear()
        assert wait_for("WATCHDOG=1", 5), seen  # every 0.5 s (half of WATCHDOG_USEC) while the workers answer
        proc.send_signal(signal.SIGTERM)
        assert wait_for("STOPPING=1", 5), seen
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # --log-format json: every line
    assert any("2 workers" in line["message"] for line in lines)


def _dockerfile() -> dict[str, list[str]]:
    """The run stage's instructions (after the last FROM), continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stage = text.rsplit("\nFROM ", 1)[1]
    out: dict[str, list[str]] = {}
    for line in stage.splitlines():
        if line and not line.startswith("#"):
            word, _sp, rest = line.partition(" ")
            out.setdefault(word, []).append(rest.strip())
    return out


def test_the_images_entry_command_runs_with_its_paths_and_passes_its_health_check(tmp_path: Path) -> None:
    docker = _dockerfile()
    entry, cmd = json.loads(docker["ENTRYPOINT"][0]), json.loads(docker["CMD"][0])
    policy_path = entry[entry.index("--policy") + 1]
    assert f"policies/example.yaml {policy_path}" in docker["COPY"]  # the image carries a policy there
    readme = (ROOT / "README.md").read_text()
    assert f":{policy_path}:ro" in readme and f"/policies:{Path(policy_path).parent}" not in readme  # mounts a file
    workers = int(cmd[cmd.index("--workers") + 1])
    exposed = " ".join(docker["EXPOSE"])
    assert f"5060-{5060 + workers}/udp" in exposed and f"9090-{9090 + workers}/tcp" in exposed
    health = json.loads(docker["HEALTHCHECK"][0].split("CMD", 1)[1])
    # the same command, outside a container: the policy path and the ports rewritten to free ones
    policy, sip_port, admin_port = _policy(tmp_path)
    argv = [sys.executable, "-m", "sipguard", *entry[1:], *cmd]
    argv[argv.index(policy_path)] = str(policy)
    argv[argv.index("0.0.0.0:9090")] = f"127.0.0.1:{admin_port}"
    log = tmp_path / "sipguard.log"
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    check = [sys.executable if health[0] == "python" else health[0],
             *(a.replace("127.0.0.1:9090", f"127.0.0.1:{admin_port}") for a in health[1:])]
    try:
        deadline, healthy = time.monotonic() + 20, False
        while time.monotonic() < deadline and not healthy and proc.poll() is None:
            healthy = subprocess.run(check, capture_output=True, timeout=10).returncode == 0
            time.sleep(0.2)
        assert healthy, log.read_text()
    finally:
        assert _stop(proc) == 0
    assert "2 workers" in log.read_text()


def test_the_compose_file_mounts_the_policy_the_image_reads_and_waits_for_the_drain() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    sg = compose["services"]["sipguard"]
    entry = json.loads(_dockerfile()["ENTRYPOINT"][0])
    source, target = sg["volumes"][0].split(":")[:2]
    assert target == entry[entry.index("--policy") + 1]
    policy = load(ROOT / "deploy" / source)
    assert policy.service.state.store == "redis" and "redis" in compose["services"]
    assert policy.service.state.url.startswith("redis://redis:")
    assert int(sg["stop_grace_period"].rstrip("s")) > policy.service.drain_timeout_s
    promtool = require("promtool")
    proc = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_readme_run_command_on_a_fresh_clone_runs_the_compiled_core(tmp_path: Path) -> None:
    """``bash scripts/dev run`` in a new clone (its own venv, the [native] extra, the build): the compiled core
    runs; after ``touch`` of a source (a checkout that rewrites it unchanged) it still starts, compiled."""
    require("gcc")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    for attempt in ("fresh", "touched"):
        if attempt == "touched":
            (clone / "sipguard" / "sip" / "parser.py").touch()
        sip_port, admin_port = free_udp_port(), free_tcp_port()
        log = tmp_path / f"run-{attempt}.log"
        proc = subprocess.Popen(["bash", "scripts/dev", "run", "--listen", f"udp:127.0.0.1:{sip_port}",
                                 "--admin", f"127.0.0.1:{admin_port}"], cwd=clone, stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, env={k: v for k, v in os.environ.items()
                                                                if k not in ("SIPGUARD_VENV", "VIRTUAL_ENV")})
        try:
            deadline, metrics = time.monotonic() + 600, ""  # the first run sets up the venv and compiles
            while time.monotonic() < deadline and proc.poll() is None and "sipguard_build_info" not in metrics:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as resp:
                        metrics = resp.read().decode()
                except OSError:
                    time.sleep(0.5)
            assert 'core="native"' in metrics, log.read_text()[-3000:]
        finally:
            assert _stop(proc) == 0, log.read_text()[-3000:]
        assert "pure Python" not in log.read_text() and "built from other sources" not in log.read_text()
