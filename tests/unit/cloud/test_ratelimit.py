from __future__ import annotations

import pytest

from pulse.cloud.ingest.ratelimit import Bucket, RateLimiter, take

pytestmark = pytest.mark.unit


def test_a_new_device_starts_with_a_full_burst() -> None:
    d = take(None, 10, now=0.0, rate=1.0, burst=10.0)
    assert d.allowed and d.bucket == Bucket(0.0, 0.0)


def test_refused_request_spends_nothing_and_says_when_to_retry() -> None:
    d = take(Bucket(2.0, 0.0), 5, now=0.0, rate=0.5, burst=10.0)
    assert not d.allowed and d.bucket.tokens == 2.0
    assert d.retry_after_s == 6  # (5 - 2) / 0.5


@pytest.mark.parametrize(
    ("tokens", "elapsed", "cost", "allowed"),
    [(0.0, 1.0, 2, True), (0.0, 1.0, 3, False), (0.0, 1000.0, 10, True), (0.0, 1000.0, 11, False)],
)
def test_refill_is_capped_at_the_burst(tokens: float, elapsed: float, cost: int, allowed: bool) -> None:
    assert take(Bucket(tokens, 0.0), cost, now=elapsed, rate=2.0, burst=10.0).allowed is allowed


def test_devices_have_separate_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=3.0)
    assert limiter.take("a", 3, 0.0).allowed
    assert not limiter.take("a", 1, 0.0).allowed
    assert limiter.take("b", 3, 0.0).allowed
    assert limiter.take("a", 1, 1.0).allowed
