"""The console's Jobs page in a real browser (Debian's Chromium through playwright-core) against a
real cloud under uvicorn whose job runner runs on its own clock: the firmware library, a job made
from a tag selection with its live progress while direct devices report over HTTP ingest, the stage
chart, a rollback, and a command job aborted by its canary with the devices' reasons. Screenshots go
to tests/artifacts/console/ (jobs-*.png)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("jobs_console_driver.mjs")
PASSWORD = "correct horse battery staple"


async def test_jobs_page_shows_live_progress_rollback_and_an_abort(cloud_settings: Settings, serve: Any, tmp_path: Path) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    settings = Settings(**{**cloud_settings.model_dump(), "jwt_secret": cloud_settings.jwt_secret.get_secret_value(),
                           "data_dir": tmp_path / "data", "job_interval_s": 0.3})
    app = create_app(settings)
    async with app.router.lifespan_context(app), serve(app, lifespan=False) as base, httpx.AsyncClient(base_url=base) as client:
        db = app.state.pulse.db
        slug = "fleet-" + uuid.uuid4().hex[:6]
        await create_tenant(db, slug=slug, name="Fleet Works", actor="test")
        email = f"admin-{slug}@example.com"
        await create_user(db, email=email, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
        token = (await client.post("/auth/login", json={"email": email, "password": PASSWORD})).json()["access_token"]
        h = {"Authorization": f"Bearer {token}"}
        tokens = {}
        for i in range(5):
            device_id = f"ups-{i:02d}"
            r = await client.post("/api/v1/devices", json={"device_id": device_id, "tags": ["ups"]}, headers=h)
            assert r.status_code == 201, r.text
            tokens[device_id] = (await client.post(f"/api/v1/devices/{r.json()['id']}/credentials", headers=h)).json()["token"]
        image = b"ups firmware 3.1" * 4096
        r = await client.post("/api/v1/firmware", content=image, headers={**h, "Content-Type": "application/octet-stream"},
                              params={"version": "3.1.0", "model": "ups", "sha256": hashlib.sha256(image).hexdigest()})
        assert r.status_code == 201, r.text
        seen = await run_driver(DRIVER, {"base": base, "artifacts": str(ARTIFACTS), "prefix": "jobs-", "password": PASSWORD,
                                         "email": email, "token": token, "tokens": tokens, "devices": sorted(tokens)})
        back = (await client.get(f"/api/v1/jobs/{seen['rollback_id']}", headers=h)).json()

    assert seen["console_errors"] == []
    assert any("ups" in row and "3.1.0" in row for row in seen["firmware_rows"])
    assert seen["preview"] == "5 devices match now."
    assert "1 succeeded" in seen["live_counts"]
    assert seen["final_counts"] == "5 succeeded"
    assert seen["stage_probe"] == [{"stage": 1, "succeeded": 1, "failed": 0}, {"stage": 2, "succeeded": 4, "failed": 0}]
    assert back["rollback_of"] == seen["job_id"] and back["action"]["patch"] == {"interval_s": None}
    assert "2 of 2 devices of stage 1 failed" in seen["abort_reason"]
    assert seen["failed_reasons"] == 2
    assert seen["job_rows"] == 3
