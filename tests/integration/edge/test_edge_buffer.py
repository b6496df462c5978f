"""The SQLite buffer on a real file: sequences per stream, read/ack, restarts, deduplication, the byte quota."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pulse.edge.buffer import ROW_OVERHEAD, Buffer, Outcome
from pulse.edge.config import BufferSettings
from pulse.edge.ingest import Store, fingerprint
from pulse.protocol.batch import Record, Stream

pytestmark = pytest.mark.integration


def store(device: str, seq: int, stream: Stream = Stream.TELEMETRY, size: int = 0, **metrics: float) -> Store:
    doc = {"v": 1, "seq": seq, "metrics": metrics or {"n": seq}}
    if size:
        doc["pad"] = "x" * size
    raw = json.dumps(doc).encode()
    kind = {Stream.TELEMETRY: "telemetry", Stream.EVENTS: "event", Stream.TWIN: "twin_reported", Stream.ALERTS: "alert"}[stream]
    return Store(stream, device, 1_764_000_000_000 + seq, kind, seq, raw, fingerprint(raw))


async def opened(path: Path, **settings: object) -> Buffer:
    b = Buffer(path, BufferSettings(flush_interval_ms=0, **settings))  # type: ignore[arg-type]
    await b.open()
    return b


async def test_each_stream_numbers_its_records_and_read_returns_protocol_records(tmp_path):
    b = await opened(tmp_path / "g.db")
    try:
        outcomes = await asyncio.gather(
            b.put(store("d1", 1)), b.put(store("d1", 2, Stream.EVENTS)), b.put(store("d2", 1)), b.put(store("d1", 3))
        )
        assert set(outcomes) == {Outcome.STORED}
        telemetry = await b.read(Stream.TELEMETRY, 0, 10)
        assert telemetry == [
            Record(1, "d1", 1_764_000_000_001, "telemetry", {"n": 1}, 1, None, None),
            Record(2, "d2", 1_764_000_000_001, "telemetry", {"n": 1}, 1, None, None),
            Record(3, "d1", 1_764_000_000_003, "telemetry", {"n": 3}, 3, None, None),
        ]
        assert [(r.seq, r.type) for r in await b.read(Stream.EVENTS, 0, 10)] == [(1, "event")]
        assert [r.seq for r in await b.read(Stream.TELEMETRY, 1, 1)] == [2]
    finally:
        await b.close()


async def test_ack_deletes_up_to_the_cursor_and_numbers_are_never_reused_after_restart(tmp_path):
    path = tmp_path / "g.db"
    b = await opened(path)
    for i in range(1, 6):
        await b.put(store("d1", i))
    await b.ack(Stream.TELEMETRY, 3)
    await b.ack(Stream.TELEMETRY, 2)  # an older ack is a no-op
    assert [r.seq for r in await b.read(Stream.TELEMETRY, 0, 10)] == [4, 5]
    with pytest.raises(ValueError):
        await b.ack(Stream.TELEMETRY, 6)  # nothing numbered 6 was written yet
    await b.ack(Stream.TELEMETRY, 5)
    await b.close()

    b = await opened(path)
    try:
        assert b.acked(Stream.TELEMETRY) == 5
        await b.put(store("d1", 6))
        assert [r.seq for r in await b.read(Stream.TELEMETRY, b.acked(Stream.TELEMETRY), 10)] == [6]
        stats = await b.stats()
        telemetry = next(s for s in stats.streams if s.stream == "telemetry")
        assert (telemetry.depth, telemetry.next_seq, telemetry.acked_seq) == (1, 7, 5)
    finally:
        await b.close()


async def test_retransmission_is_acknowledged_once_stored_once_even_across_restart(tmp_path):
    path = tmp_path / "g.db"
    b = await opened(path)
    first = store("d1", 41)
    assert await b.put(first) is Outcome.STORED
    assert await b.put(first) is Outcome.DUPLICATE
    # in one batch too
    again = await asyncio.gather(b.put(store("d1", 42)), b.put(store("d1", 42)))
    assert sorted(o.value for o in again) == ["duplicate", "stored"]
    await b.close()

    b = await opened(path)
    try:
        assert await b.put(first) is Outcome.DUPLICATE
        # same seq, different content: a device that rebooted and restarted its numbering
        assert await b.put(store("d1", 41, t=99.0)) is Outcome.STORED
        # another device may use the same seq
        assert await b.put(store("d2", 41)) is Outcome.STORED
        assert [(r.device_id, r.device_seq) for r in await b.read(Stream.TELEMETRY, 0, 10)] == [
            ("d1", 41), ("d1", 42), ("d1", 41), ("d2", 41)
        ]
        assert (await b.stats()).duplicates == 3
    finally:
        await b.close()


async def test_quota_drops_the_oldest_telemetry_keeps_events_and_counts_what_it_dropped(tmp_path):
    path = tmp_path / "g.db"
    quota_mb = 0.25  # 262,144 bytes
    b = await opened(path, quota_mb=quota_mb)
    sent_telemetry, sent_events = [], []
    for i in range(1, 601):  # ~600 kB of telemetry and 60 events: more than twice the quota
        await b.put(store("d1", i, size=900))
        sent_telemetry.append(i)
        if i % 10 == 0:
            await b.put(store("d1", 10_000 + i, Stream.EVENTS, size=900))
            sent_events.append(10_000 + i)
    stats = await b.stats()
    await b.close()

    b = await opened(path, quota_mb=quota_mb)
    try:
        kept = [r.device_seq for r in await b.read(Stream.TELEMETRY, 0, 10_000)]
        events = [r.device_seq for r in await b.read(Stream.EVENTS, 0, 10_000)]
        assert events == sent_events  # every event kept
        assert kept == sent_telemetry[-len(kept):]  # the newest telemetry, contiguous: the oldest went first
        assert 0 < len(kept) < len(sent_telemetry)
        telemetry = next(s for s in (await b.stats()).streams if s.stream == "telemetry")
        assert telemetry.dropped_count == len(sent_telemetry) - len(kept)  # persisted across the restart
        dropped = sent_telemetry[: len(sent_telemetry) - len(kept)]
        assert telemetry.dropped_bytes == sum(len(store("d1", i, size=900).raw) + ROW_OVERHEAD for i in dropped)
        assert telemetry.next_seq == len(sent_telemetry) + 1
        assert stats.total_bytes <= int(quota_mb * 1024 * 1024)
        assert (await b.stats()).total_bytes == stats.total_bytes
    finally:
        await b.close()


async def test_events_are_kept_past_the_quota_and_reported_over_quota(tmp_path):
    b = await opened(tmp_path / "g.db", quota_mb=0.01)  # 10,485 bytes
    try:
        for i in range(20):
            await b.put(store("d1", i, Stream.EVENTS, size=900))
        stats = await b.stats()
        assert len(await b.read(Stream.EVENTS, 0, 100)) == 20
        assert stats.over_quota
    finally:
        await b.close()
