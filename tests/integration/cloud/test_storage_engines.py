"""Telemetry storage on both engines, and how tenants stay apart on each.

Every test here runs on native partitioning (the session's cluster) and on TimescaleDB (a second
cluster with the extension preloaded; skipped with the reason where TimescaleDB is not installed,
tests/timescale.py). The app role's way to telemetry is the same on both: no grant on the table,
its partitions or chunks; a security_barrier view of the current tenant's rows."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cloud_roles import scratch_database
from timescale import storage_tables

from pulse.cloud.db.migrate import load, maintain_telemetry, migrate
from pulse.cloud.db.pool import role_dsn
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import RoleNames, Settings

Cloud = Any  # the `start_cloud` fixture's object (conftest.py)

pytestmark = pytest.mark.integration

HOT = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}


@pytest.fixture(scope="module", params=["native", "timescaledb"])
def engine_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A database migrated with PULSE_STORAGE_ENGINE set to the engine, on a server that offers it."""
    engine = request.param
    admin_dsn: str = request.getfixturevalue("pg_admin_dsn" if engine == "native" else "pg_timescale_admin_dsn")
    name = f"t_engine_{engine}_{uuid.uuid4().hex[:8]}"
    prefix = "e" + uuid.uuid4().hex[:12]
    with scratch_database(admin_dsn, name, RoleNames.from_prefix(prefix)) as dsn:
        settings = Settings(
            mode="development",
            database_url=dsn,
            db_role_prefix=prefix,
            jwt_secret="test-secret-" + uuid.uuid4().hex,
            maintenance_interval_s=3600,
            writer_flush_ms=5,
            storage_engine=engine,
        )
        asyncio.run(migrate(dsn, settings.roles, engine=engine))
        yield settings


def _row(tenant: uuid.UUID, at: datetime, value: float, device: str = "dev-1") -> TelemetryRow:
    return TelemetryRow(at, tenant, device, "telemetry", json.dumps({"temp_c": value}), None, None, 1, None, "test", at)


async def test_storage_matches_the_engine_and_the_app_role_reads_only_its_view(engine_settings: Settings) -> None:
    app_role = engine_settings.roles.app
    owner = await asyncpg.connect(engine_settings.database_url)
    try:
        versions = [r["version"] for r in await owner.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in load()]
        rls = await owner.fetchrow(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = 'public.telemetry'::regclass"
        )
        if engine_settings.storage_engine == "timescaledb":
            assert (
                await owner.fetchval(
                    "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'telemetry'"
                )
                == 1
            )
            segmentby = await owner.fetch(
                "SELECT attname FROM timescaledb_information.compression_settings"
                " WHERE hypertable_name = 'telemetry' AND segmentby_column_index IS NOT NULL ORDER BY segmentby_column_index"
            )
            assert [r["attname"] for r in segmentby] == ["tenant_id", "device_id"]
            compress_after = await owner.fetchval(
                "SELECT config->>'compress_after' FROM timescaledb_information.jobs"
                " WHERE hypertable_name = 'telemetry' AND proc_name = 'policy_compression'"
            )
            assert compress_after == "7 days"
            assert tuple(rls) == (False, False)  # TimescaleDB refuses RLS with compression: the view is the guard
            assert await maintain_telemetry(engine_settings.database_url, ahead_days=7, retention_days=90) == [
                ("retention", "90 days")
            ]
            drop_after = await owner.fetchval(
                "SELECT config->>'drop_after' FROM timescaledb_information.jobs"
                " WHERE hypertable_name = 'telemetry' AND proc_name = 'policy_retention'"
            )
            assert drop_after == "90 days"
        else:
            assert (
                await owner.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'public.telemetry'::regclass")
                == 1
            )
            assert await owner.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
            assert tuple(rls) == (True, True)  # kept as a second guard for the owner's own sessions

        # the same on both engines: no privilege at all on the table, SELECT only on the view
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not await owner.fetchval("SELECT has_table_privilege($1, 'public.telemetry', $2)", app_role, privilege), (
                privilege
            )
        assert await owner.fetchval("SELECT has_table_privilege($1, 'pulse_app.telemetry', 'SELECT')", app_role)
        assert not await owner.fetchval("SELECT has_table_privilege($1, 'pulse_app.telemetry', 'INSERT')", app_role)
        assert await owner.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'pulse_app.telemetry'::regclass") == [
            "security_barrier=true"
        ]
        assert await owner.fetchval("SELECT has_table_privilege($1, 'public.telemetry', 'INSERT')", engine_settings.roles.writer)
        assert await owner.fetchval(
            "SELECT has_table_privilege($1, 'public.telemetry', 'SELECT')", engine_settings.roles.operator
        )
    finally:
        await owner.close()
    app = await asyncpg.connect(role_dsn(engine_settings.database_url, app_role, None))
    try:
        # pulse_app is first on its search_path: "telemetry" in its queries is the view
        assert (
            await app.fetchval("SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'telemetry'::regclass")
            == "pulse_app"
        )
    finally:
        await app.close()


