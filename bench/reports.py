"""`pulse bench reports [--points N]`: the SLA report, the telemetry archive's export, and the
archive's size, each against PostgreSQL in the same run.

- ``sla_report_s``: the SLA summary (online %, MTTR, alerts by severity, top devices and rules,
  per-device availability) of 1,000 devices over 30 days (state changes every ~6 h, 10 alerts per
  device), as the API computes it: in the tenant's transaction under row-level security, into the
  report's model. Baseline ``sla_baseline_s``: the same SQL statements run bare on the owner's
  connection (no tenant transaction, no model): what PostgreSQL alone needs for the figures.
  ``sla_ratio`` = report / baseline (best of 3 each). Goal: under 2 s.
- ``export_points_per_s``: ``pulse cloud archive`` (its own process) writing N telemetry points
  (``--points``, default 10,000,000; two metrics a row, over 10 days) into bronze, silver and gold
  Parquet files; ``export_peak_rss_mb`` its peak resident memory (from the kernel's rusage of the
  child). Baseline ``copy_points_per_s``: a bare ``COPY ... TO`` a file of the same rows (no Parquet).
  ``export_ratio`` = export / COPY throughput. Goal: RSS flat, under 300 MB.
- ``archive_bytes_per_point`` (all four layers), ``bronze_bytes_per_point`` against
  ``postgres_bytes_per_point`` (the telemetry table's rows and indexes on disk); ``size_ratio``.
- ``chart_7d_s``, ``chart_30d_s``, ``chart_1y_s``: the device chart's long ranges (``GET
  /api/v1/devices/{id}/telemetry/history``, grain as the API picks it: hour up to 31 days, else day)
  for one device with a year of readings (one a minute, 525,600 rows; its tenant has 19 more devices
  at one every 10 minutes), every day of the year archived: what the route calls
  (``archive.query.history``: the tenant's archived days, gold rollups read by DuckDB from the local
  archive directory, PostgreSQL for the part after them). Baseline ``chart_*_baseline_s``: the same
  buckets computed from the raw rows in PostgreSQL (the query ``history`` uses for days not yet
  archived, in the tenant's transaction). ``chart_*_ratio`` = gold / raw (best of 3 each, after one
  warm-up). Goal (issue 21): a year under a second.

PostgreSQL is embedded (fsync on) unless DATABASE_URL names one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from pulse.bench.ingest import _create_db
from pulse.cloud.archive import query as archive_query
from pulse.cloud.archive.archiver import Archiver
from pulse.cloud.archive.store import LocalStore
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.migrate import migrate
from pulse.cloud.db.pool import Database
from pulse.cloud.reports import sla
from pulse.cloud.settings import RoleNames

DEVICES = 1000
DAYS = 30
PERIOD_END = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
EXPORT_DAY0 = dt.date(2026, 1, 1)
EXPORT_DAYS = 10
PREFIX = "bench"
CHART_END = dt.datetime(2025, 12, 31, tzinfo=dt.UTC)  # a year of history before the export's days
CHART_DAYS = 365
CHART_DEVICE = "chart-000"
CHART_OTHERS = 19
CHART_RANGES: tuple[tuple[str, int], ...] = (("7d", 7), ("30d", 30), ("1y", 365))


async def _seed_sla(conn: asyncpg.Connection, tenant: uuid.UUID) -> None:
    start = PERIOD_END - dt.timedelta(days=DAYS)
    await conn.execute(
        """INSERT INTO device_state_history (tenant_id, device_id, status, at)
           SELECT $1, 'dev-' || lpad(d::text, 4, '0'), CASE WHEN k % 2 = 0 THEN 'online' ELSE 'offline' END,
                  $2::timestamptz + make_interval(hours => k * 6) + make_interval(mins => (d * 7 + k * 13) % 300)
           FROM generate_series(0, $3 - 1) d, generate_series(-1, $4 * 4 - 1) k""",
        tenant, start, DEVICES, DAYS,
    )
    await conn.execute(
        """INSERT INTO alerts (tenant_id, device_id, rule_id, severity, state, explanation, opened_at, closed_at)
           SELECT $1, 'dev-' || lpad(d::text, 4, '0'), 'rule-' || (a % 7),
                  (ARRAY['critical', 'major', 'minor', 'warning', 'info'])[1 + (d + a) % 5],
                  CASE WHEN a % 2 = 0 THEN 'closed' ELSE 'open' END, '{}',
                  $2::timestamptz + make_interval(hours => a * 70 + d % 50),
                  CASE WHEN a % 2 = 0 THEN $2::timestamptz + make_interval(hours => a * 70 + d % 50, mins => 5 + d % 90) END
           FROM generate_series(0, $3 - 1) d, generate_series(0, 9) a""",
        tenant, start, DEVICES,
    )


async def _sla(dsn: str, roles: RoleNames, tenant: uuid.UUID) -> dict[str, float]:
    start = PERIOD_END - dt.timedelta(days=DAYS)
    db = Database(dsn, roles)
    await db.open()
    owner = await asyncpg.connect(dsn)
    try:
        ours, base = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            async with db.tenant(tenant) as conn:
                summary = await sla.summary(conn, tenant, start, PERIOD_END)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await owner.fetch(sla._AVAILABILITY_SQL, tenant, start, PERIOD_END)
            await owner.fetchrow(sla._ALERTS_SQL, tenant, start, PERIOD_END)
            for column in ("device_id", "rule_id"):
                await owner.fetch(sla._TOP_SQL.format(column=column), tenant, start, PERIOD_END, sla.TOP)
            base.append(time.perf_counter() - t0)
    finally:
        await owner.close()
        await db.close()
    return {
        "sla_devices": summary.devices,
        "sla_online_pct": summary.online_pct or 0.0,
        "sla_report_s": round(min(ours), 4),
        "sla_baseline_s": round(min(base), 4),
        "sla_ratio": round(min(ours) / min(base), 3),
    }


async def _seed_telemetry(conn: asyncpg.Connection, tenant: uuid.UUID, points: int) -> int:
    rows = points // 2
    per_day = rows // EXPORT_DAYS
    start = dt.datetime(EXPORT_DAY0.year, EXPORT_DAY0.month, EXPORT_DAY0.day, tzinfo=dt.UTC)
    step_ms = 86_400_000 / per_day
    # daily partitions for the days, as serve's maintenance makes them (rows in their own day's partition)
    await conn.execute("SELECT pulse_telemetry_maintain($1, 3650, $2)", EXPORT_DAYS + 1, start)
    await conn.execute(
        """INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, seq, source, received_at)
           SELECT $1::timestamptz + make_interval(days => day, secs => (i * $4 / 1000.0)), $2, 'dev-' || lpad((i % 200)::text, 3, '0'),
                  'telemetry', jsonb_build_object('temp', 20 + (i % 97) / 10.0, 'on', i % 3 = 0), i, 'bench',
                  $1::timestamptz + make_interval(days => day, secs => (i * $4 / 1000.0))
           FROM generate_series(0, $5 - 1) day, generate_series(0, $3 - 1) i""",
        start, tenant, per_day, step_ms, EXPORT_DAYS,
    )
    return per_day * EXPORT_DAYS


def _export(dsn: str, root: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of `pulse cloud archive` in its own process."""
    at = dt.datetime(EXPORT_DAY0.year, EXPORT_DAY0.month, EXPORT_DAY0.day, tzinfo=dt.UTC) + dt.timedelta(days=EXPORT_DAYS + 1)
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": dsn,
        "PULSE_DB_ROLE_PREFIX": PREFIX,
        "PULSE_DATA_DIR": str(root / "data"),
        "PULSE_ARCHIVE_DIR": str(root / "archive"),
        "PULSE_TELEMETRY_RETENTION_DAYS": str(EXPORT_DAYS + 2),
    }
    log = (root / "archive.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pulse.cli.main", "cloud", "archive", "--at", at.isoformat()], env=env, stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"pulse cloud archive failed: {(root / 'archive.log').read_text()[-2000:]}")
    return elapsed, usage.ru_maxrss / 1024


