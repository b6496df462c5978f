"""Subscriptions: tenants read theirs (with the device limit and how much of it is used) and their
history; operators create and change them (audited bypass). The lifecycle is
``pulse.protocol.subscriptions``; every change is one history row and one audit row."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Components, Operator, OperatorAdmin, Parts, Reader
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.cloud.subscriptions import store
from pulse.protocol import subscriptions as subs
from pulse.protocol.errors import Code, SubscriptionError

router = APIRouter(tags=["subscriptions"])


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    kind: subs.Kind
    state: subs.State
    device_limit: int
    starts_at: dt.datetime
    ends_at: dt.datetime
    parent: uuid.UUID | None = Field(description="an ADDON's MAIN subscription")
    project: str
    created_at: dt.datetime
    updated_at: dt.datetime


class Summary(BaseModel):
    device_limit: int | None = Field(description="sum over TRIAL, ACTIVE and GRACE subscriptions; null: no subscriptions (unmetered)")
    devices: int = Field(description="devices that count against the limit (all but decommissioned ones)")
    refusal: str | None = Field(description="subscription.suspended or subscription.expired while data is refused; else null")
    subscriptions: list[SubscriptionOut]


class HistoryEntry(BaseModel):
    id: int
    subscription: uuid.UUID
    at: dt.datetime
    actor: str
    action: str
    before_state: str | None
    after_state: str
    detail: dict[str, Any]


HistoryPage = paging.Page[HistoryEntry]


class SubscriptionIn(BaseModel):
    kind: subs.Kind
    device_limit: int = Field(ge=0, le=10_000_000)
    starts_at: dt.datetime
    ends_at: dt.datetime | None = Field(default=None, description="required except for TRIAL (14 days) and ADDON (its MAIN's)")
    parent: uuid.UUID | None = Field(default=None, description="an ADDON's MAIN subscription")
    project: str = Field(default="", max_length=200, description="what a TEMPORARY subscription is for")


class SubscriptionPatch(BaseModel):
    device_limit: int | None = Field(default=None, ge=0, le=10_000_000)
    project: str | None = Field(default=None, max_length=200)


class EventIn(BaseModel):
    event: subs.Event
    ends_at: dt.datetime | None = Field(default=None, description="renew: the new end of the term")


def _out(row: asyncpg.Record) -> SubscriptionOut:
    return SubscriptionOut(**{k: row[k] for k in SubscriptionOut.model_fields})


async def _summary(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> Summary:
    rows = await conn.fetch(f"SELECT {store.COLS} FROM subscriptions WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id)
    ent = subs.entitlement(store.of_row(r) for r in rows)
    devices = await conn.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1 AND status <> 'decommissioned'", tenant_id)
    return Summary(
        device_limit=ent.device_limit,
        devices=devices,
        refusal=None if ent.refusal is None else str(ent.refusal),
        subscriptions=[_out(r) for r in rows],
    )


# --- tenants: read ------------------------------------------------------------------------------


@router.get("/api/v1/subscription", response_model=Summary, summary="The tenant's subscriptions, device limit and use")
async def my_subscription(caller: Reader, parts: Parts) -> Summary:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _summary(conn, caller.tenant_id)


@router.get("/api/v1/subscription/history", response_model=HistoryPage, summary="Every change of the tenant's subscriptions, newest first")
async def my_history(
    caller: Reader,
    parts: Parts,
    subscription: Annotated[uuid.UUID | None, Query(description="only this subscription")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> HistoryPage:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return await _history(conn, caller.tenant_id, subscription, limit, cursor)


async def _history(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, subscription: uuid.UUID | None, limit: int, cursor: str | None
) -> HistoryPage:
    w = paging.Where()
    w.add(f"tenant_id = {w.arg(tenant_id)}")
    if subscription is not None:
        w.add(f"subscription = {w.arg(subscription)}")
    if (after := paging.decode(cursor, dt.datetime, int)) is not None:
        w.add(f"(at, id) < ({w.arg(after[0])}, {w.arg(after[1])})")
    rows = await conn.fetch(
        "SELECT id, subscription, at, actor, action, before_state, after_state, detail FROM subscription_history"
        f" WHERE {w.sql} ORDER BY at DESC, id DESC LIMIT {w.arg(limit + 1)}",
        *w.args,
    )

    def out(r: asyncpg.Record) -> HistoryEntry:
        return HistoryEntry(**{**dict(r), "detail": json.loads(r["detail"])})

    return paging.page(rows, limit, out, lambda r: (r["at"], r["id"]))


# --- operators: create and change (audited) -----------------------------------------------------

_OP = "/api/v1/operator/tenants/{tenant}/subscriptions"


async def _tenant_exists(conn: asyncpg.Connection, tenant: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)", tenant):
        raise NotFoundError("tenant", tenant=str(tenant))


async def _one(conn: asyncpg.Connection, tenant: uuid.UUID, sub: uuid.UUID, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {store.COLS} FROM subscriptions WHERE tenant_id = $1 AND id = $2{' FOR UPDATE' if lock else ''}", tenant, sub
    )
    if row is None:
        raise NotFoundError("subscription", subscription=str(sub))
    return row


def _refused(exc: SubscriptionError) -> InvalidError | ConflictError:
    if exc.code is Code.SUBSCRIPTION_ILLEGAL_TRANSITION:
        return ConflictError(exc.code, exc.message, **exc.context)
    return InvalidError(exc.code, exc.message, **exc.context)


def _changed(parts: Components, tenant: uuid.UUID) -> None:
    if parts.entitlements is not None:
        parts.entitlements.invalidate(tenant)


@router.get(_OP, response_model=Summary, summary="A tenant's subscriptions (operators, audited)")
async def tenant_subscriptions(tenant: uuid.UUID, p: Operator, parts: Parts) -> Summary:
    async with parts.db.operator(actor=p.actor, action="subscriptions.read", target=str(tenant), tenant_id=None) as conn:
        await _tenant_exists(conn, tenant)
        return await _summary(conn, tenant)


@router.get(_OP + "/history", response_model=HistoryPage, summary="A tenant's subscription history (operators, audited)")
async def tenant_history(
    tenant: uuid.UUID,
    p: Operator,
    parts: Parts,
    subscription: Annotated[uuid.UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> HistoryPage:
    async with parts.db.operator(actor=p.actor, action="subscriptions.history", target=str(tenant)) as conn:
        await _tenant_exists(conn, tenant)
        return await _history(conn, tenant, subscription, limit, cursor)


@router.post(_OP, status_code=201, response_model=SubscriptionOut, summary="Give a tenant a subscription (operator-admins, audited)")
async def create_subscription(tenant: uuid.UUID, body: SubscriptionIn, p: OperatorAdmin, parts: Parts) -> SubscriptionOut:
    async with parts.db.operator(actor=p.actor, action="subscription.create", target=str(tenant)) as conn:
        await _tenant_exists(conn, tenant)
        parent = None if body.parent is None else store.of_row(await _one(conn, tenant, body.parent, lock=True))
        new_id = uuid.uuid4()
        try:
            sub = subs.new(str(new_id), body.kind, body.device_limit, body.starts_at, body.ends_at, parent=parent)
        except SubscriptionError as exc:
            raise _refused(exc) from exc
        row = await conn.fetchrow(
            "INSERT INTO subscriptions (id, tenant_id, kind, state, device_limit, starts_at, ends_at, parent, project)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {store.COLS}",
            new_id,
            tenant,
            sub.kind.value,
            sub.state.value,
            sub.device_limit,
            sub.starts_at,
            sub.ends_at,
            body.parent,
            body.project,
        )
        await store.record(conn, tenant, sub.id, at=parts.clock(), actor=p.actor, action="create", before=None, after=sub.state,
                           detail={"kind": sub.kind.value, "device_limit": sub.device_limit, "ends_at": sub.ends_at.isoformat()})
    _changed(parts, tenant)
    return _out(row)


@router.patch(_OP + "/{subscription}", response_model=SubscriptionOut, summary="Change a subscription's device limit or project (audited)")
async def change_subscription(
    tenant: uuid.UUID, subscription: uuid.UUID, body: SubscriptionPatch, p: OperatorAdmin, parts: Parts
) -> SubscriptionOut:
    changes = body.model_dump(exclude_unset=True)
    if any(v is None for v in changes.values()) or not changes:
        raise InvalidError(Code.SUBSCRIPTION_INVALID, "send device_limit and/or project (not null)")
    async with parts.db.operator(actor=p.actor, action="subscription.change", target=str(subscription)) as conn:
        await _tenant_exists(conn, tenant)
        before = await _one(conn, tenant, subscription, lock=True)
        if before["state"] == subs.State.EXPIRED:
            raise ConflictError(Code.SUBSCRIPTION_ILLEGAL_TRANSITION, "an EXPIRED subscription cannot be changed")
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=3))
        row = await conn.fetchrow(
            f"UPDATE subscriptions SET {sets}, updated_at = now() WHERE tenant_id = $1 AND id = $2 RETURNING {store.COLS}",
            tenant,
            subscription,
            *changes.values(),
        )
        state = subs.State(row["state"])
        await store.record(conn, tenant, str(subscription), at=parts.clock(), actor=p.actor, action="change", before=state, after=state,
                           detail={k: {"from": before[k], "to": v} for k, v in changes.items()})
    _changed(parts, tenant)
    return _out(row)


@router.post(
    _OP + "/{subscription}/events", response_model=SubscriptionOut, summary="renew, suspend or expire a subscription (audited)"
)
async def subscription_event(
    tenant: uuid.UUID, subscription: uuid.UUID, body: EventIn, p: OperatorAdmin, parts: Parts
) -> SubscriptionOut:
    now = parts.clock()
    async with parts.db.operator(actor=p.actor, action=f"subscription.{body.event.value}", target=str(subscription)) as conn:
        await _tenant_exists(conn, tenant)
        current = store.of_row(await _one(conn, tenant, subscription, lock=True))
        try:
            changed, transition = subs.apply(current, body.event, ends_at=body.ends_at)
        except SubscriptionError as exc:
            raise _refused(exc) from exc
        row = await store.save(conn, changed)
        await store.record(conn, tenant, current.id, at=now, actor=p.actor, action=body.event.value, before=transition.before,
                           after=transition.after, detail={"ends_at": changed.ends_at.isoformat()})
        # its ADDONs follow at once (coterminous)
        followers, moved = subs.follow(changed, await store.load(conn, tenant, lock=True))
        for sub in followers:
            await store.save(conn, sub)
        for t in moved:
            await store.record(conn, tenant, t.subscription, at=now, actor=p.actor, action="transition",
                               before=t.before, after=t.after, detail={"reason": t.reason})
    _changed(parts, tenant)
    return _out(row)
