"""The timer wheel: deadlines fire earliest first, and nothing outlives what it belongs to."""

from __future__ import annotations

import gc
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import given, settings
from hypothesis import strategies as st

from sipguard.sip.timers import TimerOwner, TimerWheel

if TYPE_CHECKING:
    from bench.call import Harness


def owner() -> TimerOwner:
    """A transaction or dialog as the wheel sees it."""
    return TimerOwner()


def test_due_timers_come_earliest_first_ties_in_the_order_set_and_only_when_due() -> None:
    wheel = TimerWheel()
    a, b, c = owner(), owner(), owner()
    wheel.set(a, "B", 1032.0)
    wheel.set(b, "A", 1000.504)  # same 10 ms tick as the next two
    wheel.set(c, "A", 1000.501)
    wheel.set(a, "A", 1000.501)  # ties with c's, set after it
    wheel.set(b, "K", 1005.0)
    assert wheel.next_deadline() == 1000.501
    assert wheel.pop_due(1000.502) == [(c, "A"), (a, "A")]  # b's 1000.504 is in the tick but not due
    assert wheel.next_deadline() == 1000.504
    assert wheel.pop_due(1010.0) == [(b, "A"), (b, "K")]
    assert b.deadlines == {} and a.deadlines == {"B": 1032.0}
    assert len(wheel) == 1 and wheel.next_deadline() == 1032.0


def test_a_replaced_or_cancelled_deadline_never_fires() -> None:
    wheel = TimerWheel()
    o = owner()
    wheel.set(o, "C", 1180.0)
    wheel.set(o, "C", 1360.0)  # Timer C restarted by a provisional
    assert len(wheel) == 1 and o.deadlines == {"C": 1360.0}
    wheel.set(o, "A", 1000.5)
    assert wheel.next_deadline() == 1000.5  # an earlier deadline files the owner earlier at once
    wheel.cancel(o, "A")
    assert wheel.pop_due(1000.5) == []  # the cancelled A does not fire
    assert wheel.pop_due(1200.0) == []  # nor the replaced 1180
    assert wheel.next_deadline() == 1360.0  # filed again at its earliest
    assert wheel.pop_due(1360.0) == [(o, "C")]
    assert len(wheel) == 0 and wheel.next_deadline() is None


def test_an_owner_with_no_deadline_left_is_not_held() -> None:
    wheel = TimerWheel()
    txn, dialog = owner(), owner()
    held = sys.getrefcount(txn)
    wheel.set(txn, "A", 1000.5)
    wheel.set(txn, "B", 1032.0)
    assert sys.getrefcount(txn) == held + 1  # filed once, whatever its number of timers
    wheel.cancel(txn, "B")
    wheel.cancel(txn, "A")  # its last one
    assert sys.getrefcount(txn) == held and len(wheel) == 0 and wheel.next_deadline() is None
    wheel.set(dialog, "timeout", 8200.0)  # two hours away
    wheel.set(txn, "K", 1005.0)
    held = sys.getrefcount(dialog)
    wheel.cancel_all(dialog)  # it ended
    assert sys.getrefcount(dialog) == held - 1, "the wheel still holds an ended dialog"
    assert len(wheel) == 1 and wheel.next_deadline() == 1005.0


def test_emptied_ticks_do_not_pile_up() -> None:
    wheel = TimerWheel()
    o = owner()
    for i in range(20000):  # a deadline moved earlier 20,000 times, each time to a new tick
        wheel.set(o, "timeout", 8200.0 - i * 0.05)
    assert len(wheel) == 1
    assert len(wheel._ticks) <= 2 * len(wheel._buckets) + 1025
    assert wheel.pop_due(10000.0) == [(o, "timeout")]


