"""The timer wheel: deadlines fire earliest first, and nothing outlives what it belongs to."""

from __future__ import annotations

import gc
import sys
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from sipguard.sip.timers import TimerWheel

if TYPE_CHECKING:
    from bench.call import Harness


class Owner:
    """A transaction or dialog as the wheel sees it (a plain object, so a weakref can watch it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.deadlines: dict[str, float] = {}
        self.alive = True

    def __repr__(self) -> str:
        return self.name


def test_due_timers_come_earliest_first_ties_in_the_order_set_and_only_when_due() -> None:
    wheel = TimerWheel()
    a, b, c = Owner("a"), Owner("b"), Owner("c")
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


def test_set_replaces_and_cancel_removes_at_once() -> None:
    wheel = TimerWheel()
    o = Owner("txn")
    wheel.set(o, "C", 1180.0)
    wheel.set(o, "C", 1360.0)  # Timer C restarted by a provisional
    assert len(wheel) == 1 and wheel.next_deadline() == 1360.0
    wheel.set(o, "A", 1000.5)
    wheel.cancel(o, "A")
    assert wheel.next_deadline() == 1360.0  # the cached earliest follows a cancel
    assert wheel.pop_due(1200.0) == []  # the replaced 1180 does not fire
    assert wheel.pop_due(1360.0) == [(o, "C")]
    assert len(wheel) == 0 and wheel.next_deadline() is None


def test_an_owner_that_ends_is_not_kept_alive_by_its_timers() -> None:
    wheel = TimerWheel()
    dialog = Owner("dialog")
    wheel.set(dialog, "timeout", 8200.0)  # two hours away
    txn = Owner("txn")
    wheel.set(txn, "K", 1005.0)
    watch = weakref.ref(dialog)
    wheel.cancel_all(dialog)
    dialog.alive = False
    del dialog
    gc.collect()
    assert watch() is None, "the wheel still holds an ended dialog"
    assert len(wheel) == 1 and wheel.next_deadline() == 1005.0


def test_emptied_ticks_do_not_pile_up() -> None:
    wheel = TimerWheel()
    o = Owner("dialog")
    for i in range(20000):  # a dialog timeout re-armed 20,000 times, each in a new tick
        wheel.set(o, "timeout", 8200.0 + i * 0.05)
    assert len(wheel) == 1
    assert len(wheel._ticks) <= 2 * len(wheel._buckets) + 1025
    assert wheel.pop_due(10000.0) == [(o, "timeout")]


def test_finished_calls_leave_no_timers_behind() -> None:
    """Through the whole server: after calls end, every timer left belongs to a live transaction."""
    from bench.call import Harness

    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp))
        for n in range(300):
            h.call(n)  # INVITE .. BYE/200, 10 ms of clock per call
        core = h.server.core
        wheel = core._timers
        owners = {id(key[0]): key[0] for bucket in wheel._buckets.values() for key in bucket}
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
