"""The telemetry archive: complete days leave PostgreSQL into Parquet (bronze, silver, gold) per
tenant and day, on a passed-in clock, before retention drops them; one tenant's files never hold
another's rows, and reading them back is scoped to the caller's tenant."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import asyncpg
import pytest
from archive_data import at, put_rows, read

from pulse.cloud.archive import layout
from pulse.cloud.archive.archiver import Archiver
from pulse.cloud.archive.query import history
from pulse.cloud.archive.store import LocalStore
from pulse.cloud.db.migrate import maintain_telemetry

pytestmark = pytest.mark.integration

NOW = at("2026-03-10", 12)


def archiver(cloud, root: Path, retention_days: int = 90) -> Archiver:
    return Archiver(
        cloud.app.state.pulse.db, LocalStore(root / "archive"), work_dir=root / "work",
        lag=dt.timedelta(hours=6), retention_days=retention_days,
    )


async def apply_retention(dsn: str, *, retention_days: int, at: dt.datetime) -> list[str]:
    """Retention as it happens on this database's engine at the clock ``at``; what it dropped.
    Native partitioning: Pulse's maintenance drops expired partitions. TimescaleDB: the maintenance
    sets a retention policy, and TimescaleDB's job drops the expired chunks on its own schedule and
    clock; here the same drop_chunks call the policy makes, at the test's clock instead of now()."""
    actions = await maintain_telemetry(dsn, ahead_days=1, retention_days=retention_days, at=at)
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.telemetry'::regclass"):
            return [target for action, target in actions if action in ("dropped", "expired")]
        policy = await conn.fetchval(
            "SELECT config->>'drop_after' FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'"
        )
        assert policy == f"{retention_days} days", "the maintenance did not set TimescaleDB's retention policy"
        rows = await conn.fetch("SELECT drop_chunks('telemetry', older_than => $1::timestamptz) AS chunk", at - dt.timedelta(days=retention_days))
        return [r["chunk"] for r in rows]
    finally:
        await conn.close()


async def two_tenants(cloud) -> tuple[uuid.UUID, uuid.UUID]:
    a, _ = await cloud.tenant_user()
    b, _ = await cloud.tenant_user()
    return a, b


async def test_complete_days_become_bronze_silver_and_gold_files_per_tenant_and_day(cloud, tmp_path: Path) -> None:
    a, b = await two_tenants(cloud)
    dsn = cloud.settings.database_url
    await put_rows(dsn, [
        (at("2026-03-08", 10, 0), a, "pump-1", {"temp": 20.0, "door": True}, 1),
        (at("2026-03-08", 10, 0), a, "pump-1", {"temp": 20.0, "door": True}, 1),  # the same message stored twice
        (at("2026-03-08", 10, 30), a, "pump-1", {"temp": 24.0, "door": False}, 2),
        (at("2026-03-08", 11, 5), a, "pump-1", {"temp": 30.0}, 3),
        (at("2026-03-08", 10, 10), a, "pump-2", {"temp": 5}, 1),
        (at("2026-03-09", 23, 59), a, "pump-1", {"temp": 21.0}, 4),
        (at("2026-03-10", 1, 0), a, "pump-1", {"temp": 22.0}, 5),  # today: not a complete day yet
        (at("2026-03-08", 10, 0), b, "pump-1", {"temp": 99.0}, 1),  # same device name, another tenant
    ])
    await put_rows(dsn, [(at("2026-03-08", 12), a, "pump-1", {"state": 1}, 9)], msg_type="event")
    arch = archiver(cloud, tmp_path)

    done = await arch.run_once(NOW)

    assert sorted(done.archived) == sorted([(a, dt.date(2026, 3, 8)), (a, dt.date(2026, 3, 9)), (b, dt.date(2026, 3, 8))])
    root = tmp_path / "archive"
    day = dt.date(2026, 3, 8)
    bronze = root / layout.key(a, "bronze", day)
    # bronze: every stored row, as stored (the duplicate and the event included), this tenant's only
    assert read(bronze, "SELECT count(*), count(DISTINCT tenant_id), min(tenant_id) FROM f") == [(6, 1, a)]
    assert read(bronze, "SELECT msg_type, count(*) FROM f GROUP BY 1 ORDER BY 1") == [("event", 1), ("telemetry", 5)]
    # silver: one typed row per metric value, the duplicate gone, booleans as 0/1, events left out
    silver = read(root / layout.key(a, "silver", day), "SELECT device_id, metric, hour(time), minute(time), value, kind FROM f ORDER BY 1, 2, 3, 4")
    assert silver == [
        ("pump-1", "door", 10, 0, 1.0, "boolean"),
        ("pump-1", "door", 10, 30, 0.0, "boolean"),
        ("pump-1", "temp", 10, 0, 20.0, "number"),
        ("pump-1", "temp", 10, 30, 24.0, "number"),
        ("pump-1", "temp", 11, 5, 30.0, "number"),
        ("pump-2", "temp", 10, 10, 5.0, "number"),
    ]
    # gold: min, max, avg, count and last per device, metric and hour / day
    hourly = read(root / layout.key(a, "gold-hourly", day),
                  "SELECT device_id, metric, hour(bucket), min, max, avg, count, last FROM f WHERE metric = 'temp' ORDER BY 1, 3")
    assert hourly == [("pump-1", "temp", 10, 20.0, 24.0, 22.0, 2, 24.0), ("pump-1", "temp", 11, 30.0, 30.0, 30.0, 1, 30.0),
                      ("pump-2", "temp", 10, 5.0, 5.0, 5.0, 1, 5.0)]
    daily = read(root / layout.key(a, "gold-daily", day), "SELECT device_id, min, max, avg, count, last FROM f WHERE metric = 'temp' ORDER BY 1")
    assert daily == [("pump-1", 20.0, 30.0, pytest.approx(74 / 3), 3, 30.0), ("pump-2", 5.0, 5.0, 5.0, 1, 5.0)]
    # the other tenant's day is a file of its own, under its own prefix, with its own rows only
    assert read(root / layout.key(b, "bronze", day), "SELECT count(*), min(tenant_id), max(tenant_id) FROM f") == [(1, b, b)]
    for path in (root / "tenants" / str(a)).rglob("*.parquet"):
        assert read(path, "SELECT DISTINCT tenant_id FROM f") == [(a,)], path
    assert not (root / layout.key(a, "bronze", dt.date(2026, 3, 10))).exists()
    # the checkpoint: a second pass finds nothing to do
    assert (await arch.run_once(NOW)).days == 0
    async with cloud.app.state.pulse.db.tenant(a) as conn:
        rows = await conn.fetch("SELECT day, rows, points FROM archive_days ORDER BY day")
    assert [(r["day"], r["rows"], r["points"]) for r in rows] == [(dt.date(2026, 3, 8), 6, 6), (dt.date(2026, 3, 9), 1, 1)]


