"""Where a sipguard worker's time goes under load: every datagram and timer callback, timed.

    python -m bench.loopwatch PREFIX -- run --policy P [--workers N] ...   (sipguard, watched)
    python -m bench.loopwatch --report PREFIX                              (the summary)

``bench.run --loopwatch`` starts sipguard this way and prints the summary after the run.
The watch wraps, from outside, the ways work enters a worker's event loop -- the receiver
of each UDP listener, the reader of the datagrams other workers hand over (``--workers``), and
the pump's loop timer -- and records for each callback its start
(the monotonic clock), its wall time, the thread's CPU time in it, and what it was (INVITE,
ACK, BYE, another request, a response, the hand-off reader, the timer).  A datagram read from the
shared listen socket for another worker counts as read there (its kind); the owner's work on it is
the hand-off reader's.  sipguard itself is not changed.  Each
worker writes ``PREFIX.<pid>.json`` when it stops.

The summary, per worker: CPU µs per callback by kind (p50 / p90 / p99), the share of the time
the loop was busy, and its *busy periods* -- callbacks back to back, each starting within
30 µs of the previous one's end -- whose length is the queue a datagram arriving in a burst
waits in, and callbacks per millisecond (how bursty the arrivals are).  The first and last
``--trim-s`` seconds are left out (start and drain of the load).

Costs two clock reads per callback (one a system call): compare timings only between watched runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["install", "summarize", "main"]

GAP_S = 30e-6  # callbacks closer than this belong to one busy period
KINDS = {b"INV": "INVITE", b"ACK": "ACK", b"BYE": "BYE", b"SIP": "response"}
TIMER = "timer"
OTHER = "other request"
HANDED = "handed"  # datagrams other workers handed over (one callback reads up to 64)
_NAMES = [*KINDS.values(), OTHER, TIMER, HANDED]
_CODE = {name: i for i, name in enumerate(_NAMES)}


class Recorder:
    """Callback records of one process, in flat arrays (cheap to append)."""

    def __init__(self) -> None:
        self.start = array("d")
        self.wall = array("d")
        self.cpu = array("d")
        self.kind = array("b")

    def add(self, start: float, wall: float, cpu: float, kind: int) -> None:
        self.start.append(start)
        self.wall.append(wall)
        self.cpu.append(cpu)
        self.kind.append(kind)

    def dump(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"kinds": _NAMES, "start": list(self.start), "wall": list(self.wall), "cpu": list(self.cpu),
                       "kind": list(self.kind)}, out)


def kind_of(data: bytes) -> int:
    return _CODE[KINDS.get(data[:3], OTHER)]


def watch_receiver(receiver: Callable[[bytes, Any], None], rec: Recorder) -> Callable[[bytes, Any], None]:
    clock, cputime, add = time.perf_counter, time.thread_time, rec.add

    def watched(data: bytes, addr: Any) -> None:
        c0 = cputime()
        t0 = clock()
        try:
            receiver(data, addr)
        finally:
            add(t0, clock() - t0, cputime() - c0, kind_of(data))

    return watched


def watch_call_at(call_at: Callable[..., Any], rec: Recorder) -> Callable[..., Any]:
    clock, cputime, add, timer = time.perf_counter, time.thread_time, rec.add, _CODE[TIMER]

    def watched_call_at(when: float, callback: Callable[[], None]) -> Any:
        def timed() -> None:
            c0 = cputime()
            t0 = clock()
            try:
                callback()
            finally:
                add(t0, clock() - t0, cputime() - c0, timer)

        return call_at(when, timed)

    return watched_call_at


def install(prefix: str) -> None:
    """Patch the server (before it starts or forks) so that each process records and dumps at stop."""
    from sipguard import server as server_mod
    from sipguard.transport import udp

    records: dict[int, Recorder] = {}  # per pid: a forked worker starts its own

    def recorder() -> Recorder:
        return records.setdefault(os.getpid(), Recorder())

    set_receiver = udp.UdpListener.set_receiver

    def patched_set_receiver(self: udp.UdpListener, receiver: Callable[[bytes, Any], None]) -> None:
        set_receiver(self, watch_receiver(receiver, recorder()))

    make_pump = server_mod.Server.make_pump

    def patched_make_pump(self: server_mod.Server, senders: Any) -> Any:
        pump = make_pump(self, senders)
        pump.call_at = watch_call_at(pump.call_at, recorder())
        return pump

    read_inbox = server_mod.Server._read_inbox

    def patched_read_inbox(self: server_mod.Server) -> None:
        rec = recorder()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        try:
            read_inbox(self)
        finally:
            rec.add(t0, time.perf_counter() - t0, time.thread_time() - c0, _CODE[HANDED])

    stop = server_mod.Server.stop

    async def patched_stop(self: server_mod.Server) -> None:
        rec = records.pop(os.getpid(), None)  # stop may run twice (signal, then serve_forever's end): dump once
        if rec is not None and len(rec.start):
            rec.dump(f"{prefix}.{os.getpid()}.json")
        await stop(self)

    udp.UdpListener.set_receiver = patched_set_receiver  # type: ignore[method-assign]
    server_mod.Server.make_pump = patched_make_pump  # type: ignore[method-assign]
    server_mod.Server.stop = patched_stop  # type: ignore[method-assign]
    server_mod.Server._read_inbox = patched_read_inbox  # type: ignore[method-assign]


def _pct(values: Sequence[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * (len(values) - 1)))] if values else 0.0


def summarize(path: str, trim_s: float = 3.0) -> dict[str, Any]:
    """The figures of one worker's dump (see the module's doc)."""
    with open(path, encoding="utf-8") as src:
        d = json.load(src)
    names = d["kinds"]
    rows = sorted(zip(d["start"], d["wall"], d["cpu"], d["kind"]))
    if rows:
        first, last = rows[0][0] + trim_s, rows[-1][0] - trim_s
        if last > first:
            rows = [r for r in rows if first <= r[0] <= last]
    out: dict[str, Any] = {"callbacks": len(rows)}
    if len(rows) < 2:
        return out
    span = rows[-1][0] + rows[-1][1] - rows[0][0]
    out["span_s"] = span
    out["busy_share"] = sum(r[1] for r in rows) / span
    out["cpu_share"] = sum(r[2] for r in rows) / span
    by_kind: dict[str, list[float]] = {}
    for _t, _w, cpu, k in rows:
        by_kind.setdefault(names[k], []).append(cpu * 1e6)
    out["cpu_us"] = {}
    for name, values in sorted(by_kind.items()):
        values.sort()
        out["cpu_us"][name] = {"n": len(values), "per_s": len(values) / span, "p50": _pct(values, 0.5),
                               "p90": _pct(values, 0.9), "p99": _pct(values, 0.99)}
    periods: list[float] = []
    begin, end = rows[0][0], rows[0][0] + rows[0][1]
    for t, wall, _c, _k in rows[1:]:
        if t - end >= GAP_S:
            periods.append(end - begin)
            begin = t
        end = t + wall
    periods.append(end - begin)
    periods.sort()
    out["busy_periods"] = {"n": len(periods), "p50_us": _pct(periods, 0.5) * 1e6,
                           "p90_us": _pct(periods, 0.9) * 1e6, "p99_us": _pct(periods, 0.99) * 1e6,
                           "max_us": periods[-1] * 1e6}
    per_ms = [0] * (int(span * 1000) + 1)
    for t, _w, _c, _k in rows:
        per_ms[int((t - rows[0][0]) * 1000)] += 1
    per_ms.sort()
    out["callbacks_per_ms"] = {"p50": _pct(per_ms, 0.5), "p90": _pct(per_ms, 0.9), "p99": _pct(per_ms, 0.99),
                               "max": per_ms[-1]}
    return out


def report_lines(prefix: str, trim_s: float = 3.0) -> list[str]:
    lines: list[str] = []
    for path in sorted(glob.glob(f"{glob.escape(prefix)}.*.json")):
        s = summarize(path, trim_s)
        if "span_s" not in s:
            lines.append(f"{path}: {s['callbacks']} callbacks, too few to summarize")
            continue
        bp, pm = s["busy_periods"], s["callbacks_per_ms"]
        lines.append(f"{os.path.basename(path)}: {s['callbacks']} callbacks in {s['span_s']:.1f} s; loop busy "
                     f"{100 * s['busy_share']:.1f}% (CPU {100 * s['cpu_share']:.1f}%)")
        for name, k in s["cpu_us"].items():
            lines.append(f"  {name:<14} {k['n']:8d} ({k['per_s']:5.0f}/s)  CPU µs p50 {k['p50']:6.0f}"
                         f"  p90 {k['p90']:6.0f}  p99 {k['p99']:6.0f}")
        lines.append(f"  busy periods   {bp['n']} : µs p50 {bp['p50_us']:.0f}  p90 {bp['p90_us']:.0f}"
                     f"  p99 {bp['p99_us']:.0f}  max {bp['max_us']:.0f}")
        lines.append(f"  callbacks per ms: p50 {pm['p50']}  p90 {pm['p90']}  p99 {pm['p99']}  max {pm['max']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--report":
        parser = argparse.ArgumentParser(prog="python -m bench.loopwatch --report")
        parser.add_argument("prefix")
        parser.add_argument("--trim-s", type=float, default=3.0)
        args = parser.parse_args(argv[1:])
        lines = report_lines(args.prefix, args.trim_s)
        print("\n".join(lines) if lines else f"no dumps at {args.prefix}.*.json")
        return 0 if lines else 1
    if len(argv) < 2 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    install(argv[0])
    from sipguard.cli import main as sipguard_main

    return sipguard_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main())
