"""Sync bookkeeping: what the cloud writes and acks for a batch, backoff, clock rule, drain order."""

from __future__ import annotations

import pytest

from pulse.protocol import batch, sync
from pulse.protocol.batch import Record, Stream

pytestmark = pytest.mark.unit


def _batch(seqs: list[int]) -> batch.Batch:
    records = [Record(s, "dev-1", 1_764_000_000_000 + s, "telemetry", {"t": float(s)}) for s in seqs]
    return batch.decode(batch.encode(records, gateway_id="gw-1", stream=Stream.TELEMETRY, gateway_time_ms=0))


@pytest.mark.parametrize(
    ("seqs", "high_water", "verdict", "written", "new_mark"),
    [
        ([1, 2, 3], 0, sync.Verdict.WRITE, [1, 2, 3], 3),
        ([4, 5, 6], 3, sync.Verdict.WRITE, [4, 5, 6], 6),
        ([1, 2, 3], 3, sync.Verdict.REPLAY, [], 3),
        ([1, 2, 3], 10, sync.Verdict.REPLAY, [], 10),
        ([2, 3, 4, 5], 3, sync.Verdict.PARTIAL, [4, 5], 5),
        ([10, 20], 3, sync.Verdict.WRITE, [10, 20], 20),  # a gap from the gateway's quota is legal
    ],
)
def test_replayed_or_overlapping_batch_is_acked_and_written_only_above_the_mark(
    seqs: list[int], high_water: int, verdict: sync.Verdict, written: list[int], new_mark: int
) -> None:
    b = _batch(seqs)
    assert sync.classify(b.header, high_water) is verdict
    admission = sync.admit(b.header, b.records, high_water)
    assert admission.verdict is verdict
    assert [r.seq for r in admission.new_records] == written
    assert admission.new_high_water == new_mark
    assert admission.ack_seq == seqs[-1]


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [(0, 0.5, 0.25), (1, 1.0, 1.0), (3, 0.5, 2.0), (10, 0.5, 30.0), (10_000, 0.999, 59.94), (2, 0.0, 0.0), (2, 7.0, 2.0)],
)
def test_backoff_is_exponential_with_full_jitter_and_capped(attempt: int, jitter: float, expected: float) -> None:
    assert sync.Backoff(base_s=0.5, cap_s=60.0).delay(attempt, jitter) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("gateway_ms", "cloud_ms", "corrected", "ts_in", "ts_out"),
    [
        (1_000_000, 1_000_500, False, 999_000, 999_000),  # within tolerance: kept as sent
        (1_000_000, 1_000_000 + 3_600_000, True, 999_000, 999_000 + 3_600_000),  # gateway an hour behind
        (5_000_000, 1_000_000, True, 4_999_000, 999_000),  # gateway ahead
    ],
)
def test_gateway_clock_far_off_shifts_timestamps_by_the_offset(
    gateway_ms: int, cloud_ms: int, corrected: bool, ts_in: int, ts_out: int
) -> None:
    check = sync.check_clock(gateway_ms, cloud_ms)
    assert check.corrected is corrected
    assert sync.corrected_ts(ts_in, check) == ts_out


def test_alerts_and_events_drain_before_telemetry() -> None:
    assert sync.next_stream({Stream.TELEMETRY: 5, Stream.EVENTS: 1}) is Stream.EVENTS
    assert sync.next_stream({Stream.TELEMETRY: 5, Stream.ALERTS: 1, Stream.EVENTS: 1}) is Stream.ALERTS
    assert sync.next_stream({Stream.TELEMETRY: 5, Stream.TWIN: 2}) is Stream.TWIN
    assert sync.next_stream({Stream.TELEMETRY: 5}) is Stream.TELEMETRY
    assert sync.next_stream({Stream.TELEMETRY: 0}) is None


def test_batch_ack_and_downlink_items_round_trip() -> None:
    ack = sync.BatchAck(Stream.EVENTS, 42, sync.Verdict.PARTIAL, 3, 1, -5000, False)
    assert sync.BatchAck.from_json(ack.to_json()) == ack
    item = sync.DownlinkItem(7, sync.DownlinkKind.CREDENTIAL, {"device_id": "d1"})
    assert sync.DownlinkItem.from_json(item.to_json()) == item


def test_a_batch_ack_announces_the_batch_formats_the_cloud_reads() -> None:
    ack = sync.BatchAck(Stream.TELEMETRY, 9, sync.Verdict.WRITE, 9, 0, 0, False)
    assert ack.to_json()["batch_versions"] == [1, 2]
    # an older cloud's ack has no such field: it reads version 1 only
    old = {"stream": 1, "ack_seq": 9, "verdict": "write", "written": 9, "quarantined": 0, "clock_offset_ms": 0, "clock_corrected": False}
    assert sync.BatchAck.from_json(old).batch_versions == (1,)
    # a newer cloud may read formats this gateway does not know: they are kept, never chosen
    newer = sync.BatchAck.from_json({**old, "batch_versions": [1, 2, 3, "4"]})
    assert newer.batch_versions == (1, 2, 3)
    with pytest.raises(ValueError):
        sync.BatchAck.from_json({**old, "batch_versions": 2})


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [((1,), 1), ((1, 2), 2), ((2,), 2), ((1, 2, 3), 2), ((3, 4), 1), ((), 1)],
)
def test_a_gateway_sends_the_newest_batch_format_both_sides_read(offered: tuple[int, ...], chosen: int) -> None:
    assert sync.choose_batch_version(offered) == chosen


@pytest.mark.parametrize(
    "doc",
    [None, [], {"stream": 9, "ack_seq": 1, "verdict": "write"}, {"stream": 1, "ack_seq": -1, "verdict": "write"}, {"stream": 1}],
)
def test_malformed_batch_acks_are_refused(doc: object) -> None:
    with pytest.raises(ValueError):
        sync.BatchAck.from_json(doc)


def test_credential_changes_are_validated() -> None:
    ok = {"device_id": "d1", "credential_id": "a" * 32, "action": "set", "secret_sha256": "b" * 64}
    change = sync.CredentialChange.from_payload(ok)
    assert change.to_payload() == ok
    assert sync.CredentialChange.from_payload({**ok, "action": "revoke", "secret_sha256": None}).secret_sha256 is None
    for bad in ({**ok, "device_id": "a/b"}, {**ok, "credential_id": "X" * 32}, {**ok, "secret_sha256": "b" * 63}, {**ok, "action": "burn"}):
        with pytest.raises(ValueError):
            sync.CredentialChange.from_payload(bad)