_OPS = st.lists(st.tuples(st.sampled_from(["set", "cancel", "cancel_all", "pop"]), st.integers(0, 3),
                          st.sampled_from("ABCM"), st.floats(0.0, 3.0)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_OPS)
def test_the_wheel_fires_exactly_what_a_plain_table_says_is_due(ops: list[tuple[str, int, str, float]]) -> None:
    """Against a plain table of deadlines: every due timer fires once, at or after its deadline and never
    before; a replaced or cancelled one never; an owner's due timers earliest first."""
    wheel = TimerWheel()
    owners = [owner() for _ in range(4)]
    table: dict[tuple[int, str], float] = {}
    now = 1000.0
    for op, i, name, x in ops:
        if op == "set":
            table[(i, name)] = now + x
            wheel.set(owners[i], name, now + x)
        elif op == "cancel":
            table.pop((i, name), None)
            wheel.cancel(owners[i], name)
        elif op == "cancel_all":
            for key in [k for k in table if k[0] == i]:
                del table[key]
            wheel.cancel_all(owners[i])
        else:
            now += x
            fired = wheel.pop_due(now)
            expected = {k for k, at in table.items() if at <= now}
            got = [(owners.index(o), n) for o, n in fired]
            assert len(got) == len(set(got)) and set(got) == expected
            for i_ in range(4):
                mine = [table[k] for k in got if k[0] == i_]
                assert mine == sorted(mine)
            for k in expected:
                del table[k]
        assert len(wheel) == len(table)
        assert all(owners[i_].deadlines == {n: at for (j, n), at in table.items() if j == i_} for i_ in range(4))
        nxt = wheel.next_deadline()
        assert (nxt is None) == (not table)
        assert nxt is None or nxt <= min(table.values())  # never after the earliest: at most an early wake-up


def test_finished_calls_leave_no_timers_behind() -> None:
    """Through the whole server: after calls end, every timer left belongs to a live transaction."""
    from bench.call import Harness

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(300):
            h.call(n)  # INVITE .. BYE/200, 10 ms of clock per call
        core = h.server.core
        wheel = core._timers
        owners = {id(o): o for bucket in wheel._buckets.values() for o in bucket}
        assert core.dialog_count == 0
        assert owners, "transactions still in Timer J/K/M/D keep timers"
        assert all(o.alive for o in owners.values()), "an ended transaction or dialog is still in the wheel"
        assert len(wheel) == sum(len(o.deadlines) for o in owners.values())
        h.clock.advance(40.0)  # past 64*T1: every transaction ends
        assert len(wheel) == 0 and core.next_deadline() is None


def _blocks_after_timers(h: Harness) -> int:
    """Memory blocks in use once every timer has run and the memos are emptied (what calls leave behind)."""
    from sipguard.sip import parser
    from sipguard.sip.memo import Memo

    h.clock.advance(40.0)  # past 64*T1: every transaction ends
    gc.collect()
    for memo in [o for o in gc.get_objects() if isinstance(o, Memo)]:
        memo.cache_clear()
    parser._LINES.clear()
    parser._REQ_LINES.clear()  # the light path's readings of header lines: bounded, not what a call leaves
    return sys.getallocatedblocks()


def test_finished_calls_leave_no_memory_behind() -> None:
    """The objects the GC never walks (docs/compiled.md: the transactions, dialogs, messages) must be freed by
    reference counting alone: a reference cycle through one of them would keep every call's objects for good."""
    from bench.call import Harness

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(2000):  # warm: the metrics' label sets, the bounded windows of the source and the shedder
            h.call(n)
        before = _blocks_after_timers(h)
        for n in range(2000, 6000):
            h.call(n)
        grown = _blocks_after_timers(h) - before
    # what stays is bounded (the auto-dialer's window of the one source, the shedder's recent Call-IDs): about
    # 0.4-0.9 blocks per call here; a call kept whole (its transactions, messages, headers, dialog) would be
    # over 100 blocks per call
    assert grown < 2 * 4000, f"{grown} memory blocks more after 4,000 finished calls"
