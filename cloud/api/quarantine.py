"""Quarantine: the messages ingest refused, with their code and raw bytes, inside the caller's
tenant (RLS). Listed newest first, filterable by code and device, paged with ``Page[T]``.

The raw payload is never sent as HTML or spliced into anything: it is a JSON string, the bytes as
text when they are UTF-8 (the console shows it as text, escaped), else base64 (``raw_encoding``).
Lists carry the first ``PREVIEW_BYTES``; one message carries all of it.

``POST /{id}/resubmit`` (tenant admins; audited): the message goes through HTTP ingest again as its
device sent it now (the same checks, twin and command rules, rules evaluation); a record a gateway
synced (telemetry, events, twin streams) is turned back into its device's envelope. Typical use: a
gateway forwarded messages of a device not registered (at its site) or disabled
(``sync.unknown_device``, ``auth.device_disabled``); register or fix the device, then re-submit.
Its timestamp is checked against now like any message's. Accepted: stored,
and the quarantine row records who re-submitted it. Refused again: 422 ``quarantine.still_refused``
with ingest's code; the row stays as it was and nothing is stored."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.cloud.ingest.http import split_body
from pulse.cloud.ingest.identity import DeviceIdentity
from pulse.protocol.errors import Code

router = APIRouter(prefix="/api/v1/quarantine", tags=["quarantine"])
PREVIEW_BYTES = 4096
_DEVICE_STREAMS = ("telemetry", "events", "twin")


class QuarantinedOut(BaseModel):
    id: int
    device_id: str | None
    gateway_id: uuid.UUID | None
    source: str
    code: str
    reason: str
    received_at: datetime
    raw_encoding: Literal["utf-8", "base64"] = Field(description="how `raw` holds the bytes: as text (UTF-8), or base64")
    raw: str
    raw_bytes: int = Field(description="size of the whole payload")
    raw_truncated: bool = Field(description="lists carry the first 4096 bytes; GET /api/v1/quarantine/{id} has all")
    resubmitted_at: datetime | None
    resubmitted_by: str | None


class ResubmitOut(BaseModel):
    id: int
    accepted: int = Field(description="messages stored (a quarantined body may hold one message)")
    resubmitted_at: datetime
    resubmitted_by: str


QuarantinePage = paging.Page[QuarantinedOut]
_COLS = "id, device_id, gateway_id, source, code, reason, received_at, resubmitted_at, resubmitted_by, octet_length(raw) AS raw_bytes"


def _out(row: asyncpg.Record, raw: bytes) -> QuarantinedOut:
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode(), "base64"
    d = dict(row)
    d.pop("raw", None)
    return QuarantinedOut(**d, raw=text, raw_encoding=encoding, raw_truncated=len(raw) < row["raw_bytes"])  # type: ignore[arg-type]


def _preview(row: asyncpg.Record) -> QuarantinedOut:
    raw = bytes(row["raw"])
    # a cut in the middle of a UTF-8 sequence: drop the partial character, keep it text
    for cut in range(len(raw), max(len(raw) - 4, -1), -1):
        try:
            raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        raw = raw[:cut]
        break
    return _out(row, raw)


@router.get("", response_model=QuarantinePage, summary="Quarantined messages, newest first (filters combine with AND)")
async def list_quarantine(
    caller: Reader,
    parts: Parts,
    code: Annotated[str | None, Query(max_length=100, description="the refusal's code, e.g. envelope.bad_version")] = None,
    device_id: Annotated[str | None, Query(max_length=128)] = None,
    resubmitted: Annotated[bool | None, Query(description="true: only re-submitted ones; false: only those still waiting")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> QuarantinePage:
    w = paging.Where()
    if code is not None:
        w.add(f"code = {w.arg(code)}")
    if device_id is not None:
        w.add(f"device_id = {w.arg(device_id)}")
    if resubmitted is not None:
        w.add(f"(resubmitted_at IS NOT NULL) = {w.arg(resubmitted)}")
    if (after := paging.decode(cursor, int)) is not None:
        w.add(f"id < {w.arg(after[0])}")
    sql = f"SELECT {_COLS}, substring(raw FROM 1 FOR {PREVIEW_BYTES}) AS raw FROM quarantine WHERE {w.sql} ORDER BY id DESC LIMIT {w.arg(limit + 1)}"
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(sql, *w.args)
    return paging.page(rows, limit, _preview, lambda r: (r["id"],))


async def _get(conn: asyncpg.Connection, qid: int, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {_COLS}, raw FROM quarantine WHERE id = $1" + (" FOR UPDATE" if lock else ""), qid)
    if row is None:
        raise NotFoundError("quarantined message", id=qid)
    return row


@router.get("/{qid}", response_model=QuarantinedOut, summary="One quarantined message with its whole raw payload")
async def get_quarantined(qid: int, caller: Reader, parts: Parts) -> QuarantinedOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await _get(conn, qid)
    return _out(row, bytes(row["raw"]))


@router.post("/{qid}/resubmit", response_model=ResubmitOut, summary="Send a quarantined message through ingest again (tenant admins; audited)")
async def resubmit(qid: int, caller: Writer, parts: Parts) -> ResubmitOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await _get(conn, qid)
        device = await conn.fetchrow("SELECT id, device_id, status FROM devices WHERE device_id = $1", row["device_id"])
        if device is None or device["status"] not in ("provisioned", "active"):
            why = "names no device of your tenant" if device is None else f"is from a {device['status']} device"
            raise ConflictError(Code.QUARANTINE_NO_DEVICE, f"quarantined message {qid} {why}; register or re-enable it first", id=qid)
        # claimed before it is sent, so two re-submissions at once store it once
        at = await conn.fetchval(
            "UPDATE quarantine SET resubmitted_at = now(), resubmitted_by = $2 WHERE id = $1 AND resubmitted_at IS NULL RETURNING resubmitted_at",
            qid,
            caller.actor,
        )
    if at is None:
        raise ConflictError(Code.API_CONFLICT, f"quarantined message {qid} was re-submitted already", id=qid)
    identity = DeviceIdentity(caller.tenant_id, device["id"], device["device_id"], device["status"], uuid.UUID(int=0))
    try:
        prepared = await parts.ingest.store(identity, split_body(as_envelope(bytes(row["raw"]))), quarantine=False)
    except BaseException:
        await _release(parts, caller.tenant_id, qid)
        raise
    refused = [r for r in prepared.results if r["status"] == "rejected"]
    if refused and not prepared.telemetry:
        await _release(parts, caller.tenant_id, qid)
        raise InvalidError(
            Code.QUARANTINE_STILL_REFUSED,
            f"ingest refused the message again: {refused[0]['message']}",
            id=qid,
            ingest_code=str(refused[0]["code"]),
        )
    async with parts.db.tenant(caller.tenant_id) as conn:
        await audit(
            conn, actor=caller.actor, action="quarantine.resubmit", target=str(qid), tenant_id=caller.tenant_id,
            detail={"device_id": device["device_id"], "code": row["code"], "accepted": len(prepared.telemetry), "refused": len(refused)},
        )  # fmt: skip
    return ResubmitOut(id=qid, accepted=len(prepared.telemetry), resubmitted_at=at, resubmitted_by=caller.actor)


def as_envelope(raw: bytes) -> bytes:
    """What ingest takes: a record a gateway synced (``{"stream": ..., **Record}``, as the sync
    service quarantines it) becomes the envelope its device sent; anything else is as it came."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(doc, dict) or doc.get("stream") not in _DEVICE_STREAMS or "ts_ms" not in doc:
        return raw
    env = {"v": 1, "ts": doc["ts_ms"], "type": doc.get("type"), "metrics": doc.get("metrics") or {}}
    for key, field in (("seq", "device_seq"), ("tags", "tags"), ("body", "body")):
        if doc.get(field) is not None:
            env[key] = doc[field]
    return json.dumps(env).encode()


async def _release(parts: Parts, tenant_id: uuid.UUID, qid: int) -> None:
    async with parts.db.tenant(tenant_id) as conn:
        await conn.execute("UPDATE quarantine SET resubmitted_at = NULL, resubmitted_by = NULL WHERE id = $1", qid)
