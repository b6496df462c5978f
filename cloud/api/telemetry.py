"""Reading telemetry back: time-bucketed series of one metric, and a device's latest values.

Both run inside the caller's tenant (RLS); a device of another tenant answers 404."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from pulse.cloud.api.deps import Parts, Reader
from pulse.cloud.archive import query as archive_query
from pulse.cloud.archive.store import open_store
from pulse.cloud.errors import InvalidError, NotFoundError
from pulse.protocol.errors import Code

router = APIRouter(prefix="/api/v1/devices", tags=["telemetry"])

# Bucket widths the server picks from when the caller names none (seconds).
NICE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
TARGET_POINTS = 600
MAX_POINTS = 5000
DEFAULT_RANGE = timedelta(hours=1)


def choose_bucket(span_s: float, target: int = TARGET_POINTS) -> int:
    """The smallest nice bucket width that keeps ``span_s`` within ``target`` buckets."""
    for width in NICE_BUCKETS:
        if span_s / width <= target:
            return width
    return max(NICE_BUCKETS[-1], math.ceil(span_s / target))


class Series(BaseModel):
    device: uuid.UUID
    device_id: str
    metric: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    bucket_s: int
    points: list[tuple[int, float, float, float, int]] = Field(
        description="[bucket start (Unix ms), mean, min, max, number of readings]; booleans count as 0/1; empty buckets are left out"
    )


class LatestValue(BaseModel):
    name: str
    value: float | bool
    time: datetime


class Latest(BaseModel):
    device: uuid.UUID
    device_id: str
    last_seen: datetime | None = Field(description="time of the newest message of any type; null if none was ever stored")
    metrics: list[LatestValue] = Field(description="each metric's newest value among the device's most recent telemetry messages")


async def _device_id(conn: asyncpg.Connection, device: uuid.UUID) -> str:
    device_id = await conn.fetchval("SELECT device_id FROM devices WHERE id = $1", device)
    if device_id is None:
        raise NotFoundError("device", device=str(device))
    return str(device_id)


_SERIES_SQL = """
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
       avg(value) AS mean, min(value) AS lo, max(value) AS hi, count(*) AS n
