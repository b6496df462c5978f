"""The queued writer: rows from many callers share a COPY; a caller whose rows the database refuses
gets an error without failing the others; the writer keeps going; stop() writes what is queued."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from pulse.cloud.db.pool import role_dsn
from pulse.cloud.db.rows import TelemetryRow, telemetry_row
from pulse.cloud.errors import CloudError
from pulse.cloud.ingest.writer import Writer
from pulse.cloud.settings import Settings, WriterConfig

pytestmark = pytest.mark.integration


def row(tenant: uuid.UUID, body: str | None = None) -> TelemetryRow:
    now = datetime.now(UTC)
    return TelemetryRow(now, tenant, "dev-1", "telemetry", json.dumps({"a": 1}), None, body, None, None, "test", now)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never reached the expected state")


async def count(settings: Settings, tenant: uuid.UUID) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1", tenant))
    finally:
        await conn.close()


async def test_a_refused_callers_rows_do_not_fail_the_others(cloud_settings: Settings) -> None:
    pool = await asyncpg.create_pool(
        role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None), min_size=1, max_size=2
    )
    writer = Writer(WriterConfig(batch_rows=1000, flush_s=0.2, queue_rows=10_000, connections=1))
    writer.start(pool)
    tenant = uuid.uuid4()
    try:
        poisoned = row(tenant, body='{"text": "nul \\u0000 is not storable in jsonb"}')
        results = await asyncio.gather(
            writer.write([row(tenant)] * 3),
            writer.write([row(tenant), poisoned]),
            writer.write([row(tenant)] * 2),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], CloudError) and results[1].code == "api.invalid"
        assert await count(cloud_settings, tenant) == 5

        # a malformed row (a bug upstream) is an error for its caller, and the writer keeps working
        with pytest.raises(CloudError):
            await asyncio.wait_for(writer.write([("not", "a", "row")]), 30)  # type: ignore[list-item]
        await asyncio.wait_for(writer.write([row(tenant)]), 30)
        assert await count(cloud_settings, tenant) == 6

        # stop() drains: queued rows are written before it returns
        pending = asyncio.create_task(writer.write([row(tenant)] * 4))
        await asyncio.sleep(0)
        await writer.stop()
        await pending
        assert await count(cloud_settings, tenant) == 10
    finally:
        await writer.stop()
        await pool.close()


async def test_group_commit_writes_a_lone_request_at_once_and_gathers_while_busy(cloud_settings: Settings) -> None:
    from pulse.cloud.ingest.writer import FlushReport

    pool = await asyncpg.create_pool(
        role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None), min_size=1, max_size=2
    )
    reports: list[FlushReport] = []
    # flush_s of an hour: were the writer to wait for it, these writes would time out
    writer = Writer(WriterConfig(batch_rows=1000, flush_s=3600, queue_rows=10_000, connections=2), on_flush=reports.append)
    writer.start(pool)
    tenant = uuid.uuid4()
    blocker = await asyncpg.connect(cloud_settings.database_url)
    try:
        await asyncio.wait_for(writer.write([row(tenant)]), 30)
        assert [(r.requests, r.rows) for r in reports] == [(1, 1)]

        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
        first = asyncio.create_task(writer.write([row(tenant)]))
        await until(lambda: writer.pending_rows == 1)
        later = [asyncio.create_task(writer.write([row(tenant)] * 2)) for _ in range(3)]
        await until(lambda: writer.pending_rows == 7)
        await tx.rollback()
        await asyncio.wait_for(asyncio.gather(first, *later), 30)
        # the three requests that arrived while the first was being written went out together
        assert [(r.requests, r.rows) for r in reports[1:]] == [(1, 1), (3, 6)]
        assert await count(cloud_settings, tenant) == 8
    finally:
        await blocker.close()
        await writer.stop()
        await pool.close()


async def test_rows_from_the_one_constructor_are_stored_with_their_json_and_keep_the_parsed_metrics(cloud_settings: Settings) -> None:
    pool = await asyncpg.create_pool(
        role_dsn(cloud_settings.database_url, cloud_settings.roles.writer, None), min_size=1, max_size=1
    )
    committed: list[TelemetryRow] = []
    writer = Writer(WriterConfig(batch_rows=1000, flush_s=0.2, queue_rows=10_000, connections=1), on_commit=committed.extend)
    writer.start(pool)
    tenant = uuid.uuid4()
    now = datetime.now(UTC)
    metrics = {"temp_c": 21.5, "on": True, "count": 2**70}  # an integer orjson refuses: the standard library encodes it
    made = telemetry_row(now, tenant, "dev-1", "telemetry", metrics, {"zone": "north"}, None, 7, None, "test", now)
    try:
        await asyncio.wait_for(writer.write([made]), 30)
        assert committed == [made] and committed[0].values is metrics and committed[0].metric_values() == metrics
        conn = await asyncpg.connect(cloud_settings.database_url)
        try:
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                stored = await conn.fetchrow("SELECT metrics, tags, body, seq FROM telemetry WHERE tenant_id = $1", tenant)
        finally:
            await conn.close()
        assert json.loads(stored["metrics"]) == metrics and json.loads(stored["tags"]) == {"zone": "north"}
        assert stored["body"] is None and stored["seq"] == 7
    finally:
        await writer.stop()
        await pool.close()
