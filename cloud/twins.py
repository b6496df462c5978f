"""Device twins and commands in the cloud's database: the one place that reads and writes them.

Every function runs in the caller's transaction and names the tenant in every statement, so the same
code works on a tenant connection (API, row-level security) and on the writer connection of a sync
batch (BYPASSRLS: reported state and command answers commit with the batch's high-water mark, so a
replayed batch is never applied twice). The rules themselves are ``pulse.protocol.twin`` and
``pulse.protocol.commands``; this module only loads, applies and stores.

- ``update_desired``: an operator's PATCH. Applies the update to the locked twin, stores it with a
  history row, and enqueues the whole new document (``sync.TwinDesired``) for the gateways serving
  the device (the caller wakes them after the commit).
- ``apply_reported``: a device's ``twin_reported`` (synced by its gateway, or over HTTP ingest).
- ``create_command`` / ``command_event``: the command state machine, stored with its history.
- ``apply_device_messages``: what a device says about its twin and its commands (``twin_reported``,
  ``command_ack``, and the gateway's ``command_state``), whether it came over HTTP ingest or in a
  gateway's sync batch: one rule for both paths.
- ``deliver_acked``: the gateway acked downlink items; the commands among them are ``delivered``.
- ``expire_due``: the sweep; commands that were never sent and whose deadline passed are expired
  and withdrawn from the downlink.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pulse.cloud.db.pool import Database
from pulse.cloud.downlink import enqueue, gateways_serving
from pulse.protocol import commands, twin
from pulse.protocol.commands import Command, CommandEvent, CommandState
from pulse.protocol.envelope import JsonObject, MessageType
from pulse.protocol.errors import Code, CommandError, TwinError
from pulse.protocol.sync import COMMAND_STATE_TYPE, CommandStateReport, DownlinkKind, TwinDesired, command_to_payload
from pulse.protocol.twin import TwinChange, TwinDocument, TwinLimits, TwinUpdate

log = logging.getLogger("pulse.cloud.twins")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
GATEWAY_EVENTS = frozenset({CommandEvent.SEND, CommandEvent.SUCCEED, CommandEvent.FAIL, CommandEvent.EXPIRE})


def from_ms(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def to_ms(at: dt.datetime) -> int:
    return (at - _EPOCH) // dt.timedelta(milliseconds=1)


def iso(ms: int) -> str:
    return from_ms(ms).isoformat().replace("+00:00", "Z")


# --- twins -------------------------------------------------------------------------------------


def document_out(doc: TwinDocument, now_ms: int) -> dict[str, Any]:
    """The API shape: version, timestamp, state (desired, reported, delta always present), metadata."""
    out: dict[str, Any] = json.loads(twin.document_message(doc, now_ms=now_ms))
    out["state"].setdefault("delta", {})
    return out


async def load(conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str, *, lock: bool = False) -> TwinDocument:
    """The device's twin (``TwinDocument()`` when nobody wrote it yet). ``lock``: make sure the row
    exists and hold it until the transaction ends, so concurrent writers apply in turn."""
    if lock:
        await conn.execute(
            "INSERT INTO twins (tenant_id, device_id, version, document) VALUES ($1, $2, 0, $3::jsonb) ON CONFLICT DO NOTHING",
            tenant,
            device_id,
            twin.to_json(TwinDocument()).decode(),
        )
    raw = await conn.fetchval(
        "SELECT document FROM twins WHERE tenant_id = $1 AND device_id = $2" + (" FOR UPDATE" if lock else ""), tenant, device_id
    )
    return TwinDocument() if raw is None else twin.from_json(raw)


async def _store(
    conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str, doc: TwinDocument, change: TwinChange, actor: str, source: str
) -> None:
    await conn.execute(
        "UPDATE twins SET version = $3, document = $4::jsonb, updated_at = now() WHERE tenant_id = $1 AND device_id = $2",
        tenant,
        device_id,
        doc.version,
        twin.to_json(doc).decode(),
    )
    await conn.execute(
        "INSERT INTO twin_history (tenant_id, device_id, version, actor, source, change) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        tenant,
        device_id,
        doc.version,
        actor,
        source,
        json.dumps(change.to_json()),
    )


async def update_desired(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    device: uuid.UUID,
    device_id: str,
    update: TwinUpdate,
    *,
    actor: str,
    now_ms: int,
    limits: TwinLimits,
) -> tuple[TwinDocument, TwinChange, list[uuid.UUID]]:
    """Apply an operator's update (desired only; ``TwinError`` on conflict or limits) and enqueue
    the new document for the device's gateways. Returns the document, the change, the gateways."""
    current = await load(conn, tenant, device_id, lock=True)
    doc, change = twin.apply_update(current, update, now_ms=now_ms, limits=limits)
    await _store(conn, tenant, device_id, doc, change, actor, "user")
    gateways = await gateways_serving(conn, device)
    payload = TwinDesired(device_id, doc).to_payload()
    for gw in gateways:
        await enqueue(conn, tenant, gw, DownlinkKind.TWIN_DESIRED, payload)
    return doc, change, gateways


