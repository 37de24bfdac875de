"""RateLimiter: a token bucket per uid, refilled continuously; the clock is the caller's
(`now`), so these tests choose it."""

from __future__ import annotations

import pytest

from slurmjwtd.ratelimit import RateLimiter

UID, OTHER_UID = 65534, 65533
T = 1000.0  # a time, in seconds of the monotonic clock
LIMITS = [(1, 1), (3, 60), (60, 60), (10, 5), (5, 3600)]


def burst(limiter: RateLimiter, uid: int, now: float, n: int) -> list[bool]:
    return [limiter.allow(uid, now) for _ in range(n)]


@pytest.mark.parametrize("rate, window", LIMITS)
def test_a_burst_of_rate_then_refused(rate, window):
    limiter = RateLimiter(rate, window)
    assert limiter.left(UID, T) == rate
    assert burst(limiter, UID, T, rate + 2) == [True] * rate + [False, False]
    assert limiter.left(UID, T) == 0


@pytest.mark.parametrize("rate, window", LIMITS)
def test_one_grant_back_each_window_over_rate(rate, window):
    limiter = RateLimiter(rate, window)
    burst(limiter, UID, T, rate)
    step = window / rate
    assert not limiter.allow(UID, T + step * 0.9)
    assert burst(limiter, UID, T + step * 1.001, 2) == [True, False]


@pytest.mark.parametrize("rate, window", LIMITS)
def test_a_window_later_the_bucket_is_full_and_no_fuller(rate, window):
    limiter = RateLimiter(rate, window)
    burst(limiter, UID, T, rate)
    for later in (T + window, T + 100 * window):
        assert limiter.left(UID, later) == rate
    assert burst(limiter, UID, T + 100 * window, rate + 1) == [True] * rate + [False]


def test_buckets_are_per_uid():
    limiter = RateLimiter(2, 60)
    assert burst(limiter, UID, T, 3) == [True, True, False]
    assert burst(limiter, OTHER_UID, T, 3) == [True, True, False]
    assert limiter.left(UID, T) == limiter.left(OTHER_UID, T) == 0


def test_rate_zero_is_no_limit():
    limiter = RateLimiter(0, 60)
    assert all(burst(limiter, UID, T, 1000))


def test_uids_full_again_are_forgotten():
    """Memory follows the uids active in the last window; forgetting one changes nothing."""
    limiter = RateLimiter(2, 60)
    limiter.allow(UID, T)
    limiter.allow(OTHER_UID, T + 50)
    limiter.forget_idle(T + 60)
    assert set(limiter._buckets) == {OTHER_UID}  # UID's bucket is full again
    assert limiter.left(UID, T + 60) == 2 and limiter.left(OTHER_UID, T + 60) == 1
    assert burst(limiter, OTHER_UID, T + 60, 2) == [True, False]
