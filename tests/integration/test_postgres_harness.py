"""The test harness gives every module a real, empty PostgreSQL database of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from pulse.cloud.db.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration


async def test_module_database_is_real_and_empty(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        await conn.execute("INSERT INTO t VALUES (1, 'a')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO t VALUES (1, 'b')")
        assert await conn.fetchval("SELECT v FROM t WHERE id = 1") == "a"
        assert int(await conn.fetchval("SHOW server_version_num")) >= 130000
    finally:
        await conn.close()


async def test_embedded_server_keeps_data_across_restart() -> None:
    root = Path(tempfile.mkdtemp(prefix="pulse-embedded-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg", password="s3cret-pw")
    try:
        dsn = server.start()
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (v text)")
        await conn.execute("INSERT INTO kept VALUES ('survives')")
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn.replace("s3cret-pw", "wrong"))
        server.stop()
        assert not server.running()

        dsn = server.start()
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT v FROM kept") == "survives"
        await conn.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