async def test_a_day_is_archived_before_retention_drops_it_and_then_answers_from_the_archive(cloud, tmp_path: Path) -> None:
    a, b = await two_tenants(cloud)
    dsn = cloud.settings.database_url
    old = dt.date(2026, 1, 5)
    await put_rows(dsn, [(at(old.isoformat(), h), a, "meter", {"kw": float(h)}, h) for h in range(24)])
    await put_rows(dsn, [(at(old.isoformat(), 3), b, "meter", {"kw": 500.0}, 1)])
    # the maintenance loop's order: archive first (clock: 89 days on), then retention (two days later)
    clock = at("2026-04-04", 9)
    arch = archiver(cloud, tmp_path, retention_days=90)
    assert (a, old) in (await arch.run_once(clock)).archived
    dropped = await apply_retention(dsn, retention_days=90, at=clock + dt.timedelta(days=2))
    assert dropped, "retention dropped nothing: the test proves nothing"
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE time < $1", at("2026-01-06")) == 0
    finally:
        await conn.close()

    db = cloud.app.state.pulse.db
    got = await history(db, arch.store, a, "meter", "kw", at("2026-01-05"), at("2026-01-06"), "hour")
    assert [(p.start.hour, p.avg, p.count) for p in got.buckets] == [(h, float(h), 1) for h in range(24)]
    assert got.archive_days == 1 and got.database_from is None
    daily = await history(db, arch.store, a, "meter", "kw", at("2026-01-01"), at("2026-01-10"), "day")
    assert [(p.start.date(), p.min, p.max, p.avg, p.count, p.last) for p in daily.buckets] == [(old, 0.0, 23.0, 11.5, 24, 23.0)]
    # the other tenant, asking for the same device name over the same range, sees its own value only
    other = await history(db, arch.store, b, "meter", "kw", at("2026-01-01"), at("2026-01-10"), "day")
    assert [(p.avg, p.count) for p in other.buckets] == [(500.0, 1)]


async def test_days_not_yet_archived_are_answered_by_postgresql_in_the_same_series(cloud, tmp_path: Path) -> None:
    a, _ = await cloud.tenant_user()
    dsn = cloud.settings.database_url
    await put_rows(dsn, [(at(f"2026-05-0{d}", 12), a, "m", {"v": float(d)}, d) for d in range(1, 6)])
    arch = archiver(cloud, tmp_path)
    await arch.run_once(at("2026-05-03", 12))  # archives 05-01 and 05-02 (05-03 is not over)
    got = await history(cloud.app.state.pulse.db, arch.store, a, "m", "v", at("2026-05-01"), at("2026-05-06"), "day")
    assert [(p.start.day, p.avg) for p in got.buckets] == [(d, float(d)) for d in range(1, 6)]
    assert got.archive_days == 2 and got.database_from == at("2026-05-03")


async def test_the_chart_history_endpoint_reads_gold_rollups_for_its_own_tenant_only(cloud_settings, start_cloud, tmp_path: Path) -> None:
    async with start_cloud(cloud_settings.model_copy(update={"archive_dir": tmp_path / "archive"})) as cloud:
        await _history_endpoint(cloud, tmp_path)


