"""The one telemetry write path: rows COPYed in batches.

Two layers, so that gateway sync can commit rows and its high-water mark in one transaction:

- ``write_rows(conn, telemetry, quarantine)``: COPY the rows inside the caller's transaction
  (the connection must be the writer role's: COPY FROM needs to bypass row-level security; the
  tenant of each row was taken from a verified credential by the caller). Gateway sync::

      async with db.writer_transaction() as conn:
          await write_rows(conn, rows, quarantined)
          await conn.execute("UPDATE ... high-water mark ...")   # commits with the rows, or neither
- ``Writer``: a bounded queue in front of ``write_rows`` for HTTP ingest. ``await writer.write(...)``
  returns only after the rows are committed (so an HTTP 200 means stored). Rows from many requests
  are written together, group-commit style: an idle writer writes what is queued at once; while a
  batch is being written, the next one gathers until ``batch_rows`` are queued, ``flush_s`` after
  its oldest row arrived, or the running write ends, whichever comes first.
  When the queue holds ``queue_rows`` rows, ``write`` raises ``OverloadedError`` (503 +
  Retry-After) instead of growing memory. ``on_commit`` (if given) sees each committed batch's
  telemetry rows, synchronously and after the commit (the console's live view listens there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import asyncpg

from pulse.cloud.db.rows import QUARANTINE_COLUMNS, TELEMETRY_COLUMNS, QuarantineRow, TelemetryRow
from pulse.cloud.errors import CloudError, InvalidError, OverloadedError, StorageUnavailableError
from pulse.cloud.settings import WriterConfig
from pulse.common import aio
from pulse.protocol.errors import Code

log = logging.getLogger(__name__)


class RowWriter(Protocol):
    """What ingest writes through: this module's ``Writer`` (to PostgreSQL) or, with
    PULSE_STREAM_URL, ``stream.publisher.StreamPublisher`` (to JetStream). ``write`` returns once
    the rows are durable there, or raises a ``CloudError`` (503 with Retry-After when overloaded)."""

    @property
    def queued_rows(self) -> int: ...

    async def write(self, telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = ()) -> None: ...


async def write_rows(
    conn: asyncpg.Connection, telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = ()
) -> None:
    """COPY rows inside the caller's transaction, with their rule-outbox entries (one per tenant:
    what the rules runner needs of the rows, so what commits is evaluated even if this process dies
    before it could). Raises asyncpg errors; callers translate."""
    if telemetry:
        await conn.copy_records_to_table("telemetry", records=telemetry, columns=TELEMETRY_COLUMNS)
        await conn.executemany(
            "INSERT INTO rule_outbox (tenant_id, device_ids, metrics, received_ms) VALUES ($1, $2, $3, $4)", outbox_entries(telemetry)
        )
    if quarantine:
        await conn.copy_records_to_table("quarantine", records=quarantine, columns=QUARANTINE_COLUMNS)


def outbox_entries(telemetry: Sequence[TelemetryRow]) -> list[tuple[uuid.UUID, list[str], list[str], list[int]]]:
    """One ``rule_outbox`` entry per tenant: (tenant, device ids, metrics JSON, received_at in Unix ms), in row order."""
    by_tenant: dict[uuid.UUID, tuple[list[str], list[str], list[int]]] = {}
    received: datetime | None = None
    received_ms = 0
    for row in telemetry:
        entry = by_tenant.get(row.tenant_id)
        if entry is None:
            entry = by_tenant[row.tenant_id] = ([], [], [])
        if row.received_at is not received:  # the rows of one request share one received_at
            received, received_ms = row.received_at, int(row.received_at.timestamp() * 1000)
        entry[0].append(row.device_id)
        entry[1].append(row.metrics)
        entry[2].append(received_ms)
    return [(tenant, *columns) for tenant, columns in by_tenant.items()]


@dataclass(slots=True)
class _Pending:
    telemetry: Sequence[TelemetryRow]
    quarantine: Sequence[QuarantineRow]
    future: asyncio.Future[None]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return len(self.telemetry) + len(self.quarantine)


@dataclass(frozen=True, slots=True)
class FlushReport:
    rows: int
    requests: int
    seconds: float
    ok: bool
    waited_s: float = 0.0
    """the longest time a request of the batch waited, from being queued to the end of the flush"""


class Writer:
    def __init__(
        self,
        config: WriterConfig,
        *,
        retry_after_s: int = 1,
        on_flush: Callable[[FlushReport], None] | None = None,
        on_commit: Callable[[Sequence[TelemetryRow]], None] | None = None,
    ) -> None:
        self._pool: asyncpg.Pool | None = None
        self._config = config
        self._retry_after_s = retry_after_s
        self._on_flush = on_flush
        self._on_commit = on_commit
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._inflight_rows = 0
        self._writing = 0  # batches being written now
        self._cond = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def pending_rows(self) -> int:
        """Queued plus being written: what counts against ``queue_rows``."""
        return self._queued_rows + self._inflight_rows

    def start(self, pool: asyncpg.Pool) -> None:
        """Begin flushing with connections of ``pool`` (the writer role's)."""
        self._pool = pool
        self._stopping = False
        self._tasks = [asyncio.create_task(self._flusher(), name=f"pulse-writer-{i}") for i in range(self._config.connections)]

    async def stop(self) -> None:
        """Write everything queued, then stop."""
        async with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def write(self, telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = ()) -> None:
        """Queue rows and wait until they are committed."""
        rows = len(telemetry) + len(quarantine)
        if rows == 0:
            return
        if self._stopping:
            raise OverloadedError(
                "the server is shutting down; retry against another instance", retry_after_s=self._retry_after_s
            )
        if self.pending_rows + rows > self._config.queue_rows:
            raise OverloadedError(
                "the ingest queue is full; nothing from this request was stored; retry after the Retry-After seconds",
                retry_after_s=self._retry_after_s,
                queued_rows=self.pending_rows,
            )
        item = _Pending(telemetry, quarantine, asyncio.get_running_loop().create_future())
        async with self._cond:
            self._queue.append(item)
            self._queued_rows += rows
            self._cond.notify()
        await asyncio.shield(item.future)

    async def _take_batch(self) -> list[_Pending] | None:
        async with self._cond:
            while True:
                await self._cond.wait_for(lambda: bool(self._queue) or self._stopping)
                if not self._queue:
                    return None
                # Group commit: when no batch is being written, write what is queued at once (waiting
                # would only add latency). While another batch is being written, gather rows until
                # batch_rows are queued or the oldest has waited flush_s, or that write finishes.
                deadline = self._queue[0].enqueued + self._config.flush_s
                while self._queue and self._queued_rows < self._config.batch_rows and self._writing and not self._stopping:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await aio.wait_for(self._cond.wait(), remaining)
                if self._queue:
                    break
                # another flusher took what was queued while this one gathered: wait again rather
                # than write an empty batch
            batch: list[_Pending] = []
            rows = 0
            while self._queue and (not batch or rows + self._queue[0].rows <= self._config.batch_rows):
                item = self._queue.popleft()
                batch.append(item)
                rows += item.rows
            self._queued_rows -= rows
            self._inflight_rows += rows
            self._writing += 1
            if self._queue:
                self._cond.notify()
            return batch

    async def _flusher(self) -> None:
        while True:
            batch = await self._take_batch()
            if batch is None:
                return
            rows = sum(item.rows for item in batch)
            try:
                await self._flush(batch)
            except Exception as exc:  # a bug must not leave requests waiting forever, nor stop the writer
                log.exception("telemetry writer failed on a batch")
                failure = StorageUnavailableError(
                    "the writer failed; nothing from this request was stored; retry later", retry_after_s=self._retry_after_s
                )
                failure.__cause__ = exc
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(failure)
            finally:
                self._inflight_rows -= rows
                async with self._cond:
                    self._writing -= 1
                    self._cond.notify_all()  # a flusher waiting for this write may go now

    async def _flush(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        telemetry = [row for item in batch for row in item.telemetry]
        quarantine = [row for item in batch for row in item.quarantine]
        try:
            await self._commit(telemetry, quarantine)
        except CloudError as exc:
            if len(batch) > 1 and not isinstance(exc, OverloadedError):
                # one request's rows were refused by the database: write each request alone so
                # the others are not held hostage by it
                for item in batch:
                    await self._flush([item])
                return
            self._report(batch, started, ok=False)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._report(batch, started, ok=True)
        if self._on_commit is not None and telemetry:
            try:
                self._on_commit(telemetry)
            except Exception:  # a listener never fails a committed write
                log.exception("on_commit listener failed; the rows are stored")
        for item in batch:
            if not item.future.done():
                item.future.set_result(None)

    async def _commit(self, telemetry: list[TelemetryRow], quarantine: list[QuarantineRow]) -> None:
        assert self._pool is not None, "Writer.start() first"
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await write_rows(conn, telemetry, quarantine)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            raise InvalidError(Code.API_INVALID, f"storage refused these rows: {exc}") from exc
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            log.warning("telemetry write failed: %s", exc)
            raise StorageUnavailableError(
                "storage is unavailable; nothing from this request was stored; retry later", retry_after_s=self._retry_after_s
            ) from exc

    def _report(self, batch: list[_Pending], started: float, *, ok: bool) -> None:
        if self._on_flush is not None:
            self._on_flush(
                FlushReport(
                    rows=sum(i.rows for i in batch),
                    requests=len(batch),
                    seconds=time.perf_counter() - started,
                    ok=ok,
                    waited_s=time.monotonic() - min(i.enqueued for i in batch) if batch else 0.0,
                )
            )