FROM v WHERE value IS NOT NULL
GROUP BY 1 ORDER BY 1
"""


@router.get(
    "/{device}/telemetry",
    response_model=Series,
    response_model_by_alias=True,
    summary="One metric of a device over time, bucketed on the server",
    description=(
        "`from`/`to` are ISO 8601 times (default: the last hour). `bucket` is the bucket width in seconds; "
        f"without it the server picks one that gives at most {TARGET_POINTS} buckets. At most {MAX_POINTS} buckets per answer."
    ),
)
async def series(
    device: uuid.UUID,
    caller: Reader,
    parts: Parts,
    metric: Annotated[str, Query(min_length=1, max_length=128, description="metric name, as devices send it")],
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    bucket: Annotated[int | None, Query(ge=1, le=86400 * 31, description="bucket width in seconds")] = None,
) -> Series:
    end = _aware(end) if end is not None else datetime.now(UTC)
    start = _aware(start) if start is not None else end - DEFAULT_RANGE
    if start >= end:
        raise InvalidError(Code.API_INVALID, "`from` must be before `to`")
    span = (end - start).total_seconds()
    width = bucket or choose_bucket(span)
    if span / width > MAX_POINTS:
        raise InvalidError(
            Code.API_INVALID, f"{math.ceil(span / width)} buckets asked for; at most {MAX_POINTS}: widen `bucket` or narrow the range"
        )
    async with parts.db.tenant(caller.tenant_id) as conn:
        device_id = await _device_id(conn, device)
        rows = await conn.fetch(_SERIES_SQL, caller.tenant_id, device_id, metric, start, end, float(width))
    points = [(int(r["bucket"].timestamp() * 1000), r["mean"], r["lo"], r["hi"], r["n"]) for r in rows]
    return Series(device=device, device_id=device_id, metric=metric, start=start, end=end, bucket_s=width, points=points)


class History(Series):
    grain: Literal["hour", "day"]
    archive_days: int = Field(description="days of the range answered from the telemetry archive's gold rollups")
    database_from: datetime | None = Field(description="where PostgreSQL took over from the archive (null: the archive answered all of it)")


@router.get(
    "/{device}/telemetry/history",
    response_model=History,
    response_model_by_alias=True,
    summary="One metric of a device over a long range, from hourly or daily rollups",
    description=(
        "For the long ranges of the device chart (7 d, 30 d, a year): days in the telemetry archive are answered "
        "from its gold rollups (DuckDB over Parquet), the days after them from PostgreSQL, in one series. "
        "`grain` is `hour` or `day` (default: hour up to 31 days, else day); `from` is rounded down to the grain. "
        f"At most {MAX_POINTS} buckets; points are [bucket start (Unix ms), mean, min, max, number of readings]."
    ),
)
async def history(
    device: uuid.UUID,
    caller: Reader,
    parts: Parts,
    metric: Annotated[str, Query(min_length=1, max_length=128, description="metric name, as devices send it")],
    start: Annotated[datetime, Query(alias="from")],
    end: Annotated[datetime | None, Query(alias="to")] = None,
    grain: Annotated[Literal["hour", "day"] | None, Query(description="rollup: hour or day")] = None,
) -> History:
    end = _aware(end) if end is not None else parts.clock()
    start = _aware(start)
    if start >= end:
        raise InvalidError(Code.API_INVALID, "`from` must be before `to`")
    span = (end - start).total_seconds()
    grain = grain or ("hour" if span <= 31 * 86400 else "day")
    width = archive_query.GRAIN_S[grain]
    start = datetime.fromtimestamp(start.timestamp() // width * width, UTC)
    if span / width > MAX_POINTS:
        raise InvalidError(Code.API_INVALID, f"{math.ceil(span / width)} {grain}s asked for; at most {MAX_POINTS}: use grain=day or narrow the range")
    async with parts.db.tenant(caller.tenant_id) as conn:
        device_id = await _device_id(conn, device)
    store = parts.archive if parts.archive is not None else open_store(parts.settings.archive)
    got = await archive_query.history(parts.db, store, caller.tenant_id, device_id, metric, start, end, grain)
    points = [(int(b.start.timestamp() * 1000), b.avg, b.min, b.max, b.count) for b in got.buckets]
    return History(
        device=device, device_id=device_id, metric=metric, start=start, end=end, bucket_s=width, points=points,
        grain=grain, archive_days=got.archive_days, database_from=got.database_from,
    )


@router.get("/{device}/telemetry/latest", response_model=Latest, summary="A device's newest value of each metric")
async def latest(device: uuid.UUID, caller: Reader, parts: Parts) -> Latest:
    async with parts.db.tenant(caller.tenant_id) as conn:
        device_id = await _device_id(conn, device)
        last_seen = await conn.fetchval(
            "SELECT max(time) FROM (SELECT time FROM telemetry WHERE tenant_id = $1 AND device_id = $2 ORDER BY time DESC LIMIT 1) t",
            caller.tenant_id,
            device_id,
        )
        rows = await conn.fetch(
            "SELECT time, metrics FROM telemetry WHERE tenant_id = $1 AND device_id = $2 AND msg_type = 'telemetry'"
            " ORDER BY time DESC LIMIT 200",
            caller.tenant_id,
            device_id,
        )
    values: dict[str, LatestValue] = {}
    for r in rows:
        for name, value in json.loads(r["metrics"]).items():
            if name not in values:
                values[name] = LatestValue(name=name, value=value, time=r["time"])
    return Latest(device=device, device_id=device_id, last_seen=last_seen, metrics=sorted(values.values(), key=lambda v: v.name))


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
