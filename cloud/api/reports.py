"""Reports and exports of the caller's tenant.

- ``GET /api/v1/reports/sla``: the SLA summary of a period as JSON, CSV or a printable HTML page;
  every request is recorded in the report history.
- ``GET /api/v1/reports/runs`` and ``/runs/{id}`` (``/runs/{id}/report.html``): the history (who,
  when, parameters, status) and a stored run's figures (the daily scheduled report links here).
- ``GET /api/v1/exports/devices`` and ``/exports/alerts``: CSV, JSON or JSON lines, streamed from a
  server-side cursor (a large export never sits in memory whole); recorded in the history with its
  row count when it completes.

Everything runs in the caller's tenant transaction (row-level security); another tenant's run
answers 404."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from pulse.cloud.api import paging
from pulse.cloud.api.deps import Parts, Reader, TenantCaller
from pulse.cloud.db.pool import Database
from pulse.cloud.errors import InvalidError, NotFoundError
from pulse.cloud.notify import store as notify_store
from pulse.cloud.reports import render, runs, sla
from pulse.protocol.errors import Code

log = logging.getLogger("pulse.cloud.reports")

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])
exports_router = APIRouter(prefix="/api/v1/exports", tags=["reports"])

SLA_FORMATS = ("json", "csv", "html")
EXPORT_FORMATS = ("csv", "json", "jsonl")
TELEMETRY_FORMATS = (*EXPORT_FORMATS, "parquet")
MAX_EXPORT_DEVICES = 1000
MAX_EXPORT_METRICS = 100
CHUNK_ROWS = 500


class SlaReport(sla.SlaSummary):
    run_id: uuid.UUID = Field(description="this report's entry in the report history")


class ReportRun(BaseModel):
    id: uuid.UUID
    kind: str = Field(description="sla or export")
    params: dict[str, Any]
    status: str = Field(description="running, done or failed")
    requested_by: str = Field(description='who asked: a person, or "schedule" for the daily SLA report')
    created_at: dt.datetime
    finished_at: dt.datetime | None
    error: str | None
    result: dict[str, Any] | None = Field(default=None, description="an SLA run's figures; an export's row count")


def _format(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidError(Code.REPORT_BAD_FORMAT, f"format {value[:40]!r} is not one of: {', '.join(allowed)}")
    return value


def _period(start: dt.datetime, end: dt.datetime, now: dt.datetime) -> None:
    if (why := sla.check_period(start, end, now)) is not None:
        raise InvalidError(Code.REPORT_BAD_RANGE, why)


@router.get(
    "/sla",
    response_model=SlaReport,
    response_model_by_alias=True,
    summary="SLA summary of a period: online %, MTTR, alerts by severity, top alerting devices and rules",
    description="`format=json` (default), `csv` (section, name, value) or `html` (a printable page). At most 366 days.",
    responses={200: {"content": {"text/csv": {}, "text/html": {}}}},
)
async def sla_report(
    caller: Reader,
    parts: Parts,
    start: Annotated[dt.datetime, Query(alias="from")],
    end: Annotated[dt.datetime, Query(alias="to")],
    format: Annotated[str, Query(max_length=40)] = "json",
) -> Any:
    fmt = _format(format, SLA_FORMATS)
    now = parts.clock()
    _period(start, end, now)
    async with parts.db.tenant(caller.tenant_id) as conn:
        run = await runs.start(conn, caller.tenant_id, kind="sla", params={"from": start, "to": end, "format": fmt}, actor=caller.actor, now=now)
        summary = await sla.summary(conn, caller.tenant_id, start, end)
        await runs.finish(conn, run, now=now, result=summary.model_dump(mode="json", by_alias=True))
        slug = await notify_store.tenant_slug(conn, caller.tenant_id)
    stamp = f"sla-{start:%Y%m%d}-{end:%Y%m%d}"
    if fmt == "csv":
        return Response(render.to_csv(summary), media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="{stamp}.csv"'})
    if fmt == "html":
        return HTMLResponse(render.to_html(summary, slug))
    return SlaReport(**summary.model_dump(), run_id=run)


RunPage = paging.Page[ReportRun]


def _run(r: Mapping[str, Any], *, with_result: bool) -> ReportRun:
    return ReportRun(
        id=r["id"], kind=r["kind"], params=json.loads(r["params"]), status=r["status"], requested_by=r["requested_by"],
        created_at=r["created_at"], finished_at=r["finished_at"], error=r["error"],
        result=json.loads(r["result"]) if with_result and r["result"] else None,
    )


@router.get("/runs", response_model=RunPage, summary="The report history, newest first (figures left out: ask for one run)")
async def list_runs(
    caller: Reader,
    parts: Parts,
    kind: Annotated[str | None, Query(pattern="^(sla|export)$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: paging.CursorQuery = None,
) -> RunPage:
    where = paging.Where()
    if kind:
        where.add(f"kind = {where.arg(kind)}")
    if (after := paging.decode(cursor, dt.datetime, str)) is not None:
        where.add(f"(created_at, id) < ({where.arg(after[0])}, {where.arg(uuid.UUID(str(after[1])))})")
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch(
            f"SELECT * FROM report_runs WHERE {where.sql} ORDER BY created_at DESC, id DESC LIMIT {where.arg(limit + 1)}", *where.args
        )
    return paging.page(rows, limit, lambda r: _run(r, with_result=False), lambda r: (r["created_at"], str(r["id"])))


async def _load_run(parts: Any, caller: TenantCaller, run: uuid.UUID) -> ReportRun:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await conn.fetchrow("SELECT * FROM report_runs WHERE id = $1", run)
    if row is None:
        raise NotFoundError("report run", run=str(run))
    return _run(row, with_result=True)


@router.get("/runs/{run}", response_model=ReportRun, summary="One report run, with an SLA run's figures")
async def get_run(run: uuid.UUID, caller: Reader, parts: Parts) -> ReportRun:
    return await _load_run(parts, caller, run)


@router.get("/runs/{run}/report.html", response_class=HTMLResponse, summary="A stored SLA run as a printable page")
async def run_html(run: uuid.UUID, caller: Reader, parts: Parts) -> HTMLResponse:
    found = await _load_run(parts, caller, run)
    if found.kind != "sla" or found.result is None:
        raise NotFoundError("SLA report run", run=str(run))
    async with parts.db.tenant(caller.tenant_id) as conn:
        slug = await notify_store.tenant_slug(conn, caller.tenant_id)
    return HTMLResponse(render.to_html(sla.SlaSummary.model_validate({**found.result, "start": found.result["from"], "end": found.result["to"]}), slug))


# --- exports ---------------------------------------------------------------------------------------

_DEVICES_SQL = """
SELECT d.id, d.device_id, d.name, d.status, s.status AS connectivity, d.site_id, d.gateway_id, d.tags,
       d.created_at, d.updated_at, d.decommissioned_at
