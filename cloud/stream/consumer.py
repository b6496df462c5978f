"""The writers' side of the stream: one durable pull consumer per partition, one writer at a time.

Each partition is a once-per-cluster job (``stream-<partition>``, ``cluster/leader.py``), shared
out between the replicas alive: the replica holding its advisory lock runs its writer; when that
replica dies, PostgreSQL frees the lock and another replica takes the partition over within a
poll. A replica holding more than its fair share (a replica started since) is asked to release a
partition: the writer finishes the batch in hand (stored, committed, acknowledged), stops its
consumer and returns; only then is the lock freed for another replica to take the partition over.

Taking a partition over, the writer replaces the partition's durable consumer (same name, deliver
all): on the work-queue stream that redelivers, in stream order, every message nobody acknowledged,
whatever the previous holder had fetched. It then loops: fetch up to ``batch_messages``, and in ONE
writer transaction lock the partition's mark (``stream_marks``, migration 0023), COPY the rows of
the messages above it (``ingest.writer.write_rows``: telemetry, quarantine and the rule outbox, as
ingest without the stream), and move the mark to the batch's last stream sequence; after the commit,
the after-commit listeners (live view, rules) see the rows, then the messages are acknowledged.

- crash before the commit: nothing of the batch is stored; it is redelivered to the next holder.
- crash after the commit, before the acknowledgement: redelivered, at or below the mark: skipped.
- any error (database, NATS): the writer starts over from the takeover step, so it never stores a
  later message while an earlier one waits for redelivery (the mark only ever covers a prefix).

A batch the database refuses (a row it cannot take) is stored message by message; a message refused
alone has its rows quarantined with the reason (code ``api.invalid``) instead: never dropped, and the
partition never stalls on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pulse.cloud.cluster.leader import SharedJob
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import StreamConfig
from pulse.cloud.stream import codec
from pulse.cloud.stream.client import NATS_ERRORS, StreamClient, StreamDown
from pulse.protocol.errors import Code
from pulse.protocol.stream import consumer_name, partition_subject

log = logging.getLogger("pulse.cloud.stream")

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


@dataclass(slots=True)
class _Decoded:
    seq: int
    telemetry: list[TelemetryRow]
    quarantine: list[QuarantineRow]


@dataclass(slots=True)
class WriterStats:
    stored_messages: int = 0
    skipped_messages: int = 0
    """redelivered messages at or below the mark: already stored"""
    unreadable_messages: int = 0
    takeovers: int = 0
    releases: int = 0
    """partitions this process handed over cleanly (to share them out, or stopping)"""
    partitions: set[int] = field(default_factory=set)
    """partitions whose writer runs in this process now"""


class PartitionWriters:
    def __init__(
        self,
        client: StreamClient,
        config: StreamConfig,
        db: Database,
        *,
        on_commit: Callable[[Sequence[TelemetryRow]], None] | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self.client = client
        self.config = config
        self.db = db
        self.on_commit = on_commit
        self.retry_s = retry_s
        self.stats = WriterStats()

    def jobs(self) -> dict[str, SharedJob]:
        """The cluster jobs: ``stream-<p>`` -> its partition's writer."""
        return {f"stream-{p}": self._job(p) for p in range(self.config.partitions)}

    def _job(self, partition: int) -> SharedJob:
        return lambda release: self.run(partition, release)

    async def run(self, partition: int, release: asyncio.Event | None = None) -> None:
        """The partition's writer, until cancelled (the cluster lease lost) or, soon after
        ``release`` is set, at a clean point: no batch in hand."""
        release = release or asyncio.Event()
        self.stats.partitions.add(partition)
        try:
            while not release.is_set():
                try:
                    await self._consume(partition, release)
                except (*NATS_ERRORS, StreamDown, *_DB_ERRORS) as exc:
                    self.client.forget_stream()
                    log.warning("stream partition %s: %s: %s; starting over from its mark", partition, type(exc).__name__, exc)
                except Exception:  # a bug: log it, start over, never lose the partition
                    log.exception("stream partition %s writer failed; starting over from its mark", partition)
                else:
                    break  # released
                await asyncio.sleep(self.retry_s)
            # released: the batch in hand is stored and acknowledged (or, after an error, none is in hand)
            self.stats.releases += 1
            log.info("stream partition %s released at a clean point", partition)
        finally:
            self.stats.partitions.discard(partition)

    async def _consume(self, partition: int, release: asyncio.Event) -> None:
        """Take the partition over, then store batch after batch; returns once ``release`` is set
        and the batch in hand is stored and acknowledged."""
        cfg = self.config
        await self.client.wait_connected()
        await self.client.ensure_stream()
        js = self.client.jetstream()
        name, subject = consumer_name(partition), partition_subject(cfg.subject, partition)
        # take over: a fresh consumer redelivers, in order, everything not yet acknowledged
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(cfg.name, name)
        await js.add_consumer(
            cfg.name,
            ConsumerConfig(
                durable_name=name,
                filter_subject=subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=cfg.batch_messages * 4,
            ),
        )
        self.stats.takeovers += 1
        sub = await js.pull_subscribe_bind(name, stream=cfg.name)
        try:
            while not release.is_set():
                try:
                    msgs = await sub.fetch(cfg.batch_messages, timeout=cfg.fetch_wait_s)
                except nats.errors.TimeoutError:
                    continue
                if not msgs:
                    continue
                await self._store(subject, msgs)
                for msg in msgs:
                    await msg.ack()
            await self.client.flush()  # the acknowledgements reach the server before the next holder takes over
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    def _decode(self, subject: str, msgs: list[Msg]) -> tuple[list[_Decoded], int]:
        decoded: list[_Decoded] = []
        last = 0
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            last = max(last, seq)
            try:
                telemetry, quarantine = codec.decode(msg.data)
            except codec.StreamFormatError as exc:  # only Pulse publishes here; nothing to store, nobody to tell
                log.error("stream %s message %s is unreadable and skipped: %s", subject, seq, exc)
                self.stats.unreadable_messages += 1
                continue
            decoded.append(_Decoded(seq, telemetry, quarantine))
        return decoded, last

    async def _store(self, subject: str, msgs: list[Msg]) -> None:
        """Store fetched messages in order, in transactions of about ``batch_rows`` rows each."""
        decoded, last = self._decode(subject, msgs)
        group: list[_Decoded] = []
        rows = done = 0
        for d in decoded:
            group.append(d)
            rows += len(d.telemetry) + len(d.quarantine)
            if rows >= self.config.batch_rows:
                await self._store_group(subject, group, d.seq)
                group, rows, done = [], 0, d.seq
        if group or last > done:
            await self._store_group(subject, group, last)

    async def _store_group(self, subject: str, decoded: list[_Decoded], last: int) -> None:
        try:
            stored = await self._commit(subject, decoded, last)
        except _REFUSED as exc:
            if len(decoded) <= 1:
                stored = await self._commit(subject, [_quarantined(d, exc) for d in decoded], last)
            else:
                stored = []
                for one in decoded:  # the others are not held hostage by one the database refuses
                    try:
                        stored += await self._commit(subject, [one], one.seq)
                    except _REFUSED as alone:
                        stored += await self._commit(subject, [_quarantined(one, alone)], one.seq)
                await self._commit(subject, [], last)  # unreadable messages past the last readable one
        telemetry = [row for d in stored for row in d.telemetry]
        if self.on_commit is not None and telemetry:
            try:
                self.on_commit(telemetry)
            except Exception:  # a listener never fails a committed write
                log.exception("on_commit listener failed; the rows are stored")

    async def _commit(self, subject: str, decoded: list[_Decoded], last: int) -> list[_Decoded]:
        """Store the messages above the partition's mark and move the mark to ``last``, in one
        transaction; the messages stored."""
        stream = self.config.name
        async with self.db.writer_transaction() as conn:
            await conn.execute("INSERT INTO stream_marks (stream, subject) VALUES ($1, $2) ON CONFLICT DO NOTHING", stream, subject)
            mark = await conn.fetchval("SELECT last_seq FROM stream_marks WHERE stream = $1 AND subject = $2 FOR UPDATE", stream, subject)
            fresh = [d for d in decoded if d.seq > mark]
            self.stats.skipped_messages += len(decoded) - len(fresh)
            if fresh:
                await write_rows(conn, [r for d in fresh for r in d.telemetry], [q for d in fresh for q in d.quarantine])
            if last > mark:
                await conn.execute(
                    "UPDATE stream_marks SET last_seq = $3, updated_at = now() WHERE stream = $1 AND subject = $2", stream, subject, last
                )
        self.stats.stored_messages += len(fresh)
        return fresh


def _quarantined(d: _Decoded, exc: Exception) -> _Decoded:
    """A message the database refused: its rows as quarantine rows, with the reason."""
    reason = f"storage refused this row: {exc}"
    rows = [
        QuarantineRow(r.tenant_id, r.device_id, r.gateway_id, r.source, str(Code.API_INVALID), reason,
                      json.dumps(r._asdict(), default=str).encode(), r.received_at)
        for r in d.telemetry
    ]
    return _Decoded(d.seq, [], rows + d.quarantine)