async def _copy_baseline(dsn: str, tenant: uuid.UUID, root: Path) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        from pulse.cloud.archive.archiver import COPY_SQL

        start = dt.datetime(EXPORT_DAY0.year, EXPORT_DAY0.month, EXPORT_DAY0.day, tzinfo=dt.UTC)
        for day in range(EXPORT_DAYS):
            lo = start + dt.timedelta(days=day)
            await conn.copy_from_query(COPY_SQL, tenant, lo, lo + dt.timedelta(days=1), output=str(root / f"copy-{day}.csv"), format="csv")
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def _pg_bytes(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
            " WHERE i.inhparent = 'telemetry'::regclass"
        ) or 0)
    finally:
        await conn.close()


async def _chart(dsn: str, roles: RoleNames, root: Path, days: int = CHART_DAYS) -> dict[str, object]:
    start = CHART_END - dt.timedelta(days=days)
    conn = await asyncpg.connect(dsn)
    try:
        tenant = await conn.fetchval("INSERT INTO tenants (slug, name) VALUES ($1, 'chart') RETURNING id", "chart-" + uuid.uuid4().hex[:8])
        await conn.execute("SELECT pulse_telemetry_maintain($1, 3650, $2)", days + 1, start)
        for device, step_s in [(CHART_DEVICE, 60), *((f"chart-{i:03d}", 600) for i in range(1, CHART_OTHERS + 1))]:
            await conn.execute(
                """INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, seq, source, received_at)
                   SELECT t, $1, $2, 'telemetry', jsonb_build_object('temp', 20 + (i % 97) / 10.0), i, 'bench', t
                   FROM (SELECT $3::timestamptz + make_interval(secs => i * $4) AS t, i
                         FROM generate_series(0, $5 - 1) i) g""",
                tenant, device, start, float(step_s), days * 86400 // step_s,
            )
        await conn.execute("VACUUM ANALYZE telemetry")
    finally:
        await conn.close()
    db = Database(dsn, roles)
    await db.open()
    try:
        store = LocalStore(root / "chart-archive")
        archiver = Archiver(db, store, work_dir=root / "chart-work", lag=dt.timedelta(0), retention_days=3650)
        t0 = time.perf_counter()
        for day in range(days):
            await archiver.archive_day(tenant, start.date() + dt.timedelta(days=day), CHART_END)
        figures: dict[str, object] = {"chart_rows": days * 1440, "chart_archive_s": round(time.perf_counter() - t0, 1)}
        for label, span in ((label, span) for label, span in CHART_RANGES if span <= days):
            lo = CHART_END - dt.timedelta(days=span)
            grain: archive_query.Grain = "hour" if span <= 31 else "day"
            ours, base = [], []
            for attempt in range(4):  # the first is a warm-up (DuckDB's and PostgreSQL's caches)
                t0 = time.perf_counter()
                got = await archive_query.history(db, store, tenant, CHART_DEVICE, "temp", lo, CHART_END, grain)
                t1 = time.perf_counter()
                async with db.tenant(tenant) as conn:
                    raw = await conn.fetch(archive_query._PG_SQL, tenant, CHART_DEVICE, "temp", lo, CHART_END,
                                           float(archive_query.GRAIN_S[grain]))
                t2 = time.perf_counter()
                if attempt:
                    ours.append(t1 - t0)
                    base.append(t2 - t1)
            if got.database_from is not None or [(b.start, b.count) for b in got.buckets] != [(r["bucket"], r["n"]) for r in raw]:
                raise RuntimeError(f"chart {label}: the gold rollups and the raw rows disagree")
            figures |= {
                f"chart_{label}_buckets": len(got.buckets),
                f"chart_{label}_s": round(min(ours), 4),
                f"chart_{label}_baseline_s": round(min(base), 4),
                f"chart_{label}_ratio": round(min(ours) / min(base), 3),
            }
        return figures
    finally:
        await db.close()


