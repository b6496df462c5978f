"""People's actions on alerts (acknowledge, close, silence) and who may take them.

One code path for every place a person acts: the console/API, a PagerDuty webhook, a Slack button,
an email link. Each writes the same alert update and ``alert_events`` row (``notify = true`` for
acknowledge and close, so the fan-out tells whoever was paged and stops the escalation), in the
caller's tenant transaction (``db.tenant(tenant_id)``: row-level security keeps other tenants'
alerts out of reach). Acting twice changes nothing the second time: acknowledge needs an open
alert, close one that is not closed.

Who may acknowledge or close is a role permission each tenant's admins set
(``tenant_permissions``; the defaults are ``DEFAULTS``). Roles: ``customer``, ``tenant-admin`` (always
allowed: they set the permission) and ``external``: a person a verified provider names (PagerDuty,
Slack) who is not a user of the tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import asyncpg

from pulse.cloud.errors import ForbiddenError, InvalidError, NotFoundError
from pulse.protocol.errors import Code

Action = Literal["ack", "close", "silence"]
Permission = Literal["alerts.ack", "alerts.close"]
PERMISSIONS: tuple[Permission, ...] = ("alerts.ack", "alerts.close")
GRANTABLE = ("customer", "tenant-admin", "external")
DEFAULTS: dict[Permission, frozenset[str]] = {
    "alerts.ack": frozenset({"customer", "tenant-admin", "external"}),
    "alerts.close": frozenset({"tenant-admin", "external"}),
}
"""A tenant that never changed them: customers may acknowledge (as tenants usually want), closing
stays with tenant-admins; people a verified provider names may do both (they act in PagerDuty or
Slack, where the tenant put them on call)."""

PERMISSION_OF: dict[Action, Permission | None] = {"ack": "alerts.ack", "close": "alerts.close", "silence": None}

ALERT_COLS = (
    "id, device_id, rule_id, rule_version, kind, severity, state, flapping, condition_cleared, occurrences, "
    "explanation, source, gateway_id, site_id, opened_at, updated_at, acknowledged_at, acknowledged_by, closed_at, "
    "closed_by, silenced_until"
)

_ACTIONS: dict[Action, tuple[str, str, str]] = {
    "ack": ("acknowledged", "state = 'acknowledged', acknowledged_at = now(), acknowledged_by = $2", "state = 'open'"),
    "close": ("closed", "state = 'closed', closed_at = now(), closed_by = $2", "state <> 'closed'"),
    "silence": ("silenced", "silenced_until = $2", "state <> 'closed'"),
}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: ``name`` is what the alert records (``local:<user id>``, ``pagerduty:<name>``),
    ``roles`` what the permission check sees, ``via`` where the action came from."""

    name: str
    roles: frozenset[str]
    via: str = "console"
    detail: dict[str, object] = field(default_factory=dict)


async def permissions(conn: asyncpg.Connection) -> dict[Permission, frozenset[str]]:
    """The current tenant's permissions: its stored rows over ``DEFAULTS``."""
    rows = await conn.fetch("SELECT permission, roles FROM tenant_permissions")
    return DEFAULTS | {r["permission"]: frozenset(r["roles"]) for r in rows}


async def set_permission(conn: asyncpg.Connection, permission: Permission, roles: Iterable[str], *, by: str) -> frozenset[str]:
    wanted = frozenset(roles) | {"tenant-admin"}  # the admins keep what they grant
    if bad := sorted(wanted - set(GRANTABLE)):
        raise InvalidError(Code.API_INVALID, f"roles are some of {', '.join(GRANTABLE)}; not {', '.join(bad)}")
    await conn.execute(
        "INSERT INTO tenant_permissions (tenant_id, permission, roles, updated_by) VALUES (pulse_current_tenant(), $1, $2, $3) "
        "ON CONFLICT (tenant_id, permission) DO UPDATE SET roles = EXCLUDED.roles, updated_at = now(), updated_by = EXCLUDED.updated_by",
        permission,
        sorted(wanted),
        by,
    )
    return wanted


async def check(conn: asyncpg.Connection, action: Action, actor: Actor) -> None:
    """``ack.forbidden`` unless the actor's roles hold the action's permission (silence: tenant-admins)."""
    permission = PERMISSION_OF[action]
    allowed = frozenset({"tenant-admin"}) if permission is None else (await permissions(conn))[permission]
    if not actor.roles & allowed:
        what = permission or "silencing"
        raise ForbiddenError(
            Code.ACK_FORBIDDEN,
            f"{what} is allowed to {', '.join(sorted(allowed))} in this tenant; ask a tenant admin",
            actor=actor.name,
        )


async def act(
    conn: asyncpg.Connection,
    ids: Sequence[int],
    action: Action,
    actor: Actor,
    *,
    until: datetime | None = None,
    note: str = "",
) -> tuple[list[asyncpg.Record], set[int]]:
    """Act on the alerts (in ``ids`` order) after the permission check; returns every alert's row and
    the ids that changed (an alert already in the wanted state is returned unchanged)."""
    if action == "silence" and until is None:
        raise InvalidError(Code.API_INVALID, "silence needs 'until' (an ISO 8601 time)")
    await check(conn, action, actor)
    event, sets, allowed = _ACTIONS[action]
    found = {r["id"] for r in await conn.fetch("SELECT id FROM alerts WHERE id = ANY($1) FOR UPDATE", list(ids))}
    if missing := sorted(set(ids) - found):
        raise NotFoundError("alert", alert_ids=",".join(map(str, missing[:20])))
    rows = await conn.fetch(
        f"UPDATE alerts SET {sets}, updated_at = now() WHERE id = ANY($1) AND {allowed} RETURNING {ALERT_COLS}",
        list(ids),
        until if action == "silence" else actor.name,
    )
    changed = {r["id"] for r in rows}
    # Acknowledging and closing are notified (PagerDuty acknowledge/resolve), unless the alert is silenced.
    now = datetime.now().astimezone()
    due = {r["id"]: action in ("ack", "close") and (r["silenced_until"] is None or r["silenced_until"] <= now) for r in rows}
    detail: dict[str, object] = {"note": note, "until": until.isoformat() if until else None}
    if actor.via != "console":
        detail |= {"via": actor.via, **actor.detail}
    await conn.executemany(
        "INSERT INTO alert_events (tenant_id, alert_id, kind, actor, notify, detail) "
        "VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5::jsonb)",
        [(i, event, actor.name, due[i], json.dumps(detail)) for i in sorted(changed)],
    )
    unchanged = {r["id"]: r for r in await conn.fetch(f"SELECT {ALERT_COLS} FROM alerts WHERE id = ANY($1)", sorted(found - changed))}
    by_id = {r["id"]: r for r in rows} | unchanged
    return [by_id[i] for i in ids], changed
