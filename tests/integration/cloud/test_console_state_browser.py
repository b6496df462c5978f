"""Device state and quarantine in the console, in a real browser (Debian's Chromium through
playwright-core) against a real cloud under uvicorn (issue 18, part B): the overview's offline
figure leads to the devices list filtered by state, the state filter and sort work, the device page
draws the uptime strip from the state history, and the quarantine page shows an HTML-looking
payload as text, filters by code and re-submits a gateway's record once its device is registered.
The rules sweep is driven with explicit clocks; the app's "now" is fixed two hours after the silent
device's last message. The maintenance windows page refuses a window that ends before it starts
(the API's code shown), adds one and ends it. Screenshots go to tests/artifacts/console/ (40-45)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.db.rows import QuarantineRow
from pulse.cloud.ingest.writer import write_rows
from pulse.cloud.settings import Settings
from pulse.protocol.alerts import NO_HEARTBEAT
from pulse.protocol.batch import Record

pytestmark = pytest.mark.e2e
DRIVER = Path(__file__).with_name("console_state_driver.mjs")
PASSWORD = "correct horse battery staple"
HTMLISH = b'{"v": 9, "metrics": {"x": 1}, "note": "<img src=x onerror=\\"window.__pwned=true\\">"}'


async def test_state_filter_uptime_strip_and_quarantine_pages(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    now = [dt.datetime.now(dt.UTC)]
    app = create_app(cloud_settings.model_copy(update={"rules_sweep_interval_s": 3600}), clock=lambda: now[0])
    async with app.router.lifespan_context(app), serve(app, lifespan=False) as base, httpx.AsyncClient(base_url=base) as client:
        db = app.state.pulse.db
        slug = "works-" + uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, slug=slug, name="Water Works", actor="test")
        email = f"admin-{slug}@example.com"
        await create_user(db, email=email, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
        token = (await client.post("/auth/login", json={"email": email, "password": PASSWORD})).json()["access_token"]
        a = {"Authorization": f"Bearer {token}"}
        tokens = {}
        for name, attrs in (("pump-a", {}), ("pump-b", {"interval_s": 3600}), ("spare", {})):
            r = await client.post("/api/v1/devices", json={"device_id": name, "attributes": attrs}, headers=a)
            assert r.status_code == 201, r.text
            tokens[name] = (await client.post(f"/api/v1/devices/{r.json()['id']}/credentials", headers=a)).json()["token"]
        for name in ("pump-a", "pump-b"):
            env = {"v": 1, "ts": int(time.time() * 1000), "metrics": {"flow": 3.5}}
            r = await client.post("/ingest/v1/telemetry", json=env, headers={"Authorization": f"Bearer {tokens[name]}"})
            assert r.status_code == 200, r.text
        r = await client.post("/ingest/v1/telemetry", content=HTMLISH, headers={"Authorization": f"Bearer {tokens['pump-a']}", "content-type": "application/json"})
        assert r.status_code == 422, r.text
        rec = Record(seq=1, device_id="pump-c", ts_ms=int(time.time() * 1000), type="telemetry", metrics={"flow": 2.0})
        async with db.writer_transaction() as conn:
            raw = json.dumps({"stream": "telemetry", **rec._asdict()}).encode()
            await write_rows(conn, [], [QuarantineRow(tenant, "pump-c", None, "gateway", "sync.unknown_device", "not registered", raw, now[0])])

        async def last_seen() -> int | None:
            async with db.tenant(tenant) as conn:
                state = await conn.fetchval("SELECT state FROM rule_state WHERE rule_id = $1 AND device_id = 'pump-a'", NO_HEARTBEAT)
            return None if state is None else int(json.loads(state)["last_seen_ms"])

        deadline = time.monotonic() + 20
        while (t0 := await last_seen()) is None:
            assert time.monotonic() < deadline, "pump-a's first message was not evaluated"
            await asyncio.sleep(0.05)
        await app.state.rules.sweep_once(t0 + 450_000)
        await app.state.rules.sweep_once(t0 + 900_000)
        now[0] = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC) + dt.timedelta(hours=2)

        seen = await run_driver(
            DRIVER,
            {
                "base": base, "artifacts": str(ARTIFACTS), "prefix": "state-", "password": PASSWORD, "a_email": email,
                "a_token": token, "silent_id": "pump-a", "unknown_id": "pump-c", "time_zone": "UTC",
            },
        )  # fmt: skip
        latest = await client.get("/api/v1/quarantine", params={"resubmitted": "true"}, headers=a)

    assert seen["console_errors"] == []
    assert seen["kpi_offline"] == "1" and seen["kpi_never_seen"] == "1"
    assert seen["offline_url"] == "?state=offline" and seen["offline_rows"] == ["pump-a"] and seen["offline_state_cells"] == ["offline"]
    assert seen["never_rows"] == ["spare"] and seen["sorted_rows"] == ["pump-a", "pump-b", "spare"]
    assert seen["device_state"] == "offline"
    statuses = [s for s, _ in seen["strip_24h"]]
    assert statuses == ["unknown", "online", "stale", "offline"]
    widths = dict(seen["strip_24h"])
    assert widths["online"] == pytest.approx(100 * 450 / 86400, abs=0.01) and widths["offline"] == pytest.approx(100 * 6300 / 86400, abs=0.01)
    assert "Online 6.3%" in seen["summary_24h"]
    assert [s for s, _ in seen["strip_7d"]] == ["unknown", "online", "stale", "offline"]
    assert seen["quarantine_rows"] == 2
    assert HTMLISH.decode() in seen["raw_texts"]  # the bytes, shown as text
    assert seen["injected_elements"] == 0 and seen["xss_fired"] is False
    assert "quarantine.no_device" in seen["refused_outcome"] and seen["registered"] == 201
    assert "re-submitted by" in seen["resubmitted"]
    assert [q["device_id"] for q in latest.json()["items"]] == ["pump-c"]
    assert "api.invalid" in seen["window_refused"] and seen["windows_after_end"] == 0
    assert len(seen["window_rows"]) == 1 and "pump-a" in seen["window_rows"][0] and "pump swap" in seen["window_rows"][0]
    assert "2099" in seen["window_rows"][0]
    for name in ("40-devices-offline", "41-uptime-24h", "42-uptime-7d", "43-quarantine", "44-quarantine-resubmitted", "45-maintenance"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name

