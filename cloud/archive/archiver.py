"""The archive worker: every tenant's complete UTC days of telemetry into Parquet, before
PostgreSQL's retention drops them.

A day is due once it ended ``lag`` ago (late rows from gateways that were offline still land in it)
and is not yet in ``archive_days``. For each due day, oldest first: COPY the tenant's rows out of
PostgreSQL (in the tenant's own transaction, so row-level security applies) into a CSV file in a
work directory, let DuckDB write the four layers, put the files under their deterministic keys, and
only then insert the day's checkpoint row. A crash at any point before that insert leaves at most
files that the next pass writes again under the same names; nothing is lost or written twice.

The pass runs on a clock passed in (``now``): the maintenance loop calls it before it applies
retention, and ``pulse cloud archive`` runs one pass by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from pulse.cloud.archive import layout, parquet
from pulse.cloud.archive.store import ArchiveStore, open_store
from pulse.cloud.db.pool import Database
from pulse.cloud.settings import Settings

log = logging.getLogger("pulse.cloud.archive")

COPY_SQL = """
SELECT (extract(epoch FROM time) * 1000000)::bigint, device_id, msg_type, metrics::text, tags::text, body::text,
       seq, gateway_id::text, source, (extract(epoch FROM received_at) * 1000000)::bigint
FROM telemetry WHERE tenant_id = $1 AND time >= $2 AND time < $3
ORDER BY device_id, time
"""


@dataclass
class ArchivePass:
    days: int = 0
    rows: int = 0
    bytes: int = 0
    archived: list[tuple[uuid.UUID, dt.date]] = field(default_factory=list)


class Archiver:
    def __init__(
        self, db: Database, store: ArchiveStore, *, work_dir: Path, lag: dt.timedelta, retention_days: int
    ) -> None:
        self.db = db
        self.store = store
        self.work_dir = work_dir
        self.lag = lag
        self.retention_days = retention_days

    async def tenants(self) -> list[uuid.UUID]:
        async with self.db.identity() as conn:
            return [r[0] for r in await conn.fetch("SELECT pulse_alerting_tenants()")]

    async def due_days(self, tenant: uuid.UUID, now: dt.datetime) -> list[dt.date]:
        """Complete days (ended at least ``lag`` before ``now``) still within retention, holding
        telemetry of the tenant, and not yet archived; oldest first. One probe a day, each with the
        day's bounds as parameters, so that PostgreSQL (partitions) and TimescaleDB (chunks) look
        into that day's storage only; a day that gets late rows after it was found empty is found then."""
        last_due = (now - self.lag).date() - dt.timedelta(days=1)
        oldest_kept = now.date() - dt.timedelta(days=self.retention_days)
        if last_due < oldest_kept:
            return []
        due = []
        async with self.db.tenant(tenant) as conn:
            done = {r[0] for r in await conn.fetch("SELECT day FROM archive_days WHERE tenant_id = $1 AND day >= $2", tenant, oldest_kept)}
            day = oldest_kept
            while day <= last_due:
                if day not in done and await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM telemetry WHERE tenant_id = $1 AND time >= $2 AND time < $3)",
                    tenant, *layout.day_bounds(day),
                ):
                    due.append(day)
                day += dt.timedelta(days=1)
        return due

    async def run_once(self, now: dt.datetime) -> ArchivePass:
        done = ArchivePass()
        for tenant in await self.tenants():
            for day in await self.due_days(tenant, now):
                rows, size = await self.archive_day(tenant, day, now)
                done.days += 1
                done.rows += rows
                done.bytes += size
                done.archived.append((tenant, day))
        if done.days:
            log.info("archive: %d days, %d rows, %d bytes to %s", done.days, done.rows, done.bytes, self.store.describe())
        return done

    async def archive_day(self, tenant: uuid.UUID, day: dt.date, now: dt.datetime) -> tuple[int, int]:
        """One tenant's day into the archive; (rows, bytes). Safe to repeat: same keys, one checkpoint."""
        start, end = layout.day_bounds(day)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{tenant}-{day}-", dir=self.work_dir))
        try:
            csv_path = work / "day.csv"
            async with self.db.tenant(tenant) as conn:
                await conn.copy_from_query(COPY_SQL, tenant, start, end, output=str(csv_path), format="csv")
            rows = points = size = 0
            if csv_path.stat().st_size > 0:
                files = await asyncio.to_thread(parquet.write_day, csv_path, work, tenant)
                rows, points = files.rows, files.points
                for layer in layout.LAYERS:
                    path = files.files[layer]
                    size += path.stat().st_size
                    await self.store.put(layout.key(tenant, layer, day), path)
            async with self.db.tenant(tenant) as conn:
                await conn.execute(
                    "INSERT INTO archive_days (tenant_id, day, rows, points, bytes, archived_at) VALUES ($1, $2, $3, $4, $5, $6)"
                    " ON CONFLICT (tenant_id, day) DO NOTHING",
                    tenant, day, rows, points, size, now,
                )
            return rows, size
        finally:
            shutil.rmtree(work, ignore_errors=True)


def archiver_for(db: Database, settings: Settings) -> Archiver:
    """The archiver the settings describe (local directory or S3)."""
    config = settings.archive
    return Archiver(
        db,
        open_store(config),
        work_dir=config.work_dir,
        lag=dt.timedelta(hours=config.lag_hours),
        retention_days=config.retention_days,
    )
