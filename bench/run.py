"""Load benchmark: SIPp UAC -> {nothing | sipguard | Kamailio} -> SIPp UAS, in one run.

    python -m bench.run [--targets direct,sipguard,sipguard-2w,sipguard-redis,kamailio] [--rates 500,1000,2000]
                        [--duration-s 20] [--hold-ms 1000] [--concurrent 10000] [--smoke]
                        [--sipp-transport u1|un] [--in-dialog route|listen] [--loopwatch] [--rounds N]

For each target it steps the call rate up (calls of INVITE/100/180/200/ACK, held
``--hold-ms``, BYE/200) and reports, per rate: failed calls, p50/p99 of INVITE->200
and BYE->200 (timed inside the SIPp scenario), the proxy's CPU seconds per 1,000
calls and its peak memory (for sipguard also how many of the failed calls were 503s of its overload
control, ``shed`` in the JSON).  The highest rate with 0 failed calls is the target's
capacity.  For sipguard it then holds ``--concurrent`` calls and reports the memory
per active dialog and the INVITE->200 of new calls while they are held.  It prints one
table and the ratios sipguard/Kamailio and sipguard/direct; ``--json FILE`` saves it.

``sipguard-redis`` shares its channel counts through a redis-server of its own (``-redis-Nw``: each worker
is a node of its own in Redis, so ``sipguard-redis-2w`` is two nodes sharing one Redis).
``sipguard-Nw`` is sipguard with ``--workers N`` (one process per core; every worker reads the
listen socket and hands each call to the worker its Call-ID hashes to), so calls from one socket
(``--sipp-transport u1``, the default: a trunk) spread over the workers; ``un`` (one SIPp socket per
call, for every target alike) is the socket-per-call shape beside it.  The UAC sends ACK and BYE to the
first hop of the dialog's route set, the proxy's Record-Route, as a UA does (``--in-dialog route``; for
sipguard with workers, the owning worker's own port); ``--in-dialog listen`` sends them to the address
the INVITE went to, as SIPp does on its own, so that each worker hands the other worker's half of them
over: the difference is what a hand-off costs (``hands ... per call`` in the report).  Past capacity:
``python -m bench.overload``.

``--rounds N`` passes over the targets N times, alternating them, and prints per target and rate
the median and range of the CPU per call and of the latency added (the capacity is then the rate
every round carried).  ``--loopwatch`` runs sipguard under bench/loopwatch.py and prints, per worker, the CPU per
datagram by kind and the loop's busy periods (the queue a burst waits in); one rate per run.

Every party has its own loopback address (UAC 127.0.0.2, UAS 127.0.0.3, proxy
127.0.0.1); every SIPp run is bounded and killed by pid.  Kamailio is installed
with apt-get when missing (``--no-install`` to skip a target that is missing).
"""

from __future__ import annotations

import argparse
import csv
import functools
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import loopwatch
from .policy import UAC_IP, benchmark_policy
from .probe import PROBE_UAS_IP, ProbeResult, run_probe

ROOT = Path(__file__).parents[1]
SCENARIOS = ROOT / "sipp_scenarios" / "bench"
HANDOFFS = "sipguard_worker_handoffs_total"  # datagrams a worker read from the shared socket for another
UAS_IP = "127.0.0.3"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Step:
    target: str
    rate: int
    calls: int
    ok: int
    failed: int
    invite_p50_ms: float | None
    invite_p99_ms: float | None
    bye_p50_ms: float | None
    bye_p99_ms: float | None
    cpu_s_per_1000: float | None
    peak_rss_mb: float | None
    probe_invite_p50_us: float | None = None  # bench/probe.py beside the load: µs resolution
    probe_invite_p99_us: float | None = None
    probe_invite_us: list[float] = field(default_factory=list)  # every probe call, in order (the tail's shape)
    round: int = 1  # --rounds: which pass over the targets
    shed: int | None = None  # sipguard: new INVITEs its overload control answered 503 in the step (of ``failed``)
    handoffs: float | None = None  # sipguard with workers: datagrams handed to another worker, per call


