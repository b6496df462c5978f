"""The gateway's device twins and commands (docs/gateway.md, "Device twin and commands").

Twins. The gateway keeps a copy of each device's twin in gateway.db (``twins``: the document, and
the cloud version of the desired section it last took). Desired state arrives from the cloud as
``twin_desired`` downlink items (the whole cloud document; taken only when its version is above the
stored cloud version, so duplicates and reordering are harmless). Reported state arrives from the
device on ``pulse/{device}/twin/reported``: after the buffer commits the message (it also syncs to
the cloud on Stream.TWIN), the gateway merges it into its copy. Whenever the delta changes, the
gateway publishes it RETAINED on ``pulse/{device}/twin/desired`` (an empty retained payload clears
it when the delta becomes empty), so a device that subscribes later, or was asleep, gets it; at
start-up every non-empty delta is published again (the broker's retained messages live in memory).
A message on ``pulse/{device}/twin/get`` is answered on ``pulse/{device}/twin/document``.

Commands. A ``command`` downlink item is stored in ``commands`` as ``delivered`` (or ``expired``
when its deadline already passed on the gateway's clock: it is then never sent). The gateway
publishes it on ``pulse/{device}/cmd/{id}`` (QoS 1) when the device has a subscription that
matches in a session that can take it: connected, or persistent (clean session 0: the broker
queues it in the session, in gateway.db, and delivers it when the device is back, edge/sessions.py)
— at once, or when the device next connects or subscribes — and records ``sent``; at that moment a
command past its deadline becomes ``expired`` instead. A command queued in a persistent session
keeps the expiry rule: the session queue drops it unsent once its deadline has come (counted as
``expired`` in the status page's "sessions" block), and the session queue's own bounds apply. The device's
answer on ``cmd/{id}/ack`` (buffered on Stream.TWIN, synced as is) moves it to succeeded or
failed. ``sent`` and ``expired`` are the gateway's own facts: each is appended to Stream.TWIN as a
``command_state`` record, in order with the device's reports and answers. A command's
``synced`` column holds the last state so recorded: anything not yet recorded (a crash in between)
is recorded at the next start.

Order of durability: a desired change is committed before it is published (a crash in between
publishes it at start-up); a command is published before ``sent`` is committed (a crash in between
publishes it again: at least once, the device dedupes by command id).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pulse.edge.auth import connect as connect_db
from pulse.edge.buffer import Buffer
from pulse.edge.ingest import Store
from pulse.edge.sqlite import SqliteThread
from pulse.protocol import commands, topics, twin
from pulse.protocol.batch import Stream
from pulse.protocol.commands import Command, CommandEvent, CommandState
from pulse.protocol.envelope import MessageType
from pulse.protocol.errors import CommandError, TwinError
from pulse.protocol.sync import COMMAND_STATE_TYPE, CommandStateReport, TwinDesired, command_from_payload
from pulse.protocol.topics import TopicKind
from pulse.protocol.twin import TwinDocument, TwinLimits, TwinUpdate

log = logging.getLogger("pulse.edge.twin")

_T = TypeVar("_T")


class Publisher(Protocol):
    """What the twin needs from the broker (pulse.broker.server.DeviceBroker)."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool, expires_ms: int | None = None) -> None: ...

    def subscribed(self, device_id: str, topic: str) -> bool: ...


