"""Operator API for Pulse watching itself (audited; operators only, tenant accounts get 403):

- ``GET /api/v1/operator/system/metrics``: series from ``system_metrics`` over the last hour or day
- ``GET /api/v1/operator/system/topology``: the pipeline strip, coloured by the newest sample
- ``GET /api/v1/operator/system``: capacity (database size, telemetry per day, partitions or
  chunks, oldest data) and each background worker's last run
- ``GET /api/v1/operator/alerts/heatmap``: alerts opened per day and hour (UTC)
- ``GET /api/v1/operator/health/sparklines``: per tenant, readings and alerts per hour
- ``GET /api/v1/operator/audit``: every operator (bypass) access, newest first (operator-admin)
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Operator, OperatorAdmin, Parts
from pulse.cloud.platform.health import HealthThresholds
from pulse.cloud.platform.topology import stages

router = APIRouter(prefix="/api/v1/operator", tags=["operator"])

RANGES: dict[str, tuple[dt.timedelta, int]] = {  # range -> (span, bucket seconds)
    "1h": (dt.timedelta(hours=1), 60),
    "6h": (dt.timedelta(hours=6), 300),
    "24h": (dt.timedelta(days=1), 900),
    "7d": (dt.timedelta(days=7), 3600),
}
# figures the database gives every process alike (pulse_platform_sample): several processes'
# samples of them are the same figure, so they are not added up
DATABASE_WIDE = frozenset(
    {
        "notify_queue_depth",
        "notify_dead_letters",
        "notify_failed_attempts",
        "evaluation_lag_seconds",
        "gateways_connected",
        "gateway_backlog_records",
        "gateway_backlog_age_seconds",
        "devices",
        "alerts_open",
        "alerts_opened",
        "dead_letters_growth",
    }
)


class Series(BaseModel):
    name: str
    labels: dict[str, str]
    points: list[tuple[dt.datetime, float]] = Field(description="(bucket start, value): the bucket's mean, added up across cloud processes")


class SystemMetrics(BaseModel):
    range: str
    bucket_s: int
    start: dt.datetime
    end: dt.datetime
    series: list[Series]


@router.get("/system/metrics", response_model=SystemMetrics, summary="Platform figures over time, from system_metrics (audited)")
async def system_metrics(
    p: Operator,
    parts: Parts,
    name: Annotated[list[str], Query(min_length=1, max_length=20, description="figure names (system_metrics.name)")],
    range: Annotated[Literal["1h", "6h", "24h", "7d"], Query()] = "1h",
) -> SystemMetrics:
    span, bucket = RANGES[range]
    end = parts.clock()
    start = end - span
    names = sorted({n for n in name if n})
    async with parts.db.operator(actor=p.actor, action="system.metrics", detail={"name": names, "range": range}) as conn:
        rows = await conn.fetch(
            "WITH per_source AS ("
            "  SELECT date_bin(make_interval(secs => $4), time, $2) AS bucket, name, labels, source, avg(value) AS value"
            "  FROM system_metrics WHERE name = ANY($1) AND time >= $2 AND time <= $3"
            "  GROUP BY 1, 2, 3, 4)"
            " SELECT bucket, name, labels, CASE WHEN name = ANY($5) THEN max(value) ELSE sum(value) END AS value"
            " FROM per_source GROUP BY 1, 2, 3 ORDER BY 2, 3, 1",
            names,
            start,
            end,
            float(bucket),
            sorted(DATABASE_WIDE),
        )
    series: dict[tuple[str, str], Series] = {}
    for r in rows:
        key = (r["name"], r["labels"])
        if key not in series:
            series[key] = Series(name=r["name"], labels={k: str(v) for k, v in json.loads(r["labels"]).items()}, points=[])
        series[key].points.append((r["bucket"], round(float(r["value"]), 6)))
    return SystemMetrics(range=range, bucket_s=bucket, start=start, end=end, series=list(series.values()))


class StageOut(BaseModel):
    id: str
    name: str
    status: Literal["ok", "warn", "critical", "unknown"]
    figure: str


class Topology(BaseModel):
    sampled_at: dt.datetime | None
    stages: list[StageOut]


def thresholds_of(parts: Any) -> HealthThresholds:
    s = parts.settings
    return HealthThresholds(
        evaluation_lag_s=s.health_evaluation_lag_s,
        dead_letter_window_s=s.health_dead_letter_window_s,
        writer_queue_rows=s.health_writer_queue_rows,
        gateway_backlog_age_s=s.health_gateway_backlog_age_s,
    )


async def _latest(conn: asyncpg.Connection, before: dt.datetime) -> tuple[dt.datetime | None, dict[str, float], dict[str, float]]:
    """The newest sample's values (within 10 minutes of ``before``): unlabelled figures, and gateways' backlog age by name."""
    at = await conn.fetchval(
        "SELECT max(time) FROM system_metrics WHERE time <= $1 AND time > $1 - interval '10 minutes'", before
    )
    if at is None:
        return None, {}, {}
    rows = await conn.fetch(
        "SELECT name, labels, CASE WHEN name = ANY($3) THEN max(value) ELSE sum(value) END AS value"
        " FROM (SELECT DISTINCT ON (name, labels, source) name, labels, source, value FROM system_metrics"
        "       WHERE time <= $1 AND time > $2 ORDER BY name, labels, source, time DESC) AS newest GROUP BY name, labels",
        before,
        at - dt.timedelta(seconds=60),
        sorted(DATABASE_WIDE),
    )
    latest: dict[str, float] = {}
    ages: dict[str, float] = {}
    for r in rows:
        labels = json.loads(r["labels"])
        if not labels:
            latest[r["name"]] = float(r["value"])
        elif r["name"] == "gateway_backlog_age_seconds":
            ages[str(labels.get("name", labels.get("gateway", "")))] = float(r["value"])
        elif r["name"] == "http_errors_per_second" and labels.get("group") == "ingest":
            latest["ingest_errors_per_second"] = float(r["value"])
    return at, latest, ages


@router.get("/system/topology", response_model=Topology, summary="The pipeline, coloured by the newest platform sample (audited)")
async def topology(p: Operator, parts: Parts) -> Topology:
    async with parts.db.operator(actor=p.actor, action="system.topology") as conn:
        at, latest, ages = await _latest(conn, parts.clock())
    return Topology(
        sampled_at=at, stages=[StageOut(id=s.id, name=s.name, status=s.status, figure=s.figure) for s in stages(latest, ages, thresholds_of(parts))]
    )


class Partition(BaseModel):
    name: str
    range_start: dt.datetime | None
    range_end: dt.datetime | None
    bytes: int
    rows_estimate: int = Field(description="the planner's estimate (pg_class.reltuples), or a count where it has none yet")


class Worker(BaseModel):
    name: str
    running: bool
    last_run_at: dt.datetime | None
    detail: str


class SystemOverview(BaseModel):
    database: str = Field(description='"ok", or why not')
    database_bytes: int
    storage_engine: Literal["timescaledb", "native"]
    telemetry_bytes: int
    system_metrics_bytes: int
    telemetry_rows_per_day: list[tuple[dt.date, int]] = Field(description="estimated rows of each day's partition or chunk, oldest first")
    partitions: list[Partition]
    oldest_data: dt.datetime | None = Field(description="start of the oldest partition or chunk that holds rows")
    retention_days: int
    system_metrics_retention_days: int
    workers: list[Worker]
    writer_queue_rows: int
    db_pools: dict[str, dict[str, int]]


_PARTITIONS_SQL = """
SELECT c.relname AS name, pg_total_relation_size(c.oid) AS bytes, c.reltuples::bigint AS rows_estimate,
       pg_get_expr(c.relpartbound, c.oid) AS bound
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass ORDER BY c.relname
"""


async def _partitions(conn: asyncpg.Connection, table: str) -> list[Partition]:
    engine = await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = $1::regclass", table)
    out: list[Partition] = []
    if engine == "p":
        for r in await conn.fetch(_PARTITIONS_SQL, table):
            lo = hi = None
            bound = r["bound"] or ""
            if "FROM ('" in bound:
                lo = dt.datetime.fromisoformat(bound.split("FROM ('")[1].split("'")[0])
                hi = dt.datetime.fromisoformat(bound.split("TO ('")[1].split("'")[0])
            out.append(Partition(name=r["name"], range_start=lo, range_end=hi, bytes=r["bytes"], rows_estimate=r["rows_estimate"]))
        return [await _counted(conn, table, p, out) for p in out]
    # A compressed chunk's rows and bytes live in its compressed chunk (the chunk itself is left
    # empty, reltuples 0 once analysed): take them from TimescaleDB's record of the compression.
    rows = await conn.fetch(
        "SELECT c.chunk_schema || '.' || c.chunk_name AS name, c.range_start, c.range_end,"
        " pg_total_relation_size(format('%I.%I', c.chunk_schema, c.chunk_name)::regclass)"
        "  + coalesce(s.compressed_heap_size + s.compressed_toast_size + s.compressed_index_size, 0) AS bytes,"
        " CASE WHEN c.is_compressed THEN coalesce(s.numrows_pre_compression, 0) + greatest(t.reltuples, 0)"
        "  ELSE t.reltuples END AS rows_estimate"
        " FROM timescaledb_information.chunks c"
        " CROSS JOIN LATERAL (SELECT reltuples::bigint FROM pg_class"
        "  WHERE oid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass) t"
        " LEFT JOIN _timescaledb_catalog.chunk k ON k.schema_name = c.chunk_schema AND k.table_name = c.chunk_name"
        " LEFT JOIN _timescaledb_catalog.compression_chunk_size s ON s.chunk_id = k.id"
        " WHERE c.hypertable_name = $1 ORDER BY c.range_start",
        table,
    )
    chunks = [Partition(**dict(r)) for r in rows]
    return [await _counted(conn, table, p, chunks) for p in chunks]


async def _counted(conn: asyncpg.Connection, table: str, p: Partition, every: list[Partition]) -> Partition:
    """The planner's estimate, or a count where it has none yet (-1: never analysed, so small or
    new). Counted through the parent table by time range (the operator role has no grant on the
    partitions or chunks themselves); the default partition is what lies outside every range."""
    if p.rows_estimate >= 0:
        return p
    if p.range_start is not None:
        n = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE time >= $1 AND time < $2", p.range_start, p.range_end)
    else:
        ranged = [x for x in every if x.range_start is not None]
        lo = min((x.range_start for x in ranged if x.range_start), default=None)
        hi = max((x.range_end for x in ranged if x.range_end), default=None)
        if lo is None or hi is None:
            n = await conn.fetchval(f"SELECT count(*) FROM {table}")
        else:
            n = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE time < $1 OR time >= $2", lo, hi)
    return p.model_copy(update={"rows_estimate": int(n)})


@router.get("/system", response_model=SystemOverview, summary="Capacity and background workers (audited)")
async def system(p: Operator, parts: Parts, request: Request) -> SystemOverview:
    async with parts.db.operator(actor=p.actor, action="system.read") as conn:
        sizes = await conn.fetchrow(
            "SELECT pg_database_size(current_database()) AS db,"
            " (SELECT relkind::text FROM pg_class WHERE oid = 'public.telemetry'::regclass) AS kind,"
            " pg_total_relation_size('public.system_metrics') AS sm"
        )
        parts_ = await _partitions(conn, "telemetry")
        metrics_parts = await _partitions(conn, "system_metrics")
        if sizes["kind"] == "p":
            telemetry_bytes = sum(x.bytes for x in parts_)
        else:
            telemetry_bytes = int(await conn.fetchval("SELECT coalesce(hypertable_size('public.telemetry'), 0)"))
        oldest = None
        for x in sorted((x for x in parts_ if x.range_start is not None), key=lambda x: x.range_start or dt.datetime.min):
            if x.rows_estimate > 0:
                oldest = x.range_start
                break
        ranged = [x.range_start for x in parts_ if x.range_start is not None]
        if sizes["kind"] == "p" and ranged:  # rows older than every partition wait in the default one
            early = await conn.fetchval("SELECT min(time) FROM telemetry WHERE time < $1", min(ranged))
            oldest = early if oldest is None or (early is not None and early < oldest) else oldest
    per_day: dict[dt.date, int] = {}
    for x in parts_:
        if x.range_start is not None:
            day = x.range_start.astimezone(dt.UTC).date()
            per_day[day] = per_day.get(day, 0) + x.rows_estimate
    state = request.app.state
    sampler = getattr(state, "sampler", None)
    maint = getattr(state, "maintenance", {})
    workers = [
        Worker(
            name="platform sampler",
            running=bool(sampler and sampler.running),
            last_run_at=sampler.last_sample_at if sampler else None,
            detail=f"every {parts.settings.platform_sample_interval_s:g} s" if parts.settings.platform_sample_interval_s else "off",
        ),
        Worker(
            name="storage maintenance",
            running=bool(maint.get("running")),
            last_run_at=maint.get("last_run_at"),
            detail=maint.get("detail", f"every {parts.settings.maintenance_interval_s} s"),
        ),
        Worker(
            name="rules sweep",
            running=bool(getattr(state, "rules", None) and state.rules.running),
            last_run_at=_ms_time(state.rules.last_sweep_ms) if getattr(state, "rules", None) else None,
            detail=f"every {parts.settings.rules_sweep_interval_s:g} s",
        ),
        Worker(
            name="notification workers",
            running=bool(getattr(state, "notify_workers", None) and state.notify_workers.running),
            last_run_at=None,
            detail="fan-out, delivery, escalation",
        ),
    ]
    pools = {
        name: {"in_use": pool.get_size() - pool.get_idle_size(), "size": pool.get_size(), "max": pool.get_max_size()}
        for name, pool in parts.db.pools().items()
    }
    return SystemOverview(
        database="ok",
        database_bytes=sizes["db"],
        storage_engine="native" if sizes["kind"] == "p" else "timescaledb",
        telemetry_bytes=telemetry_bytes,
        system_metrics_bytes=sizes["sm"] + sum(x.bytes for x in metrics_parts),
        telemetry_rows_per_day=sorted(per_day.items()),
        partitions=parts_,
        oldest_data=oldest,
        retention_days=parts.settings.telemetry_retention_days,
        system_metrics_retention_days=parts.settings.system_metrics_retention_days,
        workers=workers,
        writer_queue_rows=parts.ingest.writer.queued_rows,
        db_pools=pools,
    )


def _ms_time(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


class HeatCell(BaseModel):
    day: dt.date
    hour: int = Field(ge=0, le=23)
    alerts: int


class Heatmap(BaseModel):
    days: list[dt.date]
    cells: list[HeatCell] = Field(description="only cells with alerts; every other (day, hour) had none")


@router.get("/alerts/heatmap", response_model=Heatmap, summary="Alerts opened per day and hour (UTC), every tenant (audited)")
async def heatmap(p: Operator, parts: Parts, days: Annotated[int, Query(ge=1, le=31)] = 7) -> Heatmap:
    today = parts.clock().astimezone(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    async with parts.db.operator(actor=p.actor, action="alerts.heatmap", detail={"days": days}) as conn:
        rows = await conn.fetch(
            "SELECT (opened_at AT TIME ZONE 'UTC')::date AS day, extract(hour FROM opened_at AT TIME ZONE 'UTC')::int AS hour,"
            " count(*) AS alerts FROM alerts WHERE opened_at >= $1 AND opened_at < $2 GROUP BY 1, 2 ORDER BY 1, 2",
            start,
            start + dt.timedelta(days=days),
        )
    return Heatmap(days=[first + dt.timedelta(days=i) for i in range(days)], cells=[HeatCell(**dict(r)) for r in rows])


class Sparkline(BaseModel):
    tenant_id: uuid.UUID
    slug: str
    readings: list[int] = Field(description="readings stored per hour, oldest first")
    alerts: list[int] = Field(description="alerts opened per hour, oldest first")


class Sparklines(BaseModel):
    hours: int
    start: dt.datetime
    tenants: list[Sparkline]


@router.get("/health/sparklines", response_model=Sparklines, summary="Per tenant: readings and alerts per hour (audited)")
async def sparklines(p: Operator, parts: Parts, hours: Annotated[int, Query(ge=1, le=168)] = 24) -> Sparklines:
    now = parts.clock()
    start = now.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=hours - 1)
    async with parts.db.operator(actor=p.actor, action="tenants.sparklines", detail={"hours": hours}) as conn:
        tenants = await conn.fetch("SELECT id, slug FROM tenants ORDER BY slug")
        readings = await conn.fetch(
            "SELECT tenant_id, floor(extract(epoch FROM time - $1) / 3600)::int AS h, count(*) AS n FROM telemetry"
            " WHERE time >= $1 AND time < $2 GROUP BY 1, 2",
            start,
            start + dt.timedelta(hours=hours),
        )
        alerts = await conn.fetch(
            "SELECT tenant_id, floor(extract(epoch FROM opened_at - $1) / 3600)::int AS h, count(*) AS n FROM alerts"
            " WHERE opened_at >= $1 AND opened_at < $2 GROUP BY 1, 2",
            start,
            start + dt.timedelta(hours=hours),
        )
    lines = {t["id"]: Sparkline(tenant_id=t["id"], slug=t["slug"], readings=[0] * hours, alerts=[0] * hours) for t in tenants}
    for rows, field in ((readings, "readings"), (alerts, "alerts")):
        for r in rows:
            if r["tenant_id"] in lines and 0 <= r["h"] < hours:
                getattr(lines[r["tenant_id"]], field)[r["h"]] = int(r["n"])
    return Sparklines(hours=hours, start=start, tenants=list(lines.values()))


class OperatorAuditEntry(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    tenant_id: uuid.UUID | None
    tenant_slug: str | None
    detail: dict[str, Any]


OperatorAuditPage = paging.Page[OperatorAuditEntry]


@router.get("/audit", response_model=OperatorAuditPage, summary="Every operator (bypass) access, newest first (operator-admin; audited)")
async def operator_audit(
    p: OperatorAdmin,
    parts: Parts,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100, description="an action, or a prefix ending in '.'")] = None,
    tenant: Annotated[str | None, Query(max_length=63, description="a tenant slug")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: paging.CursorQuery = None,
) -> OperatorAuditPage:
    w = paging.Where()
    w.add("a.bypass")
    if actor:
        w.add(f"a.actor = {w.arg(actor)}")
    if action:
        if action.endswith("."):
            w.add(f"a.action LIKE {w.arg(paging.like(action)[1:])}")
        else:
            w.add(f"a.action = {w.arg(action)}")
    if tenant:
        w.add(f"t.slug = {w.arg(tenant)}")
    if (after := paging.decode(cursor, dt.datetime, int)) is not None:
        w.add(f"(a.at, a.id) < ({w.arg(after[0])}, {w.arg(after[1])})")
    async with parts.db.operator(actor=p.actor, action="audit.list", detail={"actor": actor, "action": action, "tenant": tenant}) as conn:
        rows = await conn.fetch(
            "SELECT a.id, a.at, a.actor, a.action, a.target, a.tenant_id, t.slug AS tenant_slug, a.detail"
            f" FROM audit_log a LEFT JOIN tenants t ON t.id = a.tenant_id WHERE {w.sql}"
            f" ORDER BY a.at DESC, a.id DESC LIMIT {w.arg(limit + 1)}",
            *w.args,
        )
    return paging.page(
        rows, limit, lambda r: OperatorAuditEntry(**{**dict(r), "detail": json.loads(r["detail"])}), lambda r: (r["at"], r["id"])
    )