async def test_app_role_sees_only_its_tenant_through_the_view_and_nothing_underneath(engine_settings: Settings) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC).replace(microsecond=0)
    old = now - timedelta(days=10)  # old enough for compression
    writer = await asyncpg.connect(role_dsn(engine_settings.database_url, engine_settings.roles.writer, None))
    owner = await asyncpg.connect(engine_settings.database_url)
    app = await asyncpg.connect(role_dsn(engine_settings.database_url, engine_settings.roles.app, None))
    try:
        async with writer.transaction():  # COPY, as the ingest writer does
            await write_rows(
                writer, [_row(a, now, 1), _row(a, old, 2), _row(b, now, 3), _row(b, old, 4), _row(b, old, 5, "dev-2")]
            )
        if engine_settings.storage_engine == "timescaledb":
            compressed = await owner.fetch(
                "SELECT compress_chunk(c) FROM show_chunks('telemetry', older_than => interval '7 days') c"
            )
            assert len(compressed) == 1
            assert any("compress_hyper_" in t for t in await storage_tables(owner))
        underneath = await storage_tables(owner)
        assert underneath

        async def as_tenant(tenant: uuid.UUID | None, sql: str) -> list[asyncpg.Record]:
            async with app.transaction():
                if tenant is not None:
                    await app.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                return list(await app.fetch(sql))

        rows = await as_tenant(a, "SELECT tenant_id, (metrics->>'temp_c')::int AS v FROM telemetry ORDER BY v")
        assert [(r["tenant_id"], r["v"]) for r in rows] == [(a, 1), (a, 2)]  # its recent and its compressed rows
        rows = await as_tenant(b, "SELECT tenant_id, (metrics->>'temp_c')::int AS v FROM telemetry ORDER BY v")
        assert [(r["tenant_id"], r["v"]) for r in rows] == [(b, 3), (b, 4), (b, 5)]
        # asking for the other tenant by name, or with a condition that tries to run first, finds nothing
        assert await as_tenant(a, f"SELECT 1 FROM telemetry WHERE tenant_id = '{b}'") == []
        assert (
            await as_tenant(
                a, "SELECT 1 FROM telemetry WHERE device_id = 'dev-2' OR metrics ? 'temp_c' AND tenant_id <> tenant_id"
            )
            == []
        )
        assert await as_tenant(None, "SELECT 1 FROM telemetry") == []  # no tenant set: no rows

        for table in ["public.telemetry", *underneath]:
            assert not await app.fetchval("SELECT has_table_privilege($1, 'SELECT')", table), table
            # refused; on a compressed chunk TimescaleDB's planner may refuse first ("has no dimension
            # slices"), before PostgreSQL's permission check does
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.DataCorruptedError)):
                await app.fetchval(f"SELECT count(*) FROM {table}")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(
                "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, source, received_at) VALUES (now(), $1, 'x', 'telemetry', 'sql', now())",
                a,
            )
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("CREATE VIEW pulse_app.mine AS SELECT * FROM public.telemetry")
    finally:
        await app.close()
        await owner.close()
        await writer.close()


async def test_api_reads_of_telemetry_show_only_the_callers_tenant(
    engine_settings: Settings, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> None:
    async with start_cloud(engine_settings) as cloud:
        _, a = await cloud.tenant_user()
        _, b = await cloud.tenant_user()
        op = await cloud.user("operator", tenant=None)
        # the same device id in both tenants, both hot enough for the rule
        devices = {}
        for headers, values in ((a, (25, 33, 26)), (b, (40, 41, 42, 43))):
            dev, _, token = await cloud.device_with_token(headers, "same-device")
            devices[id(headers)] = dev
            for value in values:  # 200: committed
                env = {"v": 1, "ts": int(datetime.now(UTC).timestamp() * 1000), "metrics": {"temp_c": value}}
                r = await cloud.client.post("/ingest/v1/telemetry", json=env, headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == 200, r.text
        r = await cloud.client.post("/api/v1/rules/preview", json={"rule": HOT, "hours": 1}, headers=a)
        assert r.status_code == 200, r.text
        assert r.json()["readings"] == 3 and [x["action"] for x in r.json()["actions"]] == ["OpenAlert", "CloseAlert"]
        r = await cloud.client.post("/api/v1/rules/preview", json={"rule": HOT, "hours": 1}, headers=b)
        assert r.json()["readings"] == 4 and [x["action"] for x in r.json()["actions"]] == ["OpenAlert"]

        r = await cloud.client.get(f"/api/v1/devices/{devices[id(a)]}/telemetry/latest", headers=a)
        assert r.status_code == 200, r.text
        assert {m["name"]: m["value"] for m in r.json()["metrics"]} == {"temp_c": 26}
        r = await cloud.client.get(
            f"/api/v1/devices/{devices[id(a)]}/telemetry", params={"metric": "temp_c", "bucket": 3600}, headers=a
        )
        assert r.status_code == 200, r.text
        assert sum(p[4] for p in r.json()["points"]) == 3 and max(p[3] for p in r.json()["points"]) == 33
        # another tenant's device answers 404, not its readings
        r = await cloud.client.get(f"/api/v1/devices/{devices[id(b)]}/telemetry/latest", headers=a)
        assert r.status_code == 404 and r.json()["code"] == "api.not_found"
        # operators (audited bypass role) still read the table itself: both tenants' last ingest
        r = await cloud.client.get("/api/v1/operator/health", headers=op)
        assert r.status_code == 200, r.text
        assert len([t for t in r.json() if t["last_ingest_at"] is not None]) == 2
        r = await cloud.client.get("/api/v1/operator/noc", headers=op)
        assert r.status_code == 200, r.text