class EdgeTwins:
    def __init__(self, path: Path, buffer: Buffer, *, limits: TwinLimits = twin.DEFAULT_LIMITS, clock: Callable[[], int] | None = None) -> None:
        self._path = path
        self._buffer = buffer
        self._limits = limits
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._sql = SqliteThread("edge-twin")
        self._lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()  # one writer of command_state records at a time: none twice
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.prepare_command: Callable[[Command], Command] | None = None
        """Rewrites a command as it is published (firmware: the gateway's local URL, edge/firmware.py)."""
        self._task: asyncio.Task[None] | None = None
        self.publisher: Publisher | None = None
        self.counters = {"reported": 0, "desired": 0, "commands_sent": 0, "commands_expired": 0, "answers": 0, "refused": 0}

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, publisher: Publisher | None) -> None:
        """Open the tables, publish every stored delta again (retained), record command states not
        yet synced, and start taking work."""
        self.publisher = publisher
        await self._sql.open(lambda: connect_db(self._path))
        for device_id, raw in await self._sql.run(self._all_twins):
            await self._publish_delta(device_id, twin.from_json(raw))
        await self._sync_states()
        self._task = asyncio.create_task(self._worker(), name="edge-twin")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._sql.close()

    def _all_twins(self) -> list[tuple[str, str]]:
        return list(self._sql.conn.execute("SELECT device_id, document FROM twins ORDER BY device_id"))

    # --- work arriving from the broker and the buffer (no I/O in these) -----------------------

    def observe(self, stores: Sequence[Store]) -> None:
        """The buffer's after-commit listener: queue the devices' reports and answers, in order."""
        for store in stores:
            if store.stream is Stream.TWIN and store.type != COMMAND_STATE_TYPE:
                self._queue.put_nowait(("record", store))

    def twin_get(self, device_id: str) -> None:
        """A device asked for its document (``twin/get``)."""
        self._queue.put_nowait(("get", device_id))

    def device_ready(self, device_id: str) -> None:
        """A device connected or subscribed: send what waits for it."""
        self._queue.put_nowait(("ready", device_id))

    async def _worker(self) -> None:
        while True:
            kind, arg = await self._queue.get()
            try:
                if kind == "record":
                    await self._record(arg)
                elif kind == "get":
                    await self._answer_get(arg)
                elif kind == "ready":
                    await self.send_pending(arg)
            except Exception:
                log.exception("twin: %s %s failed", kind, getattr(arg, "device_id", arg))

    # --- twins ---------------------------------------------------------------------------------

    def _load(self, device_id: str) -> tuple[TwinDocument, int] | None:
        row = self._sql.conn.execute("SELECT document, cloud_version FROM twins WHERE device_id = ?", (device_id,)).fetchone()
        return None if row is None else (twin.from_json(row[0]), int(row[1]))

    def _save(self, device_id: str, doc: TwinDocument, cloud_version: int) -> None:
        self._sql.conn.execute(
            "INSERT INTO twins (device_id, document, cloud_version, updated_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (device_id) DO UPDATE SET document = excluded.document, cloud_version = excluded.cloud_version,"
            " updated_ms = excluded.updated_ms",
            (device_id, twin.to_json(doc).decode(), cloud_version, self._clock()),
        )

    async def document(self, device_id: str) -> TwinDocument:
        """The gateway's copy of a device's twin (empty when it has none)."""
        loaded = await self._sql.run(self._load, device_id)
        return TwinDocument() if loaded is None else loaded[0]

    async def _publish_delta(self, device_id: str, doc: TwinDocument) -> None:
        if self.publisher is None:
            return
        payload = twin.delta_message(doc, now_ms=self._clock())
        await self.publisher.publish(topics.build(device_id, TopicKind.TWIN_DESIRED), payload or b"", retain=True)

    def _take_desired(self, item: TwinDesired) -> TwinDocument | None:
        """In one transaction: the new local twin, or None when the item is not newer."""
        with self._sql.transaction():
            loaded = self._load(item.device_id)
            if loaded is not None and item.document.version <= loaded[1]:
                return None
            local = loaded[0] if loaded is not None else TwinDocument()
            new = twin.take_desired(local, item.document, seed_reported=loaded is None)
            self._save(item.device_id, new, item.document.version)
            return new

    async def apply_desired(self, item: TwinDesired) -> bool:
        """Take a ``twin_desired`` item; True when it was newer than what the gateway had."""
        async with self._lock:
            new = await self._sql.run(self._take_desired, item)
            if new is None:
                return False
            self.counters["desired"] += 1
            await self._publish_delta(item.device_id, new)
            return True

    def _apply_reported(self, device_id: str, reported: dict[str, Any], at_ms: int) -> tuple[TwinDocument, bool]:
        with self._sql.transaction():
            loaded = self._load(device_id)
            doc, cloud_version = loaded if loaded is not None else (TwinDocument(), 0)
            new, change = twin.apply_update(doc, TwinUpdate(reported=reported), now_ms=at_ms, limits=self._limits)
            self._save(device_id, new, cloud_version)
            return new, change.delta_changed

    async def _record(self, store: Store) -> None:
        if store.envelope is not None:
            body = store.envelope.body
        else:
            try:
                body = json.loads(store.raw).get("body")
            except (ValueError, AttributeError):
                return
        if not isinstance(body, dict):
            return
        if store.type == MessageType.TWIN_REPORTED.value:
            async with self._lock:
                try:
                    doc, changed = await self._sql.run(self._apply_reported, store.device_id, body, store.ts_ms)
                except TwinError as exc:  # the cloud quarantines the synced record with the same code
                    self.counters["refused"] += 1
                    log.info("twin: report of %s refused: %s", store.device_id, exc)
                    return
                self.counters["reported"] += 1
                if changed:
                    await self._publish_delta(store.device_id, doc)
        elif store.type == MessageType.COMMAND_ACK.value:
            try:
                ack = commands.parse_ack(body)
            except CommandError as exc:
                self.counters["refused"] += 1
                log.info("twin: answer of %s refused: %s", store.device_id, exc)
                return
            async with self._lock:
                await self._sql.run(self._answer, store.device_id, ack, store.ts_ms)

    async def _answer_get(self, device_id: str) -> None:
        if self.publisher is None:
            return
        doc = await self.document(device_id)
        await self.publisher.publish(
            topics.build(device_id, TopicKind.TWIN_DOCUMENT), twin.document_message(doc, now_ms=self._clock()), retain=False
        )

    # --- the downlink -------------------------------------------------------------------------

    def _pending_items(self) -> list[tuple[int, str, str]]:
        return list(
            self._sql.conn.execute(
                "SELECT seq, kind, payload FROM downlink WHERE kind IN ('twin_desired', 'command') AND status = 'pending' ORDER BY seq"
            )
        )

    def _mark_item(self, seq: int, status: str) -> None:
        self._sql.conn.execute("UPDATE downlink SET status = ? WHERE seq = ?", (status, seq))

    async def apply_downlink(self) -> int:
        """Act on the ``twin_desired`` and ``command`` items the downlink stored (status ``pending``),
        in order; each is marked with what was done. Applying one twice changes nothing (versions,
        command ids), so a crash between acting and marking is harmless. Returns how many were taken."""
        taken = 0
        for seq, item in parse_items(await self._sql.run(self._pending_items)):
            if isinstance(item, str):
                log.error("downlink item %d %s", seq, item)
                status = item
            elif isinstance(item, TwinDesired):
                status = "applied" if await self.apply_desired(item) else "superseded"
            else:
                stored = await self.apply_command(item)
                status = "applied" if stored is None else f"applied ({stored.state.value})"
            taken += status.startswith("applied")
            await self._sql.run(self._mark_item, seq, status)
        return taken

    # --- commands ------------------------------------------------------------------------------

    def _load_command(self, command_id: str) -> tuple[Command, str] | None:
        row = self._sql.conn.execute("SELECT document, synced FROM commands WHERE id = ?", (command_id,)).fetchone()
        return None if row is None else (commands.from_json(row[0]), str(row[1]))

    def _save_command(self, cmd: Command) -> None:
        self._sql.conn.execute(
            "INSERT INTO commands (id, device_id, state, document, updated_ms, synced) VALUES (?, ?, ?, ?, ?, 'delivered')"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state, document = excluded.document, updated_ms = excluded.updated_ms",
            (cmd.id, cmd.device_id, cmd.state.value, commands.to_json(cmd).decode(), cmd.updated_ms),
        )

    def _deliver(self, cmd: Command, now_ms: int) -> Command | None:
        """Store a command from the downlink (None: the gateway has it already)."""
        if self._load_command(cmd.id) is not None:
            return None
        delivered = commands.transition(cmd, CommandEvent.DELIVER, now_ms) if cmd.state is CommandState.QUEUED else cmd
        self._save_command(delivered)
        return delivered

    async def apply_command(self, cmd: Command) -> Command | None:
        """Take a ``command`` item: delivered (then sent if the device is there) or expired."""
        async with self._lock:
            try:
                stored = await self._sql.run(self._deliver, cmd, self._clock())
            except CommandError as exc:
                log.error("twin: command %s refused: %s", cmd.id, exc)
                return None
        if stored is None:
            return None
        if stored.state is CommandState.EXPIRED:
            self.counters["commands_expired"] += 1
            log.info("twin: command %s for %s arrived past its deadline; not sent", cmd.id, cmd.device_id)
            await self._sync_states()
            return stored
        await self.send_pending(cmd.device_id)
        return stored

    def _open_commands(self, device_id: str) -> list[Command]:
        rows = self._sql.conn.execute(
            "SELECT document FROM commands WHERE device_id = ? AND state = 'delivered' ORDER BY updated_ms, id", (device_id,)
        )
        return [commands.from_json(r[0]) for r in rows]

    async def send_pending(self, device_id: str) -> int:
        """Publish the device's delivered commands if it is connected and subscribed; those past their
        deadline become expired instead. Returns how many were sent."""
        sent = 0
        async with self._lock:
            for cmd in await self._sql.run(self._open_commands, device_id):
                now = self._clock()
                after = commands.transition(cmd, CommandEvent.SEND, now)
                topic = topics.build(device_id, TopicKind.COMMAND, cmd.id)
                if after.state is CommandState.SENT:
                    if self.publisher is None or not self.publisher.subscribed(device_id, topic):
                        continue  # not there yet: at its next connect or subscribe
                    out = self.prepare_command(cmd) if self.prepare_command is not None else cmd
                    await self.publisher.publish(topic, commands.command_message(out), retain=False, expires_ms=cmd.expires_at_ms)
                    sent += 1
                    self.counters["commands_sent"] += 1
                else:
                    self.counters["commands_expired"] += 1
                    log.info("twin: command %s for %s passed its deadline before the device was there; not sent", cmd.id, device_id)
                await self._sql.run(self._save_command, after)
        await self._sync_states()
        return sent

    def _answer(self, device_id: str, ack: commands.Ack, at_ms: int) -> None:
        loaded = self._load_command(ack.command_id)
        if loaded is None or loaded[0].device_id != device_id:
            log.info("twin: %s answered command %s, which this gateway does not hold", device_id, ack.command_id)
            return
        try:
            new = commands.transition(loaded[0], ack.event, at_ms, result=ack.result, error=ack.error)
        except CommandError as exc:
            log.info("twin: answer to command %s ignored: %s", ack.command_id, exc.message)
            return
        self.counters["answers"] += 1
        # the answer itself travels on Stream.TWIN: nothing more to record for the cloud
        self._save_command(new)
        self._sql.conn.execute("UPDATE commands SET synced = state WHERE id = ?", (new.id,))

    def _unsynced(self) -> list[Command]:
        rows = self._sql.conn.execute(
            "SELECT document FROM commands WHERE state IN ('sent', 'expired') AND synced <> state ORDER BY updated_ms, id"
        )
        return [commands.from_json(r[0]) for r in rows]

    def _mark_synced(self, command_id: str, state: str) -> None:
        self._sql.conn.execute("UPDATE commands SET synced = ? WHERE id = ?", (state, command_id))

    async def _sync_states(self) -> None:
        """Append a ``command_state`` record to Stream.TWIN for each sent/expired not yet recorded."""
        async with self._sync_lock:
            for cmd in await self._sql.run(self._unsynced):
                body = CommandStateReport(cmd.id, cmd.state).to_body()
                raw = json.dumps({"body": body}, separators=(",", ":")).encode()
                await self._buffer.put(Store(Stream.TWIN, cmd.device_id, cmd.updated_ms, COMMAND_STATE_TYPE, None, raw, None))
                await self._sql.run(self._mark_synced, cmd.id, cmd.state.value)

    def _commands(self, device_id: str | None, limit: int) -> list[Command]:
        rows = self._sql.conn.execute(
            "SELECT document FROM commands WHERE (? IS NULL OR device_id = ?) ORDER BY updated_ms DESC LIMIT ?", (device_id, device_id, limit)
        )
        return [commands.from_json(r[0]) for r in rows]

    async def commands(self, device_id: str | None = None, limit: int = 50) -> list[Command]:
        return await self._sql.run(self._commands, device_id, limit)

    def _waiting(self) -> int:
        return int(self._sql.conn.execute("SELECT count(*) FROM commands WHERE state = 'delivered'").fetchone()[0])

    async def waiting(self) -> int:
        """Commands held for devices that were not there yet (the status page shows it)."""
        return 0 if not self._sql.is_open else await self._sql.run(self._waiting)


def parse_items(rows: Sequence[tuple[int, str, str]]) -> list[tuple[int, TwinDesired | Command | str]]:
    """Downlink rows (seq, kind, payload) -> what they hold, or the reason they are refused."""
    out: list[tuple[int, TwinDesired | Command | str]] = []
    for seq, kind, payload in rows:
        try:
            doc = json.loads(payload)
            out.append((seq, TwinDesired.from_payload(doc) if kind == "twin_desired" else command_from_payload(doc)))
        except (ValueError, AttributeError) as exc:
            out.append((seq, f"refused: {exc}"))
    return out
