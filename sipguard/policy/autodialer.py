"""Auto-dialer detection from the shape of call attempts (terms: SIP Trunking 5).

Owns: sliding windows of recent INVITE attempts and their outcomes, per account
and per source; the feature values; the level (none / warning / critical) and
the block cool-downs.  Leaves to the engine: which requests are attempts, what
mode the rule runs in, and turning a level into a rejection.

Features, each with a warning and a critical threshold (policy data):
  rate_per_second    attempts in the last second
  rate_per_minute    attempts in the last minute
  sequential_run     the current run of called numbers that each add 1 to the
                     previous one (a dialer walking a number range)
  distinct_destinations   distinct called numbers in ``distinct_window_s``
  short_share        the share of ended attempts that were unanswered or
                     shorter than ``short_call_s`` (needs ``min_calls`` ended)
  regularity_cv      the coefficient of variation of the gaps between attempts
                     (low = machine-regular; needs ``min_gaps`` gaps)

A feature at warning scores 1, at critical 2; the level is critical when the
sum reaches ``critical_score``, warning at ``warning_score`` (graded, as in
OpenSIPS fraud_detection, but over the traffic's shape, not only its volume).

Every method takes ``now`` (monotonic seconds): no clock is read here.

With ``--workers N`` a trunk's calls are spread over the workers by Call-ID, so each worker's detector
would see ~1/N of its attempts: ``mirror`` (set by the server) is given every attempt, end and block
this detector records, encoded (``_encode``), for the other workers, whose ``apply`` records it in
theirs: every worker's windows hold the machine's attempts (a hand-off's delay behind).
Memory is bounded: at most ``max_keys`` keys, each with at most ``max_attempts``
attempts kept; the oldest keys are evicted first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .._compiled import mypyc_attr  # docs/compiled.md, "Objects the GC never sees"

__all__ = ["DialerConfig", "Thresholds", "Assessment", "DialerDetector", "LEVELS"]

LEVELS = ("none", "warning", "critical")


@dataclass(frozen=True, slots=True)
class Thresholds:
    warning: float
    critical: float
    low_is_bad: bool = False  # regularity: a smaller CV is more machine-like

    def score(self, value: float | None) -> int:
        if value is None:
            return 0
        if self.low_is_bad:
            return 2 if value <= self.critical else 1 if value <= self.warning else 0
        return 2 if value >= self.critical else 1 if value >= self.warning else 0


@dataclass(frozen=True, slots=True)
class DialerConfig:
    rate_per_second: Thresholds = Thresholds(4, 10)
    rate_per_minute: Thresholds = Thresholds(40, 120)
    sequential_run: Thresholds = Thresholds(6, 12)
    distinct_destinations: Thresholds = Thresholds(100, 250)
    distinct_window_s: float = 600.0
    short_share: Thresholds = Thresholds(0.7, 0.9)
    short_call_s: float = 10.0
    min_calls: int = 15
    regularity_cv: Thresholds = Thresholds(0.2, 0.08, low_is_bad=True)
    min_gaps: int = 12
    warning_score: int = 2
    critical_score: int = 5
    warning_action: str = "throttle"  # log | throttle | block
    critical_action: str = "block"
    throttle_per_minute: int = 6
    retry_after_s: int = 60
    cooldown_s: float = 300.0
    max_keys: int = 10000
    max_attempts: int = 512


@mypyc_attr(acyclic=True)
@dataclass(slots=True, init=False, unsafe_hash=True)  # compiled __init__: see sip/actions.py
class Assessment:
    level: Final[str]  # none | warning | critical
    score: Final[int]
    features: Final[tuple[tuple[str, float | None], ...]]
    blocked_until: Final[float | None]

    def __init__(self, level: str, score: int, features: tuple[tuple[str, float | None], ...],
                 blocked_until: float | None = None) -> None:
        self.level = level
        self.score = score
        self.features = features
        self.blocked_until = blocked_until


class _Ring:
    """A first-in first-out list of (time, value): what a window keeps per feature.  Its operations are
    native calls in the compiled core, where a deque's are generic method calls (docs/compiled.md)."""

    __slots__ = ("times", "values", "head")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[int] = []
        self.head = 0  # the oldest entry; the ones before it were taken

    def size(self) -> int:
        return len(self.times) - self.head

    def __len__(self) -> int:
        return self.size()

    def push(self, at: float, value: int = 0) -> None:
        self.times.append(at)
        self.values.append(value)

    def first_time(self) -> float:
        """The oldest entry's time (the ring is not empty)."""
        return self.times[self.head]

    def pop(self) -> int:
        """Take the oldest entry (the ring is not empty); its value.  The lists are cut down when half taken."""
        value = self.values[self.head]
        self.head += 1
        if self.head >= 64 and 2 * self.head >= len(self.times):
            del self.times[: self.head]
            del self.values[: self.head]
            self.head = 0
        return value

    def copy(self) -> "_Ring":
        ring = _Ring()
        ring.times = self.times[self.head:]
        ring.values = self.values[self.head:]
        return ring


