"""Subscription rows <-> the protocol's ``Subscription``; the device limit every door checks; the
refusal ingest and sync ask about (cached briefly per tenant)."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable

import asyncpg

from pulse.cloud.db.pool import Database, audit
from pulse.cloud.errors import ConflictError, ForbiddenError
from pulse.protocol import subscriptions as subs
from pulse.protocol.errors import Code, SubscriptionError

COLS = "id, kind, state, device_limit, starts_at, ends_at, parent, project, notices, created_at, updated_at"


def of_row(row: asyncpg.Record) -> subs.Subscription:
    return subs.Subscription(
        id=str(row["id"]),
        kind=subs.Kind(row["kind"]),
        state=subs.State(row["state"]),
        device_limit=row["device_limit"],
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        parent=None if row["parent"] is None else str(row["parent"]),
        notices=frozenset(row["notices"]),
    )


async def load(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, lock: bool = False) -> list[subs.Subscription]:
    """A tenant's subscriptions (``lock``: FOR UPDATE, for a change). The tenant is named as well
    as enforced by RLS, so the operator's bypass connection reads the same."""
    rows = await conn.fetch(
        f"SELECT {COLS} FROM subscriptions WHERE tenant_id = $1 ORDER BY created_at, id{' FOR UPDATE' if lock else ''}", tenant_id
    )
    return [of_row(r) for r in rows]


async def save(conn: asyncpg.Connection, sub: subs.Subscription) -> asyncpg.Record:
    return await conn.fetchrow(
        f"UPDATE subscriptions SET kind = $2, state = $3, ends_at = $4, notices = $5, updated_at = now() WHERE id = $1 RETURNING {COLS}",
        uuid.UUID(sub.id),
        sub.kind.value,
        sub.state.value,
        sub.ends_at,
        sorted(sub.notices),
    )


async def record(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    subscription: str,
    *,
    at: dt.datetime,
    actor: str,
    action: str,
    before: subs.State | None,
    after: subs.State,
    detail: dict[str, object] | None = None,
) -> None:
    """One line of the subscription's history, and the same in the tenant's audit log."""
    detail = detail or {}
    await conn.execute(
        "INSERT INTO subscription_history (tenant_id, subscription, at, actor, action, before_state, after_state, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        tenant_id,
        uuid.UUID(subscription),
        at,
        actor,
        action,
        None if before is None else before.value,
        after.value,
        json.dumps(detail, default=str),
    )
    await audit(
        conn,
        actor=actor,
        action=f"subscription.{action}",
        target=subscription,
        tenant_id=tenant_id,
        detail={"before": None if before is None else before.value, "after": after.value, **detail},
    )


async def check_device_room(conn: asyncpg.Connection, tenant_id: uuid.UUID, adding: int) -> None:
    """Refuse ``adding`` devices over the tenant's limit (409 subscription.device_limit).

    Call inside the transaction that adds them: a per-tenant advisory lock makes concurrent adds
    take turns, so two requests cannot both take the last place."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pulse.devices:' || $1::text, 0))", str(tenant_id))
    ent = subs.entitlement(await load(conn, tenant_id))
    if ent.device_limit is None:
        return
    current = await conn.fetchval("SELECT count(*) FROM devices WHERE tenant_id = $1 AND status <> 'decommissioned'", tenant_id)
    try:
        subs.check_devices(ent, current, adding)
    except SubscriptionError as exc:
        raise ConflictError(exc.code, exc.message, **exc.context) from exc


class Entitlements:
    """Whether a tenant's data is accepted, cached for ``ttl_s`` (ingest asks on every request).
    Every change of a tenant's subscriptions, whoever makes it, invalidates it on every replica
    when it commits (``cloud/replicas.py``); ``ttl_s`` bounds it should a notification be lost."""

    def __init__(self, db: Database, *, ttl_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.db, self.ttl_s, self.monotonic = db, ttl_s, monotonic
        self._cache: dict[uuid.UUID, tuple[float, Code | None]] = {}

    def invalidate(self, tenant_id: uuid.UUID) -> None:
        self._cache.pop(tenant_id, None)

    def clear(self) -> None:
        self._cache.clear()

    async def refusal(self, tenant_id: uuid.UUID) -> Code | None:
        now = self.monotonic()
        hit = self._cache.get(tenant_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.db.tenant(tenant_id) as conn:
            code = subs.entitlement(await load(conn, tenant_id)).refusal
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[tenant_id] = (now + self.ttl_s, code)
        return code

    async def check_data(self, tenant_id: uuid.UUID) -> None:
        """Refuse a tenant's data while its subscriptions do not allow it (403, nothing stored)."""
        code = await self.refusal(tenant_id)
        if code is Code.SUBSCRIPTION_SUSPENDED:
            raise ForbiddenError(code, "the tenant's subscription is suspended: data is refused until it is renewed; keep it and resend")
        if code is not None:
            raise ForbiddenError(code, "the tenant's subscriptions have expired: data is refused (stored data is kept)")
