"""Receiving a gateway's batches: the sync listener's ``POST /sync/v1/batches``.

Delivery contract for a batch (docs/protocol.md section 6): the header is read first; a replay (at
or below the stream's high-water mark) is acked without being decompressed. Otherwise the batch is
decoded and, in ONE writer transaction, the mark row is locked (FOR UPDATE, so two copies of a batch
racing each other cannot both write), ``admit`` picks the records above it, and the records are
stored by stream: telemetry and events as rows COPYed by ``ingest.writer.write_rows``, alerts merged
into the tenant's alerts (``alerts.merge_edge_alerts``), twin reports and command answers applied by
``twins.apply_device_messages`` (the rule HTTP ingest uses too). Then the new mark is stored. Only
after the commit does the gateway get its ``BatchAck``, and only then are the listeners (live view,
rules, device states) told.

A batch sent behind another one still in flight (``X-Pulse-After``) is decoded and made into rows
while that one is being stored (the mark read before says it is not a replay), then waits for its
commit: a commit here wakes the batches waiting behind it at once, one made by another process is
seen by reading the mark again. So one batch's decoding overlaps the COPY of the batch ahead. The
transaction still decides from the mark it locks, and keeps the rows of the records it admits.

With the ingest stream (``PULSE_STREAM_URL``, ``Receiver.stream``), telemetry and events take the
same steps up to admission, then, still in that transaction with the mark locked, the admitted
rows are published to JetStream with their provenance (gateway, sync stream, record sequence:
``StreamPublisher.write_gateway``), and the mark moves and commits only once JetStream acknowledged
every publish. The partition writers store them (``stream/consumer.py``, which also skips records
of a resent batch that reached the stream before, and applies connectivity events and tells the
listeners after its commit). Quarantined records are written here, in the mark's transaction, as
without the stream. When JetStream cannot take the rows: 503 ``sync.stream_unavailable``, nothing
committed, the mark unmoved; the gateway sends the records again. Alerts and twin updates are
written here as without the stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from pulse.cloud import twins
from pulse.cloud.alerts import connectivity, merge_edge_alerts
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import QuarantineRow, TelemetryRow, telemetry_row
from pulse.cloud.errors import BadRequestError, ConflictError, ForbiddenError, StorageUnavailableError, StreamUnavailableError
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.metrics import Metrics
from pulse.cloud.stream.publisher import StreamPublisher
from pulse.cloud.subscriptions.store import Entitlements
from pulse.cloud.sync.identity import GatewayCaller
from pulse.common import aio
from pulse.protocol import batch as codec
from pulse.protocol.batch import DEFAULT_BATCH_LIMITS, BatchLimits, Header, Record, Stream
from pulse.protocol.envelope import MessageType
from pulse.protocol.errors import BatchError, Code
from pulse.protocol.sync import (
    TWIN_RECORD_TYPES,
    BatchAck,
    ClockCheck,
    Verdict,
    admit,
    check_clock,
    classify,
    corrected_ts,
    in_order,
)
from pulse.protocol.twin import DEFAULT_LIMITS as DEFAULT_TWIN_LIMITS
from pulse.protocol.twin import TwinLimits

log = logging.getLogger(__name__)

IN_ORDER_WAIT_S = 5.0
"""How long a batch sent behind another (``X-Pulse-After``) waits for that one to be stored before ``409 sync.out_of_order``."""
IN_ORDER_POLL_S = 0.02
"""How often such a batch reads the mark again (the batch ahead of it may be stored by another process)."""
DECODED_AHEAD_MAX = 8
"""At most this many batches wait decoded (records and rows in memory) for the batch ahead of them;
beyond it a batch waits as it arrived (its bytes) and is decoded once its turn has come."""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EXACT_FLOAT_MS = 2**33 * 1000
_DECODE_INLINE_BYTES = 64 * 1024  # bigger batches are decoded in a thread, off the event loop
_DISABLED = frozenset({"disabled", "decommissioned"})
_STORAGE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

_LOCK_MARK = "SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1 AND stream = $2 FOR UPDATE"
_TOUCH = (
    "UPDATE gateways SET last_seen_at = now(), last_batch_at = now(), batches_received = batches_received + 1,"
    " bytes_received = bytes_received + $2, clock_offset_ms = $3,"
    " clock_corrected_at = CASE WHEN $4 THEN now() ELSE clock_corrected_at END WHERE id = $1"
)
_MOVE_MARK_AND_TOUCH = (
    "WITH moved AS (UPDATE gateway_sync_marks SET high_water = $6, updated_at = now() WHERE gateway_id = $1 AND stream = $5) "
    + _TOUCH
)

TwinChange = tuple[str, str, dict[str, object]]
"""(device id, "twin" | "command", detail) of a committed batch, for the live view."""


@dataclass(frozen=True, slots=True)
class _Device:
    site_id: uuid.UUID | None
    status: str


@dataclass(slots=True)
class _Stored:
    """What one admitted batch wrote, for the ack, the metrics and the after-commit listeners."""

    verdict: Verdict
    ack_seq: int
    rows: list[TelemetryRow]
    quarantined: list[QuarantineRow]
    applied: int
    changes: list[TwinChange]
    high_water: int = 0
    """the stream's mark as this batch's transaction committed it"""
    published: int = 0
    """rows handed to the ingest stream (its partition writers store them)"""


@dataclass(frozen=True, slots=True)
class _Rows:
    """A telemetry or events batch's rows, made before its transaction: every record's row (or
    quarantine row), with the records' sequences, in record order."""

    rows: list[TelemetryRow]
    seqs: list[int]
    quarantined: list[QuarantineRow]
    quarantined_seqs: list[int]

    def above(self, high_water: int) -> tuple[list[TelemetryRow], list[QuarantineRow], list[int]]:
        """The rows of the records above ``high_water`` (those ``admit`` lets in), and their sequences."""
        seqs = self.seqs
        if min(seqs[:1] + self.quarantined_seqs[:1], default=high_water + 1) > high_water:  # records ascend
            return self.rows, self.quarantined, seqs
        keep = [i for i, seq in enumerate(seqs) if seq > high_water]
        quarantined = [q for q, seq in zip(self.quarantined, self.quarantined_seqs, strict=True) if seq > high_water]
        return [self.rows[i] for i in keep], quarantined, [seqs[i] for i in keep]


