"""`pulse bench sync` on a small buffer: the drain and the raw COPY write the same rows, and the
figures it prints come from counting them (0 lost, 0 duplicated)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pulse.bench.sync import run
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration


async def _mismatches(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        q = "SELECT device_id, seq, time, metrics::text FROM telemetry WHERE source = $1"
        gateway = await conn.fetch(q, "gateway")
        raw = await conn.fetch(q, "bench-raw")
    finally:
        await conn.close()
    return len(gateway), len(raw), len({tuple(r) for r in gateway} ^ {tuple(r) for r in raw})


def test_bench_sync_drains_everything_once_and_copies_the_same_rows(cloud_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", cloud_settings.database_url)
    monkeypatch.setenv("PULSE_DB_ROLE_PREFIX", cloud_settings.db_role_prefix)
    figures = run(["--points", "5000"])
    assert figures["points"] >= 5000 and figures["records"] > 1000, figures  # type: ignore[operator]
    assert (figures["lost"], figures["duplicated"]) == (0, 0), figures
    assert figures["batches"] >= 1 and figures["wire_bytes_per_point"] > 0, figures  # type: ignore[operator]
    assert figures["database"] == "DATABASE_URL"
    gateway, raw, differing = asyncio.run(_mismatches(cloud_settings.database_url))
    assert gateway == raw == figures["records"] and differing == 0, (gateway, raw, differing)
