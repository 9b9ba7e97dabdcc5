"""Real parts on loopback: sipguard as a subprocess, SIPp, PJSUA2.

Each party has its own loopback address: UAC 127.0.0.2, UAS 127.0.0.3, a second
caller 127.0.0.4, sipguard 127.0.0.1.  Every wait is bounded; every subprocess
is killed at the end.  A missing tool fails under CI=true and skips elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.run import free_port, free_tcp_port  # one helper for the benchmark and the tests
from sipguard.sip.raw import call_id_hash

ROOT = Path(__file__).parents[2]
SCENARIOS = ROOT / "sipp_scenarios"
UAC_IP, UAS_IP, CALLER2_IP, PROXY_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required in CI but is not installed", pytrace=False)
        pytest.skip(f"{tool} not installed")
    return path


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(host)


@dataclass
class Sipguard:
    proc: subprocess.Popen[bytes]
    sip_port: int
    admin_port: int
    policy: Path
    decision_log: Path
    log: Path

    def http(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample as 'name{label="v",...}' -> value."""
        _status, text = self.http("/metrics")
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def metric(self, name: str, default: float = 0.0) -> float:
        return self.metrics().get(name, default)

    def wait_metric(self, name: str, value: float, timeout_s: float = 20.0) -> float:
        """Poll until the metric equals value (bounded); returns the last value seen."""
        deadline = time.monotonic() + timeout_s
        seen = self.metric(name)
        while seen != value and time.monotonic() < deadline:
            time.sleep(0.2)
            seen = self.metric(name)
        return seen

    def alive(self) -> bool:
        return self.proc.poll() is None

    def decisions(self, rule: str | None = None) -> list[dict]:
        """The decision log's lines (of one rule), as written so far."""
        lines = self.decision_log.read_text().splitlines() if self.decision_log.exists() else []
        return [d for d in map(json.loads, lines) if rule in (None, d["rule"])]


_serial = iter(range(10**9))


def call_id_for(worker: int, workers: int = 2, prefix: str = "w") -> str:
    """A new Call-ID whose calls worker ``worker`` of ``workers`` owns (sip/raw.py ``call_id_hash``, as the
    kernel's steering and the workers' hand-off compute it)."""
    while True:
        call_id = f"{prefix}{worker}-{next(_serial)}-{time.monotonic_ns()}@{UAC_IP}"
        if call_id_hash(call_id.encode()) % workers == worker:
            return call_id


def until(check: Callable[[], object], timeout_s: float = 20.0) -> bool:
    """Poll ``check`` until it is true (bounded); whether it became true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def office_users(count: int, site: str = "hq") -> str:
    """A YAML list of ``count`` people, each with an extension (1000, 1001, ...) at ``site``."""
    return "[" + ", ".join(f'{{name: "Person {i}", sip_users: ["{1000 + i}"], site: {site}}}' for i in range(count)) + "]"


# The shipped defaults of everything a test does not test: no edge section, no rule switched off.  A hosted
# account (a customer PBX with 400 people: 107 channels) may make 200 calls a second; a trunk doing that would
# be an auto-dialer (terms: SIP Trunking 5), which is what the auto-dialer rule stops.
TEST_POLICY = """
service:
  listen: ["udp:127.0.0.1:{sip_port}"]
  admin: "127.0.0.1:{admin_port}"
  upstreams: {{uas: "sip:127.0.0.3:{uas_port}"}}
  dialog_timeout_s: {dialog_timeout_s}
  sip_timers: {{t1_ms: 200, t2_ms: 1600, t4_ms: 1000, timer_c_s: 2}}
accounts:
  office:
    kind: hosted
    match: {{sources: ["127.0.0.2/32", "127.0.0.4/32"]}}
    upstream: uas
    users: {users}
    numbers: [{{range: "+3228807240-+3228807249", site: hq}}]
    sites: {{hq: {{address: "Rue de la Loi 16, 1000 Brussels", emergency_caller_id: "+3228807240"}}}}