FROM devices d LEFT JOIN device_states s ON s.tenant_id = d.tenant_id AND s.device_id = d.device_id
WHERE d.tenant_id = $1 ORDER BY d.device_id
"""
_ALERTS_SQL = """
SELECT id, device_id, rule_id, kind, severity, state, occurrences, opened_at, acknowledged_at, acknowledged_by,
       closed_at, closed_by, source
FROM alerts WHERE tenant_id = $1 AND opened_at >= $2 AND opened_at < $3 ORDER BY opened_at, id
"""


class ExportedDevice(BaseModel):
    """One row of the devices export (CSV columns in this order; `tags` space-separated in CSV)."""

    id: uuid.UUID
    device_id: str
    name: str
    status: str
    connectivity: str | None = Field(description="online, stale, offline or unreachable; null if never seen")
    site_id: uuid.UUID | None
    gateway_id: uuid.UUID | None
    tags: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    decommissioned_at: dt.datetime | None


class ExportedAlert(BaseModel):
    """One row of the alerts export (CSV columns in this order)."""

    id: int
    device_id: str
    rule_id: str
    kind: str
    severity: str
    state: str
    occurrences: int
    opened_at: dt.datetime
    acknowledged_at: dt.datetime | None
    acknowledged_by: str | None
    closed_at: dt.datetime | None
    closed_by: str | None
    source: str


def _cell(v: object) -> object:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, list):
        return " ".join(map(str, v))
    return "" if v is None else v


def _json_value(v: object) -> object:
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


async def _stream(
    db: Database, caller: TenantCaller, run: uuid.UUID, fmt: str, sql: str, args: tuple[object, ...], clock: Callable[[], dt.datetime],
    json_columns: frozenset[str] = frozenset(),
) -> AsyncIterator[bytes]:
    """Rows of ``sql`` in ``fmt``, CHUNK_ROWS at a time from a server-side cursor; the run is
    finished with the row count, or marked failed if the stream breaks off. ``json_columns`` hold
    JSON text (jsonb) that JSON formats carry as it is."""
    count = 0
    try:
        async with db.tenant(caller.tenant_id) as conn:
            header: list[str] | None = None
            buf: list[bytes] = []
            if fmt == "json":
                buf.append(b"[")
            async for r in conn.cursor(sql, *args, prefetch=CHUNK_ROWS):
                if fmt == "csv":
                    if header is None:
                        header = list(r.keys())
                        buf.append(_csv_line(header))
                    buf.append(_csv_line([_cell(v) for v in r.values()]))
                else:
                    item = orjson.dumps({k: orjson.Fragment(v) if k in json_columns else _json_value(v) for k, v in r.items()})
                    buf.append((b"," if fmt == "json" and count else b"") + item + (b"\n" if fmt == "jsonl" else b""))
                count += 1
                if len(buf) >= CHUNK_ROWS:
                    yield b"".join(buf)
                    buf = []
            if fmt == "json":
                buf.append(b"]")
            if buf:
                yield b"".join(buf)
    except BaseException as exc:
        try:
            async with db.tenant(caller.tenant_id) as conn:
                await runs.finish(conn, run, now=clock(), result={"rows": count}, error=f"stopped after {count} rows: {type(exc).__name__}")
        except Exception:
            log.exception("export %s: could not record its failure", run)
        raise
    async with db.tenant(caller.tenant_id) as conn:
        await runs.finish(conn, run, now=clock(), result={"rows": count})


def _csv_line(values: list[object]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode()


_MEDIA = {"csv": "text/csv", "json": "application/json", "jsonl": "application/x-ndjson", "parquet": "application/vnd.apache.parquet"}


async def _export(
    parts: Any, caller: TenantCaller, what: str, fmt: str, sql: str, args: tuple[object, ...], params: dict[str, object],
    json_columns: frozenset[str] = frozenset(),
) -> StreamingResponse:
    async with parts.db.tenant(caller.tenant_id) as conn:
        run = await runs.start(conn, caller.tenant_id, kind="export", params={"what": what, "format": fmt, **params}, actor=caller.actor, now=parts.clock())
    return StreamingResponse(
        _stream(parts.db, caller, run, fmt, sql, args, parts.clock, json_columns),
        media_type=_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="{what}.{fmt}"', "X-Report-Run": str(run)},
    )


@exports_router.get(
    "/devices", summary="Every device of the tenant with its connectivity, streamed", response_class=StreamingResponse,
    description="`format=csv` (default), `json` (an array) or `jsonl` (one object a line).",
    responses={200: {"model": list[ExportedDevice], "content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
async def export_devices(
    caller: Reader, parts: Parts, format: Annotated[str, Query(max_length=40)] = "csv"
) -> StreamingResponse:
    fmt = _format(format, EXPORT_FORMATS)
    return await _export(parts, caller, "devices", fmt, _DEVICES_SQL, (caller.tenant_id,), {})


@exports_router.get(
    "/alerts", summary="The tenant's alerts opened in a period, streamed", response_class=StreamingResponse,
    description="`format=csv` (default), `json` (an array) or `jsonl` (one object a line); at most 366 days.",
    responses={200: {"model": list[ExportedAlert], "content": {"text/csv": {}, "application/x-ndjson": {}}}},
)
async def export_alerts(
    caller: Reader,
    parts: Parts,
    start: Annotated[dt.datetime, Query(alias="from")],
    end: Annotated[dt.datetime, Query(alias="to")],
    format: Annotated[str, Query(max_length=40)] = "csv",
) -> StreamingResponse:
    fmt = _format(format, EXPORT_FORMATS)
    _period(start, end, parts.clock())
    return await _export(parts, caller, "alerts", fmt, _ALERTS_SQL, (caller.tenant_id, start, end), {"from": start, "to": end})


# Telemetry, one row per reading and metric (the long form: devices report different metrics).
# ``value`` is the JSON value as sent (a number, true/false, or a string); CSV writes it as text.
_TELEMETRY_SQL = """
SELECT t.time, t.device_id, m.key AS metric, {value} AS value
FROM telemetry t CROSS JOIN LATERAL jsonb_each(t.metrics) m
WHERE t.tenant_id = $1 AND t.msg_type = 'telemetry' AND t.time >= $2 AND t.time < $3
  AND ($4::text[] IS NULL OR t.device_id = ANY($4::text[])) AND ($5::text[] IS NULL OR m.key = ANY($5::text[]))
