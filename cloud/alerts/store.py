"""Alerts in PostgreSQL: the adapter that performs rule actions inside a tenant transaction.

Every function takes a connection in a transaction where ``app.tenant_id`` is set to the tenant:
``db.tenant(tenant_id)`` (row-level security applies), or gateway sync's writer transaction after
``SELECT set_config('app.tenant_id', $1, true)`` (the writer role bypasses row-level security, so
every statement here also names ``tenant_id = pulse_current_tenant()`` itself). Writes happen in the
caller's transaction, so an alert and what caused it (rule state, a sync high-water mark) commit
together.

One open alert per fingerprint (tenant, device, rule) is the database's job: the partial unique
index ``alerts_one_open`` and ``INSERT ... ON CONFLICT ... DO UPDATE``. Concurrent evaluators (two
cloud replicas, the cloud and a gateway's synced record) therefore merge into one row: the first
insert wins, the others add to ``occurrences``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import asyncpg

from pulse.protocol.alerts import AlertRecord
from pulse.protocol.batch import Record
from pulse.protocol.errors import Code, RuleError
from pulse.protocol.rules import DeviceStatus


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one alert action."""

    alert_id: int | None  # None: nothing to act on (suppressed, or no open alert to close)
    event: str  # opened, merged, flapping_started, closed, ... or suppressed / no_open_alert
    notify: bool  # a notification is due (not silenced, not suppressed, a real change)


_MAINTENANCE = """EXISTS (
                 SELECT 1 FROM maintenance_windows w
                 WHERE w.tenant_id = pulse_current_tenant()
                   AND to_timestamp($2 / 1000.0) >= w.starts_at AND to_timestamp($2 / 1000.0) < w.ends_at
                   AND (w.device_id = $1
                        OR w.site_id = (SELECT site_id FROM devices WHERE tenant_id = w.tenant_id AND device_id = $1)
                        OR w.site_id = (SELECT site_id FROM gateways WHERE tenant_id = w.tenant_id AND 'gateway:' || name = $1)))"""

# One round trip for an open: the maintenance check, the upsert and its event. Under a maintenance
# window nothing is written and no row comes back; otherwise the alert's id and what happened.
_OPEN_SQL = f"""
WITH opened AS (
    INSERT INTO alerts (tenant_id, device_id, rule_id, rule_version, kind, severity, flapping, explanation,
                        source, gateway_id, site_id, opened_at, updated_at)
    SELECT pulse_current_tenant(), $1, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11, to_timestamp($2 / 1000.0), now()
    WHERE NOT {_MAINTENANCE}
    ON CONFLICT (tenant_id, device_id, rule_id) WHERE state <> 'closed' DO UPDATE
    SET occurrences = alerts.occurrences + 1,
        severity = EXCLUDED.severity,
        rule_version = EXCLUDED.rule_version,
        flapping = alerts.flapping OR EXCLUDED.flapping,
        condition_cleared = false,
        updated_at = now()
    RETURNING id, (xmax = 0) AS inserted, (silenced_until IS NOT NULL AND silenced_until > now()) AS silenced
), event AS (
    INSERT INTO alert_events (tenant_id, alert_id, kind, actor, notify, detail)
    SELECT pulse_current_tenant(), id, CASE WHEN NOT inserted THEN 'merged' WHEN $7 THEN 'flapping_started' ELSE 'opened' END,
           $12, inserted AND NOT silenced, $13::jsonb
    FROM opened
)
SELECT id, inserted, silenced FROM opened
"""

# A close and its event, in one round trip; no row when no alert of the fingerprint is open.
_CLOSE_SQL = """
WITH closed AS (
    UPDATE alerts SET state = 'closed', closed_at = to_timestamp($3 / 1000.0), closed_by = $4, updated_at = now()
    WHERE tenant_id = pulse_current_tenant() AND device_id = $1 AND rule_id = $2 AND state <> 'closed'
    RETURNING id, (silenced_until IS NOT NULL AND silenced_until > now()) AS silenced
), event AS (
    INSERT INTO alert_events (tenant_id, alert_id, kind, actor, notify, detail)
    SELECT pulse_current_tenant(), id, 'closed', $4, NOT silenced, $5::jsonb FROM closed
)
SELECT id, silenced FROM closed
"""


async def in_maintenance(conn: asyncpg.Connection, device_id: str, at_ms: int) -> bool:
    """True when a maintenance window covers the device (by id, or by its site) at ``at_ms``."""
    return bool(await conn.fetchval(f"SELECT {_MAINTENANCE}", device_id, at_ms))


async def _event(
    conn: asyncpg.Connection, alert_id: int, kind: str, actor: str, *, notify: bool, detail: dict[str, object]
) -> None:
    await conn.execute(
        "INSERT INTO alert_events (tenant_id, alert_id, kind, actor, notify, detail) "
        "VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5::jsonb)",
        alert_id,
        kind,
        actor,
        notify,
        json.dumps(detail),
    )


Also = Callable[[int], tuple[list[str], list[object]]]
"""More writes to send with an alert action's statement: given the number of its first free
placeholder, the ``WITH`` entries (``name AS (statement)``, their placeholders numbered from there)
and their arguments."""
FUSABLE = frozenset({"open", "flapping_started", "close"})
"""The actions whose statement can carry ``also`` (``apply_record``)."""


def _with(sql: str, also: Also | None, first: int) -> tuple[str, list[object]]:
    if also is None:
        return sql, []
    entries, args = also(first)
    return sql.replace("WITH ", f"WITH {', '.join(entries)}, ", 1), args