"""


@pytest.fixture
def sipguard_factory(tmp_path: Path) -> Iterator:
    procs: list[Sipguard] = []

    def start(policy_text: str | None = None, *, uas_port: int | None = None, dialog_timeout_s: int = 60,
              workers: int = 1, env: dict[str, str] | None = None, **fmt: object) -> Sipguard:
        sip_port = free_udp_port()
        admin_port = free_tcp_port()
        uas_port = uas_port or free_udp_port(UAS_IP)
        fmt.setdefault("users", office_users(400))
        text = (policy_text or TEST_POLICY).format(sip_port=sip_port, admin_port=admin_port, uas_port=uas_port,
                                                  dialog_timeout_s=dialog_timeout_s, **fmt)
        policy = tmp_path / f"policy-{sip_port}.yaml"
        policy.write_text(text)
        return launch(policy, sip_port, admin_port, uas_port, workers, env)

    def launch(policy: Path, sip_port: int, admin_port: int, uas_port: int, workers: int = 1,
               env: dict[str, str] | None = None) -> Sipguard:
        decision_log = tmp_path / f"decisions-{sip_port}.jsonl"
        log = tmp_path / f"sipguard-{sip_port}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sipguard", "run", "--policy", str(policy), "--decision-log", str(decision_log),
             "--workers", str(workers)],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **(env or {})},
        )
        # with workers, worker i serves admin on admin port + 1 + i: ``sg`` speaks to worker 0
        sg = Sipguard(proc, sip_port, admin_port if workers == 1 else admin_port + 1, policy, decision_log, log)
        sg.uas_port = uas_port  # type: ignore[attr-defined]
        sg.workers = [sg] if workers == 1 else [  # type: ignore[attr-defined]
            Sipguard(proc, sip_port, admin_port + 1 + i, policy, decision_log, log) for i in range(workers)]
        procs.append(sg)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"sipguard exited: {log.read_text()}")
            try:
                if all(w.http("/healthz")[0] == 200 for w in sg.workers):  # type: ignore[attr-defined]
                    return sg
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"sipguard did not come up: {log.read_text()}")

    def restart(sg: Sipguard, hard: bool = True) -> Sipguard:
        """The same policy on the same addresses, in a new process (the old one killed: SIGKILL when hard)."""
        if hard:
            sg.proc.kill()
        else:
            sg.proc.terminate()
        sg.proc.wait(timeout=10)
        return launch(sg.policy, sg.sip_port, sg.admin_port, sg.uas_port)  # type: ignore[attr-defined]

    start.restart = restart  # type: ignore[attr-defined]

    yield start
    for sg in procs:
        # SIGTERM drains the calls a test left in progress for up to drain_timeout_s (docs/service.md); a
        # second one stops at once: the test is over, its calls need not end
        for grace_s in (1.0, 5.0):
            if sg.proc.poll() is not None:
                break
            sg.proc.terminate()
            try:
                sg.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if sg.proc.poll() is None:
            sg.proc.kill()
            sg.proc.wait()


@pytest.fixture
def sipguard(sipguard_factory) -> Sipguard:
    return sipguard_factory()


class RedisServer:
    """A real redis-server on 127.0.0.1 and a port of its own, started and stopped by the test (bounded waits);
    no persistence: a restart comes back empty, as after a crash with nothing saved."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("redis-server")
        self.workdir = workdir
        self.port = free_tcp_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)], stdout=log, stderr=log)
        assert until(lambda: self.ping(), 10), "redis-server did not come up"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command in Redis's inline form, its raw reply (tests: FLUSHALL, ZCARD...)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall((" ".join(args) + "\r\n").encode())
            return s.recv(65536)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@dataclass
class SippRun:
    returncode: int
    stdout: str
    workdir: Path
    errors: str = field(default="")

    def stat(self, name: str) -> int:
        """A cumulative counter from SIPp's final screen ('Successful call', 'Failed call')."""
        for line in self.stdout.splitlines():
            if line.strip().startswith(name):
                return int(line.split("|")[2].strip())
        raise AssertionError(f"no {name!r} in SIPp output:\n{self.stdout[-2000:]}")


class Sipp:
    """Starts SIPp processes (UAS in the background, UAC in the foreground), bounded and killed."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require("sipp")
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def _cmd(self, scenario: str, ip: str, port: int, *extra: str) -> list[str]:
        # the caller's number (``[caller]`` in the UAC scenarios): an own number of the test accounts by default
        keys = [extra[i + 1] for i, arg in enumerate(extra[:-1]) if arg == "-key"]
        caller = () if "caller" in keys else ("-key", "caller", "+3228807241")
        return [self.binary, "-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(port), "-nostdin",
                "-trace_err", "-max_socket", "64", *caller, *extra]

    def uas(self, scenario: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
        out = open(self.workdir / f"uas-{port}.out", "wb")
        proc = subprocess.Popen(self._cmd(scenario, UAS_IP, port, *extra), stdout=out, stderr=subprocess.STDOUT,
                                cwd=self.workdir)
        self.procs.append(proc)
        mode = extra[extra.index("-t") + 1] if "-t" in extra else "u1"
        if mode.startswith("t"):
            _wait_tcp_listening(UAS_IP, port)
        else:
            _wait_udp_bound(UAS_IP, port)
        return proc

    def uac(self, scenario: str, target_port: int, *extra: str, ip: str = UAC_IP, port: int | None = None,
            timeout_s: float = 120, target_host: str = "127.0.0.1") -> SippRun:
        port = port or free_udp_port(ip)
        cmd = self._cmd(scenario, ip, port, *extra) + [f"{target_host}:{target_port}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"SIPp UAC {scenario} did not finish in {timeout_s}s:\n{out.decode()[-3000:]}")
        errors = "".join(p.read_text(errors="replace")[:4000] for p in self.workdir.glob("*errors.log"))
        return SippRun(proc.returncode, out.decode(errors="replace"), self.workdir, errors)

    def uac_background(self, scenario: str, target_port: int, *extra: str, ip: str = UAC_IP,
                       port: int | None = None) -> subprocess.Popen[bytes]:
        """A UAC left running (holding calls); finish it with ``finish``."""
        port = port or free_udp_port(ip)
        out = open(self.workdir / f"uac-{port}.out", "wb")
        proc = subprocess.Popen(self._cmd(scenario, ip, port, *extra) + [f"127.0.0.1:{target_port}"],
                                stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
        """Wait (bounded) for a background UAC; its exit code (0: every call succeeded)."""
        return self.wait(proc, timeout_s)

    def wait(self, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("SIPp did not finish in time") from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_udp_bound(ip: str, port: int, timeout_s: float = 5.0) -> None:
    """Bounded wait until something holds ip:port (a bind then fails)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing bound {ip}:{port}")


def _wait_tcp_listening(ip: str, port: int, timeout_s: float = 5.0) -> None:
    """Bounded wait until something accepts TCP connections on ip:port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ip, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on tcp {ip}:{port}")


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    runner = Sipp(tmp_path)
    yield runner
    runner.close()
