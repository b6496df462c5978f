"""Choosing the storage engine on a real server where TimescaleDB is installed but not preloaded:
`CREATE EXTENSION timescaledb` there would end the connection with FATAL, so Pulse must look first.
`auto` falls back to native partitioning and says so (log, `pulse cloud migrate` output);
`PULSE_STORAGE_ENGINE=timescaledb` is refused with a code, before anything changes."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cloud_roles import scratch_database
from timescale import timescaledb_bindir

from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.engine import StorageEngineError
from pulse.cloud.db.migrate import load, migrate
from pulse.cloud.settings import RoleNames
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def unloaded_admin_dsn() -> Iterator[str]:
    """A cluster of a PostgreSQL that has TimescaleDB installed, started without preloading it."""
    bindir, why = timescaledb_bindir()
    if bindir is None:
        pytest.skip(f"TimescaleDB tests skipped: {why}")
    root = Path(tempfile.mkdtemp(prefix="pulse-test-unloaded-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg", durable=False, bindir=bindir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh(unloaded_admin_dsn: str) -> Iterator[tuple[str, RoleNames, str]]:
    """(dsn of an empty database on that server, its roles, their prefix)."""
    name = "t_unloaded_" + uuid.uuid4().hex[:10]
    prefix = "u" + uuid.uuid4().hex[:12]
    roles = RoleNames.from_prefix(prefix)

    with scratch_database(unloaded_admin_dsn, name, roles) as dsn:
        yield dsn, roles, prefix


async def test_the_server_offers_timescaledb_without_preloading_it(unloaded_admin_dsn: str) -> None:
    conn = await asyncpg.connect(unloaded_admin_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'") == 1
        assert "timescaledb" not in await conn.fetchval("SHOW shared_preload_libraries")
    finally:
        await conn.close()


async def test_auto_falls_back_to_native_partitioning_and_says_why(fresh: tuple[str, RoleNames, str]) -> None:
    dsn, roles, _ = fresh
    notices: list[str] = []
    assert await migrate(dsn, roles, on_notice=notices.append) == [m.version for m in load()]
    assert len(notices) == 1
    assert "native partitioning" in notices[0] and "not preloaded" in notices[0] and "shared_preload_libraries" in notices[0]
    assert await migrate(dsn, roles, on_notice=notices.append) == []  # up to date: nothing to choose, nothing to say
    assert len(notices) == 1
    conn = await asyncpg.connect(dsn)
    try:
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'public.telemetry'::regclass") == 1
        )
        assert await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == 0
    finally:
        await conn.close()


async def test_auto_without_a_listener_logs_the_notice(
    fresh: tuple[str, RoleNames, str], caplog: pytest.LogCaptureFixture
) -> None:
    dsn, roles, _ = fresh
    with caplog.at_level(logging.WARNING, logger="pulse.cloud.db"):
        await migrate(dsn, roles)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "not preloaded" in caplog.records[0].getMessage()


async def test_asking_for_timescaledb_is_refused_with_a_code_and_changes_nothing(fresh: tuple[str, RoleNames, str]) -> None:
    dsn, roles, _ = fresh
    with pytest.raises(StorageEngineError) as refused:
        await migrate(dsn, roles, engine="timescaledb")
    assert refused.value.code == Code.STORAGE_TIMESCALEDB_UNAVAILABLE
    assert "shared_preload_libraries" in refused.value.message
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 0
        assert await conn.fetchval("SELECT to_regclass('public.telemetry')") is None
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", roles.app) == 0
    finally:
        await conn.close()


def _pulse(args: list[str], dsn: str, prefix: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_") and k != "DATABASE_URL"}
    env |= {"PULSE_DATABASE_URL": dsn, "PULSE_DB_ROLE_PREFIX": prefix, "PULSE_MODE": "development", **extra}
    return subprocess.run([sys.executable, "-m", "pulse.cli.main", *args], env=env, capture_output=True, text=True, timeout=120)


def test_cloud_migrate_prints_the_fallback_and_refuses_an_explicit_timescaledb(fresh: tuple[str, RoleNames, str]) -> None:
    dsn, _, prefix = fresh
    refused = _pulse(["cloud", "migrate"], dsn, prefix, PULSE_STORAGE_ENGINE="timescaledb")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "storage.timescaledb_unavailable" in refused.stderr and "Traceback" not in refused.stderr

    done = _pulse(["cloud", "migrate"], dsn, prefix)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith("notice: telemetry uses native partitioning") and "not preloaded" in first
    assert second.startswith("applied: 0001")

    # the table is native now: an explicit request for TimescaleDB is refused at every later start too
    again = _pulse(["cloud", "migrate"], dsn, prefix, PULSE_STORAGE_ENGINE="timescaledb")
    assert again.returncode == 2 and "storage.timescaledb_unavailable" in again.stderr
    assert "native partitioning" in again.stderr
    assert _pulse(["cloud", "migrate"], dsn, prefix).stdout.strip() == "the schema is up to date"
