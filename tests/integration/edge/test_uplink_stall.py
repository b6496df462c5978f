"""Issue 14, item 4: the uplink could not be stopped (and the sync bench hung) when it was
cancelled in the loop turn its last ack landed; a backlog that does not move while the link is up
is noticed and shown as ``stalled``, and the watchdog recovers the uplink without a restart.
Issue 28: a batch that timed out is a ``gateway.cloud_timeout``, is halved before it is sent
again, and the link's state during a black-holed outage is never ``connected``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import orjson
import pytest
from edge_sync_receiver import Receiver, wait_for

from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings
from pulse.edge.identity import IdentityFiles
from pulse.edge.ingest import Store
from pulse.edge.link import load_enrollment
from pulse.edge.pacing import link_line
from pulse.edge.status import metrics_text
from pulse.edge.uplink import Uplink
from pulse.protocol.batch import Stream

pytestmark = pytest.mark.integration
_B = TypeVar("_B", bound=Buffer)


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


@contextlib.asynccontextmanager
async def opened(kind: type[_B], settings: Settings) -> AsyncIterator[_B]:
    buffer = kind(settings.database, settings.buffer)
    await buffer.open()
    try:
        yield buffer
    finally:
        await buffer.close()


@pytest.fixture
async def cancel_on_ack(enrolled_settings: Settings) -> AsyncIterator[CancelOnAck]:
    async with opened(CancelOnAck, enrolled_settings) as buffer:
        yield buffer


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
    async with opened(StaleReader, enrolled_settings) as buffer:
        yield buffer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_uplink(settings: Settings, buffer: Buffer, clock: Clock | None = None, **sync_changes: Any) -> Uplink:
    enrollment = load_enrollment(settings.state_dir)
    assert enrollment is not None
    sync = dataclasses.replace(settings.sync, **sync_changes)
    return Uplink(sync, buffer, enrollment, IdentityFiles(settings.state_dir), clock=clock or Clock())


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_backlog_that_does_not_move_while_the_link_is_up_is_shown_stalled_and_recovers(
    enrolled_settings: Settings, receiver: Receiver, stale_reader: StaleReader
) -> None:
    clock = Clock()
    uplink = make_uplink(enrolled_settings, stale_reader, clock, report_interval_s=0.05, stall_after_s=120, watchdog_interval_s=0.02)
    await fill(stale_reader, 5)
    async with running(uplink):
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


async def test_a_batch_that_times_out_is_a_timeout_is_halved_and_the_link_is_never_shown_connected(
    enrolled_settings: Settings, receiver: Receiver, stale_reader: StaleReader
) -> None:
    clock = Clock()
    uplink = make_uplink(enrolled_settings, stale_reader, clock, request_timeout_s=0.3, report_interval_s=3600, records_per_batch=40,
                         window=1)  # one batch at a time: each hung request is one timeout
    await fill(stale_reader, 40)
    receiver.hang = 3  # black-holed: each batch is read and never answered
    states: list[str] = []
    async with running(uplink):
        shown: list[str] = []
        while receiver.hung < 3:
            clock.now += 0.5  # every sample sees a request outstanding longer than it should be
            snap = uplink.snapshot()
            states.append(snap["link"]["state"])
            if snap["link"]["state"] != "connected" and not shown:
                shown.append(metrics_text({"uplink": snap}))
                shown.append(link_line(snap["link"]))
            await asyncio.sleep(0.02)
        assert 'pulse_gateway_uplink_link_state{state="connected"} 0.0' in shown[0]
        assert "pulse_gateway_uplink_connected 0.0" in shown[0]
        assert shown[1].startswith(("degraded since", "down since"))
        await wait_for(lambda: stale_reader.backlog()[Stream.TELEMETRY] == 0, "the backlog delivered after the outage")
        assert uplink.status.errors >= 3
        sizes, nbytes = receiver.batch_sizes, receiver.batch_bytes
        # halved (in bytes) after each timeout, down to a single record
        assert all(nbytes[i + 1] <= nbytes[i] // 2 or sizes[i + 1] == 1 for i in range(3)), (sizes, nbytes)
        assert sizes[0] == 40 and sizes[3] < sizes[2] < sizes[1] < 40 or sizes[3] == 1, sizes
        assert "connected" not in states[len(states) // 2:] and {"degraded", "down"} & set(states)
        link = uplink.snapshot()["link"]
        assert link["state"] == "connected" and link["bytes_last_hour"] > 0 and link["est_rtt_s"] is not None
        delivered = sorted(r.seq for _, r in receiver.rows)
        assert delivered == list(range(1, 41))  # 0 lost, 0 duplicated


async def test_the_timeout_is_reported_as_a_timeout_not_a_tls_failure(enrolled_settings: Settings, receiver: Receiver,
                                                                     stale_reader: StaleReader) -> None:
    uplink = make_uplink(enrolled_settings, stale_reader, request_timeout_s=0.3, report_interval_s=3600, backoff_base_s=5,
                         backoff_cap_s=5)
    await fill(stale_reader, 3)
    receiver.hang = 1
    async with running(uplink):
        await wait_for(lambda: uplink.status.errors >= 1, "the batch timing out")
        assert uplink.status.last_error_code == "gateway.cloud_timeout", uplink.status.last_error
        assert uplink.snapshot()["link"]["last_error_code"] == "gateway.cloud_timeout"


async def test_after_an_outage_a_probe_ends_an_hour_long_backoff_and_handshakes_are_counted(
    enrolled_settings: Settings, receiver: Receiver
) -> None:
    """The listener goes away (connections refused) and comes back: the uplink, backing off for up
    to an hour, notices through its TCP probe and delivers at once; its TLS handshakes are counted."""
    async with opened(Buffer, enrolled_settings) as buffer:
        uplink = make_uplink(enrolled_settings, buffer, backoff_base_s=3600, backoff_cap_s=3600, probe_interval_s=0.05,
                             idle_poll_s=0.05)
        await fill(buffer, 10)
        async with running(uplink):
            await wait_for(lambda: len(receiver.rows) == 10, "the first records")
            assert uplink.link_snapshot()["tls_handshakes"] >= 1
            await receiver.stop_sync()
            await fill(buffer, 10, first=11)
            await wait_for(lambda: uplink.status.state.value == "backing off", "the uplink backing off")
            assert uplink.status.retry_in_s is not None
            await receiver.start()
            await wait_for(lambda: len(receiver.rows) == 20, "the records sent after the listener came back")
            link = uplink.link_snapshot()
            assert link["tls_handshakes"] >= 2 and link["handshakes_last_hour"] == link["tls_handshakes"]
            assert "TLS handshakes in the last hour" in link_line(link)
            assert "pulse_gateway_uplink_recent_tls_handshakes" in metrics_text({"uplink": uplink.snapshot()})
        assert sorted(r.seq for _, r in receiver.rows) == list(range(1, 21))


async def test_a_wide_devices_batches_are_held_under_the_byte_cap(enrolled_settings: Settings, receiver: Receiver) -> None:
    """60 metrics a reading: a batch of every waiting record would be far over ``sync.batch_bytes``,
    so the gateway sends fewer records a batch; everything arrives once, in order."""
    async with opened(Buffer, enrolled_settings) as buffer:
        await asyncio.gather(*[
            buffer.submit(Store(Stream.TELEMETRY, "dev-1", 1_700_000_000_000 + i, "telemetry", i,
                                orjson.dumps({"v": 1, "seq": i, "metrics": {f"m{k}": (i * 7919 + k * 104729) % 100_003 / 7
                                                                            for k in range(60)}}), None))
            for i in range(1, 301)
        ])  # type: ignore[misc]
        uplink = make_uplink(enrolled_settings, buffer, batch_bytes=8192, records_per_batch=5000)
        async with running(uplink):
            await wait_for(lambda: buffer.backlog()[Stream.TELEMETRY] == 0, "the wide records delivered")
    assert len(receiver.batch_sizes) > 2 and max(receiver.batch_sizes) < 300, receiver.batch_sizes
    assert [r.seq for _, r in receiver.rows] == list(range(1, 301))


async def test_under_a_cap_each_batch_is_sized_to_its_time_on_the_wire(enrolled_settings: Settings, receiver: Receiver) -> None:
    """A cap of 24 KB/s and a target of 1 s on the wire: each batch holds at most 24 KB (not the 5,000
    records ``records_per_batch`` allows, nor the 64 KB of ``batch_bytes``); everything arrives once, in order."""
    rng = random.Random(28)
    async with opened(Buffer, enrolled_settings) as buffer:
        await asyncio.gather(*[
            buffer.submit(Store(Stream.TELEMETRY, "dev-1", 1_700_000_000_000 + i, "telemetry", i,
                                orjson.dumps({"v": 1, "seq": i, "metrics": {f"m{k}": round(rng.uniform(0, 1000), 3)
                                                                            for k in range(20)}}), None))
            for i in range(1, 1001)
        ])  # type: ignore[misc]
        uplink = make_uplink(enrolled_settings, buffer, bandwidth_bytes_per_s=24_000, batch_target_s=1.0, records_per_batch=5000)
        async with running(uplink):
            await wait_for(lambda: buffer.backlog()[Stream.TELEMETRY] == 0, "the records delivered under the cap")
        assert uplink.link_snapshot()["batch_bytes"]["telemetry"] == 24_000
    assert len(receiver.batch_bytes) > 2 and max(receiver.batch_bytes) <= 24_000, receiver.batch_bytes
    assert [r.seq for _, r in receiver.rows] == list(range(1, 1001))