ORDER BY t.time, t.device_id, m.key
"""
# For Parquet: typed columns, through a CSV file on disk and DuckDB (constant memory, as the archive).
_TELEMETRY_PARQUET_SQL = """
SELECT (extract(epoch FROM t.time) * 1000000)::bigint, t.device_id, m.key, jsonb_typeof(m.value), m.value #>> '{}'
FROM telemetry t CROSS JOIN LATERAL jsonb_each(t.metrics) m
WHERE t.tenant_id = $1 AND t.msg_type = 'telemetry' AND t.time >= $2 AND t.time < $3
  AND ($4::text[] IS NULL OR t.device_id = ANY($4::text[])) AND ($5::text[] IS NULL OR m.key = ANY($5::text[]))
ORDER BY t.time, t.device_id, m.key
"""


class ExportedReading(BaseModel):
    """One row of the telemetry export: a metric of one reading (CSV columns in this order). In
    Parquet: ``time`` (timestamp, UTC), ``device_id``, ``metric``, ``value`` (double, for numbers),
    ``flag`` (boolean, for true/false) and ``text`` (for strings)."""

    time: dt.datetime
    device_id: str
    metric: str
    value: float | bool | str


def _names(values: list[str] | None, most: int, what: str) -> list[str] | None:
    if not values:
        return None
    if len(values) > most:
        raise InvalidError(Code.API_INVALID, f"at most {most} {what} in one export", field=what)
    return values


async def _parquet(parts: Any, caller: TenantCaller, run: uuid.UUID, args: tuple[object, ...]) -> AsyncIterator[bytes]:
    """COPY the rows to a CSV file, let DuckDB type them into Parquet, stream the file; both files
    are removed whatever happens. Memory stays flat: the rows live on disk, DuckDB under its limit."""
    import shutil
    import tempfile
    from pathlib import Path

    from pulse.cloud.archive import parquet as archive_parquet

    work = Path(tempfile.mkdtemp(prefix="pulse-export-"))
    rows = 0
    try:
        csv_path, out = work / "rows.csv", work / "telemetry.parquet"
        async with parts.db.tenant(caller.tenant_id) as conn:
            await conn.copy_from_query(_TELEMETRY_PARQUET_SQL, *args, output=str(csv_path), format="csv")
        rows = await asyncio.to_thread(archive_parquet.readings_to_parquet, csv_path, out, work)
        with out.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, 1 << 20):
                yield chunk
    except BaseException as exc:
        try:
            async with parts.db.tenant(caller.tenant_id) as conn:
                await runs.finish(conn, run, now=parts.clock(), result={"rows": rows}, error=f"stopped: {type(exc).__name__}")
        except Exception:
            log.exception("export %s: could not record its failure", run)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    async with parts.db.tenant(caller.tenant_id) as conn:
        await runs.finish(conn, run, now=parts.clock(), result={"rows": rows})


@exports_router.get(
    "/telemetry", summary="The tenant's readings in a period, one row per metric, streamed", response_class=StreamingResponse,
    description="`format=csv` (default), `json` (an array), `jsonl` (one object a line) or `parquet`; `device` and `metric`"
    " (repeatable) narrow it; at most 366 days. Covers what PostgreSQL holds (`PULSE_TELEMETRY_RETENTION_DAYS`); older days"
    " are in the archive's Parquet files (docs/reports.md).",
    responses={200: {"model": list[ExportedReading], "content": {"text/csv": {}, "application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}},
)
async def export_telemetry(
    caller: Reader,
    parts: Parts,
    start: Annotated[dt.datetime, Query(alias="from")],
    end: Annotated[dt.datetime, Query(alias="to")],
    device: Annotated[list[str] | None, Query(max_length=MAX_EXPORT_DEVICES + 1)] = None,
    metric: Annotated[list[str] | None, Query(max_length=MAX_EXPORT_METRICS + 1)] = None,
    format: Annotated[str, Query(max_length=40)] = "csv",
) -> StreamingResponse:
    fmt = _format(format, TELEMETRY_FORMATS)
    _period(start, end, parts.clock())
    devices, metrics = _names(device, MAX_EXPORT_DEVICES, "device"), _names(metric, MAX_EXPORT_METRICS, "metric")
    args = (caller.tenant_id, start, end, devices, metrics)
    params: dict[str, object] = {"from": start, "to": end, "devices": devices, "metrics": metrics}
    if fmt != "parquet":
        sql = _TELEMETRY_SQL.format(value="m.value #>> '{}'" if fmt == "csv" else "m.value::text")
        return await _export(parts, caller, "telemetry", fmt, sql, args, params, frozenset() if fmt == "csv" else frozenset({"value"}))
    async with parts.db.tenant(caller.tenant_id) as conn:
        run = await runs.start(conn, caller.tenant_id, kind="export", params={"what": "telemetry", "format": fmt, **params},
                               actor=caller.actor, now=parts.clock())
    return StreamingResponse(
        _parquet(parts, caller, run, args),
        media_type=_MEDIA[fmt],
        headers={"Content-Disposition": 'attachment; filename="telemetry.parquet"', "X-Report-Run": str(run)},
    )
