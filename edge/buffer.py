"""The store-and-forward buffer: one SQLite file (WAL), group commit, sequence numbers per stream.

Writing. Everything that changes the file goes through one writer task: ``submit(item)`` queues a
``Store`` (a record for a stream), a ``Quarantine`` (a refused message with its code and raw
bytes) or an ``Ack`` and returns a future. The writer gathers whatever is queued (waiting at most
``flush_interval_ms`` for more, at most ``max_batch`` items) into one transaction and resolves the
futures only after COMMIT returned. The broker sends PUBACK for a QoS 1 message only when its
future resolved, so an acknowledged message is on disk (``synchronous = full``: also across power
loss; ``normal``: across a crash of the process, not of the machine).

Streams and sequence numbers. Each ``pulse.protocol.batch.Stream`` (telemetry, events, alerts, twin)
numbers its records 1, 2, 3, ... in commit order; numbers are never reused, also after records
are acknowledged and deleted. Gaps appear where the quota dropped telemetry.

Reading and acknowledging (the sync client's interface)::

    records = await buffer.read(Stream.TELEMETRY, after_seq=cursor, limit=5000)   # -> [batch.Record]
    ...                                                                          # cloud commits them
    await buffer.ack(Stream.TELEMETRY, records[-1].seq)   # cursor persisted, records <= seq deleted

Quota. The records' bytes (raw message plus a fixed per-row overhead) are kept under
``quota_bytes``: when a commit would exceed it, the oldest telemetry records (telemetry and
heartbeats) are deleted in the same transaction until the buffer is back under 98 % of the
quota; how many and how many bytes is counted per stream and persisted. Events, command acks,
alerts and twin reports are never dropped: when only they remain the buffer grows past the quota
(``over_quota`` in the status) rather than lose them.

Deduplication. A device that did not see its PUBACK (the gateway crashed after COMMIT and before
PUBACK, or the link dropped) sends the message again. For messages with a device ``seq``, the
buffer keeps per device a ring of ``dedupe_window`` fingerprints indexed by ``seq % window``
(persisted in the same transaction as the records): a message whose fingerprint is already in its
slot is acknowledged again but not stored twice. Rule: same device, same seq, same bytes = same
message. A device that reuses a seq with different content (after a reboot) is stored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import sqlite3
import time
from array import array
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import aiosqlite

from pulse.edge.config import BufferSettings
from pulse.edge.errors import StorageError
from pulse.edge.ingest import Quarantine, Store
from pulse.edge.schema import PRAGMAS, SCHEMA, synchronous_pragma
from pulse.protocol.batch import Record, Stream

log = logging.getLogger("pulse.edge.buffer")

ROW_OVERHEAD = 64
"""Bytes counted per record on top of its raw message: key, columns and index entry, roughly."""
DROPPABLE = (Stream.TELEMETRY,)
LAST_REASONS = 10


@dataclass(frozen=True, slots=True)
class Ack:
    stream: Stream
    seq: int


class Outcome(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"
    ACKED = "acked"


@dataclass
class StreamState:
    next_seq: int = 1
    acked_seq: int = 0
    depth: int = 0
    bytes: int = 0
    dropped_count: int = 0
    dropped_bytes: int = 0


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    id: int
    received_ms: int
    device_id: str | None
    topic: str
    code: str
    message: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class StreamStats:
    stream: str
    depth: int
    bytes: int
    next_seq: int
    acked_seq: int
    dropped_count: int
    dropped_bytes: int
    oldest_received_ms: int | None


@dataclass(frozen=True, slots=True)
class BufferStats:
    streams: list[StreamStats]
    total_bytes: int
    quota_bytes: int
    quarantine_count: int
    quarantine_removed: int
    last_reasons: list[dict[str, object]]
    duplicates: int
    acl_denied: int
    commits: int
    committed_items: int

    @property
    def over_quota(self) -> bool:
        return self.total_bytes > self.quota_bytes


@dataclass
class _Counters:
    duplicates: int = 0
    acl_denied: int = 0
    quarantine_removed: int = 0
    commits: int = 0
    committed_items: int = 0
    last_reasons: collections.deque[dict[str, object]] = field(default_factory=lambda: collections.deque(maxlen=LAST_REASONS))


Item = Store | Quarantine | Ack
_Pending = tuple[Item, "asyncio.Future[Outcome] | None"]


def record_from_row(seq: int, device_id: str, ts_ms: int, type_: str, device_seq: int | None, raw: bytes) -> Record:
    doc = json.loads(raw)
    return Record(seq, device_id, ts_ms, type_, doc.get("metrics") or {}, device_seq, doc.get("tags") or None, doc.get("body"))


class Buffer:
    def __init__(self, path: Path, settings: BufferSettings) -> None:
        self.path = path
        self.settings = settings
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._streams: dict[Stream, StreamState] = {s: StreamState() for s in Stream}
        self._rings: dict[str, array[int]] = {}
        self._quarantine_count = 0
        self._counters = _Counters()
        self._closing = False

    # ---- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._w = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in (*PRAGMAS, synchronous_pragma(self.settings.synchronous)):
                await self._w.execute(pragma)
            await self._w.executescript(SCHEMA)
            if self.settings.max_file_mb > 0:
                async with self._w.execute("PRAGMA page_size") as cur:
                    row = await cur.fetchone()
                pages = max(16, int(self.settings.max_file_mb * 1024 * 1024 / (row[0] if row else 4096)))
                await self._w.execute(f"PRAGMA max_page_count = {pages}")
            self._r = await aiosqlite.connect(self.path, isolation_level=None)
            await self._r.execute("PRAGMA busy_timeout=10000")
            await self._load()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the gateway database {self.path}: {exc}", path=str(self.path)) from exc
        self._writer = asyncio.create_task(self._write_loop(), name="buffer-writer")
        self._writer.add_done_callback(self._writer_done)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("the buffer writer stopped: %r; nothing more will be acknowledged", task.exception())

    async def _load(self) -> None:
        assert self._w is not None
        w = self._w
        for s in Stream:
            await w.execute("INSERT OR IGNORE INTO streams (stream, next_seq, acked_seq) VALUES (?, 1, 0)", (int(s),))
        async with w.execute("SELECT stream, next_seq, acked_seq, dropped_count, dropped_bytes FROM streams") as cur:
            async for stream, next_seq, acked, dc, db in cur:
                if stream in Stream._value2member_map_:
                    st = self._streams[Stream(stream)]
                    st.next_seq, st.acked_seq, st.dropped_count, st.dropped_bytes = next_seq, acked, dc, db
        async with w.execute("SELECT stream, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY stream") as cur:
            async for stream, depth, size in cur:
                st = self._streams[Stream(stream)]
                st.depth, st.bytes = depth, size
        window = self.settings.dedupe_window
        async with w.execute("SELECT device_id, slot, fp FROM dedupe") as cur:
            async for device_id, slot, fp in cur:
                if slot < window:
                    self._ring(device_id)[slot] = fp
        async with w.execute("SELECT COUNT(*) FROM quarantine") as cur:
            row = await cur.fetchone()
            self._quarantine_count = row[0] if row else 0
        async with w.execute(
            "SELECT received_ms, device_id, code, message FROM quarantine ORDER BY id DESC LIMIT ?", (LAST_REASONS,)
        ) as cur:
            for received_ms, device_id, code, message in reversed(list(await cur.fetchall())):
                self._counters.last_reasons.append(
                    {"received_ms": received_ms, "device_id": device_id, "code": code, "message": message}
                )
        async with w.execute("SELECT name, value FROM counters") as cur:
            async for name, value in cur:
                if name in ("duplicates", "acl_denied", "quarantine_removed"):
                    setattr(self._counters, name, value)

    async def close(self) -> None:
        """Commit what is queued, then close the file."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        for conn in (self._r, self._w):
            if conn is not None:
                await conn.close()
        self._r = self._w = None

    def _ring(self, device_id: str) -> array[int]:
        ring = self._rings.get(device_id)
        if ring is None:
            ring = self._rings[device_id] = array("q", bytes(8 * self.settings.dedupe_window))
        return ring

    # ---- writing ---------------------------------------------------------------------------
    def submit(self, item: Item, *, wait: bool = True) -> asyncio.Future[Outcome] | None:
        """Queue an item for the next group commit; the future resolves after COMMIT.

        With ``wait=False`` (QoS 0: best effort) no future is made and failures are only logged."""
        if self._closing:
            raise StorageError("the buffer is closing")
        fut = asyncio.get_running_loop().create_future() if wait else None
        self._pending.append((item, fut))
        if len(self._pending) == 1:
            self._wake.set()
        return fut

    async def put(self, item: Item) -> Outcome:
        fut = self.submit(item)
        assert fut is not None
        return await fut

    async def ack(self, stream: Stream, seq: int) -> None:
        """The cloud has committed ``stream`` up to ``seq``: persist the cursor and delete those records."""
        st = self._streams[stream]
        if seq >= st.next_seq:
            raise ValueError(f"cannot acknowledge {stream.name.lower()} seq {seq}: the last one written is {st.next_seq - 1}")
        await self.put(Ack(stream, seq))

    async def _write_loop(self) -> None:
        linger = self.settings.flush_interval_ms / 1000
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if linger > 0 and len(self._pending) < self.settings.max_batch and not self._closing:
                await asyncio.sleep(linger)
            batch = self._pending[: self.settings.max_batch]
            del self._pending[: self.settings.max_batch]
            try:
                outcomes = await self._commit([item for item, _ in batch])
            except (sqlite3.Error, ValueError) as exc:
                with contextlib.suppress(sqlite3.Error):
                    assert self._w is not None
                    if self._w.in_transaction:
                        await self._w.execute("ROLLBACK")
                error = StorageError(f"could not write the gateway database: {exc}", path=str(self.path))
                log.error("%s; %d messages not stored (none acknowledged)", error.message, len(batch))
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(error)
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(outcome)

    async def _commit(self, items: list[Item]) -> list[Outcome]:
        w = self._w
        assert w is not None
        now_ms = int(time.time() * 1000)
        window = self.settings.dedupe_window
        outcomes: list[Outcome] = []
        records: list[tuple[object, ...]] = []
        dedupe: dict[tuple[str, int], int] = {}
        quarantine: list[tuple[object, ...]] = []
        acks: list[Ack] = []
        next_seq = {s: st.next_seq for s, st in self._streams.items()}
        added = dict.fromkeys(Stream, 0)
        added_bytes = dict.fromkeys(Stream, 0)
        duplicates = denied = 0
        reasons: list[dict[str, object]] = []
        for item in items:
            if isinstance(item, Store):
                if item.fp is not None and item.device_seq is not None:
                    slot = item.device_seq % window
                    key = (item.device_id, slot)
                    seen = dedupe.get(key)
                    if seen is None:
                        ring = self._rings.get(item.device_id)
                        seen = ring[slot] if ring is not None else None
                    if seen == item.fp:
                        duplicates += 1
                        outcomes.append(Outcome.DUPLICATE)
                        continue
                    dedupe[key] = item.fp
                seq = next_seq[item.stream]
                next_seq[item.stream] = seq + 1
                size = len(item.raw) + ROW_OVERHEAD
                added[item.stream] += 1
                added_bytes[item.stream] += size
                records.append(
                    (int(item.stream), seq, item.device_id, item.ts_ms, item.type, item.device_seq, now_ms, size, item.raw)
                )
                outcomes.append(Outcome.STORED)
            elif isinstance(item, Quarantine):
                denied += item.denied
                quarantine.append((now_ms, item.device_id, item.topic, str(item.code), item.message, item.raw))
                reasons.append({"received_ms": now_ms, "device_id": item.device_id, "code": str(item.code), "message": item.message})
                outcomes.append(Outcome.QUARANTINED)
            else:
                acks.append(item)
                outcomes.append(Outcome.ACKED)

        depth = {s: st.depth for s, st in self._streams.items()}
        size_by = {s: st.bytes for s, st in self._streams.items()}
        acked = {s: st.acked_seq for s, st in self._streams.items()}
        dropped = dict.fromkeys(Stream, 0)
        dropped_bytes = dict.fromkeys(Stream, 0)

        await w.execute("BEGIN IMMEDIATE")
        for ack in acks:
            if ack.seq <= acked[ack.stream]:
                continue
            async with w.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE stream = ? AND seq <= ?", (int(ack.stream), ack.seq)
            ) as cur:
                row = await cur.fetchone()
            n, b = (row[0], row[1]) if row else (0, 0)
            await w.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (int(ack.stream), ack.seq))
            depth[ack.stream] -= n
            size_by[ack.stream] -= b
            acked[ack.stream] = ack.seq
        # Make room before inserting (so a file at its ceiling frees pages first), and again after
        # in case this batch's own telemetry is what has to go.
        await self._enforce_quota(sum(added_bytes.values()), depth, size_by, dropped, dropped_bytes)
        if records:
            await w.executemany(
                "INSERT INTO records (stream, seq, device_id, ts_ms, type, device_seq, received_ms, size, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                records,
            )
        for s in Stream:
            depth[s] += added[s]
            size_by[s] += added_bytes[s]
        await self._enforce_quota(0, depth, size_by, dropped, dropped_bytes)
        if dedupe:
            await w.executemany(
                "INSERT OR REPLACE INTO dedupe (device_id, slot, fp) VALUES (?, ?, ?)", [(d, s, fp) for (d, s), fp in dedupe.items()]
            )
        changed = [s for s in Stream if added[s] or dropped[s] or acked[s] != self._streams[s].acked_seq]
        if changed:
            await w.executemany(
                "UPDATE streams SET next_seq = ?, acked_seq = ?, dropped_count = dropped_count + ?,"
                " dropped_bytes = dropped_bytes + ? WHERE stream = ?",
                [(next_seq[s], acked[s], dropped[s], dropped_bytes[s], int(s)) for s in changed],
            )
        removed = 0
        if quarantine:
            await w.executemany(
                "INSERT INTO quarantine (received_ms, device_id, topic, code, message, raw) VALUES (?, ?, ?, ?, ?, ?)", quarantine
            )
            excess = self._quarantine_count + len(quarantine) - self.settings.quarantine_max_rows
            if excess > 0:
                await w.execute(
                    "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?)", (excess,)
                )
                removed = excess
        counters = []
        if duplicates:
            counters.append(("duplicates", duplicates))
        if denied:
            counters.append(("acl_denied", denied))
        if removed:
            counters.append(("quarantine_removed", removed))
        if counters:
            await w.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                counters,
            )
        await w.execute("COMMIT")

        # The transaction is durable: now update what the process remembers.
        for s, st in self._streams.items():
            st.next_seq, st.acked_seq, st.depth, st.bytes = next_seq[s], acked[s], depth[s], size_by[s]
            st.dropped_count += dropped[s]
            st.dropped_bytes += dropped_bytes[s]
        for (device_id, slot), fp in dedupe.items():
            self._ring(device_id)[slot] = fp
        self._quarantine_count += len(quarantine) - removed
        c = self._counters
        c.duplicates += duplicates
        c.acl_denied += denied
        c.quarantine_removed += removed
        c.last_reasons.extend(reasons)
        c.commits += 1
        c.committed_items += len(items)
        return outcomes

    async def _enforce_quota(
        self, incoming: int, depth: dict[Stream, int], size_by: dict[Stream, int], dropped: dict[Stream, int],
        dropped_bytes: dict[Stream, int],
    ) -> None:
        """Delete the oldest droppable records until ``incoming`` more bytes fit under 98 % of the quota."""
        assert self._w is not None
        quota = self.settings.quota_bytes
        total = sum(size_by.values()) + incoming
        if total <= quota:
            return
        target = total - int(quota * 0.98)
        for stream in DROPPABLE:
            freed, n, cutoff = await self._oldest(stream, target)
            if n:
                await self._w.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (int(stream), cutoff))
                dropped[stream] += n
                dropped_bytes[stream] += freed
                depth[stream] -= n
                size_by[stream] -= freed
                target -= freed
            if target <= 0:
                return

    async def _oldest(self, stream: Stream, target: int) -> tuple[int, int, int]:
        """(bytes, count, last seq) of the oldest records of ``stream`` that together reach ``target`` bytes."""
        assert self._w is not None
        freed = n = 0
        cutoff = 0
        while freed < target:
            async with self._w.execute(
                "SELECT seq, size FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT 1000", (int(stream), cutoff)
            ) as cur:
                rows = await cur.fetchall()
            if not rows:
                break
            for seq, size in rows:
                freed += size
                n += 1
                cutoff = seq
                if freed >= target:
                    break
        return freed, n, cutoff

    # ---- reading ---------------------------------------------------------------------------
    async def read(self, stream: Stream, after_seq: int, limit: int) -> list[Record]:
        """Committed records of ``stream`` with seq > ``after_seq``, oldest first, at most ``limit``."""
        assert self._r is not None
        async with self._r.execute(
            "SELECT seq, device_id, ts_ms, type, device_seq, raw FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (int(stream), after_seq, limit),
        ) as cur:
            rows = await cur.fetchall()
        return [record_from_row(*row) for row in rows]

    def acked(self, stream: Stream) -> int:
        return self._streams[stream].acked_seq

    async def quarantined(self, limit: int = 100) -> list[QuarantineRow]:
        """The newest quarantine rows, newest first."""
        assert self._r is not None
        async with self._r.execute(
            "SELECT id, received_ms, device_id, topic, code, message, raw FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        ) as cur:
            rows = await cur.fetchall()
        return [QuarantineRow(*row) for row in rows]

    async def secret_hash(self, device_id: str) -> str | None:
        """The stored credential hash of a device (the broker's authenticator asks at CONNECT)."""
        assert self._r is not None
        async with self._r.execute("SELECT secret_hash FROM devices WHERE device_id = ?", (device_id,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    async def stats(self) -> BufferStats:
        assert self._r is not None
        out = []
        for s, st in self._streams.items():
            oldest = None
            if st.depth:
                async with self._r.execute("SELECT received_ms FROM records WHERE stream = ? ORDER BY seq LIMIT 1", (int(s),)) as cur:
                    row = await cur.fetchone()
                oldest = row[0] if row else None
            out.append(
                StreamStats(
                    s.name.lower(), st.depth, st.bytes, st.next_seq, st.acked_seq, st.dropped_count, st.dropped_bytes, oldest
                )
            )
        c = self._counters
        return BufferStats(
            streams=out,
            total_bytes=sum(st.bytes for st in self._streams.values()),
            quota_bytes=self.settings.quota_bytes,
            quarantine_count=self._quarantine_count,
            quarantine_removed=c.quarantine_removed,
            last_reasons=list(c.last_reasons),
            duplicates=c.duplicates,
            acl_denied=c.acl_denied,
            commits=c.commits,
            committed_items=c.committed_items,
        )