@dataclass(slots=True)
class _Window:
    """Incremental state of one key: every feature is O(1) to update and read."""

    minute: _Ring = field(default_factory=_Ring)  # attempt times, last 60 s
    second: _Ring = field(default_factory=_Ring)  # attempt times, last 1 s
    gaps: _Ring = field(default_factory=_Ring)  # the last min_gaps gaps between attempts (as times)
    gap_sum: float = 0.0
    gap_sq: float = 0.0
    last_at: float | None = None
    dest: _Ring = field(default_factory=_Ring)  # (time, number), distinct window
    dest_count: dict[int, int] = field(default_factory=dict)  # number -> times in ``dest``
    run: int = 0
    last_number: int | None = None
    ended: _Ring = field(default_factory=_Ring)  # (at, 1 if short or unanswered)
    short: int = 0  # how many of ``ended`` are short
    blocked_until: float = 0.0
    last: Assessment | None = None
    # as an account's window: the key of the one part of its traffic seen so far (``account|source``), whose
    # window this is too (DialerDetector._windows_of); "" once a second part has been seen
    part: str | None = None

    def copy(self) -> "_Window":
        """The same state in a window of its own (a part's, when its account's traffic gets a second part)."""
        return _Window(self.minute.copy(), self.second.copy(), self.gaps.copy(), self.gap_sum, self.gap_sq,
                       self.last_at, self.dest.copy(), dict(self.dest_count), self.run, self.last_number,
                       self.ended.copy(), self.short, self.blocked_until, self.last, "")


def _encode(kind: str, now: float, fields: str) -> bytes:
    """One mirrored record: the kind, the time in integer nanoseconds (cheaper to write and read than a float's
    repr), then ``fields``, TAB-separated already (no key, number or Call-ID holds a TAB: the parser refuses
    control characters in headers)."""
    return f"{kind}\t{int(now * 1e9)}\t{fields}".encode("utf-8", "surrogateescape")


def _time(field: str) -> float:
    """A time or duration as ``_encode`` writes it (ValueError if it is not one)."""
    return int(field) / 1e9