async def apply_reported(
    conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str, reported: JsonObject, *, at_ms: int, actor: str, limits: TwinLimits
) -> TwinChange:
    """Merge a device's reported state (the body of its ``twin_reported``) at ``at_ms`` (the
    message's time). Raises ``TwinError`` for a body the rules refuse (the caller quarantines it)."""
    current = await load(conn, tenant, device_id, lock=True)
    doc, change = twin.apply_update(current, TwinUpdate(reported=reported), now_ms=at_ms, limits=limits)
    await _store(conn, tenant, device_id, doc, change, actor, "device")
    return change


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One device message about its twin or its commands, as the ingest path decoded it."""

    device_id: str
    type: str  # twin_reported | command_ack | command_state
    body: JsonObject | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply_device_messages`` did: the changes to tell listeners about, as
    (device, "twin" | "command", detail), and the messages it refused, by index, with their error."""

    changes: list[tuple[str, str, dict[str, object]]]
    refused: dict[int, TwinError | CommandError]


async def apply_device_messages(
    conn: asyncpg.Connection, tenant: uuid.UUID, messages: Sequence[DeviceMessage], *, actor: str, limits: TwinLimits
) -> Applied:
    """Apply device messages in order, each in a savepoint of the caller's transaction: a reported
    state merges into the twin; an answer or a gateway's state report moves the command. A message
    the rules refuse (a bad twin body, an answer to a command the device does not have, a move the
    command's state machine does not allow) is refused with its coded error and leaves the others;
    the caller rejects or quarantines it. The same rule holds for a direct device (HTTP ingest) and
    for a gateway's sync batch."""
    out = Applied([], {})
    for index, msg in enumerate(messages):
        try:
            async with conn.transaction():
                out.changes.append(await _apply_one(conn, tenant, msg, actor=actor, limits=limits))
        except (TwinError, CommandError) as exc:
            out.refused[index] = exc
    return out


async def _apply_one(
    conn: asyncpg.Connection, tenant: uuid.UUID, msg: DeviceMessage, *, actor: str, limits: TwinLimits
) -> tuple[str, str, dict[str, object]]:
    if msg.type == MessageType.TWIN_REPORTED.value:
        change = await apply_reported(conn, tenant, msg.device_id, msg.body or {}, at_ms=msg.at_ms, actor=actor, limits=limits)
        return msg.device_id, "twin", {"version": change.version}
    if msg.type == MessageType.COMMAND_ACK.value:
        ack = commands.parse_ack(msg.body or {})
        command_id, event, result, error = ack.command_id, ack.event, ack.result, ack.error
    elif msg.type == COMMAND_STATE_TYPE:
        try:
            report = CommandStateReport.from_body(msg.body)
        except ValueError as exc:
            raise CommandError(Code.COMMAND_BAD, str(exc)) from exc
        command_id, event, result, error = report.command_id, report.event, None, None
    else:
        raise CommandError(Code.COMMAND_BAD, f"a {msg.type!r} message says nothing about a twin or a command")
    try:
        cmd = await command_event(conn, tenant, msg.device_id, command_id, event, msg.at_ms, result=result, error=error)
    except CommandError as exc:
        # The gateway's own bookkeeping ("sent", "expired") can arrive after the device's answer
        # moved the command on (an answer proves it was sent): stale, not bad input.
        if msg.type != COMMAND_STATE_TYPE or exc.code is not Code.COMMAND_ILLEGAL_TRANSITION:
            raise
        cmd = await load_command(conn, tenant, command_id)
        if cmd is None:
            raise
        log.info("command %s of %s: the gateway's %s report came after it moved on (%s)", command_id, msg.device_id, event, cmd.state)
    if cmd is None:
        raise CommandError(Code.COMMAND_BAD_ACK, f"{msg.device_id} has no command {command_id}")
    return msg.device_id, "command", {"id": cmd.id, "state": cmd.state.value}


