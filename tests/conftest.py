"""Shared fixtures: a real PostgreSQL for the whole run, a fresh database per test module.

The server is a throwaway cluster made with initdb/pg_ctl in a temporary directory on a free port
(as root it runs under the `postgres` account), or the server named by PULSE_TEST_DATABASE_URL
(an admin DSN: it must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from cloud_roles import drop_roles
from natsserver import NatsServer, start_nats
from timescale import PRELOAD, timescaledb_bindir

from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.migrate import migrate
from pulse.cloud.settings import Settings

# Every `pulse cloud serve` a test starts inherits this environment: its daily SLA reports and the
# telemetry archive would run on the wall clock and send real notifications to the test's receivers
# (a report queued at start-up took a scripted answer meant for an alert). Their own tests turn them
# on with a passed-in clock.
os.environ["PULSE_REPORTS_ENABLED"] = "false"
os.environ["PULSE_ARCHIVE_ENABLED"] = "false"
# Ports handed out (common/ports.py) are reserved machine-wide until the process that took them
# ends: a gateway a test stops and starts again on its ports found one taken, in that moment, by a
# test run beside it in another clone (CI with both cores busy).
os.environ.setdefault("PULSE_PORT_RESERVATIONS", os.path.join(tempfile.gettempdir(), "pulse-test-ports"))

# Nothing a test starts may outlive it, and the test process always ends (tests/leakcheck.py).
pytest_plugins = ("leakcheck", "pytester")


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a superuser on a real PostgreSQL server, for the whole test session."""
    if url := os.environ.get("PULSE_TEST_DATABASE_URL"):
        yield url
        return
    root = Path(tempfile.mkdtemp(prefix="pulse-test-pg-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg", durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_timescale_admin_dsn() -> Iterator[str]:
    """DSN of a superuser on a second throwaway cluster started with shared_preload_libraries =
    timescaledb; skipped (with the reason) where TimescaleDB is not installed (tests/timescale.py)."""
    bindir, why = timescaledb_bindir()
    if bindir is None:
        pytest.skip(f"TimescaleDB tests skipped: {why}")
    root = Path(tempfile.mkdtemp(prefix="pulse-test-tsdb-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg", durable=False, bindir=bindir, extra_settings=PRELOAD)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def database_url(pg_admin_dsn: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test module; dropped afterwards."""
    module = re.sub(r"[^a-z0-9]+", "_", request.module.__name__.rsplit(".", 1)[-1].lower())[:30]
    name = f"t_{module}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(pg_admin_dsn, name)
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def serve() -> Callable[..., AbstractAsyncContextManager[str]]:
    """``async with serve(app) as base_url``: the ASGI app under a real uvicorn on a free loopback
    port, in this test's event loop; stopped when the block ends. ``lifespan=False`` for an app
    whose lifespan the test already entered."""

    @asynccontextmanager
    async def run(app: Any, *, lifespan: bool = True) -> AsyncIterator[str]:
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on" if lifespan else "off", ws="websockets-sansio"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=None))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task

    return run


# --- the cloud's settings on a module's database (migrated, with roles of their own) -------------


@pytest.fixture(scope="module")
def cloud_settings(database_url: str, pg_admin_dsn: str) -> Iterator[Settings]:
    """Settings for this module's database, with freshly migrated schema and roles of its own."""
    settings = Settings(
        mode="development",
        database_url=database_url,
        db_role_prefix="t" + uuid.uuid4().hex[:12],
        jwt_secret="test-secret-" + uuid.uuid4().hex,
        maintenance_interval_s=3600,
        archive_enabled=False,  # the archive and the daily reports run on a passed-in clock in their own tests
        reports_enabled=False,
        writer_flush_ms=5,
        platform_sample_interval_s=0,  # tests that sample call Sampler.sample_once on their own clock
    )
    asyncio.run(migrate(database_url, settings.roles))
    yield settings
    asyncio.run(drop_roles(database_url, pg_admin_dsn, settings.roles))


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of the test's own (not the session's shared one), for tests that stop
    and start it, or run the cloud as a real process against it. Not durable: fsync is off."""
    root = Path(tempfile.mkdtemp(prefix="pulse-own-pg-"))
    os.chmod(root, 0o755)  # the postgres account must reach the cluster (tests run as root)
    server = EmbeddedPostgres(root / "pg", durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """A real NATS server with JetStream for this test (tests/natsserver.py)."""
    server = start_nats()
    try:
        yield server
    finally:
        server.close()