class DialerDetector:
    """Windows per key (``"account"`` or ``"account|source"``); explicit timestamps."""

    def __init__(self, config: DialerConfig | None = None) -> None:
        self.config = config or DialerConfig()
        self._limits = _limits(self.config)
        self._windows: dict[str, _Window] = {}
        self._pending: dict[str, tuple[str, ...]] = {}  # call key -> window keys awaiting its outcome
        self.mirror: Callable[[bytes], None] | None = None  # with workers: what this records, for the others

    def __len__(self) -> int:
        return len(self._windows)

    def set_config(self, config: DialerConfig) -> None:
        self.config = config
        self._limits = _limits(config)

    def _window(self, key: str) -> _Window:
        w = self._windows.get(key)
        if w is None:
            w = self._store(key, _Window())
        return w

    def _store(self, key: str, w: _Window) -> _Window:
        if len(self._windows) >= self.config.max_keys:
            # evict the oldest tenth (insertion order)
            for old in list(self._windows)[: max(1, self.config.max_keys // 10)]:
                del self._windows[old]
        self._windows[key] = w
        return w

    def _windows_of(self, keys: tuple[str, ...]) -> list[_Window]:
        """The distinct windows of ``keys``: the account's (``keys[0]``), then its parts' (``account|source``).

        A part's window is its account's own window while the account's traffic has had no other part: the
        two would hold the same attempts (a trunk's one PBX), so they are kept, updated and assessed once.
        When a second part appears, the first gets a copy of the account's window (every attempt in it was
        that part's) and the new one a window of its own; from then on each is kept apart, as they would
        have been from the start."""
        account = self._window(keys[0])
        if account.part == keys[0]:  # an account whose name is another's part ("acme|10.0.0.1"): that part apart again
            account.part = ""
            account = self._windows[keys[0]] = account.copy()
        out = [account]
        for key in keys[1:]:
            w = self._windows.get(key)
            if w is None:
                if not key.startswith(keys[0] + "|"):
                    w = self._store(key, _Window())
                elif account.part is None or account.part == key:  # its first part (or that part's key evicted)
                    account.part = key
                    w = self._store(key, account)
                else:
                    first = account.part
                    if first and self._windows.get(first) is account:
                        self._windows[first] = account.copy()
                    account.part = ""
                    w = self._store(key, _Window())
            if w is not account:
                out.append(w)
        return out

    def attempt(self, keys: tuple[str, ...], called: str | None, call_key: str, now: float) -> Assessment:
        """Record one INVITE attempt under every key (the account's first, then its parts': ``_windows_of``);
        the worst assessment among them."""
        if self.mirror is not None:
            self.mirror(_encode("A", now, call_key + "\t" + (called or "") + "\t" + "\t".join(keys)))
        worst = self._attempt(keys, called, call_key, now, True)
        assert worst is not None
        return worst

    def _attempt(self, keys: tuple[str, ...], called: str | None, call_key: str, now: float,
                 assess: bool) -> Assessment | None:
        """Record the attempt; assessed only for this worker's own (a mirrored one is assessed with the next)."""
        worst: Assessment | None = None
        number = _as_int(called)
        c = self.config
        for w in self._windows_of(keys):
            self._trim(w, now)
            if w.last_at is not None and now < w.last_at:
                now = w.last_at  # another worker's attempt, mirrored a moment after one of this worker's
            w.minute.push(now)
            w.second.push(now)
            if w.last_at is not None:
                gap = now - w.last_at
                w.gaps.push(gap)
                w.gap_sum += gap
                w.gap_sq += gap * gap
                if w.gaps.size() > c.min_gaps:
                    old = w.gaps.first_time()
                    w.gaps.pop()
                    w.gap_sum -= old
                    w.gap_sq -= old * old
            w.last_at = now
            if number is not None:
                w.dest.push(now, number)
                w.dest_count[number] = w.dest_count.get(number, 0) + 1
                if w.dest.size() > c.max_attempts:
                    self._drop_dest(w)
                if w.last_number is not None and number - w.last_number == 1:
                    w.run += 1
                else:
                    w.run = 0
                w.last_number = number
            else:
                w.run = 0
            if w.minute.size() > c.max_attempts:
                w.minute.pop()
            if not assess:
                continue
            a = self._assess(w, now)
            w.last = a
            if worst is None or a.score > worst.score or (a.blocked_until or 0) > (worst.blocked_until or 0):
                worst = a
        if len(self._pending) >= self.config.max_keys * 4:
            self._pending.clear()  # outcomes of very old calls: losing them only delays detection
        self._pending[call_key] = keys
        return worst

    def ended(self, call_key: str, answered: bool, duration_s: float | None, now: float) -> None:
        """The outcome of an attempt: unanswered, or answered for ``duration_s``."""
        if self.mirror is not None and call_key in self._pending:
            self.mirror(_encode("E", now, f"{call_key}\t{'1' if answered else ''}\t"
                                          f"{'' if duration_s is None else int(duration_s * 1e9)}"))
        self._ended(call_key, answered, duration_s, now)

    def _ended(self, call_key: str, answered: bool, duration_s: float | None, now: float) -> None:
        keys = self._pending.pop(call_key, None)
        if keys is None:
            return
        short = (not answered) or duration_s is None or duration_s < self.config.short_call_s
        windows = [self._windows.get(key) for key in keys]
        for i, w in enumerate(windows):
            if w is not None and (i == 0 or w is not windows[0]):  # a part's window that is its account's: once
                w.ended.push(now, 1 if short else 0)
                w.short += 1 if short else 0
                if w.ended.size() > self.config.max_attempts:
                    w.short -= w.ended.pop()

    def block(self, keys: tuple[str, ...], now: float) -> float:
        if self.mirror is not None:
            self.mirror(_encode("B", now, "\t".join(keys)))
        return self._block(keys, now)

    def apply(self, message: bytes) -> None:
        """Record what another worker's detector recorded (its ``mirror``); a message not understood is ignored."""
        parts = message.decode("utf-8", "surrogateescape").split("\t")
        if len(parts) < 3:
            return
        kind = parts[0]
        try:
            now = _time(parts[1])
            duration = _time(parts[4]) if kind == "E" and len(parts) == 5 and parts[4] else None
        except ValueError:
            return
        if kind == "A" and len(parts) >= 5:
            self._attempt(tuple(parts[4:]), parts[3] or None, parts[2], now, False)
        elif kind == "E" and len(parts) == 5:
            self._ended(parts[2], parts[3] == "1", duration, now)
        elif kind == "B":
            self._block(tuple(parts[2:]), now)

    def _block(self, keys: tuple[str, ...], now: float) -> float:
        until = now + self.config.cooldown_s
        for w in self._windows_of(keys):
            w.blocked_until = until
        return until

    def blocked_until(self, keys: tuple[str, ...], now: float) -> float | None:
        latest = 0.0
        for key in keys:
            w = self._windows.get(key)
            if w is not None and w.blocked_until > now:
                latest = max(latest, w.blocked_until)
        return latest or None

    def throttled(self, assessment: Assessment) -> bool:
        """At warning with action throttle: over ``throttle_per_minute`` attempts in the last minute."""
        per_minute = dict(assessment.features).get("rate_per_minute") or 0.0
        return per_minute > self.config.throttle_per_minute

    def score_of(self, key: str) -> int:
        w = self._windows.get(key)
        return w.last.score if w is not None and w.last is not None else 0

    # ------------------------------------------------------------------ features
    @staticmethod
    def _drop_dest(w: _Window) -> None:
        number = w.dest.pop()
        left = w.dest_count[number] - 1
        if left:
            w.dest_count[number] = left
        else:
            del w.dest_count[number]

    def _trim(self, w: _Window, now: float) -> None:
        while w.minute.size() and w.minute.first_time() <= now - 60.0:
            w.minute.pop()
        while w.second.size() and w.second.first_time() <= now - 1.0:
            w.second.pop()
        horizon = now - self.config.distinct_window_s
        while w.dest.size() and w.dest.first_time() <= horizon:
            self._drop_dest(w)
        while w.ended.size() and w.ended.first_time() < horizon:
            w.short -= w.ended.pop()

    def _assess(self, w: _Window, now: float, full: bool = False) -> Assessment:
        c = self.config
        per_second = w.second.size()
        per_minute = w.minute.size()
        distinct = len(w.dest_count)
        short_share: float | None = None
        if w.ended.size() >= c.min_calls:
            short_share = w.short / w.ended.size()
        cv: float | None = None
        n = w.gaps.size()
        if n >= c.min_gaps:  # running sums: variance = E[g^2] - E[g]^2
            mean = w.gap_sum / n
            if mean > 1e-9:
                cv = math.sqrt(max(0.0, w.gap_sq / n - mean * mean)) / mean
            else:
                cv = 0.0
        t = self._limits
        score = ((2 if per_second >= t[1] else 1 if per_second >= t[0] else 0)
                 + (2 if per_minute >= t[3] else 1 if per_minute >= t[2] else 0)
                 + (2 if w.run >= t[5] else 1 if w.run >= t[4] else 0)
                 + (2 if distinct >= t[7] else 1 if distinct >= t[6] else 0)
                 + c.short_share.score(short_share) + c.regularity_cv.score(cv))
        blocked = w.blocked_until if w.blocked_until > now else None
        if score < c.warning_score and not full:
            if blocked is None and score == 0:
                return _QUIET  # the common case: nothing to report, nothing to build
            return Assessment("none", score, (), blocked)
        level = "critical" if score >= c.critical_score else "warning" if score >= c.warning_score else "none"
        features: tuple[tuple[str, float | None], ...] = (
            ("rate_per_second", float(per_second)),
            ("rate_per_minute", float(per_minute)),
            ("sequential_run", float(w.run)),
            ("distinct_destinations", float(distinct)),
            ("short_share", None if short_share is None else round(short_share, 3)),
            ("regularity_cv", None if cv is None else round(cv, 3)),
        )
        return Assessment(level, score, features, blocked)

    def features_of(self, key: str, now: float) -> tuple[tuple[str, float | None], ...]:
        """The feature values of one key now (for tests and the admin view)."""
        w = self._windows.get(key)
        if w is None:
            return ()
        return self._assess(w, now, full=True).features


def _limits(c: DialerConfig) -> tuple[float, ...]:
    """The count thresholds as plain floats, for the per-attempt score (no method calls)."""
    return (c.rate_per_second.warning, c.rate_per_second.critical, c.rate_per_minute.warning,
            c.rate_per_minute.critical, c.sequential_run.warning, c.sequential_run.critical,
            c.distinct_destinations.warning, c.distinct_destinations.critical)


_QUIET: Final = Assessment("none", 0, (), None)


def _as_int(called: str | None) -> int | None:
    if not called:
        return None
    digits = called.lstrip("+")
    return int(digits) if digits.isdigit() and len(digits) <= 18 else None
