"""The telemetry writer's group commit never hands a flusher an empty batch."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.ingest.writer import Writer, _Pending
from pulse.cloud.settings import WriterConfig

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _item() -> _Pending:
    row = TelemetryRow(NOW, uuid.uuid4(), "d", "telemetry", "{}", None, None, None, None, "test", NOW)
    return _Pending([row], [], asyncio.get_running_loop().create_future())


async def test_a_flusher_whose_gathered_rows_were_taken_by_another_waits_again_instead_of_writing_nothing() -> None:
    writer = Writer(WriterConfig(batch_rows=1000, flush_s=3600, queue_rows=10_000, connections=2))
    async with writer._cond:  # another flusher is writing a batch; one request is queued
        writer._writing = 1
        writer._queue.append(_item())
        writer._queued_rows = 1
    gathering = asyncio.create_task(writer._take_batch())
    await asyncio.sleep(0)  # it gathers: another batch is being written
    await asyncio.sleep(0)
    assert not gathering.done()
    async with writer._cond:  # the other flusher finished and took the queued request itself
        writer._queue.clear()
        writer._queued_rows = 0
        writer._writing = 1
        writer._cond.notify_all()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not gathering.done()  # before: it returned [] and wrote an empty batch
    later = _item()
    async with writer._cond:
        writer._writing = 0
        writer._queue.append(later)
        writer._queued_rows = 1
        writer._cond.notify_all()
    batch = await asyncio.wait_for(gathering, 5)
    assert batch == [later]
    async with writer._cond:
        writer._stopping = True
        writer._cond.notify_all()
    assert await writer._take_batch() is None