async def _history_endpoint(cloud, tmp_path: Path) -> None:
    a, headers_a = await cloud.tenant_user()
    b, headers_b = await cloud.tenant_user()
    dev_a, _, _ = await cloud.device_with_token(headers_a, "boiler")
    dev_b, _, _ = await cloud.device_with_token(headers_b, "boiler")
    dsn = cloud.settings.database_url
    days = [dt.date(2025, 7, 1) + dt.timedelta(days=i) for i in range(0, 360, 7)]
    await put_rows(dsn, [(at(d.isoformat(), 12), a, "boiler", {"bar": 1.0 + i}, i) for i, d in enumerate(days)])
    await put_rows(dsn, [(at(d.isoformat(), 12), b, "boiler", {"bar": -1.0}, i) for i, d in enumerate(days)])
    # a year of days: archived on a clock that walks along (retention 90 days), then dropped from PostgreSQL
    arch = Archiver(cloud.app.state.pulse.db, cloud.app.state.pulse.archive, work_dir=tmp_path / "work",
                    lag=dt.timedelta(hours=6), retention_days=90)
    for month in range(13):
        await arch.run_once(at("2025-08-01") + dt.timedelta(days=30 * month))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM telemetry WHERE tenant_id = ANY($1::uuid[])", [a, b])
    finally:
        await conn.close()

    year = {"metric": "bar", "from": "2025-07-01T00:00:00Z", "to": "2026-07-01T00:00:00Z"}
    r = await cloud.client.get(f"/api/v1/devices/{dev_a}/telemetry/history", params=year, headers=headers_a)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grain"] == "day" and body["bucket_s"] == 86400 and body["archive_days"] == len(days)
    assert [p[1] for p in body["points"]] == [1.0 + i for i in range(len(days))]
    r = await cloud.client.get(f"/api/v1/devices/{dev_b}/telemetry/history", params=year, headers=headers_b)
    assert {p[1] for p in r.json()["points"]} == {-1.0}
    # another tenant's device is not there, whatever the range
    r = await cloud.client.get(f"/api/v1/devices/{dev_a}/telemetry/history", params=year, headers=headers_b)
    assert r.status_code == 404 and r.json()["code"] == "api.not_found"
    week = {"metric": "bar", "from": "2025-07-01T00:00:00Z", "to": "2025-07-08T00:00:00Z"}
    r = await cloud.client.get(f"/api/v1/devices/{dev_a}/telemetry/history", params=week, headers=headers_a)
    assert r.json()["grain"] == "hour" and [p[1:] for p in r.json()["points"]] == [[1.0, 1.0, 1.0, 1]]
    # coded refusals for bad ranges and grains
    for params in ({**year, "grain": "hour"}, {**year, "grain": "minute"}, {**week, "from": "2025-07-09T00:00:00Z"}, {"metric": "bar"}):
        r = await cloud.client.get(f"/api/v1/devices/{dev_a}/telemetry/history", params=params, headers=headers_a)
        assert r.status_code == 422 and r.json()["code"] == "api.invalid", (params, r.text)


async def test_on_timescaledb_a_day_in_a_compressed_chunk_is_archived_and_answered(cloud, tmp_path: Path) -> None:
    """A database that had telemetry before the archive existed (or whose archive was off for a
    while) has its older days in compressed chunks on TimescaleDB; the first pass reads them as any."""
    a, b = await two_tenants(cloud)
    dsn = cloud.settings.database_url
    day = dt.date(2026, 2, 1)
    await put_rows(dsn, [(at(day.isoformat(), h), a, "boiler", {"bar": float(h)}, h) for h in range(0, 24, 2)])
    await put_rows(dsn, [(at(day.isoformat(), 5), b, "boiler", {"bar": 99.0}, 1)])
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.telemetry'::regclass"):
            pytest.skip("telemetry is natively partitioned here: compression is TimescaleDB's (PULSE_TEST_DATABASE_URL)")
        compressed = await conn.fetch(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('telemetry', older_than => $1::timestamptz,"
            " newer_than => $2::timestamptz) c", at("2026-02-02"), at("2026-01-31"),
        )
        assert compressed, "no chunk holds the day: the test proves nothing"
        assert await conn.fetchval(
            "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks WHERE hypertable_name = 'telemetry'"
            " AND range_start <= $1 AND range_end > $1", at(day.isoformat(), 12),
        )
    finally:
        await conn.close()

    arch = archiver(cloud, tmp_path)
    done = await arch.run_once(at("2026-02-02", 12))

    assert (a, day) in done.archived and (b, day) in done.archived
    root = tmp_path / "archive"
    assert read(root / layout.key(a, "bronze", day), "SELECT count(*), min(tenant_id), max(tenant_id) FROM f") == [(12, a, a)]
    got = await history(cloud.app.state.pulse.db, arch.store, a, "boiler", "bar", at("2026-02-01"), at("2026-02-02"), "day")
    assert [(p.avg, p.count) for p in got.buckets] == [(11.0, 12)] and got.archive_days == 1