async def history_rows(conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str, *, limit: int, before: int | None) -> list[asyncpg.Record]:
    """Up to ``limit`` changes of a device's twin, newest first, older than history id ``before``."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, version, at, actor, source, change FROM twin_history WHERE tenant_id = $1 AND device_id = $2"
        " AND ($3::bigint IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
        tenant,
        device_id,
        before,
        limit,
    )
    return rows


def history_out(row: asyncpg.Record) -> dict[str, Any]:
    """The API shape of one twin change."""
    return {
        "version": row["version"],
        "at": row["at"].isoformat().replace("+00:00", "Z"),
        "actor": row["actor"],
        "source": row["source"],
        "change": json.loads(row["change"]),
    }


# --- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredCommand:
    command: Command
    n: int


def command_out(cmd: Command) -> dict[str, Any]:
    """The API shape of a command (docs/cloud.md)."""
    return {
        "id": cmd.id,
        "device": cmd.device_id,
        "name": cmd.name,
        "params": cmd.params,
        "state": cmd.state.value,
        "created": iso(cmd.created_ms),
        "expires": iso(cmd.expires_at_ms),
        "updated": iso(cmd.updated_ms),
        "result": cmd.result,
        "error": cmd.error,
        "history": [{"state": s.value, "at": iso(at)} for s, at in cmd.history],
    }


async def create_command(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    device: uuid.UUID,
    cmd: Command,
    *,
    actor: str,
) -> list[uuid.UUID]:
    """Store a new (queued) command and enqueue it for the device's gateways; returns them (to wake)."""
    await conn.execute(
        "INSERT INTO commands (tenant_id, id, device_id, name, params, state, created_at, expires_at, updated_at, created_by, document)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $7, $9, $10::jsonb)",
        tenant,
        cmd.id,
        cmd.device_id,
        cmd.name,
        json.dumps(cmd.params),
        cmd.state.value,
        from_ms(cmd.created_ms),
        from_ms(cmd.expires_at_ms),
        actor,
        commands.to_json(cmd).decode(),
    )
    gateways = await gateways_serving(conn, device)
    for gw in gateways:
        await enqueue(conn, tenant, gw, DownlinkKind.COMMAND, command_to_payload(cmd))
    return gateways


async def queued_commands(conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str) -> list[str]:
    """Ids of a device's commands still queued, oldest first."""
    rows = await conn.fetch(
        "SELECT id FROM commands WHERE tenant_id = $1 AND device_id = $2 AND state = 'queued' ORDER BY created_at, id",
        tenant,
        device_id,
    )
    return [r["id"] for r in rows]


async def load_command(conn: asyncpg.Connection, tenant: uuid.UUID, command_id: str, *, lock: bool = False) -> Command | None:
    raw = await conn.fetchval(
        "SELECT document FROM commands WHERE tenant_id = $1 AND id = $2" + (" FOR UPDATE" if lock else ""), tenant, command_id
    )
    return None if raw is None else commands.from_json(raw)


async def _save_command(conn: asyncpg.Connection, tenant: uuid.UUID, cmd: Command) -> None:
    await conn.execute(
        "UPDATE commands SET state = $3, updated_at = $4, result = $5::jsonb, error = $6, document = $7::jsonb"
        " WHERE tenant_id = $1 AND id = $2",
        tenant,
        cmd.id,
        cmd.state.value,
        from_ms(cmd.updated_ms),
        None if cmd.result is None else json.dumps(cmd.result),
        cmd.error,
        commands.to_json(cmd).decode(),
    )


async def command_event(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    device_id: str,
    command_id: str,
    event: CommandEvent,
    at_ms: int,
    *,
    result: JsonObject | None = None,
    error: str | None = None,
) -> Command | None:
    """Move a command by ``event`` at ``at_ms``; returns it, or None when the tenant has no such
    command for that device. Raises ``CommandError`` for a move the state machine refuses.

    An event from the gateway (send, an answer, expire) on a command the cloud still holds as
    queued delivers it first: the gateway's report can overtake its downlink ack. ``expire`` is
    applied at the deadline at the earliest (the gateway decided with its own clock)."""
    cmd = await load_command(conn, tenant, command_id, lock=True)
    if cmd is None or cmd.device_id != device_id:
        return None
    if event is CommandEvent.EXPIRE:
        at_ms = max(at_ms, cmd.expires_at_ms)
    if cmd.state is CommandState.QUEUED and event in GATEWAY_EVENTS and event is not CommandEvent.EXPIRE:
        cmd = commands.transition(cmd, CommandEvent.DELIVER, min(at_ms, cmd.expires_at_ms - 1))
    new = commands.transition(cmd, event, at_ms, result=result, error=error)
    if new != cmd:
        await _save_command(conn, tenant, new)
    return new