class Receiver:
    """Stores gateways' batches exactly once, in order per stream."""

    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        limits: BatchLimits = DEFAULT_BATCH_LIMITS,
        on_commit: Callable[[Sequence[TelemetryRow]], None] | None = None,
        twin_limits: TwinLimits = DEFAULT_TWIN_LIMITS,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.limits = limits
        self.twin_limits = twin_limits
        self._on_commit = on_commit
        self.entitlements: Entitlements | None = None
        """A tenant whose subscriptions are SUSPENDED or EXPIRED: its gateways' batches are refused
        (403, that code) before anything is written; the gateway keeps them and sends them later."""
        self.on_twin_change: Callable[[uuid.UUID, str, str, dict[str, object]], None] | None = None
        """After a batch commits: (tenant, device id, "twin" | "command", detail), for the live view."""
        self.stream: StreamPublisher | None = None
        """PULSE_STREAM_URL: telemetry and events go through the ingest stream (module docstring)."""
        self._moves: dict[tuple[uuid.UUID, Stream], asyncio.Event] = {}
        """Set when a batch of (gateway, stream) commits here: the batches sent behind it go on."""
        self._known: dict[tuple[uuid.UUID, Stream], int] = {}
        """The last mark this process committed per (gateway, stream)."""
        self._decoded_ahead = 0
        """Batches decoded and waiting for the batch ahead of them (at most DECODED_AHEAD_MAX)."""

    @property
    def max_request_bytes(self) -> int:
        return codec.HEADER_SIZE + 128 * 4 + self.limits.max_payload_bytes

    async def receive(self, caller: GatewayCaller, data: bytes, after: int | None = None) -> BatchAck:
        """Store a batch. ``after``: the last sequence of an earlier batch of the stream that the
        gateway still has in flight (``X-Pulse-After``); this one is stored only after that one."""
        try:
            header = codec.read_header(data, self.limits)
        except BatchError as exc:
            raise BadRequestError(exc.code, exc.message, **exc.context) from exc
        if header.gateway_id != caller.wire_id:
            raise ForbiddenError(
                Code.SYNC_GATEWAY_MISMATCH, "the batch names another gateway than the client certificate", batch_gateway=header.gateway_id
            )
        if self.entitlements is not None:
            await self.entitlements.check_data(caller.tenant_id)
        clock = check_clock(header.gateway_time_ms, int(time.time() * 1000))
        self.metrics.sync_bytes.inc(len(data))
        key = (caller.gateway_id, header.stream)
        mark = await self._mark(caller, header.stream)
        if classify(header, mark) is Verdict.REPLAY:  # the mark only rises: a replay now stays one
            return await self._replayed(caller, header.stream, header.last_seq, len(data), clock)
        # decoded and made into rows while the batch ahead of it (if any) is still being stored; the
        # transaction checks the order again and admits against the mark it locks
        ahead = not in_order(after, mark)
        if ahead and self._decoded_ahead >= DECODED_AHEAD_MAX:
            await self._wait_in_order(caller, header.stream, after, mark)
            ahead = False
        held = 1 if ahead else 0  # counted against DECODED_AHEAD_MAX while it waits decoded
        self._decoded_ahead += held
        try:
            records = await self._decode(data)
            devices = await self._devices(caller, {r.device_id for r in records})
            prepared = None
            if header.stream in (Stream.TELEMETRY, Stream.EVENTS):
                prepared = self._rows(caller, header.stream, records, devices, clock, dt.datetime.now(dt.UTC))
            if ahead:
                await self._wait_in_order(caller, header.stream, after, mark)
        finally:
            self._decoded_ahead -= held
        try:
            stored = await self._store(caller, header, records, after, devices, clock, len(data), prepared)
        except _STORAGE_ERRORS as exc:
            log.warning("sync batch from gateway %s not stored: %s", caller.gateway_id, exc)
            raise StorageUnavailableError(
                "storage is unavailable; nothing from this batch was stored; send it again later", retry_after_s=1
            ) from exc
        self._mark_moved(key, stored.high_water)
        await self._committed(caller, header.stream, stored)
        self.metrics.sync_batches.labels(stored.verdict.value).inc()
        self.metrics.sync_records.labels("written").inc(len(stored.rows) + stored.published)
        self.metrics.sync_records.labels("quarantined").inc(len(stored.quarantined))
        written = len(stored.rows) + stored.applied + stored.published
        return BatchAck(header.stream, stored.ack_seq, stored.verdict, written, len(stored.quarantined), clock.offset_ms, clock.corrected)

    async def _mark(self, caller: GatewayCaller, stream: Stream) -> int:
        """The stream's high-water mark as committed now."""
        async with self.db.tenant_now(caller.tenant_id) as conn:  # BEGIN and the tenant in one round trip
            mark = await conn.fetchval(
                "SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1 AND stream = $2", caller.gateway_id, int(stream)
            )
        return int(mark or 0)

    async def _wait_in_order(self, caller: GatewayCaller, stream: Stream, after: int | None, mark: int) -> None:
        """Wait until the batch this one was sent behind (``after``) is stored, at most IN_ORDER_WAIT_S.
        A batch committed by this process wakes its followers at once with the mark it committed
        (``_mark_moved``); one stored by another process is seen by reading the mark again every
        IN_ORDER_POLL_S. Only a hint: the transaction decides from the mark it locks."""
        key = (caller.gateway_id, stream)
        deadline = time.monotonic() + IN_ORDER_WAIT_S
        while not in_order(after, mark):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            moved = self._moves.get(key)
            if moved is None:
                moved = self._moves[key] = asyncio.Event()
            if await aio.wait_event(moved, min(left, IN_ORDER_POLL_S)):
                mark = max(mark, self._known.get(key, 0))
            else:
                mark = max(mark, await self._mark(caller, stream))

    def _mark_moved(self, key: tuple[uuid.UUID, Stream], high_water: int) -> None:
        """A batch of ``key`` committed with ``high_water``: wake the batches waiting behind it."""
        if high_water > self._known.get(key, 0):
            self._known[key] = high_water
        moved = self._moves.pop(key, None)
        if moved is not None:
            moved.set()

    async def _decode(self, data: bytes) -> Sequence[Record]:
        try:
            if len(data) > _DECODE_INLINE_BYTES:
                decoded = await asyncio.to_thread(codec.decode, data, self.limits)
            else:
                decoded = codec.decode(data, self.limits)
        except BatchError as exc:
            raise BadRequestError(exc.code, exc.message, **exc.context) from exc
        return decoded.records

    async def _store(
        self,
        caller: GatewayCaller,
        header: Header,
        records: Sequence[Record],
        after: int | None,
        devices: Mapping[str, _Device],
        clock: ClockCheck,
        size: int,
        prepared: _Rows | None,
    ) -> _Stored:
        """The one writer transaction: lock the mark, admit, store the new records by stream, move the
        mark. Telemetry and events come ``prepared`` as rows (made before the transaction, while the
        batch ahead was being stored); the transaction keeps those of the admitted records."""
        received = dt.datetime.now(dt.UTC)
        async with self.db.writer_transaction() as conn:
            high_water = await self._lock_mark(conn, caller, header.stream)
            if not in_order(after, high_water):
                raise ConflictError(
                    Code.SYNC_OUT_OF_ORDER,
                    f"the batch ending at {after} was not stored before this one; nothing was stored; send this batch after it",
                    after=after,
                )
            admission = admit(header, records, high_water)
            stored = _Stored(admission.verdict, admission.ack_seq, [], [], 0, [], admission.new_high_water)
            if admission.verdict is not Verdict.REPLAY:
                new = admission.new_records
                if header.stream is Stream.ALERTS:
                    # alerts raised at the gateway merge into the tenant's alerts by fingerprint,
                    # in this transaction, so a replayed batch is never merged twice
                    stored.quarantined = await self._merge_alerts(conn, caller, new, received)
                elif header.stream is Stream.TWIN:
                    # reported state and command answers apply in order, in this transaction,
                    # so a replayed batch is never applied twice
                    stored.applied, stored.quarantined = await self._apply_twin(
                        conn, caller, new, devices, clock, received, stored.changes
                    )
                else:
                    if prepared is None:
                        prepared = self._rows(caller, header.stream, new, devices, clock, received)
                    stored.rows, stored.quarantined, seqs = prepared.above(high_water)
                    if self.stream is not None:
                        # through the ingest stream, acknowledged by JetStream before the mark moves
                        # (module docstring); a failure rolls this transaction back, mark unmoved
                        await self.stream.write_gateway(
                            stored.rows, seqs, gateway_id=caller.gateway_id, sync_stream=int(header.stream), refuse=self._stream_refused
                        )
                        stored.published, stored.rows = len(stored.rows), []
                await write_rows(conn, stored.rows, stored.quarantined)
                await self._touch(conn, caller, size, clock, (header.stream, admission.new_high_water))
            else:
                await self._touch(conn, caller, size, clock)
        return stored

    def _stream_refused(self, why: str) -> StreamUnavailableError:
        retry_after_s = self.stream.config.retry_after_s if self.stream is not None else 1
        return StreamUnavailableError(
            f"the ingest stream {why}; nothing from this batch was acknowledged; send it again after the Retry-After seconds",
            retry_after_s=retry_after_s,
            code=Code.SYNC_STREAM_UNAVAILABLE,
        )

    async def _committed(self, caller: GatewayCaller, stream: Stream, stored: _Stored) -> None:
        """After the commit: the live view hears twin changes, device states follow connectivity
        events, and the rows reach the after-commit listeners. None of them fails the batch."""
        if self.on_twin_change is not None:
            for device_id, kind, detail in stored.changes:
                try:
                    self.on_twin_change(caller.tenant_id, device_id, kind, detail)
                except Exception:  # a listener never fails a committed batch
                    log.exception("twin change listener failed; the batch is stored")
        rows = stored.rows
        if stream is Stream.EVENTS and connectivity.changes(rows):
            # connect / disconnect / Will events set the devices' states (cloud/alerts/connectivity.py)
            try:
                async with self.db.tenant(caller.tenant_id) as conn:
                    await connectivity.apply(conn, rows)
            except Exception:  # the events are stored; the next event or heartbeat sweep sets the state
                log.exception("connectivity events of gateway %s did not update device states", caller.gateway_id)
        if rows and self._on_commit is not None:
            try:
                self._on_commit(rows)
            except Exception:  # a listener never fails a committed batch
                log.exception("on_commit listener failed; the rows are stored")

    @staticmethod
    async def _merge_alerts(
        conn: asyncpg.Connection, caller: GatewayCaller, records: Sequence[Record], received: dt.datetime
    ) -> list[QuarantineRow]:
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(caller.tenant_id))
        gateway_name = await conn.fetchval(
            "SELECT name FROM gateways WHERE tenant_id = $1 AND id = $2", caller.tenant_id, caller.gateway_id
        )
        report = await merge_edge_alerts(
            conn, caller.tenant_id, records, gateway_id=caller.gateway_id, gateway_name=gateway_name or "gateway"
        )
        by_seq = {r.seq: r for r in records}
        quarantined: list[QuarantineRow] = []
        for bad in report.rejected:
            rec = by_seq.get(bad.get("seq"))  # type: ignore[arg-type]
            if rec is None:
                continue
            raw = json.dumps({"stream": "alerts", **rec._asdict()}, default=str).encode()
            quarantined.append(
                QuarantineRow(
                    caller.tenant_id, rec.device_id, caller.gateway_id, "gateway", str(bad.get("code")), str(bad.get("message")), raw, received
                )
            )
        return quarantined

    async def _apply_twin(
        self,
        conn: asyncpg.Connection,
        caller: GatewayCaller,
        records: Sequence[Record],
        devices: Mapping[str, _Device],
        clock: ClockCheck,
        received: dt.datetime,
        changes: list[TwinChange],
    ) -> tuple[int, list[QuarantineRow]]:
        """Stream.TWIN records in order through ``twins.apply_device_messages``, the rule HTTP ingest
        uses too. A record refused (here: an unknown or disabled device, a type that does not travel
        on this stream; there: the twin or command rules) is quarantined with its code; it still
        counts as delivered."""
        quarantined: list[QuarantineRow] = []
        tenant = caller.tenant_id

        def refuse(rec: Record, code: Code | str, reason: str) -> None:
            raw = json.dumps({"stream": "twin", **rec._asdict()}, default=str).encode()
            quarantined.append(
                QuarantineRow(tenant, rec.device_id, caller.gateway_id, "gateway", str(code), reason, raw, received)
            )

        said: list[Record] = []
        for rec in records:
            device = devices.get(rec.device_id)
            if device is None or (caller.site_id is not None and device.site_id != caller.site_id):
                refuse(rec, Code.SYNC_UNKNOWN_DEVICE, f"device {rec.device_id} is not registered at this gateway's site")
            elif rec.type not in TWIN_RECORD_TYPES:
                refuse(rec, Code.BATCH_MALFORMED, f"record type {rec.type!r} does not travel on the twin stream")
            elif rec.type == MessageType.TWIN_REPORTED.value and device.status in _DISABLED:
                refuse(rec, Code.AUTH_DEVICE_DISABLED, f"device {rec.device_id} is {device.status}")
            else:
                said.append(rec)
        result = await twins.apply_device_messages(
            conn,
            tenant,
            [twins.DeviceMessage(rec.device_id, rec.type, rec.body, corrected_ts(rec.ts_ms, clock)) for rec in said],
            actor=f"gateway:{caller.gateway_id}",
            limits=self.twin_limits,
        )
        for index, exc in result.refused.items():
            refuse(said[index], exc.code, exc.message)
        changes.extend(result.changes)
        return len(said) - len(result.refused), quarantined

    async def _replayed(self, caller: GatewayCaller, stream: Stream, last_seq: int, size: int, clock: ClockCheck) -> BatchAck:
        try:
            async with self.db.writer_transaction() as conn:
                await self._touch(conn, caller, size, clock)
        except _STORAGE_ERRORS as exc:
            log.warning("could not count a replayed batch of gateway %s: %s", caller.gateway_id, exc)
        self.metrics.sync_batches.labels(Verdict.REPLAY.value).inc()
        return BatchAck(stream, last_seq, Verdict.REPLAY, 0, 0, clock.offset_ms, clock.corrected)

    @staticmethod
    async def _lock_mark(conn: asyncpg.Connection, caller: GatewayCaller, stream: Stream) -> int:
        """The stream's high-water mark, its row locked until the transaction ends (FOR UPDATE, so
        two copies of a batch racing each other cannot both write); the row is made at the
        stream's first batch."""
        mark = await conn.fetchval(_LOCK_MARK, caller.gateway_id, int(stream))
        if mark is None:
            await conn.execute(
                "INSERT INTO gateway_sync_marks (tenant_id, gateway_id, stream) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                caller.tenant_id,
                caller.gateway_id,
                int(stream),
            )
            mark = await conn.fetchval(_LOCK_MARK, caller.gateway_id, int(stream))
        return int(mark)

    @staticmethod
    async def _touch(
        conn: asyncpg.Connection, caller: GatewayCaller, size: int, clock: ClockCheck, mark: tuple[Stream, int] | None = None
    ) -> None:
        """Count the batch in the gateway's figures; with ``mark`` (stream, new high-water), move
        the stream's mark in the same statement (one round trip less in the batch's transaction)."""
        if mark is None:
            await conn.execute(_TOUCH, caller.gateway_id, size, clock.offset_ms, clock.corrected)
        else:
            await conn.execute(_MOVE_MARK_AND_TOUCH, caller.gateway_id, size, clock.offset_ms, clock.corrected, int(mark[0]), mark[1])

    async def _devices(self, caller: GatewayCaller, device_ids: set[str]) -> dict[str, _Device]:
        """The batch's devices as registered in the gateway's tenant (RLS: other tenants' devices do not exist)."""
        async with self.db.tenant_now(caller.tenant_id) as conn:
            rows = await conn.fetch("SELECT device_id, site_id, status FROM devices WHERE device_id = ANY($1::text[])", list(device_ids))
        return {r["device_id"]: _Device(r["site_id"], r["status"]) for r in rows}

    def _rows(
        self,
        caller: GatewayCaller,
        stream: Stream,
        records: Sequence[Record],
        devices: Mapping[str, _Device],
        clock: ClockCheck,
        received: dt.datetime,
    ) -> _Rows:
        """The records' rows (and their record sequences, in the same order), and those quarantined."""
        rows: list[TelemetryRow] = []
        seqs: list[int] = []
        quarantined: list[QuarantineRow] = []
        quarantined_seqs: list[int] = []

        def refuse(rec: Record, code: Code, reason: str) -> None:
            raw = json.dumps({"stream": stream.name.lower(), **rec._asdict()}, default=str).encode()
            quarantined.append(QuarantineRow(caller.tenant_id, rec.device_id, caller.gateway_id, "gateway", str(code), reason, raw, received))
            quarantined_seqs.append(rec.seq)

        tenant, gateway, site = caller.tenant_id, caller.gateway_id, caller.site_id
        # decided once per device: its records are stored (``ok``) or refused with a code and reason
        ok: set[str] = set()
        refusals: dict[str, tuple[Code, str]] = {}
        for device_id, device in devices.items():
            if site is not None and device.site_id != site:
                refusals[device_id] = (Code.SYNC_UNKNOWN_DEVICE, f"device {device_id} is not at this gateway's site")
            elif device.status in _DISABLED:
                refusals[device_id] = (Code.AUTH_DEVICE_DISABLED, f"device {device_id} is {device.status}")
            else:
                ok.add(device_id)
        shift = clock.offset_ms if clock.corrected else 0
        from_ts, utc = dt.datetime.fromtimestamp, dt.UTC
        append, append_seq = rows.append, seqs.append
        for rec in records:
            # unpacked in Record's field order: a tuple unpack is cheaper than eight attribute reads
            seq, device_id, ts_ms, type_, metrics, device_seq, tags, body = rec
            if device_id not in ok:
                code, reason = refusals.get(device_id) or (
                    Code.SYNC_UNKNOWN_DEVICE,
                    f"device {device_id} is not registered in this gateway's tenant",
                )
                refuse(rec, code, reason)
                continue
            ms = ts_ms + shift  # corrected_ts(), inlined: this loop runs for every point
            try:
                # fromtimestamp is 3x faster and exact to the millisecond below 2**33 s (year 2242)
                at = from_ts(ms / 1000, utc) if 0 <= ms < _EXACT_FLOAT_MS else _EPOCH + dt.timedelta(milliseconds=ms)
            except (OverflowError, ValueError, OSError):
                refuse(rec, Code.ENVELOPE_BAD_TIMESTAMP, "the timestamp is outside the range the cloud stores")
                continue
            append(telemetry_row(at, tenant, device_id, type_, metrics, tags, body, device_seq, gateway, "gateway", received))
            append_seq(seq)
        return _Rows(rows, seqs, quarantined, quarantined_seqs)
