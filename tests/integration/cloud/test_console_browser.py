"""The web console in a real browser (Debian's Chromium driven by playwright-core) against a real
cloud under uvicorn: log in, find the device, see its chart hold the stored readings, see a new
reading arrive live without a reload, issue a credential that really works, create a site, and a
user of another tenant gets the 404 page for the device. Screenshots go to tests/artifacts/console/."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.auth.accounts import create_tenant, create_user

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_driver.mjs")
PASSWORD = "correct horse battery staple"
FLEET = 2500
BUCKET_MS = 10_000  # what the server picks for the console's default 1 h range (600 buckets at most)


async def test_operator_sees_live_telemetry_and_other_tenants_get_404(cloud: Cloud, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    db = cloud.app.state.pulse.db
    a_slug, b_slug = "acme-" + uuid.uuid4().hex[:6], "other-" + uuid.uuid4().hex[:6]
    await create_tenant(db, slug=a_slug, name="Acme Water", actor="test")
    await create_tenant(db, slug=b_slug, name="Other Co", actor="test")
    a_email, b_email = f"ops-{a_slug}@example.com", f"viewer-{b_slug}@example.com"
    await create_user(db, email=a_email, password=PASSWORD, roles=["tenant-admin"], tenant=a_slug, actor="test")
    await create_user(db, email=b_email, password=PASSWORD, roles=["customer"], tenant=b_slug, actor="test")
    operator_email = f"noc-{a_slug}@example.com"
    await create_user(db, email=operator_email, password=PASSWORD, roles=["operator"], tenant=None, actor="test")
    r = await cloud.client.post("/auth/login", json={"email": a_email, "password": PASSWORD})
    a = {"Authorization": f"Bearer {r.json()['access_token']}"}

    device, device_id, token = await cloud.device_with_token(a, device_id="pump-" + uuid.uuid4().hex[:6])
    await cloud.client.patch(f"/api/v1/devices/{device}", json={"status": "active", "tags": ["pumps"]}, headers=a)
    # a fleet of thousands, so the list has to page on the server
    fleet = "device_id,tags\n" + "".join(f"valve-{i:05d},valves\n" for i in range(FLEET))
    r = await cloud.client.post("/api/v1/devices/import", content=fleet, headers={**a, "Content-Type": "text/csv"})
    assert r.status_code == 201 and r.json()["imported"] == FLEET, r.text

    # history: one reading a minute for 20 minutes, each in its own bucket
    now_ms = int(time.time() * 1000)
    history = [(now_ms - (20 - i) * 60_000, 20.0 + i * 0.5) for i in range(20)]

    async with serve(cloud.app, lifespan=False) as base:
        import httpx

        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post(
                "/ingest/v1/telemetry",
                json=[{"v": 1, "ts": t, "metrics": {"temp": v, "pressure": 1.2}} for t, v in history],
                headers={"Authorization": f"Bearer {token}"},
            )
            assert r.status_code == 200 and r.json()["accepted"] == 20, r.text

            task = {
                "base": base,
                "artifacts": str(ARTIFACTS),
                "password": PASSWORD,
                "a_email": a_email,
                "b_email": b_email,
                "operator_email": operator_email,
                "a_slug": a_slug,
                "device": device,
                "device_id": device_id,
                "device_token": token,
                "metric": "temp",
                "history_points": len(history),
                "live_ts": int(time.time() * 1000),
                "live_value": 73.25,
                "site_name": "Harbour pumping station",
                "device_name": "Intake pump 2",
            }
            seen = await run_driver(DRIVER, task, timeout_s=120)

            # what the console did to credentials really happened: the rotated secret works and the old
            # one does not; the issued-then-revoked token no longer works
            async def ingest_with(device_token: str) -> int:
                r = await client.post(
                    "/ingest/v1/telemetry",
                    json={"v": 1, "metrics": {"temp": 1}},
                    headers={"Authorization": f"Bearer {device_token}"},
                )
                return r.status_code

            assert await ingest_with(seen["rotated_token"]) == 200
            assert await ingest_with(token) == 401
            assert await ingest_with(seen["issued_token"]) == 401

    assert seen["console_errors"] == []
    assert "Wrong email or password" in seen["bad_login"]
    assert seen["b_session_renewed"] is True
    assert seen["kpi_active"] == 1 and seen["kpi_provisioned"] == FLEET
    # paging: 100 rows a page, page 2 starts where page 1 ended, and search finds the one device
    everyone = sorted([device_id, *(f"valve-{i:05d}" for i in range(FLEET))])
    assert seen["page1"] == everyone[:100]
    assert seen["page2"] == everyone[100:200]
    assert seen["device_rows"] == 1
    # the chart holds exactly the stored readings, bucketed like the server does
    assert seen["history"] == [[t // BUCKET_MS * BUCKET_MS, v] for t, v in history]
    # ... and then the live one, without a reload
    assert seen["live_ingest_status"] == 200
    assert seen["after_live"][:-1] == seen["history"]
    assert seen["after_live"][-1] == [task["live_ts"] // BUCKET_MS * BUCKET_MS, task["live_value"]]
    assert seen["no_reload"] is True
    assert seen["credential_rows"] == 2 and seen["theme"] == "dark"
    assert seen["rotated_token"] not in (token, seen["issued_token"])
    assert seen["credential_states"] == ["valid", "revoked"]
    # role-aware navigation: an operator gets the operator pages, not a tenant's
    assert seen["operator_nav"] == ["NOC", "Tenant health", "Tenants", "All devices", "All alerts", "System"]
    assert "Acme Water" in seen["operator_tenant_row"] and str(FLEET + 1) in seen["operator_tenant_row"]
    # another tenant's user: the 404 page, and no chart of A's device
    assert "No such device in your tenant" in seen["b_not_found_text"]
    assert seen["b_chart_count"] == 0
    # a customer (read-only) gets the tenant's pages but not the audit log
    assert "Alerts" in seen["b_nav"] and "Audit log" not in seen["b_nav"]

    r = await cloud.client.get(f"/api/v1/devices/{device}", headers=a)
    assert r.json()["name"] == "Intake pump 2" and r.json()["tags"] == ["pumps"] and r.json()["status"] == "active"
    r = await cloud.client.get("/api/v1/sites", headers=a)
    assert [(s["name"], s["address"]) for s in r.json()] == [("Harbour pumping station", "2 Harbour Road")]
    for name in ("01-overview", "03-device", "04-device-live", "08-other-tenant-404"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