@dataclass
class Report:
    machine: str
    steps: list[Step] = field(default_factory=list)
    capacity: dict[str, int] = field(default_factory=dict)
    held: dict[str, float] = field(default_factory=dict)


# Ports handed out for a server to listen on are taken below the kernel's ephemeral range (32768 and up on
# Linux, read from /proc), free for UDP *and* TCP on the host, and never twice in one process: a port the
# kernel chose for us with bind(0) lies in that range, where any outgoing connection (an admin request, a
# TCP client, Redis) may take it again before the server binds it (a CI run once failed on "Address already
# in use").  Each hand-out also keeps the next three ports back: workers listen on their admin port + 1 + i.


def _below_ephemeral(span: int = 12000) -> tuple[int, int]:
    """[low, high) of ``span`` ports just below the kernel's ephemeral range (Linux: 32768 and up)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768
    high = max(first - 768, 1024 + span)  # a range of 1024 ports and up, which root may bind
    return high - span, high


(_PORT_LOW, _PORT_HIGH), _PORT_STEP = _below_ephemeral(), 4
_next_port = _PORT_LOW + (os.getpid() * 97) % (_PORT_HIGH - _PORT_LOW) // _PORT_STEP * _PORT_STEP


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now for UDP and TCP (IPv4 or IPv6), outside the ephemeral range."""
    global _next_port
    for _ in range((_PORT_HIGH - _PORT_LOW) // _PORT_STEP):
        port = _next_port
        _next_port = _PORT_LOW if port + _PORT_STEP >= _PORT_HIGH else port + _PORT_STEP
        if all(_bindable(host, p) for p in range(port, port + _PORT_STEP)):
            return port
    raise RuntimeError(f"no free port on {host} between {_PORT_LOW} and {_PORT_HIGH}")


def free_tcp_port() -> int:
    return free_port("127.0.0.1")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants (Kamailio forks its workers)."""
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / CLK_TCK


def memory_mb(pid: int, key: str = "VmHWM") -> float:
    """Sum over the process tree of VmHWM (peak) or VmRSS, in MB."""
    total = 0
    for p in _descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Target:
    name = ""
    host = "127.0.0.1"

    def __init__(self, workdir: Path, uas_port: int, probe_port: int) -> None:
        self.workdir = workdir
        self.uas_port = uas_port  # where the proxy sends calls: the UAS, or with --link tls its tunnel
        self.probe_port = probe_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = uas_port
        self.entry: tuple[str, int] | None = None  # --link tls: where the UAC sends (its tunnel), else host:port

    @property
    def tls_port(self) -> int:
        """The proxy's TLS port (--link tls): the TCP port after its SIP port."""
        return self.port + 1

    def start(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Direct(Target):
    name = "direct"
    host = UAS_IP  # the UAC calls the UAS itself


class Sipguard(Target):
    name = "sipguard"

    def __init__(self, workdir: Path, uas_port: int, probe_port: int, workers: int = 1, store: str = "memory") -> None:
        super().__init__(workdir, uas_port, probe_port)
        self.workers = workers
        self.store = store
        self.redis: subprocess.Popen[bytes] | None = None
        self.watch: str | None = None  # --loopwatch: the dump prefix of bench/loopwatch.py
        self.name = "sipguard" + ("-redis" if store == "redis" else "") + (f"-{workers}w" if workers > 1 else "")

    def _start_redis(self) -> str:
        """A redis-server of this target's own (no persistence), on loopback: the shared channel store."""
        port = free_tcp_port()
        log = open(self.workdir / "redis.log", "wb")
        self.redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(self.workdir)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        super().stop()
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait()
            self.redis = None

    def admin_ports(self) -> list[int]:
        """Where each process serves admin: the one process on the admin port, worker i on admin port + 1 + i."""
        return [self.admin] if self.workers == 1 else [self.admin + 1 + i for i in range(self.workers)]

    def start(self) -> None:
        self.port = free_port("127.0.0.1")
        self.admin = free_tcp_port()
        policy = self.workdir / "bench-policy.yaml"
        redis_url = self._start_redis() if self.store == "redis" else None
        policy.write_text(benchmark_policy(self.port, self.admin, self.uas_port, probe_port=self.probe_port,
                                           redis_url=redis_url, link=LINK["transport"], cert=LINK["cert"],
                                           key=LINK["key"]))
        log = open(self.workdir / "sipguard.log", "wb")
        command = [sys.executable, "-m", "sipguard"] if self.watch is None else [
            sys.executable, "-m", "bench.loopwatch", self.watch, "--"]
        self.proc = subprocess.Popen(
            [*command, "run", "--policy", str(policy),
             "--decision-log", str(self.workdir / "decisions.jsonl"), "--workers", str(self.workers)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                for port in self.admin_ports():
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        pass
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sipguard did not start: " + (self.workdir / "sipguard.log").read_text()[-2000:])


def metric_total(target: Target, name: str) -> float:
    """A counter of sipguard's (``name``: its sample's name, without labels) summed over its workers (0 for any
    other target)."""
    if not isinstance(target, Sipguard):
        return 0.0
    total = 0.0
    for port in target.admin_ports():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    total += float(line.split()[1])
    return total


def shed_total(target: Target) -> float:
    """sipguard's ``sipguard_overload_shed_total`` over its workers (0 for any other target)."""
    return metric_total(target, "sipguard_overload_shed_total")


class Kamailio(Target):
    """Kamailio counting channels with a dialog profile (kamailio.cfg.tmpl)."""

    name = "kamailio"
    defines: tuple[str, ...] = ()
    channels = 100_000  # the per-account limit, as the benchmark policy's: high enough not to trip

    def start(self) -> None:
        binary = shutil.which("kamailio")
        if binary is None:
            raise RuntimeError("kamailio is not installed")
        self.port = free_port("127.0.0.1")
        link = LINK["transport"]
        listen = f"listen=udp:127.0.0.1:{self.port}"
        if link != "udp":
            listen += f"\nlisten=tcp:127.0.0.1:{self.port}"
        if link == "tls":
            listen += f"\nlisten=tls:127.0.0.1:{self.tls_port}"
            (self.workdir / "kamailio-tls.cfg").write_text(
                f"[server:default]\nmethod = TLSv1.2+\ncertificate = {LINK['cert']}\nprivate_key = {LINK['key']}\n"
                "verify_certificate = no\nrequire_certificate = no\n"
                "[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n")
        cfg = (Path(__file__).with_name("kamailio.cfg.tmpl").read_text()
               .replace("listen=udp:127.0.0.1:@SIP_PORT@", listen)
               .replace("disable_tcp=yes", "disable_tcp=yes" if link == "udp" else "disable_tcp=no")
               .replace("@UAS_URI_PARAMS@", "" if link == "udp" else f";transport={link}")
               .replace("@PROBE_URI_PARAMS@", "" if link == "udp" else f";transport={link}")
               .replace("@TLS_CFG@", str(self.workdir / "kamailio-tls.cfg"))
               .replace("@SIP_PORT@", str(self.port)).replace("@UAS_PORT@", str(self.uas_port))
               .replace("@PROBE_PORT@", str(self.probe_port)).replace("@CHANNELS@", str(self.channels))
               .replace("@UAC_IP@", UAC_IP))
        path = self.workdir / "kamailio.cfg"
        path.write_text(cfg)
        log = open(self.workdir / "kamailio.log", "wb")
        # tlsf allocator, 4 GB of shared memory, 64 MB private per process (issue 5's lessons)
        defines = (*self.defines, *(("WITH_TLS",) if link == "tls" else ()))
        self.proc = subprocess.Popen(
            [binary, "-f", str(path), *(arg for d in defines for arg in ("-A", d)),
             "-DD", "-E", "-x", "tlsf", "-m", "4096", "-M", "64",
             "-P", str(self.workdir / "kamailio.pid"), "-Y", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        time.sleep(2.0)
        if self.proc.poll() is not None:
            raise RuntimeError("kamailio did not start: " + (self.workdir / "kamailio.log").read_text()[-2000:])


class KamailioHtable(Kamailio):
    """Kamailio counting channels in an htable (constant cost per call, as sipguard's count)."""

    name = "kamailio-htable"
    defines = ("WITH_HTABLE",)


SIPP_TRANSPORT = {"mode": "u1"}  # --sipp-transport: the same for every target of a run
IN_DIALOG = {"to": "route"}  # --in-dialog: where the UAC sends ACK and BYE (the scenarios' in_dialog key)
LINK = {"transport": "udp", "cert": "", "key": ""}  # --link: what the calls travel over (and the TLS certificate)


class Tunnels:
    """--link tls: Debian's SIPp has no TLS, so stunnel carries its TCP: a client tunnel in front of the UAC (its
    calls go to ``entry`` and leave as TLS for the target), a server tunnel in front of the UAS (TLS on
    ``uas_tls_port``, TCP to the UAS).  Their CPU is not the proxy's: the proxy's own is measured by its pid."""

    def __init__(self, workdir: Path, uas_port: int) -> None:
        self.workdir = workdir
        self.uas_port = uas_port
        self.uas_tls_port = free_tcp_port()
        self.entry_port = free_tcp_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, target: tuple[str, int]) -> None:
        cert, key = LINK["cert"], LINK["key"]
        for name, text in (
                ("uas", f"[uas]\naccept = {UAS_IP}:{self.uas_tls_port}\nconnect = {UAS_IP}:{self.uas_port}\n"
                        f"cert = {cert}\nkey = {key}\n"),
                ("uac", f"[uac]\nclient = yes\naccept = {UAC_IP}:{self.entry_port}\nconnect = {target[0]}:{target[1]}\n"
                        f"local = {UAC_IP}\n")):
            conf = self.workdir / f"stunnel-{name}.conf"
            conf.write_text(f"foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n{text}")
            self.procs.append(subprocess.Popen(["stunnel4", str(conf)], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        time.sleep(0.5)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.procs.clear()


def make_certificate(workdir: Path) -> None:
    """One self-signed certificate for 127.0.0.1, .3 and .7 (the proxies, the UAS tunnel and the probe UAS present it; sipguard
    trusts it as its CA)."""
    cert, key = workdir / "bench.crt", workdir / "bench.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=bench",
                    "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.3,IP:127.0.0.7"], check=True, capture_output=True)
    LINK["cert"], LINK["key"] = str(cert), str(key)


def sipp_cmd(scenario: str, ip: str, port: int, *extra: str) -> list[str]:
    mode = SIPP_TRANSPORT["mode"] if LINK["transport"] == "udp" else "t1"
    sockets = "1024" if mode in ("u1", "t1") else "16000"  # un: one socket per call in progress
    return ["sipp", "-sf", str(SCENARIOS / scenario), "-i", ip, "-p", str(port), "-nostdin", "-t", mode,
            "-max_socket", sockets, "-buff_size", "4194304", "-key", "in_dialog", IN_DIALOG["to"], *extra]


def run_uac(workdir: Path, target: Target, rate: int, calls: int, hold_ms: int, timeout_s: float,
            tag: str) -> tuple[int, int, list[float], list[float]]:
    """One bounded SIPp UAC run: (ok, failed, INVITE->200 ms, BYE->200 ms)."""
    rundir = workdir / tag
    rundir.mkdir(exist_ok=True)
    port = free_port(UAC_IP)
    entry = target.entry or (target.host, target.port)
    cmd = sipp_cmd("uac.xml", UAC_IP, port, "-s", "+3250123400", "-r", str(rate), "-m", str(calls),
                   "-d", str(hold_ms), "-trace_rtt", "-rtt_freq", "1", "-l", str(max(rate * 4, 100)),
                   f"{entry[0]}:{entry[1]}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=rundir)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIPp's own -timeout does not stop a UAC after a collapse
        out, _ = proc.communicate()
    ok, failed, rtds = sipp_outcome(out, rundir, calls)
    return ok, failed, rtds.get("1", []), rtds.get("2", [])


def sipp_outcome(out: bytes, rundir: Path, calls: int) -> tuple[int, int, dict[str, list[float]]]:
    """What a SIPp UAC run printed and wrote: (successful, failed, {rtd number: [ms], in time order}); calls
    never completed count as failed; the -trace_rtt files are read and removed."""
    ok = failed = 0
    for line in out.decode(errors="replace").splitlines():
        if line.strip().startswith("Successful call"):
            ok = int(line.split("|")[2])
        elif line.strip().startswith("Failed call"):
            failed = int(line.split("|")[2])
    rtds: dict[str, list[float]] = {}
    for path in rundir.glob("*_rtt.csv"):
        with open(path) as f:
            for row in csv.reader(f, delimiter=";"):
                if len(row) >= 3 and row[1].replace(".", "", 1).isdigit():
                    rtds.setdefault(row[2].strip(), []).append(float(row[1]))
        path.unlink()
    return ok, failed + max(0, calls - ok - failed), rtds


def start_uas(workdir: Path, port: int, scenario: str = "uas.xml") -> subprocess.Popen[bytes]:
    out = open(workdir / f"uas-{port}.out", "wb")
    return subprocess.Popen(sipp_cmd(scenario, UAS_IP, port), stdout=out, stderr=subprocess.STDOUT, cwd=workdir)


def bench_target(kind: Callable[[Path, int, int], Target], rates: list[int], args: argparse.Namespace, workdir: Path,
                 report: Report, round_no: int = 1) -> None:
    uas_port = free_port(UAS_IP)
    uas = start_uas(workdir, uas_port)
    tunnels = Tunnels(workdir, uas_port) if LINK["transport"] == "tls" else None
    target = kind(workdir, uas_port if tunnels is None else tunnels.uas_tls_port, args.probe_port)
    direct = isinstance(target, Direct)
    if args.loopwatch and isinstance(target, Sipguard):
        target.watch = str(workdir / "loopwatch")
    try:
        target.start()
        if tunnels is not None:  # the UAC's tunnel goes to the proxy's TLS port, or straight to the UAS's tunnel
            tunnels.start((UAS_IP, tunnels.uas_tls_port) if direct else (target.host, target.tls_port))
            target.entry = (UAC_IP, tunnels.entry_port)
        time.sleep(0.3)
        best = 0
        for rate in rates:
            calls = int(rate * args.duration_s)
            cpu0 = cpu_seconds(target.pid) if target.pid else None
            shed0 = shed_total(target)
            handed0 = metric_total(target, HANDOFFS)
            probe: list[ProbeResult] = []
            link = LINK["transport"]
            probe_target = None if direct else (target.host, target.tls_port if link == "tls" else target.port)
            prober = threading.Thread(target=lambda: probe.append(run_probe(
                probe_target, max(1.0, args.duration_s - 1.0), args.probe_rate, args.probe_port, link,
                LINK["cert"], LINK["key"])), daemon=True)
            if args.probe_rate > 0:
                prober.start()
            ok, failed, invite, bye = run_uac(workdir, target, rate, calls, args.hold_ms,
                                              args.duration_s + args.hold_ms / 1000 + 40, f"{target.name}-{rate}")
            if args.probe_rate > 0:
                prober.join(timeout=30)
            cpu = (cpu_seconds(target.pid) - cpu0) / calls * 1000 if target.pid and cpu0 is not None else None
            peak = memory_mb(target.pid) if target.pid else None
            step = Step(target.name, rate, calls, ok, failed, _percentile(invite, 0.5), _percentile(invite, 0.99),
                        _percentile(bye, 0.5), _percentile(bye, 0.99), cpu, peak, round=round_no,
                        shed=int(shed_total(target) - shed0) if isinstance(target, Sipguard) else None)
            if isinstance(target, Sipguard) and target.workers > 1:
                step.handoffs = (metric_total(target, HANDOFFS) - handed0) / calls
            if probe and probe[0].invite_us:
                step.probe_invite_p50_us = probe[0].percentile("invite", 0.5)
                step.probe_invite_p99_us = probe[0].percentile("invite", 0.99)
                step.probe_invite_us = [round(v, 1) for v in probe[0].invite_us]
            report.steps.append(step)
            print(_row(step), flush=True)
            if failed:
                break
            best = rate
            time.sleep(2.0)  # let the last transactions go
        # over several rounds, the capacity is the rate every round carried
        report.capacity[target.name] = min(best, report.capacity.get(target.name, best))
        if isinstance(target, Sipguard) and target.workers == 1 and args.concurrent and round_no == 1 and \
                LINK["transport"] == "udp":  # the memory per call: on UDP (the held calls' SIPp talks to its port)
            target.stop()  # a fresh process: its memory before the held calls is the baseline
            target.start()
            held(target, workdir, args, report)
    finally:
        target.stop()
        if tunnels is not None:
            tunnels.stop()
        uas.kill()
        uas.wait()
    if isinstance(target, Sipguard) and target.watch is not None:
        print(f"{target.name}: where the workers' time went (bench/loopwatch.py)")
        for line in loopwatch.report_lines(target.watch):
            print("  " + line, flush=True)


def held(target: Target, workdir: Path, args: argparse.Namespace, report: Report) -> None:
    """Hold ``--concurrent`` calls: memory per dialog, and new calls' INVITE->200 meanwhile."""
    assert target.pid is not None
    n = args.concurrent
    rate = min(1000, max(50, n // 10))
    time.sleep(3.0)
    base_rss = memory_mb(target.pid, "VmRSS")
    _ok, _failed, alone, _bye = run_uac(workdir, target, 100, 300, 100, 60, "alone")
    hold_ms = int(n / rate * 1000) + 15000
    port = free_port(UAC_IP)
    rundir = workdir / "held"
    rundir.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        sipp_cmd("uac.xml", UAC_IP, port, "-s", "+3250123400", "-r", str(rate), "-m", str(n), "-d", str(hold_ms),
                 "-l", str(n + 10), f"127.0.0.1:{target.port}"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=rundir)
    try:
        time.sleep(n / rate + 2.0)
        held_rss = memory_mb(target.pid, "VmRSS")
        _ok, _failed2, during, _bye2 = run_uac(workdir, target, 100, 300, 100, 60, "during")
    finally:
        holder.kill()
        holder.wait()
    report.held = {
        "concurrent": n,
        "rss_before_mb": round(base_rss, 1),
        "rss_held_mb": round(held_rss, 1),
        "kb_per_dialog": round((held_rss - base_rss) * 1024 / n, 2),
        "invite_p50_ms_alone": _or_nan(_percentile(alone, 0.5)),
        "invite_p50_ms_while_held": _or_nan(_percentile(during, 0.5)),
        "invite_p99_ms_alone": _or_nan(_percentile(alone, 0.99)),
        "invite_p99_ms_while_held": _or_nan(_percentile(during, 0.99)),
    }
    print(f"held {n} calls: {report.held}", flush=True)


def _or_nan(v: float | None) -> float:
    return float("nan") if v is None else v


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


HEADER = (f"{'target':<12}{'calls/s':>8}{'calls':>8}{'failed':>8}{'INV p50':>9}{'INV p99':>9}"
          f"{'BYE p50':>9}{'BYE p99':>9}{'CPU s/1k':>10}{'peak MB':>9}{'probe p50 µs':>14}{'probe p99 µs':>14}")


def _row(s: Step) -> str:
    return (f"{s.target:<12}{s.rate:>8}{s.calls:>8}{s.failed:>8}{_fmt(s.invite_p50_ms):>9}{_fmt(s.invite_p99_ms):>9}"
            f"{_fmt(s.bye_p50_ms):>9}{_fmt(s.bye_p99_ms):>9}{_fmt(s.cpu_s_per_1000, 3):>10}{_fmt(s.peak_rss_mb, 1):>9}"
            f"{_fmt(s.probe_invite_p50_us, 0):>14}{_fmt(s.probe_invite_p99_us, 0):>14}")


def _direct_probes(steps: list[Step]) -> dict[tuple[int, int], Step]:
    return {(s.round, s.rate): s for s in steps if s.target == "direct"}


def _added_us(s: Step, direct: dict[tuple[int, int], Step]) -> tuple[float, float] | None:
    """(p50, p99) of INVITE->200 a proxy adds: its probe minus the direct probe of the same round and rate."""
    base = direct.get((s.round, s.rate))
    if s.target == "direct" or base is None:
        return None
    mine, theirs = (s.probe_invite_p50_us, s.probe_invite_p99_us), (base.probe_invite_p50_us, base.probe_invite_p99_us)
    if mine[0] is None or mine[1] is None or theirs[0] is None or theirs[1] is None:
        return None
    return mine[0] - theirs[0], mine[1] - theirs[1]


def added_latency(steps: list[Step]) -> list[str]:
    """INVITE->200 the proxy adds: its probe minus the direct probe at the same rate (µs)."""
    direct = _direct_probes(steps)
    rounds = len({s.round for s in steps})
    out = []
    for s in steps:
        added = _added_us(s, direct)
        if added is None or s.failed:
            continue
        out.append(f"{s.target} at {s.rate}/s adds INVITE->200 p50 {added[0]:.0f} µs, p99 {added[1]:.0f} µs"
                   + (f" (round {s.round})" if rounds > 1 else ""))
    return out


def medians(steps: list[Step]) -> list[str]:
    """Over several rounds: per target and rate, the median (and range) of the CPU per call and of the
    INVITE->200 the proxy adds, and the failed calls of each round."""
    rounds = len({s.round for s in steps})
    direct = _direct_probes(steps)
    out = []
    for target in dict.fromkeys(s.target for s in steps):
        for rate in dict.fromkeys(s.rate for s in steps if s.target == target):
            runs = [s for s in steps if s.target == target and s.rate == rate]
            parts = ["failed " + "/".join(str(s.failed) for s in runs)]
            if any(s.shed for s in runs):  # a 503 of the overload control is a failed call to SIPp
                parts[0] += " (503 of the overload control " + "/".join(str(s.shed or 0) for s in runs) + ")"
            cpu = [s.cpu_s_per_1000 for s in runs if s.cpu_s_per_1000 is not None]
            handoffs = [s.handoffs for s in runs if s.handoffs is not None]
            if handoffs:
                parts.append(f"hand-offs per call {statistics.median(handoffs):.2f}")
            if cpu:
                parts.append(f"CPU s/1k {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})")
            added = [a for a in (_added_us(s, direct) for s in runs) if a is not None]
            for i, name in ((0, "p50"), (1, "p99")):
                if added:
                    values = [a[i] for a in added]
                    parts.append(f"adds {name} {statistics.median(values):.0f} µs ({min(values):.0f}-{max(values):.0f})")
            out.append(f"{target} at {rate}/s over {len(runs)} of {rounds} rounds: " + ", ".join(parts))
    return out


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Linux {os.uname().release}, Python {sys.version.split()[0]}"


def ensure_tools(targets: list[str], install: bool) -> list[str]:
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is required (apt-get install sip-tester)")
    if any(t.startswith("kamailio") for t in targets) and shutil.which("kamailio") is None:
        if install and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "kamailio"], check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        if shutil.which("kamailio") is None:
            print("kamailio is missing: skipped", file=sys.stderr)
            targets = [t for t in targets if not t.startswith("kamailio")]
    if LINK["transport"] == "tls" and any(t.startswith("kamailio") for t in targets) and \
            not glob.glob("/usr/lib/*/kamailio/modules/tls.so"):
        if install and os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-qq", "kamailio-tls-modules"], check=False,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        if not glob.glob("/usr/lib/*/kamailio/modules/tls.so"):
            print("kamailio-tls-modules is missing: kamailio skipped over TLS", file=sys.stderr)
            targets = [t for t in targets if not t.startswith("kamailio")]
    if LINK["transport"] == "tls" and shutil.which("stunnel4") is None:
        raise SystemExit("--link tls needs stunnel4 (apt-get install stunnel4): Debian's SIPp has no TLS")
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="direct,sipguard,kamailio")
    parser.add_argument("--rates", default="250,500,1000,1500,2000,3000")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--hold-ms", type=int, default=1000)
    parser.add_argument("--concurrent", type=int, default=10000)
    parser.add_argument("--smoke", action="store_true", help="a few seconds at a low rate (CI)")
    parser.add_argument("--no-install", action="store_true")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="µs latency probe calls/s (0: off)")
    parser.add_argument("--sipp-transport", choices=("u1", "un"), default="u1",
                        help="SIPp UDP sockets: u1 one for all calls (a trunk), un one per call")
    parser.add_argument("--in-dialog", choices=("route", "listen"), default="route",
                        help="where the UAC sends ACK and BYE: to the Record-Route's address, as a UA does (route), or to "
                             "the address it sent the INVITE to, as SIPp does on its own (listen)")
    parser.add_argument("--link", choices=("udp", "tcp", "tls"), default="udp",
                        help="what the calls travel over, UAC to proxy to UAS (tls: stunnel carries SIPp's TCP)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="pass over the targets this many times, alternating them (noisy machines: read the medians)")
    parser.add_argument("--loopwatch", action="store_true",
                        help="time every callback of sipguard's event loops (bench/loopwatch.py; one rate per run)")
    args = parser.parse_args(argv)
    SIPP_TRANSPORT["mode"] = args.sipp_transport
    IN_DIALOG["to"] = args.in_dialog
    LINK["transport"] = args.link
    if args.smoke:
        args.rates, args.duration_s, args.hold_ms, args.concurrent = "50", 2.0, 200, 200
    rates = [int(r) for r in args.rates.split(",")]
    args.probe_port = free_port(PROBE_UAS_IP)
    targets = ensure_tools([t.strip() for t in args.targets.split(",") if t.strip()], not args.no_install)
    kinds: dict[str, Callable[[Path, int, int], Target]] = {"direct": Direct, "sipguard": Sipguard,
                                                             "kamailio": Kamailio, "kamailio-htable": KamailioHtable}
    for name in targets:
        named = re.fullmatch(r"sipguard(-redis)?(?:-(\d+)w)?", name)
        if name not in kinds and named is not None:
            kinds[name] = functools.partial(Sipguard, workers=int(named.group(2) or 1),
                                            store="redis" if named.group(1) else "memory")
        elif name not in kinds:
            raise SystemExit(f"unknown target {name!r}: direct, sipguard[-redis][-Nw], kamailio, kamailio-htable")
    report = Report(machine())
    print(f"machine: {report.machine}")
    print(f"calls held {args.hold_ms} ms, {args.duration_s:g} s per rate; latencies in ms, timed in the SIPp scenario;"
          f" SIPp transport {args.sipp_transport if args.link == 'udp' else 't1'}, link {args.link}")
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="sipguard-bench-") as tmp:
        if args.link == "tls":
            make_certificate(Path(tmp))
        for round_no in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_no} of {args.rounds}", flush=True)
            for name in targets:
                workdir = Path(tmp) / f"{name}-{round_no}"
                workdir.mkdir()
                bench_target(kinds[name], rates, args, workdir, report, round_no)
    print()
    print(HEADER)
    for step in report.steps:
        print(_row(step))
    print()
    for line in added_latency(report.steps):
        print(line)
    if args.rounds == 1:
        for step in (s for s in report.steps if s.handoffs is not None):
            print(f"{step.target} at {step.rate}/s hands {step.handoffs:.2f} datagrams per call to another worker")
        for step in (s for s in report.steps if s.shed):
            print(f"{step.target} at {step.rate}/s: {step.shed} of the {step.failed} failed calls were 503s of its "
                  "overload control")
    if args.rounds > 1:
        print()
        for line in medians(report.steps):
            print(line)
    print("capacity (highest rate with 0 failed calls): "
          + ", ".join(f"{k} {v}/s" for k, v in report.capacity.items()))
    cap = report.capacity
    for ours in (name for name in cap if name.startswith("sipguard")):
        for other in ("kamailio", "kamailio-htable", "direct"):
            if cap.get(other):
                print(f"ratio {ours}/{other}: {cap[ours] / cap[other]:.2f}")
    if report.held:
        print(f"held calls: {report.held}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": report.machine, "steps": [asdict(s) for s in report.steps],
                                               "capacity": report.capacity, "held": report.held}, indent=2))
    ok = all(step.failed == 0 for step in report.steps if step.rate == rates[0])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
