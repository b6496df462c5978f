"""Reading the archive back for one tenant: gold rollups for ranges PostgreSQL no longer holds (or
holds only at great cost, like a year of readings), joined with PostgreSQL for the days not yet
archived.

Tenant-scoped by construction: the days come from ``archive_days`` in the tenant's own transaction
(row-level security), the files from keys built from the tenant's id, and DuckDB filters the rows
on ``tenant_id`` as well."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Literal

from pulse.cloud.archive import layout, parquet
from pulse.cloud.archive.store import ArchiveStore
from pulse.cloud.db.pool import Database

Grain = Literal["hour", "day"]
GRAIN_S: dict[Grain, int] = {"hour": 3600, "day": 86400}

_PG_SQL = """
WITH v AS (
    SELECT time,
           CASE jsonb_typeof(metrics -> $3)
               WHEN 'number' THEN (metrics ->> $3)::float8
               WHEN 'boolean' THEN CASE WHEN (metrics -> $3)::boolean THEN 1.0 ELSE 0.0 END
           END AS value
    FROM telemetry
    WHERE tenant_id = $1 AND device_id = $2 AND msg_type = 'telemetry' AND metrics ? $3 AND time >= $4 AND time < $5
)
SELECT date_bin(make_interval(secs => $6), time, timestamptz 'epoch') AS bucket,
       avg(value) AS mean, min(value) AS lo, max(value) AS hi, count(*) AS n,
       (array_agg(value ORDER BY time DESC))[1] AS last
FROM v WHERE value IS NOT NULL
GROUP BY 1 ORDER BY 1
"""


@dataclass(frozen=True, slots=True)
class History:
    buckets: list[parquet.Bucket]
    archive_days: int  # days of the range answered from the archive
    database_from: dt.datetime | None  # where PostgreSQL took over (None: the archive answered all)


async def history(
    db: Database,
    store: ArchiveStore,
    tenant: uuid.UUID,
    device_id: str,
    metric: str,
    start: dt.datetime,
    end: dt.datetime,
    grain: Grain,
) -> History:
    async with db.tenant(tenant) as conn:
        rows = await conn.fetch(
            "SELECT day, rows FROM archive_days WHERE tenant_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
            tenant,
            start.date(),
            end.date(),
        )
    archived = [(r["day"], r["rows"]) for r in rows]
    pg_from = start
    if archived:
        pg_from = max(start, layout.day_bounds(archived[-1][0])[1])
    layer: layout.Layer = "gold-hourly" if grain == "hour" else "gold-daily"
    paths = []
    for day, count in archived:
        if count == 0:
            continue
        path = await store.fetch(layout.key(tenant, layer, day))
        if path is not None:
            paths.append(path)
    gold_end = min(pg_from, end)
    buckets = await asyncio.to_thread(parquet.read_rollups, paths, tenant, device_id, metric, start, gold_end) if paths else []
    if pg_from < end:
        async with db.tenant(tenant) as conn:
            recent = await conn.fetch(_PG_SQL, tenant, device_id, metric, pg_from, end, float(GRAIN_S[grain]))
        buckets += [
            parquet.Bucket(start=r["bucket"], avg=r["mean"], min=r["lo"], max=r["hi"], count=r["n"], last=r["last"])
            for r in recent
        ]
    return History(buckets=buckets, archive_days=len(archived), database_from=pg_from if pg_from < end else None)
