"""The uplink's bandwidth cap: a token bucket on bytes sent, with the clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.edge.throttle import TokenBucket

pytestmark = pytest.mark.unit


def test_no_cap_never_waits():
    bucket = TokenBucket(0)
    assert [bucket.reserve(10**9, t) for t in (0.0, 0.0, 1.0)] == [0.0, 0.0, 0.0]


def test_a_second_worth_goes_at_once_then_the_rate_holds():
    bucket = TokenBucket(1000)
    assert bucket.reserve(600, 10.0) == 0.0
    assert bucket.reserve(400, 10.0) == 0.0
    assert bucket.reserve(500, 10.0) == pytest.approx(0.5)  # in debt: wait until it is paid
    assert bucket.reserve(1000, 10.5) == pytest.approx(1.0)


def test_a_batch_larger_than_the_burst_waits_for_its_whole_size():
    bucket = TokenBucket(100)
    assert bucket.reserve(100, 0.0) == 0.0
    assert bucket.reserve(1000, 0.0) == pytest.approx(10.0)


def test_the_first_send_goes_at_once_as_after_an_idle_spell():
    bucket = TokenBucket(3750)  # NB-IoT's 60 kbit/s, capped at half
    assert bucket.reserve(15_000, 0.0) == 0.0  # a batch of 4 s of the cap
    assert bucket.reserve(15_000, 0.0) == pytest.approx(4.0)  # then the cap holds


def test_idle_time_refills_at_most_one_burst():
    bucket = TokenBucket(100)
    bucket.reserve(100, 0.0)
    assert bucket.reserve(100, 3600.0) == 0.0
    assert bucket.reserve(100, 3600.0) == pytest.approx(1.0)  # an hour idle is not an hour of credit


@given(rate=st.integers(1, 50_000), sends=st.lists(st.tuples(st.integers(1, 200_000), st.floats(0, 5)), min_size=1, max_size=60))
def test_a_sender_that_waits_as_told_never_exceeds_burst_plus_rate_times_elapsed(rate, sends):
    bucket = TokenBucket(rate)
    now = start = 100.0
    sent = largest = 0
    for size, pause in sends:
        now += pause
        now += bucket.reserve(size, now)  # sleep, then send
        sent += size
        largest = max(largest, size)
        assert sent <= max(bucket.burst, largest) + rate * (now - start) + 1e-6 * sent


@pytest.mark.parametrize(("cap", "batch", "link", "rtt"), [
    (3750, 16_600, 7500, 1.2),  # issue 28: NB-IoT (60 kbit/s), the cap at half of it, 16.6 KB batches
    (1500, 800, 3000, 0.1),  # batches smaller than the burst
    (20_000, 200_000, 47_000, 0.2),  # LTE-M, 200 KB batches
])
def test_a_sender_whose_sends_take_time_averages_its_cap(cap, batch, link, rtt):
    """Each send takes its time on the wire plus a round trip before the next reservation; the
    credit earned meanwhile must not be thrown away (the bucket undershot its cap by half)."""
    bucket = TokenBucket(cap)
    now = start = 0.0
    sent = 0
    for _ in range(200):
        now += bucket.reserve(batch, now)  # wait as told
        now += batch / link + rtt  # then the send and its ack
        sent += batch
    average = sent / (now - start)
    assert 0.9 * cap <= average <= cap * 1.01 + batch / (now - start)
