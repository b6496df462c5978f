"""A real `pulse cloud archive` process killed with SIGKILL in the middle of an export: after the
day's files were written and before its checkpoint committed. The next run writes that day again
under the same names and goes on; in the end every day is in the archive exactly once."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest
from archive_data import at, put_rows, read

from pulse.cloud.archive import layout
from pulse.cloud.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

DAYS = [dt.date(2026, 2, d) for d in range(1, 5)]


def spawn(settings: Settings, tmp: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": settings.database_url,
        "PULSE_DB_ROLE_PREFIX": settings.db_role_prefix,
        "PULSE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "PULSE_DATA_DIR": str(tmp / "data"),
        "PULSE_ARCHIVE_DIR": str(tmp / "archive"),
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pulse.cli.main", "cloud", "archive", "--at", "2026-02-10T12:00:00+00:00"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )


async def test_sigkill_between_a_days_files_and_its_checkpoint_neither_loses_nor_duplicates_the_day(
    cloud, cloud_settings: Settings, tmp_path: Path
) -> None:
    tenant, _ = await cloud.tenant_user()
    dsn = cloud_settings.database_url
    await put_rows(dsn, [
        (at(d.isoformat(), h, m), tenant, f"dev-{k}", {"v": float(h * 60 + m), "on": m % 2 == 0}, h * 60 + m)
        for d in DAYS for h in range(0, 24, 3) for m in (0, 17) for k in range(3)
    ])
    log = tmp_path / "archive.log"
    lock = await asyncpg.connect(dsn)
    watch = await asyncpg.connect(dsn)
    proc = None
    try:
        # hold the checkpoint table: the archiver writes the first day's files, then waits at its insert
        tx = lock.transaction()
        await tx.start()
        await lock.execute("LOCK TABLE archive_days IN SHARE ROW EXCLUSIVE MODE")
        proc = spawn(cloud_settings, tmp_path, log)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
            waiting = await watch.fetchval(  # not `lock`: a transaction sees one snapshot of pg_stat_activity
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO archive_days%'"
            )
            if waiting:
                break
            assert time.monotonic() < deadline, "the archiver never reached its first checkpoint"
            await asyncio.sleep(0.05)
        first = DAYS[0]
        assert all((tmp_path / "archive" / layout.key(tenant, layer, first)).is_file() for layer in layout.LAYERS)
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(proc.wait, 30) == -signal.SIGKILL
        # the dead client's server session still waits for the lock; end it as PostgreSQL would on
        # its next read from the closed socket, so the half-done transaction can never commit
        await lock.execute("SELECT pg_terminate_backend($1)", waiting)
        await tx.rollback()
        assert await lock.fetchval("SELECT count(*) FROM archive_days") == 0

        proc = spawn(cloud_settings, tmp_path, log)
        assert await asyncio.to_thread(proc.wait, 120) == 0, log.read_text(errors="replace")[-3000:]
        assert "archived 4 days" in log.read_text()

        days = await lock.fetch("SELECT day, rows FROM archive_days WHERE tenant_id = $1 ORDER BY day", tenant)
        assert [r["day"] for r in days] == DAYS
        for day, row in zip(DAYS, days, strict=True):
            stored = await lock.fetchval(
                "SELECT count(*) FROM telemetry WHERE tenant_id = $1 AND time >= $2 AND time < $3", tenant, *layout.day_bounds(day)
            )
            bronze = tmp_path / "archive" / layout.key(tenant, "bronze", day)
            assert read(bronze, "SELECT count(*), count(DISTINCT (device_id, time)) FROM f") == [(stored, stored)]
            assert row["rows"] == stored == 48
            silver = tmp_path / "archive" / layout.key(tenant, "silver", day)
            assert read(silver, "SELECT count(*), count(DISTINCT (device_id, metric, time)) FROM f") == [(96, 96)]
        # one file per layer and day, and nothing left half-written
        files = sorted(p.relative_to(tmp_path / "archive").as_posix() for p in (tmp_path / "archive").rglob("*") if p.is_file())
        assert files == sorted(layout.key(tenant, layer, d) for layer in layout.LAYERS for d in DAYS)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
        await lock.close()
        await watch.close()
