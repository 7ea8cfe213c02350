"""The route's rate adapts to the upstream's 429s (AIMD) and recovers to max_rps."""

from __future__ import annotations

from providers.support import FakeClock
from worker.providers.limits import AdaptiveRate, TokenBucket


def make(max_rps: float = 100.0) -> tuple[AdaptiveRate, TokenBucket, FakeClock]:
    clock = FakeClock()
    bucket = TokenBucket(rate=max_rps, burst=max_rps, clock=clock)
    return AdaptiveRate(max_rps, bucket, clock), bucket, clock


def test_a_429_cuts_the_rate_once_per_burst_of_answers() -> None:
    rate, _, clock = make()
    for _ in range(20):  # one overload answers many calls in flight at once
        rate.rate_limited()
    assert rate.rate == 70.0
    clock.advance(AdaptiveRate.DECREASE_INTERVAL_SECONDS)
    rate.rate_limited()
    assert rate.rate == 49.0


def test_the_rate_never_drops_below_the_floor() -> None:
    rate, _, clock = make()
    for _ in range(50):
        rate.rate_limited()
        clock.advance(1.0)
    assert rate.rate == AdaptiveRate.FLOOR * 100.0


def test_successes_bring_the_rate_back_up_to_max_rps_and_no_further() -> None:
    rate, _, clock = make()
    rate.rate_limited()
    clock.advance(1.0)
    rate.succeeded()
    assert rate.rate == 80.0  # +10 % of max_rps per second
    clock.advance(60.0)
    rate.succeeded()
    assert rate.rate == 100.0


def test_the_token_bucket_follows_the_rate() -> None:
    rate, bucket, clock = make(max_rps=2.0)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]  # the burst of max_rps
    rate.rate_limited()  # 1.4/s, burst 1.4
    clock.advance(1.0)
    assert bucket.reserve() == 0.0
    assert round(bucket.reserve(), 3) == round(0.6 / 1.4, 3)