async def apply_record(
    conn: asyncpg.Connection,
    rec: AlertRecord,
    *,
    actor: str = "rule",
    source: str = "cloud",
    kind: str = "rule",
    gateway_id: uuid.UUID | None = None,
    site_id: uuid.UUID | None = None,
    also: Also | None = None,
) -> Outcome:
    """Perform one alert action for the fingerprint (current tenant, rec.device_id, rec.rule_id).

    ``also`` (only for the actions in ``FUSABLE``): other writes of the same transaction sent in
    the same statement, one round trip for both (the rules runner saves its rule states this way).
    They happen whatever the action's outcome, and must not touch ``alerts`` or ``alert_events``
    (one statement's parts do not see each other's changes)."""
    if also is not None and rec.action not in FUSABLE:
        raise ValueError(f"{rec.action} cannot carry other writes")
    detail = {"explanation": rec.explanation}
    if rec.action in ("open", "flapping_started"):
        flapping = rec.action == "flapping_started"
        sql, extra = _with(_OPEN_SQL, also, 14)
        row = await conn.fetchrow(
            sql,
            rec.device_id,
            rec.at_ms,
            rec.rule_id,
            rec.rule_version,
            kind,
            str(rec.severity),
            flapping,
            json.dumps(rec.explanation),
            source,
            gateway_id,
            site_id,
            actor,
            json.dumps(detail),
            *extra,
        )
        if row is None:  # a maintenance window covers the device
            return Outcome(None, "suppressed", False)
        inserted = bool(row["inserted"])
        event = ("flapping_started" if flapping else "opened") if inserted else "merged"
        return Outcome(row["id"], event, inserted and not row["silenced"])
    if rec.action == "close":
        sql, extra = _with(_CLOSE_SQL, also, 6)
        row = await conn.fetchrow(sql, rec.device_id, rec.rule_id, rec.at_ms, actor, json.dumps(detail), *extra)
        if row is None:
            return Outcome(None, "no_open_alert", False)
        return Outcome(row["id"], "closed", not row["silenced"])
    column = "condition_cleared = true" if rec.action == "condition_cleared" else "flapping = false"
    alert_id = await conn.fetchval(
        f"UPDATE alerts SET {column}, updated_at = now() "
        "WHERE tenant_id = pulse_current_tenant() AND device_id = $1 AND rule_id = $2 AND state <> 'closed' RETURNING id",
        rec.device_id,
        rec.rule_id,
    )
    if alert_id is None:
        return Outcome(None, "no_open_alert", False)
    await _event(conn, alert_id, rec.action, actor, notify=False, detail=detail)
    return Outcome(alert_id, rec.action, False)


async def set_device_status(
    conn: asyncpg.Connection, device_id: str, status: DeviceStatus | str, reason: dict[str, object], at_ms: int | None = None
) -> None:
    """``at_ms``: when the change happened on the evaluator's clock (default: the transaction's time);
    a change of status is also appended to ``device_state_history`` (by trigger, at that time).

    An offline device never becomes merely stale: its next message makes it online. (A gateway's
    connectivity event can set a device offline before the heartbeat's own schedule would call
    it stale; that schedule must not take the device back to stale.)"""
    await conn.execute(
        "INSERT INTO device_states (tenant_id, device_id, status, reason, changed_at) "
        "VALUES (pulse_current_tenant(), $1, $2, $3::jsonb, COALESCE(to_timestamp($4::bigint / 1000.0), now())) "
        "ON CONFLICT (tenant_id, device_id) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason, "
        "changed_at = CASE WHEN device_states.status = EXCLUDED.status THEN device_states.changed_at ELSE EXCLUDED.changed_at END "
        "WHERE NOT (device_states.status = 'offline' AND EXCLUDED.status = 'stale')",
        device_id,
        str(status),
        json.dumps(reason),
        at_ms,
    )


@dataclass(frozen=True, slots=True)
class MergeReport:
    applied: int
    rejected: list[dict[str, object]]  # {seq, code, message}: records that are not alert records


async def merge_edge_alerts(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    records: Iterable[Record],
    *,
    gateway_id: uuid.UUID | None = None,
    gateway_name: str = "gateway",
) -> MergeReport:
    """Merge alert records synced from a gateway (``Stream.ALERTS``) into the tenant's alerts.

    ``conn``: a transaction with ``app.tenant_id`` set to ``tenant_id``: ``db.tenant(tenant_id)``, or
    the sync handler's ``db.writer_transaction()`` after
    ``SELECT set_config('app.tenant_id', $1, true)``, so the alerts commit with the gateway's
    high-water mark (a replayed batch is then not merged twice). Each record: ``type == "alert"``, ``device_id``, ``ts_ms``
    (the gateway's evaluation time) and ``body`` as ``pulse.protocol.alerts.AlertRecord.to_body``.
    An open merges into the fingerprint's open alert if the cloud (or an earlier sync) already
    opened it; a close closes it. Records that are not alert records are returned as rejected
    (with their code) and nothing else is written for them: the caller quarantines them.
    """
    current = await conn.fetchval("SELECT pulse_current_tenant()")
    if current != tenant_id:
        raise ValueError("merge_edge_alerts needs a transaction with app.tenant_id set to tenant_id")
    applied, rejected = 0, []
    for record in records:
        try:
            if record.type != "alert":
                raise RuleError(Code.RULE_BAD_ALERT_RECORD, f"record type is {record.type!r}, not 'alert'")
            rec = AlertRecord.from_body(record.body, at_ms=record.ts_ms)
        except RuleError as exc:
            rejected.append({"seq": record.seq, "code": str(exc.code), "message": exc.message})
            continue
        await apply_record(conn, rec, actor=f"edge:{gateway_name}", source="edge", gateway_id=gateway_id)
        applied += 1
    return MergeReport(applied, rejected)
