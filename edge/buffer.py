"""The store-and-forward buffer: one SQLite file (WAL), group commit, sequence numbers per stream.

Writing. Everything that changes the file goes through one writer (a task on the event loop that
hands each batch to a ``SqliteThread``, edge/sqlite.py: one thread owning a stdlib ``sqlite3``
connection, one thread hop per transaction; reads use ``aiosqlite`` on a second connection): ``submit(item)`` queues a
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
import json
import logging
import sqlite3
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import aiosqlite
import orjson

from pulse.edge.config import BufferSettings
from pulse.edge.errors import StorageError
from pulse.edge.ingest import Quarantine, Store
from pulse.edge.schema import PRAGMAS, SCHEMA, synchronous_pragma
from pulse.edge.sqlite import SqliteThread
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


@dataclass(frozen=True, slots=True)
class Poison:
    """Records of ``stream`` up to ``seq`` that the cloud can never accept: moved to the local
    quarantine with ``code`` (and the cursor advanced past them) in one transaction."""

    stream: Stream
    seq: int
    code: str
    message: str


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


Item = Store | Quarantine | Ack | Poison
_Pending = tuple[Item, "asyncio.Future[Outcome] | None"]


@dataclass
class _Result:
    """What one committed transaction changed; applied to memory only after COMMIT."""

    outcomes: list[Outcome]
    next_seq: dict[Stream, int]
    acked: dict[Stream, int]
    depth: dict[Stream, int]
    size: dict[Stream, int]
    dropped: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    dropped_bytes: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    dedupe: dict[tuple[str, int], int] = field(default_factory=dict)
    duplicates: int = 0
    denied: int = 0
    quarantined: int = 0
    removed: int = 0
    reasons: list[dict[str, object]] = field(default_factory=list)


@dataclass
class _Plan:
    """One batch's items sorted before its transaction: rows to insert, acks and poisoned ranges to apply."""

    records: list[tuple[object, ...]] = field(default_factory=list)
    quarantine: list[tuple[object, ...]] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    poison: list[Poison] = field(default_factory=list)
    added: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    added_bytes: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))


_new_tuple = tuple.__new__


def record_from_row(seq: int, device_id: str, ts_ms: int, type_: str, device_seq: int | None, raw: bytes) -> Record:
    try:
        doc = orjson.loads(raw)  # the uplink reads every buffered record through here: 4x json's speed
    except orjson.JSONDecodeError:
        doc = json.loads(raw)  # what orjson refuses but the envelope parser let through (e.g. NaN) still reads
    # tuple.__new__ straight (every field given): the NamedTuple's own __new__ is a Python function in front of it
    return _new_tuple(Record, (seq, device_id, ts_ms, type_, doc.get("metrics") or {}, device_seq, doc.get("tags") or None, doc.get("body")))