async def deliver_acked(conn: asyncpg.Connection, tenant: uuid.UUID, gateway: uuid.UUID, seq: int, now_ms: int) -> int:
    """The gateway acked downlink items up to ``seq``: the commands among those not acked before are
    now ``delivered`` (or ``expired``, when their deadline came first). Returns how many moved."""
    rows = await conn.fetch(
        "SELECT payload->>'id' AS id, payload->>'device' AS device FROM gateway_downlink"
        " WHERE tenant_id = $1 AND gateway_id = $2 AND seq <= $3 AND acked_at IS NULL AND kind = 'command'",
        tenant,
        gateway,
        seq,
    )
    moved = 0
    for r in rows:
        try:
            cmd = await load_command(conn, tenant, r["id"], lock=True)
            if cmd is None or cmd.state is not CommandState.QUEUED:
                continue
            await _save_command(conn, tenant, commands.transition(cmd, CommandEvent.DELIVER, now_ms))
            moved += 1
        except CommandError as exc:
            log.warning("command %s not marked delivered: %s", r["id"], exc)
    return moved


async def expire_due(conn: asyncpg.Connection, tenant: uuid.UUID, *, now_ms: int, grace_s: int) -> list[str]:
    """Expire the tenant's commands that were never sent and whose deadline passed (``delivered``
    ones only ``grace_s`` later: until then the gateway holding them reports what it did), and
    withdraw them from the downlink. Returns their ids."""
    rows = await conn.fetch(
        "SELECT id FROM commands WHERE tenant_id = $1 AND ((state = 'queued' AND expires_at <= $2)"
        " OR (state = 'delivered' AND expires_at <= $2 - make_interval(secs => $3))) FOR UPDATE",
        tenant,
        from_ms(now_ms),
        float(grace_s),
    )
    expired: list[str] = []
    for r in rows:
        cmd = await load_command(conn, tenant, r["id"])
        if cmd is None:
            continue
        try:
            await _save_command(conn, tenant, commands.transition(cmd, CommandEvent.EXPIRE, now_ms))
        except CommandError as exc:
            log.warning("command %s not expired: %s", cmd.id, exc)
            continue
        expired.append(cmd.id)
    if expired:
        await conn.execute(
            "UPDATE gateway_downlink SET acked_at = now() WHERE tenant_id = $1 AND kind = 'command' AND acked_at IS NULL"
            " AND payload->>'id' = ANY($2::text[])",
            tenant,
            expired,
        )
    return expired



async def sweep(db: Database, *, grace_s: int) -> int:
    """One round of the expiry sweep over every tenant with something due; returns how many expired."""
    async with db.identity() as conn:
        tenants = [r[0] for r in await conn.fetch("SELECT pulse_command_expiry_tenants($1)", grace_s)]
    count = 0
    for tenant in tenants:
        async with db.tenant(tenant) as conn:
            expired = await expire_due(conn, tenant, now_ms=int(time.time() * 1000), grace_s=grace_s)
        if expired:
            log.info("tenant %s: %d command(s) expired before they were sent: %s", tenant, len(expired), ", ".join(expired[:10]))
        count += len(expired)
    return count


async def sweep_forever(db: Database, *, interval_s: float, grace_s: int) -> None:
    while True:
        try:
            await sweep(db, grace_s=grace_s)
        except Exception:  # keep sweeping; the next round may succeed
            log.exception("command expiry sweep failed; retrying in %ss", interval_s)
        await asyncio.sleep(interval_s)


async def hand_over(conn: asyncpg.Connection, tenant: uuid.UUID, device_id: str, gateways: list[uuid.UUID], *, now_ms: int) -> None:
    """A device moved to other gateways (its gateway or site changed): the ones that now serve it get
    its twin and its commands still waiting to be sent, as if they had been there all along."""
    if not gateways:
        return
    raw = await conn.fetchval("SELECT document FROM twins WHERE tenant_id = $1 AND device_id = $2", tenant, device_id)
    rows = await conn.fetch(
        "SELECT document FROM commands WHERE tenant_id = $1 AND device_id = $2 AND state IN ('queued', 'delivered')"
        " AND expires_at > $3 ORDER BY n",
        tenant,
        device_id,
        from_ms(now_ms),
    )
    for gw in gateways:
        if raw is not None:
            await enqueue(conn, tenant, gw, DownlinkKind.TWIN_DESIRED, TwinDesired(device_id, twin.from_json(raw)).to_payload())
        for r in rows:
            await enqueue(conn, tenant, gw, DownlinkKind.COMMAND, command_to_payload(commands.from_json(r["document"])))
