"""The uplink's pacing on slow links (issue 28): pure, clocks passed in."""

from __future__ import annotations

import pytest

from pulse.edge.pacing import BatchSizer, ByteWindow, Health, LinkEstimate, LinkHealth, Reachability, fit_records

pytestmark = pytest.mark.unit


def test_a_batch_that_timed_out_is_halved_down_to_one_record_and_grows_back_after_acks():
    sizer = BatchSizer(64_000, 5000)
    assert [sizer.after_timeout(64_000) for _ in range(3)] == [32_000, 16_000, 8000]
    for _ in range(30):
        sizer.after_timeout(sizer.size)
    assert sizer.size == 1 and sizer.budget(5000.0) == 1
    sizer.encoded(100, 11_000)  # 110 bytes a record: a budget of one byte still reads one record
    assert sizer.records(5000.0) == 1  # a single record always fits
    assert sizer.after_timeout(1) == 1
    sizes = [sizer.after_ack() for _ in range(9)]
    assert sizes == sorted(sizes) and sizes[0] == 1 + 8000 and sizes[-1] == 64_000  # additive, up to the ceiling


def test_a_short_batch_that_timed_out_halves_from_what_was_sent():
    sizer = BatchSizer(64_000, 5000)
    assert sizer.after_timeout(3000) == 1500  # the buffer held only 3 KB: halve those, not the ceiling


def test_batches_are_sized_to_a_target_time_on_the_wire_at_the_measured_rate():
    sizer = BatchSizer(65_536, 5000, target_s=4.0)
    assert sizer.budget(None) == 16_384 and sizer.records(None) == 5000  # nothing measured: start small (the encoding trims)
    sizer.encoded(5000, 40_000)  # 8 bytes a record
    assert sizer.budget(7500.0) == 30_000  # NB-IoT, 60 kbit/s: 4 s of it
    assert sizer.records(7500.0) == 3562  # what 30 KB holds, a little under (so it is rarely encoded twice)
    assert sizer.budget(47_000.0) == 65_536  # LTE-M: the byte cap
    assert sizer.records(47_000.0) == 5000  # and the record cap
    assert sizer.budget(100.0) == 16_384  # a very slow link (or acks spaced by the cloud's work): never below the floor
    sizer.after_timeout(10_000)
    assert sizer.budget(7500.0) == 5000  # after a timeout the halved size wins over the rate's share


def test_timeouts_follow_the_measured_link_and_batch_size():
    est = LinkEstimate()
    assert est.timeout_s(300_000, 60) == 60  # nothing measured yet: the configured timeout
    est.observe(0, 0.5)  # a small request: the round trip
    for _ in range(10):
        est.observe(50_000, 0.5 + 50_000 / 5000)  # 5 KB/s
    assert est.rate_bytes_per_s == pytest.approx(5000, rel=0.05)
    assert est.rtt_s == pytest.approx(0.5)
    assert est.timeout_s(331_000, 60) > 331_000 / 5000 * 2  # a 331 KB batch at 40 kbit/s gets its time
    assert est.timeout_s(1000, 60) == 60
    est.reset()
    assert est.rate_bytes_per_s is None


def test_a_batch_sent_behind_another_is_timed_from_the_ack_ahead_of_it():
    est = LinkEstimate(rtt_s=2.0)
    est.observe(30_000, 4.0, pipelined=True)  # acks 4 s apart while the link was busy: 7.5 KB/s
    assert est.rate_bytes_per_s == pytest.approx(7500)
    alone = LinkEstimate(rtt_s=2.0)
    alone.observe(30_000, 6.0)  # sent alone: the round trip is not the link's time
    assert alone.rate_bytes_per_s == pytest.approx(7500)
    est.observe(30_000, 0.01, pipelined=True)  # two acks together: the second says nothing of the link
    assert est.rate_bytes_per_s == pytest.approx(0.7 * 7500 + 0.3 * 15_000)


def test_a_request_outstanding_far_past_its_expected_time_makes_the_link_degraded():
    h = LinkHealth(since=0.0)
    h.started(10.0, expected_s=2.0)
    h.succeeded(12.0)
    assert h.at(12.0) is Health.CONNECTED
    h.started(20.0, expected_s=2.0)  # black-holed: no answer, no error yet
    assert h.at(23.0) is Health.CONNECTED
    assert h.at(25.0) is Health.DEGRADED and h.since == 24.0
    h.failed(80.0)
    h.failed(90.0)
    assert h.at(95.0) is Health.DOWN and h.since == 90.0
    h.succeeded(100.0)
    assert h.at(100.0) is Health.CONNECTED and h.since == 100.0


def test_bytes_are_counted_for_the_last_hour_and_day():
    w = ByteWindow()
    w.add(0.0, 100)
    w.add(3 * 3600.0, 50)
    w.add(3 * 3600.0 + 30, 5)
    assert w.last(3 * 3600.0 + 60, 3600) == 55
    assert w.last(3 * 3600.0 + 60, 86400) == 155
    w.add(2 * 86400.0, 1)
    assert w.last(2 * 86400.0, 86400) == 1


@pytest.mark.parametrize(
    ("probes", "try_now"),
    [
        ([True, True, True], [False, False, False]),  # something always accepts connections: only the backoff decides
        ([False, False, True], [False, False, True]),  # the link came back
        ([False, True, True], [False, True, True]),
        ([], []),
    ],
)
def test_a_probe_ends_a_long_backoff_only_when_it_succeeds_after_one_failed(probes, try_now):
    reach = Reachability()
    assert [reach.observe(ok, failures=5) for ok in probes] == try_now


def test_after_the_first_failures_a_successful_probe_alone_ends_the_backoff():
    reach = Reachability()
    assert [reach.observe(True, failures=n) for n in (1, 2, 3, 10)] == [True, True, False, False]


def test_a_successful_session_forgets_failed_probes():
    reach = Reachability()
    reach.observe(False)
    reach.reset()
    assert reach.observe(True, failures=3) is False


@pytest.mark.parametrize(
    ("records", "nbytes", "cap", "keep"),
    [
        (5000, 20_000, 65_536, None),  # typical readings: fits
        (5000, 331_000, 65_536, 940),  # a 60-metric device: about a fifth, with a margin
        (1, 331_000, 65_536, None),  # a single record always goes
        (2, 200_000, 65_536, 1),
    ],
)
def test_a_batch_over_the_byte_cap_keeps_the_records_that_fit(records, nbytes, cap, keep):
    assert fit_records(records, nbytes, cap) == keep
