"""bench/loopwatch.py: the summary of a worker's callback records (busy periods, CPU by kind)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import loopwatch
from bench.loopwatch import Recorder, kind_of, summarize, watch_call_at, watch_receiver


def _dump(tmp_path: Path, rows: list[tuple[float, float, float, str]]) -> str:
    rec = Recorder()
    for start, wall, cpu, kind in rows:
        rec.add(start, wall, cpu, loopwatch._CODE[kind])
    path = str(tmp_path / "w.1.json")
    rec.dump(path)
    return path


def test_busy_periods_join_callbacks_closer_than_the_gap(tmp_path: Path) -> None:
    ms = 1e-3
    rows = [
        (0.000, 0.1 * ms, 0.1 * ms, "INVITE"),   # period 1: 0 .. 0.3 ms (next starts 10 µs after this ends)
        (0.110 * ms, 0.19 * ms, 0.15 * ms, "response"),
        (1.000 * ms, 0.05 * ms, 0.05 * ms, "ACK"),  # period 2: alone, 50 µs (the gap before it is 0.7 ms)
        (2.000 * ms, 0.2 * ms, 0.2 * ms, "BYE"),    # period 3: 0.2 + 0.02 gap + 0.1 = 0.32 ms
        (2.220 * ms, 0.1 * ms, 0.1 * ms, "timer"),
    ]
    s = summarize(_dump(tmp_path, rows), trim_s=0.0)
    assert s["callbacks"] == 5
    assert s["busy_periods"]["n"] == 3
    assert s["busy_periods"]["max_us"] == pytest.approx(320.0)
    assert s["busy_periods"]["p50_us"] == pytest.approx(300.0)
    assert s["span_s"] == pytest.approx(2.32 * ms)
    assert s["busy_share"] == pytest.approx(0.64 / 2.32)
    assert s["cpu_us"]["response"]["p50"] == pytest.approx(150.0)
    assert set(s["cpu_us"]) == {"INVITE", "response", "ACK", "BYE", "timer"}
    assert s["callbacks_per_ms"]["max"] == 2
    # 40 µs apart instead of 20: two periods, not one
    rows[-1] = (2.240 * ms, 0.1 * ms, 0.1 * ms, "timer")
    assert summarize(_dump(tmp_path, rows), trim_s=0.0)["busy_periods"]["n"] == 4


def test_trim_leaves_out_the_start_and_the_end(tmp_path: Path) -> None:
    rows = [(t * 0.5, 1e-4, 1e-4, "INVITE") for t in range(21)]  # 0 .. 10 s, one every 0.5 s
    s = summarize(_dump(tmp_path, rows), trim_s=3.0)
    assert s["callbacks"] == 9  # 3.0 .. 7.0 s


def test_kinds_and_wrappers_record_what_ran() -> None:
    assert loopwatch._NAMES[kind_of(b"INVITE sip:x SIP/2.0")] == "INVITE"
    assert loopwatch._NAMES[kind_of(b"SIP/2.0 200 OK")] == "response"
    assert loopwatch._NAMES[kind_of(b"OPTIONS sip:x SIP/2.0")] == "other request"
    rec = Recorder()
    seen: list[bytes] = []
    watch_receiver(lambda data, addr: seen.append(data), rec)(b"ACK sip:x SIP/2.0", ("127.0.0.1", 5060))
    armed: list[object] = []
    watch_call_at(lambda when, cb: armed.append(cb), rec)(1.0, lambda: seen.append(b"tick"))
    armed[0]()  # type: ignore[operator]
    assert seen == [b"ACK sip:x SIP/2.0", b"tick"]
    assert [loopwatch._NAMES[k] for k in rec.kind] == ["ACK", "timer"]
    assert all(w >= 0 for w in rec.wall) and len(rec.cpu) == 2


def test_a_dump_reads_back(tmp_path: Path) -> None:
    path = _dump(tmp_path, [(0.0, 1e-4, 5e-5, "BYE")])
    data = json.loads(Path(path).read_text())
    assert data["kinds"][data["kind"][0]] == "BYE" and data["cpu"] == [5e-5]
    assert summarize(path) == {"callbacks": 1}
