"""The auto-dialer detector, driven with explicit timestamps (no wall clock)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipguard.policy.autodialer import DialerConfig, DialerDetector, Thresholds

KEY = ("trunk",)


def test_dialer_pattern_reaches_critical_within_60_attempts() -> None:
    det = DialerDetector()
    levels = []
    pending: list[tuple[float, str]] = []
    for i in range(60):
        now = i * 0.4  # 2.5 calls/s, machine-regular
        while pending and pending[0][0] <= now:  # each call ended 2 s after it started, unanswered
            at, key = pending.pop(0)
            det.ended(key, False, None, at)
        a = det.attempt(KEY, f"+32501{i:05d}", f"c{i}", now)  # sequential numbers
        pending.append((now + 2.0, f"c{i}"))
        levels.append(a.level)
    assert "critical" in levels
    assert levels.index("critical") < 60
    assert levels[:5] == ["none"] * 5  # a handful of calls says nothing yet


def test_office_pattern_over_an_8_hour_day_never_reaches_warning() -> None:
    rng = random.Random(20261126)
    det = DialerDetector()
    # 20 users, each about one call per 10 minutes (Poisson), random destinations, normal outcomes
    arrivals = []
    for user in range(20):
        t = rng.expovariate(1 / 600)
        while t < 8 * 3600:
            arrivals.append((t, user))
            t += rng.expovariate(1 / 600)
    arrivals.sort()
    ends: list[tuple[float, str, bool, float | None]] = []
    worst = "none"
    for n, (t, _user) in enumerate(arrivals):
        ends.sort()
        while ends and ends[0][0] <= t:
            at, key, answered, duration = ends.pop(0)
            det.ended(key, answered, duration, at)
        a = det.attempt(("office",), f"+32{rng.randrange(10**8, 10**9)}", f"o{n}", t)
        if a.level != "none":
            worst = a.level
            break
        if rng.random() < 0.75:
            duration = rng.lognormvariate(4.5, 1.0)  # median ~90 s
            ends.append((t + 5 + duration, f"o{n}", True, duration))
        else:
            ends.append((t + 25, f"o{n}", False, None))
    assert len(arrivals) > 800
    assert worst == "none"


def _feed(det: DialerDetector, times: list[float], numbers: list[str]) -> tuple:
    a = None
    for i, (t, number) in enumerate(zip(times, numbers)):
        a = det.attempt(KEY, number, f"k{i}", t)
    assert a is not None
    return dict(det.features_of(KEY[0], times[-1])), a


def _random_numbers(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"+32{rng.randrange(10**8, 10**9)}" for _ in range(n)]


def _poisson_times(n: int, mean_gap: float, seed: int = 2) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1 / mean_gap)
        out.append(t)
    return out


@pytest.mark.parametrize("per_second,score", [(3, 0), (5, 1), (12, 2)])
def test_rate_per_second(per_second: int, score: int) -> None:
    times = [100 + i / per_second for i in range(per_second)]
    features, _a = _feed(DialerDetector(), times, _random_numbers(per_second))
    assert features["rate_per_second"] == per_second
    assert DialerConfig().rate_per_second.score(features["rate_per_second"]) == score


@pytest.mark.parametrize("per_minute,score", [(20, 0), (50, 1), (130, 2)])
def test_rate_per_minute(per_minute: int, score: int) -> None:
    times = [i * 55 / per_minute for i in range(per_minute)]  # all within the last minute
    features, _a = _feed(DialerDetector(), times, _random_numbers(per_minute))
    assert features["rate_per_minute"] == per_minute
    assert DialerConfig().rate_per_minute.score(per_minute) == score


@pytest.mark.parametrize("run,score", [(3, 0), (8, 1), (14, 2)])
def test_sequential_run(run: int, score: int) -> None:
    numbers = [f"+3250{1000 + i}" for i in range(run + 1)]  # run+1 numbers make a run of `run` steps
    features, _a = _feed(DialerDetector(), _poisson_times(run + 1, 30), numbers)
    assert features["sequential_run"] == run
    assert DialerConfig().sequential_run.score(run) == score


def test_a_gap_in_the_numbers_restarts_the_run() -> None:
    numbers = ["+3250100", "+3250101", "+3250102", "+3250200", "+3250201"]
    features, _a = _feed(DialerDetector(), [1, 2, 3, 4, 5], numbers)
    assert features["sequential_run"] == 1


@pytest.mark.parametrize("distinct,score", [(50, 0), (120, 1), (260, 2)])
def test_distinct_destinations(distinct: int, score: int) -> None:
    times = [i * 500 / distinct for i in range(distinct)]  # within the 600 s window
    features, _a = _feed(DialerDetector(), times, _random_numbers(distinct))
    assert features["distinct_destinations"] == distinct
    assert DialerConfig().distinct_destinations.score(distinct) == score


@pytest.mark.parametrize("short,total,expected", [(5, 20, 0.25), (15, 20, 0.75), (19, 20, 0.95), (10, 10, None)])
def test_short_share(short: int, total: int, expected: float | None) -> None:
    det = DialerDetector()
    for i in range(total):
        det.attempt(KEY, None, f"s{i}", i * 30.0)
        det.ended(f"s{i}", i >= short, 120.0 if i >= short else None, i * 30.0 + 1)
    features, _a = _feed(det, [total * 30.0], ["+3299"])
    assert features["short_share"] == expected  # None below min_calls: not enough to judge


@pytest.mark.parametrize("jitter,expected_score", [(0.0, 2), (0.15, 1), (None, 0)])
def test_regularity(jitter: float | None, expected_score: int) -> None:
    rng = random.Random(3)
    if jitter is None:
        times = _poisson_times(20, 20)
    else:
        times = [i * 20 + rng.uniform(-jitter, jitter) * 20 for i in range(20)]
    features, _a = _feed(DialerDetector(), times, _random_numbers(20))
    assert DialerConfig().regularity_cv.score(features["regularity_cv"]) == expected_score


def test_two_features_at_warning_make_a_warning() -> None:
    det = DialerDetector()
    # 50 random destinations in 55 s: rate_per_minute at warning; sequential numbers at warning
    times = [i * 55 / 50 + random.Random(i).uniform(0, 0.9) for i in range(50)]
    numbers = _random_numbers(42) + [f"+3250{100 + i}" for i in range(8)]
    _features, a = _feed(det, times, numbers)
    assert (a.level, a.score) == ("warning", 2)


def test_block_and_cooldown() -> None:
    det = DialerDetector(DialerConfig(cooldown_s=300))
    until = det.block(KEY, 10.0)
    assert until == 310.0
    assert det.blocked_until(KEY, 100.0) == 310.0
    assert det.blocked_until(KEY, 311.0) is None


def test_throttle_lets_through_so_many_per_minute() -> None:
    det = DialerDetector(DialerConfig(throttle_per_minute=3, warning_score=0))  # every attempt at warning
    results = [det.throttled(det.attempt(KEY, None, f"t{i}", float(i))) for i in range(5)]
    assert results == [False, False, False, True, True]
    assert det.throttled(det.attempt(KEY, None, "late", 200.0)) is False  # a minute later


def test_memory_is_bounded() -> None:
    det = DialerDetector(DialerConfig(max_keys=1000, max_attempts=16))
    for i in range(5000):
        det.attempt((f"a|10.0.{i // 256}.{i % 256}",), "+3211", f"m{i}", float(i))
    assert len(det) <= 1000
    for i in range(100):
        det.attempt(KEY, "+3211", f"n{i}", 5000.0 + i / 1000)
    w = det._windows["trunk"]
    assert len(w.minute) <= 16 and len(w.dest) <= 16 and len(w.dest_count) <= 16


def test_thresholds_where_low_is_bad() -> None:
    t = Thresholds(0.2, 0.08, low_is_bad=True)
    assert [t.score(v) for v in (None, 0.5, 0.15, 0.05)] == [0, 0, 1, 2]


def test_two_workers_mirroring_each_other_see_what_one_detector_sees() -> None:
    """With --workers a trunk's attempts are spread by Call-ID: each worker's detector gets the other's records
    (``mirror`` -> ``apply``), so both assess as one detector fed every attempt would."""
    one, a, b = DialerDetector(), DialerDetector(), DialerDetector()
    a.mirror, b.mirror = b.apply, a.apply
    keys = ("acme", "acme|10.0.0.1")
    rng = random.Random(7)
    for n in range(40):  # a dialer walking a range, 3 calls/s, the calls split at random between the workers
        now = 100.0 + n / 3
        worker = a if rng.random() < 0.5 else b
        expected = one.attempt(keys, f"+32501234{n:02d}", f"call-{n}", now)
        got = worker.attempt(keys, f"+32501234{n:02d}", f"call-{n}", now)
        assert (got.level, got.score, got.features) == (expected.level, expected.score, expected.features), n
        one.ended(f"call-{n}", False, None, now + 0.2)
        worker.ended(f"call-{n}", False, None, now + 0.2)  # mirrored: the other's windows count it short too
    # the score each shows is of its own last attempt (a mirrored one is recorded, assessed with the next)
    assert max(a.score_of("acme"), b.score_of("acme")) == one.score_of("acme") >= 5
    until = a.block(keys, 120.0)
    assert b.blocked_until(keys, 121.0) == until  # the block reaches the other worker
    # a record that is not understood changes nothing
    before = b.features_of("acme", 121.0)
    b.apply(b"Z\t1.0\tx")
    b.apply(b"A\tnot-a-time\tcall\t\tacme")
    assert b.features_of("acme", 121.0) == before


# one step of an account's traffic: an attempt from one of three sources (or its call's end), or a block
_STEP = st.one_of(
    st.tuples(st.just("attempt"), st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
              st.sampled_from([None, "+3250123400", "+3250123401", "+3250123402", "+3212345678"]),
              st.floats(0.0, 3.0)),
    st.tuples(st.just("end"), st.booleans(), st.floats(0.0, 30.0), st.floats(0.0, 3.0)),
    st.tuples(st.just("block"), st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.none(), st.floats(0.0, 3.0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=120), st.integers(0, 2**16))
def test_a_part_shares_its_accounts_window_without_changing_any_assessment(steps: list[tuple], seed: int) -> None:
    """An account whose calls come from one source (a trunk's PBX) keeps one window for the account and that
    source, not two with the same attempts in them; a second source splits them.  Every assessment, feature
    and block is what windows kept apart give (the reference: part keys that do not name the account)."""
    config = DialerConfig(warning_score=1, critical_score=3, min_calls=3, min_gaps=3)
    shared, apart = DialerDetector(config), DialerDetector(config)
    rng = random.Random(seed)
    now, n, pending = 100.0, 0, []
    for kind, arg, number, gap in steps:
        now += gap
        if kind == "attempt":
            n += 1
            call = f"call-{n}"
            got = shared.attempt(("acme", f"acme|{arg}"), number, call, now)
            expected = apart.attempt(("acme", f"other|{arg}"), number, call, now)
            assert (got.level, got.score, got.features, got.blocked_until) == (
                expected.level, expected.score, expected.features, expected.blocked_until)
            pending.append(call)
        elif kind == "end" and pending:
            call = pending.pop(rng.randrange(len(pending)))
            shared.ended(call, arg, number if arg else None, now)
            apart.ended(call, arg, number if arg else None, now)
        elif kind == "block":
            assert shared.block(("acme", f"acme|{arg}"), now) == apart.block(("acme", f"other|{arg}"), now)
    for source in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert shared.features_of(f"acme|{source}", now) == apart.features_of(f"other|{source}", now)
        assert shared.score_of(f"acme|{source}") == apart.score_of(f"other|{source}")
        assert (shared.blocked_until(("acme", f"acme|{source}"), now)
                == apart.blocked_until(("acme", f"other|{source}"), now))
    assert shared.features_of("acme", now) == apart.features_of("acme", now)


def test_one_source_keeps_one_window_and_a_second_source_splits_it() -> None:
    det = DialerDetector()
    for i in range(5):
        det.attempt(("acme", "acme|10.0.0.1"), f"+3250123{i:03d}", f"c{i}", float(i))
    assert det._windows["acme|10.0.0.1"] is det._windows["acme"]  # a trunk: the same attempts, kept once
    assert dict(det.features_of("acme|10.0.0.1", 5.0))["rate_per_minute"] == 5
    det.attempt(("acme", "acme|10.0.0.2"), "+3250123999", "c5", 5.0)
    assert det._windows["acme|10.0.0.1"] is not det._windows["acme"]
    assert dict(det.features_of("acme", 5.0))["rate_per_minute"] == 6
    assert dict(det.features_of("acme|10.0.0.1", 5.0))["rate_per_minute"] == 5  # its own five, kept
    assert dict(det.features_of("acme|10.0.0.2", 5.0))["rate_per_minute"] == 1
    det.attempt(("acme", "acme|10.0.0.1"), "+3250124000", "c6", 6.0)  # apart from now on
    assert dict(det.features_of("acme|10.0.0.1", 6.0))["rate_per_minute"] == 6
    assert dict(det.features_of("acme|10.0.0.2", 6.0))["rate_per_minute"] == 1
    assert dict(det.features_of("acme", 6.0))["rate_per_minute"] == 7


def test_an_account_named_like_another_accounts_part_does_not_count_in_that_account() -> None:
    """Account names are free text: one called "acme|10.0.0.1" has the key of account acme's part from 10.0.0.1
    (as it always had); it must not count in acme's own window, which that part shared."""
    det = DialerDetector()
    for i in range(4):
        det.attempt(("acme", "acme|10.0.0.1"), f"+3250123{i:03d}", f"a{i}", float(i))
    for i in range(3):
        det.attempt(("acme|10.0.0.1", "acme|10.0.0.1|10.0.0.9"), f"+3250999{i:03d}", f"b{i}", 10.0 + i)
    assert dict(det.features_of("acme", 12.0))["rate_per_minute"] == 4  # acme's own four only
    assert dict(det.features_of("acme|10.0.0.1", 12.0))["rate_per_minute"] == 7  # the shared key, as before
    det.attempt(("acme", "acme|10.0.0.1"), "+3250123999", "a4", 13.0)
    assert dict(det.features_of("acme", 13.0))["rate_per_minute"] == 5
