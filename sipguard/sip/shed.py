"""Overload control: past capacity, excess new INVITEs are answered 503 at the cheapest point, fairly.

What is measured, the thresholds and what an operator sees: docs/overload.md.  In short: the server
samples every ``TICK_S`` how long the oldest datagram has waited in this process's receive queues
(and the loop's own lateness) and calls ``tick``.  Over ``queue_delay_s`` in ``_ENTER_TICKS`` samples in a
row, the process is *overloaded*: each ``WINDOW_S`` it lets through a budget of new INVITEs, which starts at
half what went through before, shrinks while the window's mean queue delay is over the target (three
tenths of the threshold; by target / mean, between a half and four fifths) and grows while it is under half the target
(AIMD), so the queue stays short; the budget is shared max-min fairly among the sources that sent INVITEs in
the previous window, so one noisy trunk does not get every other source refused, and a source's share is
paced over the window (a fifth more at every sample), so that the INVITEs let through do not come as one
burst at the window's start for the 503s to wait behind.
The rest are answered here, before the parser, statelessly: ``503`` with ``Retry-After`` and a To tag
that marks them (``TAG_PREFIX``), so their ACKs are absorbed here too.  Never shed: anything but an
initial INVITE (responses, ACK, BYE, CANCEL, re-INVITEs and every in-dialog request), an INVITE to an
emergency service, and the retransmission of an INVITE that was let through (its Call-ID is known for
two ``KNOWN_S`` generations).  The state ends once nothing was shed for ``CALM_S`` and the queue is short.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

from .raw import call_id_of, read_head, reply_port, stateless_reply

__all__ = ["Shedder", "TICK_S", "WINDOW_S", "TARGET", "fair_share", "TAG_PREFIX"]

TICK_S: Final = 0.02  # how often the server samples the queues
WINDOW_S: Final = 0.1  # how often the budget and the fair share are set again
KNOWN_S: Final = 4.0  # Call-IDs let through are remembered for one to two of these (INVITE retransmissions)
CALM_S: Final = 2.0  # nothing shed for this long, queue short: the overload has ended
TAG_PREFIX: Final = b"sgov-"  # the To tag of a shed INVITE's 503 (and so of its ACK)
_TAG_EQ: Final = b"tag=" + TAG_PREFIX  # the To parameter of an ACK for one of those 503s
_TO_NAMES: Final = (b"to", b"t")
_DECREASE: Final = 0.8  # at most: the budget after a window whose mean queue delay was over the target
_DEEPEST: Final = 0.5  # at least: the cut is target / mean between these two (deeper the further over)
_INCREASE: Final = 1.0 / 16  # ... and its growth after a window under half the target
_ON_ENTRY: Final = 0.5  # the first budget, of what went through in the window before
_ENTER_TICKS: Final = 3  # consecutive samples over the threshold that start the overload (60 ms)
TARGET: Final = 0.3  # the queue delay the budget aims under while overloaded, of the threshold (docs/overload.md)
_SLOTS: Final = round(WINDOW_S / TICK_S)  # a source's share is let through a fifth more at every sample of a window


def _never(data: bytes) -> bool:
    return False


def _our_to_tag(data: bytes) -> bool:
    """Whether a ``;tag=sgov-`` parameter stands in the To header line (not in the From, nor elsewhere): a
    find, then only the lines it is found on.  (A To folded over two lines is not recognised: its ACK goes
    on to the core, which drops it as belonging to no dialog.)"""
    at = data.find(_TAG_EQ)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        colon = data.find(b":", start, at)
        if colon > start and data[start:colon].strip(b" \t").lower() in _TO_NAMES:
            before = data[colon:at].rstrip(b" \t")
            if before[-1:] == b";" and before.rfind(b"<") <= before.rfind(b">"):  # a header parameter, not the URI's
                return True
        at = data.find(_TAG_EQ, at + 1)
    return False


def _paced(share: int, slot: int) -> int:
    """How much of a window's ``share`` a source may have had let through by its ``slot``-th sample (from 1)."""
    return min(share, (share * min(slot, _SLOTS) + _SLOTS - 1) // _SLOTS)


def fair_share(budget: int, demands: list[int]) -> int:
    """Max-min fair: the largest per-source allowance ``s`` with ``sum(min(d, s)) <= budget`` (at least 1)."""
    if not demands:
        return max(budget, 1)
    remaining = budget
    ordered = sorted(demands)
    n = len(ordered)
    for i in range(n):
        d = ordered[i]
        if d * (n - i) <= remaining:
            remaining -= d
        else:
            return max(remaining // (n - i), 1)
    return max(ordered[n - 1] + remaining, 1)


class Shedder:
    """One process's overload state and the shedding of new INVITEs it decides.

    ``consider(data, host, port)`` is called with every datagram that starts ``INVITE `` and returns the
    503 to send, or None to pass the INVITE on; ``absorbs(data)`` says whether an ACK is for such a 503.
    ``tick(now, delay_s)`` runs the control loop and returns ``"start"``, ``"end"`` or ``""``.
    """

    def __init__(self, queue_delay_s: float = 0.04, retry_after_s: int = 2) -> None:
        self.queue_delay_s = queue_delay_s
        self.extra = b""
        self.configure(queue_delay_s, retry_after_s)
        self.emergency: Callable[[bytes], bool] = _never  # the policy's test, by request line (set by the server)
        self.forced = False  # a test hook: overloaded with a budget of 0 whatever the queues say
        self.active = False
        self.budget = 1  # new INVITEs let through per window while active
        self.share = 1  # per source, this window
        self.allowed = 1  # per source so far this window: the share paced over its samples
        self.passed: dict[str, int] = {}  # per source, let through this window
        self.demand: dict[str, int] = {}  # per source, new INVITEs this window
        self.window_passed = 0  # let through this window, every source
        self.last_window_passed = 0
        self.shed = 0  # answered 503 here, since start
        self.shed_in_window = 0
        self.last_shed = -1.0e9
        self.absorbed = 0  # ACKs of those 503s
        self.delay_s = 0.0  # the last sample
        self.delay_sum = 0.0  # of this window's samples
        self.samples = 0
        self.over_ticks = 0
        self.started = 0.0  # when the current (or last) overload started
        self.shed_at_start = 0
        self._window_end = 0.0
        self._known_end = 0.0
        self._known: set[bytes] = set()
        self._known_old: set[bytes] = set()

    def configure(self, queue_delay_s: float, retry_after_s: int) -> None:
        """The threshold and the 503's Retry-After (service.overload; at start and on reload)."""
        self.queue_delay_s = queue_delay_s
        self.extra = b"Retry-After: %d\r\nWarning: 399 sipguard \"overloaded: retry later\"\r\n" % retry_after_s

    # ------------------------------------------------------------------ per datagram
    def consider(self, data: bytes, host: str, port: int) -> tuple[bytes, int] | None:
        """For an INVITE: None to pass it on, or the 503 to send and the port to send it to (on ``host``)."""
        if not self.active and not self.forced:
            call_id = call_id_of(data)
            if call_id is not None:
                self._known.add(call_id)
            self.window_passed += 1
            return None
        head = read_head(data)
        if head is None or head.to_tag:  # malformed (the parser answers it) or in a dialog: never shed here
            return None
        call_id = head.call_id
        if call_id in self._known or call_id in self._known_old:  # a retransmission of one let through
            return None
        self.demand[host] = self.demand.get(host, 0) + 1
        passed = self.passed.get(host, 0)
        if (passed < self.allowed and not self.forced) or self.emergency(data):
            self.passed[host] = passed + 1
            self.window_passed += 1
            self._known.add(call_id)
            return None
        self.shed += 1
        self.shed_in_window += 1
        tag = TAG_PREFIX + b"%08x" % zlib.crc32(call_id)
        return stateless_reply(head, 503, b"Service Unavailable", tag, self.extra), reply_port(head.top_via, port)

    def absorbs(self, data: bytes) -> bool:
        """Whether an ACK is for a 503 of ours (its To tag has our prefix): then it ends here."""
        if self.shed == 0:
            return False
        if not _our_to_tag(data):
            return False
        self.absorbed += 1
        return True

    # ------------------------------------------------------------------ the control loop
    def tick(self, now: float, delay_s: float) -> str:
        """One sample: ``delay_s`` is how long the oldest waiting datagram has waited (or the loop's lateness)."""
        self.delay_s = delay_s
        self.delay_sum += delay_s
        self.samples += 1
        if self.shed_in_window:
            self.last_shed = now
        event = ""
        if now >= self._known_end:
            self._known_old = self._known
            self._known = set()
            self._known_end = now + KNOWN_S
        self.over_ticks = self.over_ticks + 1 if delay_s > self.queue_delay_s else 0
        if not self.active:
            if self.over_ticks >= _ENTER_TICKS or self.forced:
                self.active = True
                self.started = now
                self.shed_at_start = self.shed
                # start under what went through lately (what came in, all let through, and more than could be
                # served): the queue the overload built drains; the budget grows back from there
                self.budget = max(int(max(self.window_passed, self.last_window_passed) * _ON_ENTRY), 1)
                self.share = self.budget
                self._new_window(now)
                event = "start"
            elif now + TICK_S / 2 >= self._window_end:
                self._new_window(now)
            return event
        if now + TICK_S / 2 < self._window_end:  # the window ends at the sample nearest its end
            self.allowed = _paced(self.share, 1 + int((now - self._window_end + WINDOW_S) / TICK_S + 0.5))
            return event
        mean = self.delay_sum / max(self.samples, 1)
        target = self.queue_delay_s * TARGET
        if mean > target:
            self.budget = max(int(self.budget * max(_DEEPEST, min(_DECREASE, target / mean))), 1)
        elif mean < target / 2:
            self.budget += max(int(self.budget * _INCREASE), 1)
        self.share = fair_share(self.budget, list(self.demand.values()))
        if not self.forced and mean < target and now - self.last_shed >= CALM_S:
            self.active = False
            event = "end"
        self._new_window(now)
        return event

    def _new_window(self, now: float) -> None:
        self.last_window_passed = self.window_passed
        self.window_passed = 0
        self.shed_in_window = 0
        self.passed = {}
        self.demand = {}
        self.delay_sum = 0.0
        self.samples = 0
        self._window_end = now + WINDOW_S
        self.allowed = _paced(self.share, 1)
