"""Past capacity: twice what a proxy carries, offered from one socket, and what gets through.

    python -m bench.overload [--targets sipguard-2w,kamailio-htable] [--capacity sipguard-2w=4000,...]
                             [--factor 2] [--duration-s 20] [--rounds N] [--in-dialog route|listen] [--smoke]

Per target: a SIPp UAS; the proxy; a SIPp UAC offering ``factor`` x the target's capacity for
``--duration-s`` seconds (``sipp_scenarios/bench/uac_overload.xml``: a 503 is ACKed and ends the call,
it is no failure), every call from one socket as a trunk sends them; beside it, from another socket of
the same account, emergency calls (112) at 10/s over the same stretch; then half the capacity for 10 s.
ACK and BYE go to the proxy's Record-Route, as a UA sends them (``--in-dialog listen``: to the address the
INVITE went to, SIPp's own habit; bench/run.py).
Reported: goodput (calls that got their 200 and their BYE answered, per second of the overload, and as a
share of the capacity), the INVITEs answered 503 and the p99 of their INVITE->503, the calls that failed
(neither completed nor answered: timeouts), the emergency calls that failed, the proxy's CPU, and for
sipguard, when the last INVITE was shed after the load dropped (its ``sipguard_overload_shed_total``
polled every 0.25 s on each worker's admin port).  BENCHMARKS.md: the table and the command.

``direct`` is the baseline measured in the same run: the UAC calls a SIPp UAS (``uas_shed.xml``) that answers
a random ``1 - 1/factor`` of the INVITEs 503 at once (never a 112 call) and the rest as the benchmark UAS does,
so its INVITE->503 is what SIPp and the host add at the offered rate with nothing in between (no CPU, no
"after": the UAS sheds its share then too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import tempfile

from .run import (IN_DIALOG, SCENARIOS, SIPP_TRANSPORT, UAS_IP, Direct, KamailioHtable, Sipguard, Target, _percentile,
                  cpu_seconds, free_port, machine, shed_total, sipp_cmd, sipp_outcome, start_uas)
from .policy import UAC_IP

EMERGENCY_RATE = 10  # calls/s to 112 during the overload
AFTER_S = 10.0  # the load at half capacity after the overload


@dataclass
class Outcome:
    target: str
    capacity: int
    offered: int  # calls/s
    calls: int
    completed: int
    shed: int  # answered 503
    failed: int  # neither: timed out, or another error
    shed_p99_ms: float | None
    shed_p50_ms: float | None
    shed_steady_p99_ms: float | None  # after the first 2 s of the overload (the onset, when the state starts)
    invite_p99_ms: float | None  # of the completed calls
    emergency_sent: int
    emergency_failed: int
    cpu_cores: float | None
    last_shed_after_drop_s: float | None  # None: no shed after the drop (or not sipguard)
    after_failed: int | None  # calls at half capacity after the overload that failed or were shed (direct: None)

    @property
    def goodput_share(self) -> float:
        return self.completed / (self.capacity * self.calls / self.offered)


def run_sipp(workdir: Path, scenario: str, target: Target, rate: int, calls: int, service: str, tag: str,
             timeout_s: float) -> tuple[int, int, dict[str, list[float]]]:
    """One bounded SIPp UAC: (successful, failed, {rtd number: [ms]})."""
    rundir = workdir / tag
    rundir.mkdir(exist_ok=True)
    cmd = sipp_cmd(scenario, UAC_IP, free_port(UAC_IP), "-s", service, "-r", str(rate), "-m", str(calls),
                   "-d", "1000", "-trace_rtt", "-rtt_freq", "1", "-l", str(max(rate * 4, 100)),
                   f"{target.host}:{target.port}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=rundir)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return sipp_outcome(out, rundir, calls)


def overload(kind: type[Target] | object, capacity: int, args: argparse.Namespace, workdir: Path) -> Outcome:
    uas_port = free_port(UAS_IP)
    if kind is Direct:  # SIPp to SIPp, the UAS answering the excess 503 at once: what SIPp and the host add
        scenario = workdir / "uas_shed.xml"
        scenario.write_text((SCENARIOS / "uas_shed.xml").read_text().replace(
            'value="0.5"', f'value="{1 - 1 / args.factor:.4f}"'))
        uas = start_uas(workdir, uas_port, str(scenario))
    else:
        uas = start_uas(workdir, uas_port)
    target: Target = kind(workdir, uas_port, free_port("127.0.0.7"))  # type: ignore[operator]
    offered = int(capacity * args.factor)
    calls = int(offered * args.duration_s)
    try:
        target.start()
        time.sleep(0.5)
        cpu0 = cpu_seconds(target.pid) if target.pid else None
        results: dict[str, tuple[int, int, dict[str, list[float]]]] = {}
        timeline: list[tuple[float, float]] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                try:
                    timeline.append((time.monotonic(), shed_total(target)))
                except OSError:
                    pass
                stop.wait(0.25)

        sos_calls = int(EMERGENCY_RATE * args.duration_s)
        threads = [
            threading.Thread(target=lambda: results.__setitem__("main", run_sipp(
                workdir, "uac_overload.xml", target, offered, calls, "+3250123400", f"{target.name}-over",
                args.duration_s + 60))),
            threading.Thread(target=lambda: results.__setitem__("sos", run_sipp(
                workdir, "uac_overload.xml", target, EMERGENCY_RATE, sos_calls, "112", f"{target.name}-sos",
                args.duration_s + 60))),
        ]
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.monotonic()
        for t in threads:
            t.start()
        drop = start + args.duration_s  # SIPp sends its last new call then
        time.sleep(max(0.0, drop - time.monotonic()))
        after = run_sipp(workdir, "uac_overload.xml", target, capacity // 2, int(capacity // 2 * AFTER_S),
                         "+3250123400", f"{target.name}-after", AFTER_S + 60)
        for t in threads:
            t.join(timeout=args.duration_s + 120)
        cpu1 = cpu_seconds(target.pid) if target.pid else None
        elapsed = time.monotonic() - start
        stop.set()
        poller.join(timeout=5)
    finally:
        target.stop()
        uas.kill()
        uas.wait()
    ok, failed, rtds = results.get("main", (0, calls, {}))
    sos_ok, sos_failed, sos_rtds = results.get("sos", (0, sos_calls, {}))
    shed = len(rtds.get("3", []))
    last_after = None
    for (t0, v0), (t1, v1) in zip(timeline, timeline[1:]):
        if v1 > v0 and t1 > drop:
            last_after = t1 - drop
    shed_ms = rtds.get("3", [])  # in the order SIPp wrote them: in time
    onset = int(len(shed_ms) * 2 / args.duration_s)
    return Outcome(target.name, capacity, offered, calls, ok - shed, shed, failed, _percentile(shed_ms, 0.99),
                   _percentile(shed_ms, 0.5), _percentile(shed_ms[onset:], 0.99),
                   _percentile(rtds.get("1", []), 0.99), sos_calls, sos_failed + len(sos_rtds.get("3", [])),
                   (cpu1 - cpu0) / elapsed if cpu0 is not None and cpu1 is not None else None, last_after,
                   None if kind is Direct else after[1] + len(after[2].get("3", [])))


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="sipguard-2w,kamailio-htable")
    parser.add_argument("--capacity", default="sipguard-2w=4000,kamailio-htable=4000",
                        help="TARGET=calls/s, each target's capacity (bench.run: the highest rate with 0 failed)")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--in-dialog", choices=("route", "listen"), default="route",
                        help="where the UAC sends ACK and BYE (bench.run's option)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds at a low rate (CI)")
    parser.add_argument("--json", help="write the outcomes here")
    args = parser.parse_args(argv)
    SIPP_TRANSPORT["mode"] = "u1"
    IN_DIALOG["to"] = args.in_dialog
    capacity = {k: int(v) for k, v in (item.split("=") for item in args.capacity.split(","))}
    if "direct" not in capacity:  # the baseline is offered what the proxies are
        capacity["direct"] = max(capacity.values())
    if args.smoke:
        args.duration_s = 3.0
        capacity = {k: 100 for k in capacity}
    kinds: dict[str, object] = {"direct": Direct, "kamailio-htable": KamailioHtable,
                                "sipguard-2w": lambda w, u, p: Sipguard(w, u, p, workers=2),
                                "sipguard": Sipguard}
    print(f"machine: {machine()}; {args.factor:g} x capacity for {args.duration_s:g} s from one socket, "
          f"112 at {EMERGENCY_RATE}/s beside it, then half the capacity for {AFTER_S:g} s; ACK and BYE to the "
          + ("Record-Route" if args.in_dialog == "route" else "listen address"))
    print(f"{'target':<16}{'cap/s':>6}{'offer/s':>8}{'done/s':>8}{'goodput':>8}{'503':>7}{'p50/p99/steady':>15}"
          f"{'failed':>7}{'INV p99':>8}{'112 bad':>8}{'cores':>6}{'last shed':>10}{'after':>6}")
    outcomes: list[Outcome] = []
    for round_no in range(args.rounds):
        for name in args.targets.split(","):
            with tempfile.TemporaryDirectory(prefix="sipguard-overload-") as tmp:
                o = overload(kinds[name], capacity[name], args, Path(tmp))
            outcomes.append(o)
            print(f"{o.target:<16}{o.capacity:>6}{o.offered:>8}{o.completed / args.duration_s:>8.0f}"
                  f"{o.goodput_share:>8.0%}{o.shed:>7}{_fmt(o.shed_p50_ms, 0):>5}/{_fmt(o.shed_p99_ms, 0):>4}/"
                  f"{_fmt(o.shed_steady_p99_ms, 0):>4}{o.failed:>7}"
                  f"{_fmt(o.invite_p99_ms, 0):>8}{o.emergency_failed:>5}/{o.emergency_sent:<3}"
                  f"{_fmt(o.cpu_cores, 2):>5}{_fmt(o.last_shed_after_drop_s):>10}{_fmt(o.after_failed, 0):>6}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(o) for o in outcomes], indent=1))
    if args.rounds > 1:
        for name in args.targets.split(","):
            mine = [o for o in outcomes if o.target == name]
            print(f"{name}: median goodput {statistics.median(o.goodput_share for o in mine):.0%}, failed "
                  f"{'/'.join(str(o.failed) for o in mine)}, 112 failed {'/'.join(str(o.emergency_failed) for o in mine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
