"""What the auto-dialer's mirror between workers costs: a worker's detector records every attempt and end of
its own calls and encodes them for the other workers (``DialerDetector.mirror``), whose detectors apply them.

    python -m bench.mirror [--calls 20000] [--repeat 5]

Replays one trunk's calls (two window keys each, as the engine gives them) through a detector whose mirror
collects the records, then applies every record to a second detector, and prints the µs per call of each
side (median of the repeats) and how many records and bytes a call costs.  Counted with callgrind it is
repeatable (BENCHMARKS.md, "Instructions per call").  Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from sipguard.policy.autodialer import DialerDetector

KEYS = ("acme", "acme|10.0.0.1")


def once(calls: int) -> tuple[float, float, int, int]:
    """(µs per call recording and encoding, µs per call applying, records, bytes)."""
    mine, theirs = DialerDetector(), DialerDetector()
    records: list[bytes] = []
    mine.mirror = records.append
    t0 = time.perf_counter()
    for n in range(calls):
        now = 1000.0 + n / 3000
        call = f"call-{n};tag-{n}"
        mine.attempt(KEYS, "+3250123400", call, now)
        mine.ended(call, True, 1.0, now + 1.0)
    t1 = time.perf_counter()
    for record in records:
        theirs.apply(record)
    t2 = time.perf_counter()
    return (t1 - t0) / calls * 1e6, (t2 - t1) / calls * 1e6, len(records), sum(len(r) for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    runs = [once(args.calls) for _ in range(args.repeat)]
    record = statistics.median(r[0] for r in runs)
    apply = statistics.median(r[1] for r in runs)
    records, size = runs[0][2], runs[0][3]
    print(f"{args.calls} calls x {args.repeat} repeats: recording and encoding {record:.2f} µs per call, "
          f"applying {apply:.2f} µs per call (medians); {records / args.calls:.1f} records, "
          f"{size / args.calls:.0f} bytes per call")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
