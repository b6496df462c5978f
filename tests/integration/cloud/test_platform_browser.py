"""The operator's platform pages in a real browser (Debian's Chromium through playwright-core)
against a real cloud under uvicorn: an hour of platform samples taken on the test's clock while a
device sends over HTTP, a gateway whose backlog is old, alerts of a tenant at known hours. The NOC
shows the pipeline strip (the gateways stage red, with its figure), trend charts, the heatmap; the
feed holds events while paused; tenant health has sparklines; the System page lists workers and
capacity; the operator audit log lists the views (operator-admin only). Screenshots go to
tests/artifacts/console/platform-*.png."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.platform.health import HealthThresholds
from pulse.cloud.platform.sampler import Sampler
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("platform_driver.mjs")
PASSWORD = "correct horse battery staple"


def this_hour() -> dt.datetime:
    """ "Now" for the API and the sampler: the start of the current hour, so that readings (which
    ingest checks against the real clock) fall inside the pages' windows whatever the time of day."""
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


async def test_noc_system_and_operator_audit_pages_show_the_platform(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    NOW = this_hour()
    clock = {"at": NOW - dt.timedelta(minutes=60), "mono": 0.0}
    app = create_app(cloud_settings, clock=lambda: NOW)
    async with app.router.lifespan_context(app), serve(app, lifespan=False) as base, httpx.AsyncClient(base_url=base) as client:
        db = app.state.pulse.db
        slug = "works-" + uuid.uuid4().hex[:6]
        tenant_id = await create_tenant(db, slug=slug, name="Works", actor="test")
        emails = {role: f"{role}-{slug}@example.com" for role in ("tenant-admin", "operator", "operator-admin")}
        for role, email in emails.items():
            await create_user(db, email=email, password=PASSWORD, roles=[role], tenant=slug if role == "tenant-admin" else None, actor="test")
        r = await client.post("/auth/login", json={"email": emails["tenant-admin"], "password": PASSWORD})
        a = {"Authorization": f"Bearer {r.json()['access_token']}"}
        device_id = "press-" + uuid.uuid4().hex[:6]
        device = (await client.post("/api/v1/devices", json={"device_id": device_id}, headers=a)).json()["id"]
        token = (await client.post(f"/api/v1/devices/{device}/credentials", headers=a)).json()["token"]
        async with db.tenant(tenant_id) as conn:
            await conn.execute(
                "INSERT INTO gateways (tenant_id, name, status, last_seen_at, backlog, oldest_unsynced_at)"
                " VALUES ($1, 'yard', 'active', $2, '{\"telemetry\": 900}'::jsonb, $3)",
                tenant_id,
                NOW - dt.timedelta(seconds=20),
                NOW - dt.timedelta(minutes=80),
            )
            await conn.executemany(
                "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, explanation, opened_at) VALUES ($1, $2, 'hot', 'major', '{}'::jsonb, $3)",
                [(tenant_id, f"d{i}", NOW - dt.timedelta(hours=h, minutes=5)) for i, h in enumerate([1, 1, 3, 26, 50])],
            )
        sampler = Sampler(
            db,
            app.state.metrics,
            writer_depth=lambda: app.state.writer.queued_rows,
            clock=lambda: clock["at"],
            monotonic=lambda: clock["mono"],
            rules=app.state.rules,
            thresholds=HealthThresholds(),
        )
        await sampler.install_rules()
        for minute in range(61):  # an hour of samples, one a minute, readings rising and falling
            n = 1 + (minute % 12)
            r = await client.post(
                "/ingest/v1/telemetry", json=[{"v": 1, "ts": int(clock["at"].timestamp() * 1000) + i, "metrics": {"temp": 20 + i}} for i in range(n)], headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
            await sampler.sample_once()
            clock["at"] += dt.timedelta(minutes=1)
            clock["mono"] += 60
        seen = await run_driver(
            DRIVER,
            {
                "base": base,
                "artifacts": str(ARTIFACTS),
                "prefix": "platform-",
                "password": PASSWORD,
                "admin_email": emails["operator-admin"],
                "operator_email": emails["operator"],
                "slug": slug,
                "device_id": device_id,
                "device_token": token,
                "time_zone": "UTC",
            },
        )
        async with db.operator(actor="test", action="test.read") as conn:
            platform_alerts = await conn.fetch("SELECT rule_id, device_id, state FROM alerts WHERE rule_id LIKE 'platform.%'")

    assert seen["console_errors"] == []
    assert {"NOC", "System", "Operator audit"} <= set(seen["nav"])
    assert "System" in seen["operator_nav"] and "Operator audit" not in seen["operator_nav"]
    stages = {s["id"]: s for s in seen["stages"]}
    assert [s["id"] for s in seen["stages"]] == ["stage-gateways", "stage-ingest", "stage-writer", "stage-rules", "stage-notify"]
    assert stages["stage-gateways"]["status"] == "critical" and "yard" in stages["stage-gateways"]["text"]
    assert stages["stage-rules"]["status"] == "ok"
    assert seen["messages"][0]["points"] >= 55 and seen["messages"][0]["last"] > 0
    assert "online" in {line["name"] for line in seen["device_states"]}
    assert seen["heatmap"]["total"] >= 4  # the tenant's alerts of the last 7 days, and the platform's own
    assert seen["paused_ingest"] == 200 and seen["rows_while_paused"] == 0  # held back while paused
    assert seen["resumed_ingest"] == 200 and seen["rows_after_resume"] >= 1
    assert seen["messages_day"][0]["points"] >= 4
    # the last 24 hours: the three inserted, and GATEWAY_OFFLINE if the sweep found the gateway silent by the real clock
    assert sum(int(v) for v in seen["spark_alerts"].split(",")) >= 3
    assert sum(int(v) for v in seen["spark_readings"].split(",")) > 0
    assert any("platform sampler" in w for w in seen["workers"])
    assert any("yard" in json.dumps(line) for line in seen["backlog_chart"])
    assert seen["audit_rows"] and all("system." in row for row in seen["audit_rows"])
    # the gateway's old backlog opened the platform's own alert, for that gateway
    assert [(a["rule_id"], a["state"]) for a in platform_alerts] == [("platform.gateway_backlog", "open")]