class Buffer:
    def __init__(self, path: Path, settings: BufferSettings) -> None:
        self.path = path
        self.settings = settings
        self._db = SqliteThread("buffer-writer")
        self._r: aiosqlite.Connection | None = None
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._streams: dict[Stream, StreamState] = {s: StreamState() for s in Stream}
        self._rings: dict[str, array[int]] = {}
        self._quarantine_count = 0
        self._counters = _Counters()
        self._closing = False
        self.on_commit: Callable[[list[Store]], None] | None = None
        """Sees each commit's newly stored records, after their acknowledgements are released (the rule runner)."""

    # ---- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await self._db.open(self._connect_writer)
            await self._db.run(self._load)
            self._r = await self._reader()
        except BaseException as exc:
            # whatever stopped the opening (an SQLite error, a cancellation): no thread outlives it
            await self._release()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot open the gateway database {self.path}: {exc}", path=str(self.path)) from exc
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="buffer-writer")
        self._writer.add_done_callback(self._writer_done)

    async def _reader(self) -> aiosqlite.Connection:
        r = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await r.execute("PRAGMA busy_timeout=10000")
            await r.execute("PRAGMA cache_size=-256")  # status queries and sync reads walk the key order
        except BaseException:
            await r.close()
            raise
        return r

    async def reopen_reader(self) -> None:
        """A fresh read connection (the uplink's watchdog: a connection left with an open statement
        keeps reading an old snapshot). Reads already queued on the old one finish first."""
        try:
            fresh = await self._reader()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the gateway database {self.path}: {exc}", path=str(self.path)) from exc
        old, self._r = self._r, fresh
        if old is not None:
            await old.close()

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("the buffer writer stopped: %r; nothing more will be acknowledged", task.exception())

    def _connect_writer(self) -> sqlite3.Connection:
        """In the writer thread: connect and create the schema."""
        w = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        try:
            for pragma in (*PRAGMAS, synchronous_pragma(self.settings.synchronous), "PRAGMA cache_size=-1024"):
                w.execute(pragma)
            w.executescript(SCHEMA)
            if self.settings.max_file_mb > 0:
                page_size = w.execute("PRAGMA page_size").fetchone()[0]
                w.execute(f"PRAGMA max_page_count = {max(16, int(self.settings.max_file_mb * 1024 * 1024 / page_size))}")
        except BaseException:
            w.close()
            raise
        return w

    def _load(self) -> None:
        """In the writer thread: what the process keeps in memory (sequence numbers, depths, dedupe
        rings, quarantine count and last reasons, counters), read from the file."""
        w = self._db.conn
        for s in Stream:
            w.execute("INSERT OR IGNORE INTO streams (stream, next_seq, acked_seq) VALUES (?, 1, 0)", (int(s),))
        for stream, next_seq, acked, dc, db in w.execute(
            "SELECT stream, next_seq, acked_seq, dropped_count, dropped_bytes FROM streams"
        ):
            if stream in Stream._value2member_map_:
                st = self._streams[Stream(stream)]
                st.next_seq, st.acked_seq, st.dropped_count, st.dropped_bytes = next_seq, acked, dc, db
        for stream, depth, size in w.execute("SELECT stream, COUNT(*), COALESCE(SUM(size), 0) FROM records GROUP BY stream"):
            st = self._streams[Stream(stream)]
            st.depth, st.bytes = depth, size
        window = self.settings.dedupe_window
        for device_id, slot, fp in w.execute("SELECT device_id, slot, fp FROM dedupe"):
            if slot < window:
                self._ring(device_id)[slot] = fp
        self._quarantine_count = w.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        rows = w.execute("SELECT received_ms, device_id, code, message FROM quarantine ORDER BY id DESC LIMIT ?", (LAST_REASONS,))
        for received_ms, device_id, code, message in reversed(rows.fetchall()):
            self._counters.last_reasons.append(
                {"received_ms": received_ms, "device_id": device_id, "code": code, "message": message}
            )
        for name, value in w.execute("SELECT name, value FROM counters"):
            if name in ("duplicates", "acl_denied", "quarantine_removed"):
                setattr(self._counters, name, value)

    async def close(self) -> None:
        """Commit what is queued, then close the file."""
        self._closing = True
        self._wake.set()
        try:
            if self._writer is not None:
                await self._writer
        finally:
            self._writer = None
            await self._release()

    async def _release(self) -> None:
        """Close the read connection (its aiosqlite thread) and the writer thread, even after a
        failure: a thread left running keeps the whole process alive."""
        try:
            if self._r is not None:
                await self._r.close()
        finally:
            self._r = None
            await self._db.close()

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

    async def quarantine_unsendable(self, stream: Stream, seq: int, code: str, message: str) -> None:
        """The cloud refused records of ``stream`` up to ``seq`` for good (``400 batch.*``): keep them
        in the quarantine with that code and move the cursor past them, so the uplink goes on."""
        st = self._streams[stream]
        if seq >= st.next_seq:
            raise ValueError(f"cannot quarantine {stream.name.lower()} seq {seq}: the last one written is {st.next_seq - 1}")
        await self.put(Poison(stream, seq, code, message))

    def backlog(self) -> dict[Stream, int]:
        """Records waiting for the cloud, per stream (from memory: cheap)."""
        return {s: st.depth for s, st in self._streams.items()}

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
                result = await self._db.run(self._commit, [item for item, _ in batch])
            except sqlite3.Error as exc:
                error = StorageError(f"could not write the gateway database: {exc}", path=str(self.path))
                log.error("%s; %d messages not stored (none acknowledged)", error.message, len(batch))
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(error)
                continue
            self._apply(result)
            for (_, fut), outcome in zip(batch, result.outcomes, strict=True):
                if fut is not None and not fut.done():
                    fut.set_result(outcome)
            if self.on_commit is not None:  # after the PUBACKs are released: listeners never delay them
                stored = [
                    i for (i, _), o in zip(batch, result.outcomes, strict=True) if o is Outcome.STORED and isinstance(i, Store)
                ]
                if stored:
                    try:
                        self.on_commit(stored)
                    except Exception:
                        log.exception("after-commit listener failed; the records are stored")

    def _commit(self, items: list[Item]) -> _Result:
        """In the writer thread: one transaction for the whole batch. Reads the in-memory state, changes
        only the file; the caller applies the returned deltas after COMMIT (so a failed transaction
        leaves memory as it was). One thread hop per batch: with aiosqlite each statement was a hop
        and each hop waited for a turn of a busy event loop (~100 ms per commit at 400 messages).

        The steps, in this order: sort the items and drop duplicates (in memory), then in the
        transaction: quarantine poisoned records, apply acks, make room under the quota, insert the
        records, save the dedupe slots, the streams' numbers, the quarantine and the counters."""
        now_ms = int(time.time() * 1000)
        r = _Result(
            outcomes=[],
            next_seq={s: st.next_seq for s, st in self._streams.items()},
            acked={s: st.acked_seq for s, st in self._streams.items()},
            depth={s: st.depth for s, st in self._streams.items()},
            size={s: st.bytes for s, st in self._streams.items()},
        )
        plan = self._plan(items, r, now_ms)
        with self._db.transaction() as w:
            self._quarantine_poison(w, plan, r, now_ms)
            self._apply_acks(w, plan.acks, r)
            # Make room before inserting (so a file at its ceiling frees pages first), and again after
            # in case this batch's own telemetry is what has to go.
            self._enforce_quota(w, sum(plan.added_bytes.values()), r)
            self._insert_records(w, plan, r)
            self._enforce_quota(w, 0, r)
            self._save_dedupe(w, r)
            self._save_streams(w, plan, r)
            self._save_quarantine(w, plan, r)
            self._save_counters(w, r)
        return r

    def _plan(self, items: list[Item], r: _Result, now_ms: int) -> _Plan:
        """In memory, before the transaction: each item's outcome, the new records numbered per
        stream (duplicates left out), the quarantine rows, the acks and poisoned ranges."""
        plan = _Plan()
        for item in items:
            if isinstance(item, Store):
                if self._is_duplicate(item, r):
                    r.duplicates += 1
                    r.outcomes.append(Outcome.DUPLICATE)
                    continue
                seq = r.next_seq[item.stream]
                r.next_seq[item.stream] = seq + 1
                size = len(item.raw) + ROW_OVERHEAD
                plan.added[item.stream] += 1
                plan.added_bytes[item.stream] += size
                plan.records.append(
                    (int(item.stream), seq, item.device_id, item.ts_ms, item.type, item.device_seq, now_ms, size, item.raw)
                )
                r.outcomes.append(Outcome.STORED)
            elif isinstance(item, Quarantine):
                r.denied += item.denied
                plan.quarantine.append((now_ms, item.device_id, item.topic, str(item.code), item.message, item.raw))
                r.reasons.append(
                    {"received_ms": now_ms, "device_id": item.device_id, "code": str(item.code), "message": item.message}
                )
                r.outcomes.append(Outcome.QUARANTINED)
            elif isinstance(item, Poison):
                plan.poison.append(item)
                plan.acks.append(Ack(item.stream, item.seq))
                r.outcomes.append(Outcome.QUARANTINED)
            else:
                plan.acks.append(item)
                r.outcomes.append(Outcome.ACKED)
        return plan

    def _is_duplicate(self, item: Store, r: _Result) -> bool:
        """Same device, same seq, same bytes as a message already stored (or earlier in this batch).
        A message that is not one takes its dedupe slot (``r.dedupe``, saved with the records)."""
        if item.fp is None or item.device_seq is None:
            return False
        slot = item.device_seq % self.settings.dedupe_window
        key = (item.device_id, slot)
        seen = r.dedupe.get(key)
        if seen is None:
            ring = self._rings.get(item.device_id)
            seen = ring[slot] if ring is not None else None
        if seen == item.fp:
            return True
        r.dedupe[key] = item.fp
        return False

    @staticmethod
    def _quarantine_poison(w: sqlite3.Connection, plan: _Plan, r: _Result, now_ms: int) -> None:
        """Records the cloud refused for good move to the quarantine (their ack follows)."""
        for p in plan.poison:
            rows = w.execute(
                "SELECT device_id, raw FROM records WHERE stream = ? AND seq > ? AND seq <= ?", (int(p.stream), r.acked[p.stream], p.seq)
            ).fetchall()
            topic = f"(sync {p.stream.name.lower()})"
            for device_id, raw in rows:
                plan.quarantine.append((now_ms, device_id, topic, p.code, p.message, raw))
                r.reasons.append({"received_ms": now_ms, "device_id": device_id, "code": p.code, "message": p.message})

    @staticmethod
    def _apply_acks(w: sqlite3.Connection, acks: list[Ack], r: _Result) -> None:
        """Delete what the cloud has committed and move each stream's cursor."""
        for ack in acks:
            if ack.seq <= r.acked[ack.stream]:
                continue
            n, b = w.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM records WHERE stream = ? AND seq <= ?", (int(ack.stream), ack.seq)
            ).fetchone()
            w.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (int(ack.stream), ack.seq))
            r.depth[ack.stream] -= n
            r.size[ack.stream] -= b
            r.acked[ack.stream] = ack.seq

    @staticmethod
    def _insert_records(w: sqlite3.Connection, plan: _Plan, r: _Result) -> None:
        if plan.records:
            w.executemany(
                "INSERT INTO records (stream, seq, device_id, ts_ms, type, device_seq, received_ms, size, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                plan.records,
            )
        for s in Stream:
            r.depth[s] += plan.added[s]
            r.size[s] += plan.added_bytes[s]

    @staticmethod
    def _save_dedupe(w: sqlite3.Connection, r: _Result) -> None:
        if r.dedupe:
            w.executemany(
                "INSERT INTO dedupe (device_id, slot, fp) VALUES (?, ?, ?) ON CONFLICT (device_id, slot) DO UPDATE SET fp = excluded.fp",
                [(d, s, fp) for (d, s), fp in r.dedupe.items()],
            )

    def _save_streams(self, w: sqlite3.Connection, plan: _Plan, r: _Result) -> None:
        """Each changed stream's next and acked sequence numbers and what the quota dropped."""
        changed = [s for s in Stream if plan.added[s] or r.dropped[s] or r.acked[s] != self._streams[s].acked_seq]
        if changed:
            w.executemany(
                "UPDATE streams SET next_seq = ?, acked_seq = ?, dropped_count = dropped_count + ?,"
                " dropped_bytes = dropped_bytes + ? WHERE stream = ?",
                [(r.next_seq[s], r.acked[s], r.dropped[s], r.dropped_bytes[s], int(s)) for s in changed],
            )

    def _save_quarantine(self, w: sqlite3.Connection, plan: _Plan, r: _Result) -> None:
        """The quarantine rows, then the oldest ones past ``quarantine_max_rows`` go."""
        if not plan.quarantine:
            return
        w.executemany(
            "INSERT INTO quarantine (received_ms, device_id, topic, code, message, raw) VALUES (?, ?, ?, ?, ?, ?)", plan.quarantine
        )
        r.quarantined = len(plan.quarantine)
        excess = self._quarantine_count + len(plan.quarantine) - self.settings.quarantine_max_rows
        if excess > 0:
            w.execute("DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine ORDER BY id LIMIT ?)", (excess,))
            r.removed = excess

    @staticmethod
    def _save_counters(w: sqlite3.Connection, r: _Result) -> None:
        counters = [
            (name, n)
            for name, n in (("duplicates", r.duplicates), ("acl_denied", r.denied), ("quarantine_removed", r.removed))
            if n
        ]
        if counters:
            w.executemany(
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                counters,
            )

    def _apply(self, r: _Result) -> None:
        """On the event loop, after COMMIT: what the process remembers follows the file."""
        for s, st in self._streams.items():
            st.next_seq, st.acked_seq, st.depth, st.bytes = r.next_seq[s], r.acked[s], r.depth[s], r.size[s]
            st.dropped_count += r.dropped[s]
            st.dropped_bytes += r.dropped_bytes[s]
        for (device_id, slot), fp in r.dedupe.items():
            self._ring(device_id)[slot] = fp
        self._quarantine_count += r.quarantined - r.removed
        c = self._counters
        c.duplicates += r.duplicates
        c.acl_denied += r.denied
        c.quarantine_removed += r.removed
        c.last_reasons.extend(r.reasons)
        c.commits += 1
        c.committed_items += len(r.outcomes)

    def _enforce_quota(self, w: sqlite3.Connection, incoming: int, r: _Result) -> None:
        """Delete the oldest droppable records until ``incoming`` more bytes fit under 98 % of the quota."""
        quota = self.settings.quota_bytes
        total = sum(r.size.values()) + incoming
        if total <= quota:
            return
        target = total - int(quota * 0.98)
        for stream in DROPPABLE:
            freed = n = cutoff = 0
            while freed < target:
                rows = w.execute(
                    "SELECT seq, size FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT 1000", (int(stream), cutoff)
                ).fetchall()
                if not rows:
                    break
                for seq, size in rows:
                    freed += size
                    n += 1
                    cutoff = seq
                    if freed >= target:
                        break
            if n:
                w.execute("DELETE FROM records WHERE stream = ? AND seq <= ?", (int(stream), cutoff))
                r.dropped[stream] += n
                r.dropped_bytes[stream] += freed
                r.depth[stream] -= n
                r.size[stream] -= freed
                target -= freed
            if target <= 0:
                return

    # ---- reading ---------------------------------------------------------------------------
    async def read(self, stream: Stream, after_seq: int, limit: int) -> list[Record]:
        """Committed records of ``stream`` with seq > ``after_seq``, oldest first, at most ``limit``."""
        rows = await self._fetch(
            "SELECT seq, device_id, ts_ms, type, device_seq, raw FROM records WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
            (int(stream), after_seq, limit),
        )
        return [record_from_row(*row) for row in rows]

    async def _fetch(self, sql: str, params: tuple[object, ...]) -> list[sqlite3.Row]:
        assert self._r is not None
        try:
            async with self._r.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StorageError(f"could not read the gateway database: {exc}", path=str(self.path)) from exc

    def acked(self, stream: Stream) -> int:
        return self._streams[stream].acked_seq

    async def quarantined(self, limit: int = 100) -> list[QuarantineRow]:
        """The newest quarantine rows, newest first."""
        rows = await self._fetch(
            "SELECT id, received_ms, device_id, topic, code, message, raw FROM quarantine ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [QuarantineRow(*row) for row in rows]

    async def stats(self) -> BufferStats:
        out = []
        for s, st in self._streams.items():
            oldest = None
            if st.depth:
                rows = await self._fetch("SELECT received_ms FROM records WHERE stream = ? ORDER BY seq LIMIT 1", (int(s),))
                oldest = rows[0][0] if rows else None
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
