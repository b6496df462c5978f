"""Provisioning in a real browser (Debian's Chromium through playwright-core) against a real cloud
under uvicorn: the 4-step wizard ending with a token shown once; the CSV import's preview with row
errors found in the browser, then by the server (an existing device id, the device limit with the
same code as everywhere), then a good import with tokens; activation codes made, shown once and
revoked. Screenshots: tests/artifacts/console/provision-*.png."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_provision_driver.mjs")
PASSWORD = "correct horse battery staple"
CODE = re.compile(r"[23456789ABCDEFGHJKMNPQRSTVWXYZ]{5}-[23456789ABCDEFGHJKMNPQRSTVWXYZ]{5}")


async def test_wizard_csv_import_and_activation_codes_in_a_browser(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    app = create_app(cloud_settings.model_copy(update={"subscription_cache_s": 0.0}), notify=NotifySettings(workers=False))
    async with app.router.lifespan_context(app), serve(app, lifespan=False) as base, httpx.AsyncClient(base_url=base) as client:
        db = app.state.pulse.db
        slug = "prov-" + uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, slug=slug, name="Provisioning", actor="test")
        email, op = f"admin-{slug}@example.com", f"op-{slug}@example.com"
        await create_user(db, email=email, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
        await create_user(db, email=op, password=PASSWORD, roles=["operator-admin"], tenant=None, actor="test")

        async def bearer(who: str) -> dict[str, str]:
            r = await client.post("/auth/login", json={"email": who, "password": PASSWORD})
            return {"Authorization": f"Bearer {r.json()['access_token']}"}

        admin, operator = await bearer(email), await bearer(op)
        r = await client.post(
            f"/api/v1/operator/tenants/{tenant}/subscriptions",
            json={"kind": "MAIN", "device_limit": 3, "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"},
            headers=operator,
        )
        assert r.status_code == 201, r.text
        assert (await client.post("/api/v1/sites", json={"name": "North"}, headers=admin)).status_code == 201
        rule = {"id": "hot-floor-2", "name": "Hot on floor 2", "severity": "major", "metric": "temp_c", "operator": "GT",
                "threshold": 30, "clear_threshold": 28, "scope": {"tags": {"floor": "2"}}}
        assert (await client.post("/api/v1/rules", json=rule, headers=admin)).status_code == 201
        other = {**rule, "id": "cellar", "name": "Cellar only", "scope": {"tags": {"floor": "-1"}}}
        assert (await client.post("/api/v1/rules", json=other, headers=admin)).status_code == 201
        assert (await client.post("/api/v1/devices", json={"device_id": "taken-1"}, headers=admin)).status_code == 201

        seen = await run_driver(DRIVER, {"base": base, "artifacts": str(ARTIFACTS), "prefix": "provision-", "password": PASSWORD, "email": email})

        # what the browser did is what the API holds
        devices = (await client.get("/api/v1/devices", headers=admin)).json()["items"]
        wiz = next(d for d in devices if d["device_id"] == "wiz-1")
        token = seen["wizard_token"]
        r = await client.post("/ingest/v1/telemetry", json=[{"v": 1, "ts": int(time.time() * 1000), "metrics": {"temp_c": 21}}],
                              headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text  # the token shown once works
        imported_token = seen["import_tokens"].split(",", 1)[1]
        r = await client.post("/ingest/v1/telemetry", json=[{"v": 1, "ts": int(time.time() * 1000), "metrics": {"temp_c": 21}}],
                              headers={"Authorization": f"Bearer {imported_token}"})
        assert r.status_code == 200, r.text

    assert seen["console_errors"] == [] or all("409" in e or "422" in e for e in seen["console_errors"]), seen["console_errors"]
    assert "1-128" in seen["wizard_bad_id"] and seen["next_disabled"] is True
    assert wiz["name"] == "Boiler room sensor" and wiz["status"] == "active" and sorted(wiz["tags"]) == ["floor=2", "hvac"]
    assert "Hot on floor 2" in seen["rules_watching"] and "Cellar only" not in seen["rules_watching"]
    assert token.startswith("pdt_")

    assert "4 with problems" in seen["preview_summary"] and seen["import_disabled"] is True
    problems = [row for row in seen["preview_rows"] if "—" not in row[-2:]]
    assert len(problems) == 4
    assert any("repeats line 2" in row for row in seen["preview_rows"])
    assert any('no site named "South"' in row for row in seen["preview_rows"])
    assert any("taken-1" in row and "api.conflict" in row for row in seen["server_rows"])
    assert "device limit" in seen["limit"] or "subscription" in seen["limit"], seen["limit"]
    assert "1 device(s) imported" in seen["imported"] and seen["import_tokens"].startswith("imp-a,pdt_")

    assert len(seen["codes"]) == 3 and all(CODE.fullmatch(c) for c in seen["codes"])
    assert sorted(seen["code_states"]) == ["revoked", "unused", "unused"]