def _bench(dsn: str, points: int, root: Path) -> dict[str, object]:
    roles = RoleNames.from_prefix(PREFIX)
    asyncio.run(migrate(dsn, roles))

    async def setup() -> tuple[uuid.UUID, int]:
        conn = await asyncpg.connect(dsn)
        try:
            tenant = await conn.fetchval("INSERT INTO tenants (slug, name) VALUES ($1, 'bench') RETURNING id", "bench-" + uuid.uuid4().hex[:8])
            await _seed_sla(conn, tenant)
            rows = await _seed_telemetry(conn, tenant, points)
            await conn.execute("VACUUM ANALYZE")
            return tenant, rows
        finally:
            await conn.close()

    tenant, rows = asyncio.run(setup())
    figures: dict[str, object] = asyncio.run(_sla(dsn, roles, tenant))
    (root / "copy").mkdir()
    copy_s = asyncio.run(_copy_baseline(dsn, tenant, root / "copy"))
    shutil.rmtree(root / "copy")
    export_s, rss_mb = _export(dsn, root)
    real_points = rows * 2
    archive = [p for p in (root / "archive").rglob("*.parquet")]
    archive_bytes = sum(p.stat().st_size for p in archive)
    bronze_bytes = sum(p.stat().st_size for p in archive if "/bronze/" in p.as_posix())
    pg_bytes = asyncio.run(_pg_bytes(dsn))
    figures |= {
        "export_points": real_points,
        "export_points_per_s": round(real_points / export_s),
        "export_peak_rss_mb": round(rss_mb, 1),
        "copy_points_per_s": round(real_points / copy_s),
        "export_ratio": round(copy_s / export_s, 3),
        "archive_bytes_per_point": round(archive_bytes / real_points, 2),
        "bronze_bytes_per_point": round(bronze_bytes / real_points, 2),
        "postgres_bytes_per_point": round(pg_bytes / real_points, 2),
        "size_ratio": round(archive_bytes / pg_bytes, 3) if pg_bytes else None,
    }
    figures |= asyncio.run(_chart(dsn, roles, root))
    return figures


def run(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="pulse bench reports")
    parser.add_argument("--points", type=int, default=10_000_000, help="telemetry points to export (two a row; default 10,000,000)")
    args = parser.parse_args(argv or [])
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-reports-"))
    os.chmod(root, 0o755)
    figures: dict[str, object] = {"devices": DEVICES, "days": DAYS, "cpu_count": os.cpu_count()}
    try:
        if url := os.environ.get("DATABASE_URL"):
            figures |= _bench(url, args.points, root)
            figures["database"] = "DATABASE_URL"
        else:
            server = EmbeddedPostgres(root / "pg")
            try:
                admin = server.start()
                asyncio.run(_create_db(admin))
                figures |= _bench(admin.rsplit("/", 1)[0] + "/pulse_bench", args.points, root)
                figures["database"] = "embedded (fsync on)"
            finally:
                server.stop()
        figures["goal"] = "sla_report_s < 2; export_peak_rss_mb flat, < 300; chart_1y_s < 1"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures
