"""The console's Reports page and the device chart's long ranges in a real browser (Debian's
Chromium through playwright-core) against a real cloud under uvicorn: a year of a device's history
drawn from the archive's daily rollups after PostgreSQL dropped it, the SLA card's figures and
chart, a streamed export downloaded, and the daily scheduled report opened from the history.
Screenshots go to tests/artifacts/console/ (6x.png).

The data is placed relative to the moment the test runs (the browser asks for "the last 7 days"
and "the last year" by its own clock); no figure depends on the time of day."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from archive_data import put_rows
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.archive.archiver import Archiver
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.reports import worker as report_worker
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_reports_driver.mjs")
PASSWORD = "correct horse battery staple"


async def test_reports_page_and_year_long_device_chart(cloud_settings: Settings, serve: Any, tmp_path: Path) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    settings = cloud_settings.model_copy(update={"archive_dir": tmp_path / "archive"})
    app = create_app(settings)
    now = dt.datetime.now(dt.UTC)
    today = dt.datetime(now.year, now.month, now.day, tzinfo=dt.UTC)
    async with app.router.lifespan_context(app), serve(app, lifespan=False) as base, httpx.AsyncClient(base_url=base) as client:
        db = app.state.pulse.db
        slug = "reports-" + uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, slug=slug, name="Reports Works", actor="test")
        email = f"admin-{slug}@example.com"
        await create_user(db, email=email, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
        token = (await client.post("/auth/login", json={"email": email, "password": PASSWORD})).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        device = (await client.post("/api/v1/devices", json={"device_id": "meter-1"}, headers=headers)).json()["id"]

        # a year of daily readings, archived (retention long enough for the pass), then gone from PostgreSQL
        days = [today - dt.timedelta(days=d) for d in range(360, 1, -1)]
        await put_rows(settings.database_url, [(d + dt.timedelta(hours=12), tenant, "meter-1", {"kw": float(i % 50)}, i) for i, d in enumerate(days)])
        archiver = Archiver(db, app.state.pulse.archive, work_dir=tmp_path / "work", lag=dt.timedelta(hours=1), retention_days=400)
        assert len((await archiver.run_once(now)).archived) == len(days)
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.execute("DELETE FROM telemetry WHERE tenant_id = $1", tenant)
            # SLA figures of the last 7 days: meter-1 offline for one day; two alerts, closed after 30 and 90 min
            await conn.executemany(
                "INSERT INTO device_state_history (tenant_id, device_id, status, at) VALUES ($1, $2, $3, $4)",
                [(tenant, "meter-1", "online", now - dt.timedelta(days=30)), (tenant, "meter-1", "offline", now - dt.timedelta(days=3)),
                 (tenant, "meter-1", "online", now - dt.timedelta(days=2)), (tenant, "pump-2", "online", now - dt.timedelta(days=30))],
            )
            for device_id, opened, minutes in (("meter-1", 3, 30), ("meter-1", 2.5, 90), ("pump-2", 1, None)):
                at = now - dt.timedelta(days=opened)
                await conn.execute(
                    "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, state, explanation, opened_at, closed_at)"
                    " VALUES ($1, $2, 'hot', 'major', $3, '{}', $4, $5)",
                    tenant, device_id, "closed" if minutes else "open", at, at + dt.timedelta(minutes=minutes) if minutes else None,
                )
        finally:
            await conn.close()
        await report_worker.run_once(db, now)  # yesterday's scheduled report, in the history

        seen = await run_driver(
            DRIVER, {"base": base, "email": email, "password": PASSWORD, "device": device, "artifacts": str(ARTIFACTS)}, timeout_s=240
        )

    assert seen["console_errors"] == []
    # the year: one point a day from the archive (a day at each end may fall outside the window)
    year = seen["year_points"]
    assert len(year) >= len(days) - 2 and {v for _, v in year} <= {float(i % 50) for i in range(50)}
    assert "daily rollups" in seen["year_note"] and "from the archive" in seen["year_note"]
    assert 25 <= len(seen["month_points"]) <= 31
    # 7 days: one device offline a day (6/7), the other online throughout (7/7): 13/14 = 92.86 %
    assert seen["online"].startswith("92.8"), seen["online"]
    assert seen["mttr"] == "1 h 00 min"
    assert seen["top_devices"] == ["meter-1", "pump-2"] and seen["sla_probe"]["severities"] == {"major": 3}
    assert seen["download_name"] == "devices.csv" and seen["download_progress"].strip() == "done"
    assert any("daily schedule" in row for row in seen["history"]) and any("export of devices (csv)" in row for row in seen["history"])
    assert seen["stored_online"] is not None
