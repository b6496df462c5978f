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

Gateway sync's messages (format 2, ``codec.Provenance``: gateway, sync stream, each row's record
sequence) may hold records that are in the stream already: the receiver publishes a batch's
records before the gateway's high-water mark commits (``sync/receive.py``), and when that commit
does not happen the gateway sends them again from its acknowledged position, in a batch of another
size, with records that arrived since. So in the same transaction the writer also locks a mark per
(gateway, sync stream, partition) (``stream_gateway_marks``, migration 0027), stores only records
above it, and moves it to the last one stored. That is exact, neither loss nor duplicate, because
per partition the first copy of each record of a (gateway, sync stream) reaches the stream in
record sequence order:

- the receiver admits and publishes a batch only while it holds the gateway's mark row locked
  (FOR UPDATE) and commits the new mark after every publish was acknowledged, so the attempts
  (batches, and resends of them) of one (gateway, sync stream) run one after the other, each
  holding exactly the gateway's records above the mark committed before it;
- within an attempt, a partition's records are published in sequence order, one message after the
  previous one was acknowledged (stored in the stream), and a failed publish ends the attempt's
  publishing to that partition; so of an attempt's messages to a partition, all but possibly the
  last reached the stream in order, and the last one may still reach it later (a publish timed
  out, not lost; also while a later attempt publishes) or never;
- so each message that reaches the partition starts right after a record of that partition that
  is already stored (acknowledged before it, or committed by an earlier attempt) and holds the next
  records in order: the records not yet stored in it are exactly those above the mark, and storing
  them keeps the stored records a prefix of the gateway's records in that partition. A later copy
  (an attempt's late message, a resend) is at or below the mark and skipped.

Connectivity events (``alerts/connectivity.py``) of a gateway's EVENTS rows set the device states
after the commit, in a tenant transaction of their own, in the order of the rows, as the receiver
does without the stream (the writer role has no grant on device states).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pulse.cloud.alerts import connectivity
from pulse.cloud.cluster.leader import SharedJob
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import StreamConfig
from pulse.cloud.stream import codec
from pulse.cloud.stream.client import NATS_ERRORS, StreamClient, StreamDown
from pulse.protocol.batch import Stream
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
    provenance: codec.Provenance | None = None
    """a gateway's message: its record sequences, one per telemetry row (or per ``refused`` row)"""
    refused: list[QuarantineRow] | None = None
    """a gateway's message the database refused: its telemetry rows as quarantine rows"""


@dataclass(slots=True)
class WriterStats:
    stored_messages: int = 0
    skipped_messages: int = 0
    """redelivered messages at or below the mark: already stored"""
    unreadable_messages: int = 0
    skipped_gateway_records: int = 0
    """gateway records at or below their (gateway, sync stream, partition) mark: stored already"""
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
                message = codec.decode_message(msg.data)
            except codec.StreamFormatError as exc:  # only Pulse publishes here; nothing to store, nobody to tell
                log.error("stream %s message %s is unreadable and skipped: %s", subject, seq, exc)
                self.stats.unreadable_messages += 1
                continue
            decoded.append(_Decoded(seq, message.telemetry, message.quarantine, message.provenance))
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
        await self._connectivity(stored)
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
            fresh, skipped = await self._above_gateway_marks(conn, int(subject.rpartition(".")[2]), fresh)
            if fresh:
                await write_rows(
                    conn, [r for d in fresh for r in d.telemetry], [q for d in fresh for q in (*d.quarantine, *(d.refused or ()))]
                )
            if last > mark:
                await conn.execute(
                    "UPDATE stream_marks SET last_seq = $3, updated_at = now() WHERE stream = $1 AND subject = $2", stream, subject, last
                )
        self.stats.stored_messages += len(fresh)
        self.stats.skipped_gateway_records += skipped
        return fresh

    @staticmethod
    async def _above_gateway_marks(conn: asyncpg.Connection, partition: int, decoded: list[_Decoded]) -> tuple[list[_Decoded], int]:
        """In the caller's transaction: the gateway messages' records above their (gateway, sync
        stream, partition) marks (module docstring), the marks locked and moved to the last of them;
        and how many records were skipped."""
        keys = sorted({(d.provenance.gateway_id, d.provenance.sync_stream) for d in decoded if d.provenance is not None})
        if not keys:
            return decoded, 0
        marks: dict[tuple[uuid.UUID, int], int] = {}
        for gateway_id, sync_stream in keys:
            await conn.execute(
                "INSERT INTO stream_gateway_marks (gateway_id, sync_stream, partition) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                gateway_id, sync_stream, partition,
            )
            marks[(gateway_id, sync_stream)] = await conn.fetchval(
                "SELECT last_seq FROM stream_gateway_marks WHERE gateway_id = $1 AND sync_stream = $2 AND partition = $3 FOR UPDATE",
                gateway_id, sync_stream, partition,
            )
        moved = dict(marks)
        skipped = 0
        out: list[_Decoded] = []
        for d in decoded:
            p = d.provenance
            if p is None:
                out.append(d)
                continue
            key = (p.gateway_id, p.sync_stream)
            keep: list[int] = []
            for i, seq in enumerate(p.seqs):
                if seq > moved[key]:
                    keep.append(i)
                    moved[key] = seq
            skipped += len(p.seqs) - len(keep)
            if len(keep) < len(p.seqs):
                kept = codec.Provenance(p.gateway_id, p.sync_stream, tuple(p.seqs[i] for i in keep))
                if d.refused is not None:
                    d = _Decoded(d.seq, [], d.quarantine, kept, [d.refused[i] for i in keep])
                else:
                    d = _Decoded(d.seq, [d.telemetry[i] for i in keep], d.quarantine, kept)
            out.append(d)
        changed = [(g, s, partition, seq) for (g, s), seq in moved.items() if seq != marks[(g, s)]]
        if changed:
            await conn.executemany(
                "UPDATE stream_gateway_marks SET last_seq = $4, updated_at = now() WHERE gateway_id = $1 AND sync_stream = $2 AND partition = $3",
                changed,
            )
        return out, skipped

    async def _connectivity(self, stored: list[_Decoded]) -> None:
        """Device states from the connectivity events of the gateway EVENTS rows just committed, per
        tenant in row order, as ``sync/receive.py`` does without the stream; never fails the batch."""
        by_tenant: dict[uuid.UUID, list[TelemetryRow]] = {}
        for d in stored:
            if d.provenance is not None and d.provenance.sync_stream == Stream.EVENTS:
                for row in d.telemetry:
                    by_tenant.setdefault(row.tenant_id, []).append(row)
        for tenant, rows in by_tenant.items():
            if not connectivity.changes(rows):
                continue
            try:
                async with self.db.tenant(tenant) as conn:
                    await connectivity.apply(conn, rows)
            except Exception:  # the events are stored; the next event or heartbeat sweep sets the state
                log.exception("connectivity events of tenant %s did not update device states", tenant)


def _quarantined(d: _Decoded, exc: Exception) -> _Decoded:
    """A message the database refused: its rows as quarantine rows, with the reason."""
    reason = f"storage refused this row: {exc}"
    rows = [
        QuarantineRow(r.tenant_id, r.device_id, r.gateway_id, r.source, str(Code.API_INVALID), reason,
                      json.dumps(r._asdict(), default=str).encode(), r.received_at)
        for r in d.telemetry
    ]
    if d.provenance is not None:  # the gateway's record sequences still apply to these rows
        return _Decoded(d.seq, [], d.quarantine, d.provenance, rows)
    return _Decoded(d.seq, [], rows + d.quarantine)
