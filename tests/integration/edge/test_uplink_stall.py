"""Issue 14, item 4: the uplink could not be stopped (and the sync bench hung) when it was
cancelled in the loop turn its last ack landed; a backlog that does not move while the link is up
is noticed and shown as ``stalled``, and the watchdog recovers the uplink without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from edge_sync_receiver import Receiver, wait_for

from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings
from pulse.edge.identity import IdentityFiles
from pulse.edge.ingest import Store
from pulse.edge.link import load_enrollment
from pulse.edge.uplink import Uplink
from pulse.protocol.batch import Stream

pytestmark = pytest.mark.integration


class CancelOnAck(Buffer):
    """Cancels the uplink in the same loop turn as the cloud's ack is recorded: what the sync
    bench's drain loop did when it saw the backlog reach 0 (there, 1 run in 8 to 30 under load)."""

    uplink_task: asyncio.Task[None] | None = None

    async def ack(self, stream: Stream, seq: int) -> None:
        await super().ack(stream, seq)
        if self.uplink_task is not None and not any(self.backlog().values()):
            self.uplink_task.cancel()


async def fill(buffer: Buffer, n: int, *, first: int = 1) -> None:
    futures = [
        buffer.submit(Store(Stream.TELEMETRY, "dev-1", 1_700_000_000_000 + i, "telemetry", i,
                            orjson.dumps({"v": 1, "seq": i, "metrics": {"t": i}}), None))
        for i in range(first, first + n)
    ]
    await asyncio.gather(*futures)  # type: ignore[arg-type]


@pytest.fixture
async def cancel_on_ack(enrolled_settings: Settings) -> AsyncIterator[CancelOnAck]:
    buffer = CancelOnAck(enrolled_settings.database, enrolled_settings.buffer)
    await buffer.open()
    yield buffer
    await buffer.close()


async def test_an_uplink_cancelled_as_its_last_ack_lands_stops(enrolled_settings: Settings, receiver: Receiver,
                                                                cancel_on_ack: CancelOnAck) -> None:
    enrollment = load_enrollment(enrolled_settings.state_dir)
    assert enrollment is not None
    await fill(cancel_on_ack, 30)
    uplink = Uplink(enrolled_settings.sync, cancel_on_ack, enrollment, IdentityFiles(enrolled_settings.state_dir))
    task = cancel_on_ack.uplink_task = asyncio.create_task(uplink.run())
    done, _ = await asyncio.wait({task}, timeout=60)
    if not done:  # the bug: the uplink went on; stop it for good so the test ends
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    assert done, "the uplink was cancelled but did not stop"
    assert task.cancelled()
    assert cancel_on_ack.backlog()[Stream.TELEMETRY] == 0 and len(receiver.rows) == 30


class StaleReader(Buffer):
    """Pins its read connection's snapshot with a statement left open (a cursor never reset): its
    reads no longer see records stored after that, though the backlog (kept in memory) counts them."""

    async def pin(self) -> None:
        assert self._r is not None
        self._pinned = await self._r.execute("SELECT stream FROM streams")  # 4 rows: one read, three left
        await self._pinned.fetchone()


@pytest.fixture
async def stale_reader(enrolled_settings: Settings) -> AsyncIterator[StaleReader]:
    buffer = StaleReader(enrolled_settings.database, enrolled_settings.buffer)
    await buffer.open()
    yield buffer
    await buffer.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_backlog_that_does_not_move_while_the_link_is_up_is_shown_stalled_and_recovers(
    enrolled_settings: Settings, receiver: Receiver, stale_reader: StaleReader, tmp_path: Path
) -> None:
    from pulse.edge.status import metrics_text

    enrollment = load_enrollment(enrolled_settings.state_dir)
    assert enrollment is not None
    sync = dataclasses.replace(enrolled_settings.sync, report_interval_s=0.05, stall_after_s=120, watchdog_interval_s=0.02)
    clock = Clock()
    uplink = Uplink(sync, stale_reader, enrollment, IdentityFiles(enrolled_settings.state_dir), clock=clock)
    await fill(stale_reader, 5)
    task = asyncio.create_task(uplink.run())
    try:
        await wait_for(lambda: len(receiver.rows) == 5 and stale_reader.backlog()[Stream.TELEMETRY] == 0, "the first records")
        await stale_reader.pin()
        await fill(stale_reader, 20, first=6)  # stored, counted in the backlog, invisible to the pinned reader
        reports = len(receiver.reports)
        await wait_for(lambda: len(receiver.reports) > reports + 2, "reports going through: the link is up")
        assert uplink.snapshot()["stalled"] is False  # not for long enough yet
        clock.now += 121
        assert stale_reader.backlog()[Stream.TELEMETRY] == 20, (stale_reader.backlog(), uplink.snapshot())
        await wait_for(lambda: uplink.stalls >= 1, "the watchdog noticing the stall")
        snap = uplink.snapshot()
        assert snap["state"] == "stalled" and snap["stalled"] is True
        assert snap["last_error_code"] == "gateway.uplink_stalled"
        assert "pulse_gateway_uplink_stalled 1.0" in metrics_text({"uplink": snap})
        # the watchdog restarted the uplink's state (with a fresh read connection): it drains again
        await wait_for(lambda: stale_reader.backlog()[Stream.TELEMETRY] == 0, "the backlog drained after the restart")
        assert sorted(r.seq for _, r in receiver.rows) == list(range(1, 26))
        assert uplink.snapshot()["stalled"] is False and uplink.status.state.value == "connected"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
