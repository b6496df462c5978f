"""Schema and telemetry storage: migrations are recorded and idempotent, telemetry is natively
partitioned when TimescaleDB is absent, Pulse creates partitions ahead and drops expired ones, and
the shared write path commits inside the caller's transaction (the gateway-sync contract)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pulse.cloud.db.migrate import EARLIER_CHECKSUMS, load, migrate, render
from pulse.cloud.db.pool import Database, role_dsn
from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.ingest.writer import TELEMETRY_COLUMNS, write_rows
from pulse.cloud.settings import RoleNames, Settings

pytestmark = pytest.mark.integration


async def test_migrations_are_recorded_and_idempotent(cloud_settings: Settings) -> None:
    assert await migrate(cloud_settings.database_url, cloud_settings.roles) == []
    conn = await asyncpg.connect(cloud_settings.database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in load()]
        # the server's offer decides (PULSE_TEST_DATABASE_URL may name one with TimescaleDB preloaded)
        preloaded = "timescaledb" in await conn.fetchval("SHOW shared_preload_libraries")
        partitioned = await conn.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass")
        assert partitioned == (0 if preloaded else 1)
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == (1 if preloaded else 0)
        forced = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace"
            " AND NOT (relrowsecurity AND relforcerowsecurity) AND relname NOT LIKE 'telemetry_%'"
            " AND relname !~ '^system_metrics' AND relname NOT IN ('stream_marks', 'stream_gateway_marks') ORDER BY relname"
        )
        # every tenant table is under forced RLS; the hypertable cannot be (the app role reads it through a view).
        # system_metrics (0015) holds no tenant's rows: the platform's own figures; stream_marks (0023) holds one
        # row per stream partition, no tenant's rows either; nor stream_gateway_marks (0027): one row per gateway, sync
        # stream and partition, written by the partition writers. The app role has no grant on any of them.
        app_grants = await conn.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants"
            " WHERE (table_name LIKE 'system_metrics%' OR table_name IN ('stream_marks', 'stream_gateway_marks')) AND grantee = $1",
            cloud_settings.roles.app,
        )
        assert app_grants == 0
        assert [r["relname"] for r in forced] == (["schema_migrations", "telemetry"] if preloaded else ["schema_migrations"])
    finally:
        await conn.close()


def _row(tenant: uuid.UUID, at: datetime) -> TelemetryRow:
    return TelemetryRow(at, tenant, "dev-1", "telemetry", json.dumps({"a": 1}), None, None, 1, None, "test", at)


async def test_partitions_are_created_ahead_rows_move_out_of_default_and_expired_ones_drop(cloud_settings: Settings) -> None:
    owner = await asyncpg.connect(cloud_settings.database_url)
    writer = await asyncpg.connect(role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None))
    tenant = uuid.uuid4()
    try:
        if not await owner.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass"):
            pytest.skip("telemetry is a TimescaleDB hypertable here: TimescaleDB makes and drops its own chunks")
        day0 = datetime(2031, 3, 10, 12, tzinfo=UTC)

        async def maintain(at: datetime, ahead: int = 2, retention: int = 90) -> list[tuple[str, str]]:
            rows = await owner.fetch("SELECT action, target FROM pulse_telemetry_maintain($1, $2, $3)", ahead, retention, at)
            return [(r["action"], r["target"]) for r in rows]

        async def partition_of(at: datetime) -> str:
            # telemetry is under FORCE RLS, so the owner looks with the row's tenant set
            async with owner.transaction():
                await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                return await owner.fetchval("SELECT tableoid::regclass::text FROM telemetry WHERE time = $1", at)

        created = await maintain(day0)
        assert [t for a, t in created if a == "created"] == [
            "telemetry_p20310309",
            "telemetry_p20310310",
            "telemetry_p20310311",
            "telemetry_p20310312",
        ]
        assert await maintain(day0) == []  # idempotent

        # a row beyond the partitions lands in the default partition: accepted, never refused
        later = day0 + timedelta(days=5)
        async with writer.transaction():
            await write_rows(writer, [_row(tenant, day0), _row(tenant, later)])
        assert await partition_of(day0) == "telemetry_p20310310"
        assert await partition_of(later) == "telemetry_default"
        # when its day's partition is created, the row moves into it
        actions = await maintain(later)
        assert ("created", "telemetry_p20310315 (1 rows moved from default)") in actions
        assert await partition_of(later) == "telemetry_p20310315"

        # 91 days on, the first days are past retention: their partitions are dropped
        actions = await maintain(day0 + timedelta(days=91))
        dropped = sorted(t for a, t in actions if a == "dropped")
        assert dropped[:2] == ["telemetry_p20310309", "telemetry_p20310310"]
        assert "telemetry_p20310315" not in dropped
        assert await partition_of(day0) is None
        assert await partition_of(later) == "telemetry_p20310315"
    finally:
        await owner.close()
        await writer.close()


async def test_write_rows_commits_with_the_callers_transaction(cloud_settings: Settings) -> None:
    writer = await asyncpg.connect(role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None))
    owner = await asyncpg.connect(cloud_settings.database_url)
    tenant = uuid.uuid4()
    now = datetime.now(UTC)
    quarantine = [QuarantineRow(tenant, "dev-1", None, "test", "envelope.not_json", "bad", b"\x00raw", now)]
    try:
        count = "SELECT (SELECT count(*) FROM telemetry WHERE tenant_id = $1) + (SELECT count(*) FROM quarantine WHERE tenant_id = $1)"
        tx = writer.transaction()
        await tx.start()
        await write_rows(writer, [_row(tenant, now)] * 3, quarantine)
        await tx.rollback()  # e.g. the gateway's high-water mark could not be stored
        async with owner.transaction():
            await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            assert await owner.fetchval(count, tenant) == 0
        async with writer.transaction():
            await write_rows(writer, [_row(tenant, now)] * 3, quarantine)
        async with owner.transaction():
            await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            assert await owner.fetchval(count, tenant) == 4
        # the Database helper gives the same contract: rows and other writes commit together, or neither
        db = Database(cloud_settings.database_url, cloud_settings.roles)
        await db.open()
        try:
            with pytest.raises(RuntimeError):
                async with db.writer_transaction() as conn:
                    await write_rows(conn, [_row(tenant, now)] * 2)
                    raise RuntimeError("the high-water mark could not be stored")
            async with db.writer_transaction() as conn:
                await write_rows(conn, [_row(tenant, now)])
        finally:
            await db.close()
        async with owner.transaction():
            await owner.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            assert await owner.fetchval(count, tenant) == 5
        # the writer role writes, it does not read
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await writer.fetchval("SELECT count(*) FROM telemetry")
    finally:
        await writer.close()
        await owner.close()


RELEASED_0004 = Path(__file__).with_name("released") / "0004_telemetry.sql"


async def test_a_database_migrated_by_the_released_0004_upgrades_to_the_view(fresh_database: tuple[str, str]) -> None:
    """`pulse up` data directories applied 0001-0008 with the released text of 0004 (which ran
    CREATE EXTENSION itself and enabled compression before RLS): they still start, and 0009 moves
    the app role onto the view."""
    dsn, prefix = fresh_database
    roles = RoleNames.from_prefix(prefix)
    released = RELEASED_0004.read_text()
    assert hashlib.sha256(released.encode()).hexdigest() in EARLIER_CHECKSUMS["0004"]
    a, b = uuid.uuid4(), uuid.uuid4()
    owner = await asyncpg.connect(dsn)
    try:
        if "timescaledb" in await owner.fetchval("SHOW shared_preload_libraries"):
            pytest.skip("the released 0004 never completed on a TimescaleDB server: no such database exists to upgrade")
        # Databases that ran the released text took its native path: TimescaleDB was not installed there.
        # On a server where it is installed but not preloaded, its CREATE EXTENSION would end the session
        # (FATAL), so replay that path as such a machine saw it: the extension refused, caught, native.
        replayed = released.replace(
            "CREATE EXTENSION IF NOT EXISTS timescaledb;", "RAISE EXCEPTION 'timescaledb is not available here';"
        )
        assert replayed != released
        await owner.execute(
            "CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for mig in load():
            if mig.version > "0008":
                continue
            sql = released if mig.version == "0004" else mig.sql
            async with owner.transaction():
                await owner.execute(render(replayed if mig.version == "0004" else sql, roles))
                await owner.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    hashlib.sha256(sql.encode()).hexdigest(),
                )
        now = datetime.now(UTC)
        async with owner.transaction():
            # as the writer of that release stored them: telemetry only (the rule outbox came with 0010)
            await owner.copy_records_to_table(
                "telemetry", records=[_row(a, now), _row(b, now), _row(b, now)], columns=TELEMETRY_COLUMNS
            )
    finally:
        await owner.close()

    later = [m.version for m in load() if m.version > "0008"]  # 0009, 0010 and whatever came after them
    assert later[:2] == ["0009", "0010"] and await migrate(dsn, roles) == later
    assert await migrate(dsn, roles) == []
    app = await asyncpg.connect(role_dsn(dsn, roles.app, None))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.fetchval("SELECT count(*) FROM public.telemetry")
        for tenant, rows in ((a, 1), (b, 2)):
            async with app.transaction():
                await app.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                assert await app.fetchval("SELECT count(*) FROM telemetry") == rows
                assert await app.fetchval("SELECT count(DISTINCT tenant_id) FROM telemetry") == 1
    finally:
        await app.close()


async def test_system_metrics_follow_the_telemetry_engine_and_their_maintenance_keeps_retention(cloud_settings: Settings) -> None:
    """0015: system_metrics is stored like telemetry (native partitions, or a hypertable on a
    TimescaleDB server via PULSE_TEST_DATABASE_URL); pulse_system_metrics_maintain makes partitions
    ahead and drops expired ones, or keeps TimescaleDB's retention policy at the configured days."""
    owner = await asyncpg.connect(cloud_settings.database_url)
    writer = await asyncpg.connect(role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None))
    day0 = datetime(2031, 5, 10, 12, tzinfo=UTC)

    async def maintain(at: datetime, retention: int, ahead: int = 1) -> list[tuple[str, str]]:
        rows = await owner.fetch("SELECT action, target FROM pulse_system_metrics_maintain($1, $2, $3)", ahead, retention, at)
        return [(r["action"], r["target"]) for r in rows]

    try:
        kinds = await owner.fetchrow(
            "SELECT (SELECT relkind::text FROM pg_class WHERE oid = 'public.telemetry'::regclass) AS telemetry,"
            " (SELECT relkind::text FROM pg_class WHERE oid = 'public.system_metrics'::regclass) AS system_metrics"
        )
        assert kinds["system_metrics"] == kinds["telemetry"]
        native = kinds["telemetry"] == "p"
        if native:
            created = [t for a, t in await maintain(day0, 30) if a == "created"]
            assert created == ["system_metrics_p20310509", "system_metrics_p20310510", "system_metrics_p20310511"]
        else:
            assert await maintain(day0, 30) == [("retention", "system_metrics 30 days")]
        assert await maintain(day0, 30) == []  # idempotent

        await writer.execute("INSERT INTO system_metrics (time, name, value, source) VALUES ($1, 'writer_queue_rows', 3, 'test')", day0)
        where = await owner.fetchval("SELECT tableoid::regclass::text FROM system_metrics WHERE time = $1", day0)
        assert where == "system_metrics_p20310510" if native else where.startswith("_timescaledb_internal._hyper_")

        if native:  # 31 days on, the first days are past retention: their partitions are dropped
            dropped = [t for a, t in await maintain(day0 + timedelta(days=31), 30) if a == "dropped"]
            assert {"system_metrics_p20310509", "system_metrics_p20310510"} <= set(dropped)
            assert await owner.fetchval("SELECT count(*) FROM system_metrics WHERE time = $1", day0) == 0
        else:  # a changed retention replaces the policy
            assert await maintain(day0, 14) == [("retention", "system_metrics 14 days")]
            drop_after = await owner.fetchval(
                "SELECT config->>'drop_after' FROM timescaledb_information.jobs"
                " WHERE proc_name = 'policy_retention' AND hypertable_name = 'system_metrics'"
            )
            assert drop_after == "14 days"
    finally:
        await writer.close()
        await owner.close()
