"""The console's alerting, twin, gateway, audit, notification and operator pages in a real browser
(Debian's Chromium through playwright-core) against a real cloud under uvicorn with a simulated
device sending over HTTP: a refused rule shows its code at the field, the preview draws where the
rule would fire, the new rule's alert is acknowledged out of the Open tab, desired state is edited
and the delta shown (a version conflict is re-applied; the device's report clears the delta), a
command is sent, a gateway's enrollment token is shown once, the audit log lists what happened, a
channel is tested and an on-call timeline drawn; an operator's NOC shows a live event without a
reload, goes to TV mode, and the health matrix and cross-tenant alerts show the tenant.
Screenshots go to tests/artifacts/console/ (2x-3x.png)."""

from __future__ import annotations

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
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_pages_driver.mjs")
PASSWORD = "correct horse battery staple"


def half_past_midnight() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=30, second=0, microsecond=0)


class Receiver:
    """A webhook receiver on loopback (a plain ASGI app): what the channel's test delivery sends."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(json.loads(body or b"{}"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_alerting_twin_and_operator_pages_work_end_to_end(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    # notifications may reach the loopback receiver below (the SSRF guard refuses loopback otherwise).
    # "Now" for the on-call page is fixed at 00:30 UTC of the day the browser (in UTC) makes its
    # schedule: before its 09:00 handoff, whatever the time of day the test runs at.
    app = create_app(cloud_settings, notify=NotifySettings(allow_networks="127.0.0.0/8"), clock=half_past_midnight)
    receiver = Receiver()
    async with (
        app.router.lifespan_context(app),
        serve(app, lifespan=False) as base,
        serve(receiver, lifespan=False) as hook,
        httpx.AsyncClient(base_url=base) as client,
    ):
        db = app.state.pulse.db
        slug = "plant-" + uuid.uuid4().hex[:6]
        tenant_id = await create_tenant(db, slug=slug, name="Plant Works", actor="test")
        a_email, operator_email = f"admin-{slug}@example.com", f"noc-{slug}@example.com"
        await create_user(db, email=a_email, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
        await create_user(db, email=operator_email, password=PASSWORD, roles=["operator"], tenant=None, actor="test")
        r = await client.post("/auth/login", json={"email": a_email, "password": PASSWORD})
        a_token = r.json()["access_token"]
        a = {"Authorization": f"Bearer {a_token}"}
        device_id = "boiler-" + uuid.uuid4().hex[:6]
        r = await client.post("/api/v1/devices", json={"device_id": device_id}, headers=a)
        assert r.status_code == 201, r.text
        device = r.json()["id"]
        await client.patch(f"/api/v1/devices/{device}", json={"status": "active"}, headers=a)
        token = (await client.post(f"/api/v1/devices/{device}/credentials", headers=a)).json()["token"]
        # a subscription for the Subscription page (issue 20), given by an operator-admin
        await create_user(db, email=f"billing-{slug}@example.com", password=PASSWORD, roles=["operator-admin"], tenant=None, actor="test")
        r = await client.post("/auth/login", json={"email": f"billing-{slug}@example.com", "password": PASSWORD})
        r = await client.post(
            f"/api/v1/operator/tenants/{tenant_id}/subscriptions",
            json={"kind": "MAIN", "device_limit": 50, "starts_at": "2020-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {r.json()['access_token']}"},
        )
        assert r.status_code == 201, r.text

        # the last half hour: temp climbs from 25 to 35.5 and back, so a "temp > 30" rule would have fired
        now_ms = int(time.time() * 1000)
        history = [(now_ms - (30 - i) * 60_000, 25.0 + (i if i < 15 else 30 - i) * 0.75) for i in range(30)]
        r = await client.post(
            "/ingest/v1/telemetry",
            json=[{"v": 1, "ts": t, "metrics": {"temp": v}} for t, v in history],
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and r.json()["accepted"] == len(history), r.text
        seen = await run_driver(
            DRIVER,
            {
                "base": base,
                "artifacts": str(ARTIFACTS),
                "prefix": "pages-",
                "password": PASSWORD,
                "a_email": a_email,
                "a_token": a_token,
                "a_slug": slug,
                "operator_email": operator_email,
                "device": device,
                "device_id": device_id,
                "device_token": token,
                "metric": "temp",
                "rule_id": "hot-boiler",
                "hook_url": hook + "/pulse",
                "time_zone": "UTC",
            },
        )
        alert = (await client.get(f"/api/v1/alerts/{seen['alert_id']}", headers=a)).json()
        twin = (await client.get(f"/api/v1/devices/{device_id}/twin", headers=a)).json()
        commands = (await client.get(f"/api/v1/devices/{device_id}/commands", headers=a)).json()

    assert seen["console_errors"] == []
    assert {"Alerts", "Rules", "Gateways", "Notifications", "On-call", "Audit log"} <= set(seen["tenant_nav"])
    # rules: the API's code is shown and the field marked; the preview found the crossing in the history
    assert "rule.bad_metric" in seen["rule_error"] and seen["metric_invalid"] == "true"
    assert seen["preview"]["points"] >= 5 and seen["preview"]["fired"] == 1
    assert seen["preview_text"].startswith("1 alert would have opened on 1 device")
    assert seen["rule_rows"] == 1
    # alerts: the inbox showed it, explained; ack moved it out of the Open tab into Acknowledged
    assert seen["hot_status"] == 200 and seen["critical_count"] == 1
    assert "temp" in seen["explanation"] and "41.5" in seen["explanation"]
    assert seen["open_rows_after_ack"] == 0 and seen["acked_state"] == "acknowledged"
    assert seen["alert_page_state"] == "acknowledged" and "temp is 41.5" in seen["alert_page_why"]
    assert alert["state"] == "acknowledged" and alert["acknowledged_by"].startswith("local:")
    # twin: the delta appeared, the conflict was shown and re-applied on top of the other write
    assert seen["delta_after_edit"] == {"setpoint": 22, "mode": "eco"} and "2 pending" in seen["pending_after_edit"]
    assert seen["other_write"] == 200 and "Someone else changed this twin" in seen["conflict_text"]
    assert seen["desired_after_reapply"] == {
        "setpoint": 23,
        "mode": "eco",
    }  # the other writer's fan was removed by the re-applied edit
    assert seen["reported_status"] == 200 and seen["rows_in_sync"] == 2
    assert twin["state"]["delta"] == {} and twin["state"]["desired"] == {"setpoint": 23, "mode": "eco"}
    assert "reboot" in seen["command_row"] and "queued" in seen["command_row"]
    assert [(c["name"], c["params"]) for c in commands["items"]] == [("reboot", {"delay_s": 5})]
    # gateways, audit, notifications
    assert len(seen["enrollment_token"]) > 20 and "gw-north" in seen["gateway_row"] and "pending" in seen["gateway_row"]
    assert {"gateway.create", "twin.update", "command.create"} <= set(seen["audit_actions"])
    assert "connector.unknown_field" in seen["connectors_error"] and "colour" in seen["connectors_error"]
    assert "Set version 1" in seen["connectors_text"] and "not reported since" in seen["connectors_text"]
    assert seen["subscription_limit"] == "1 of 50 devices used." and "MAIN" in seen["subscription_row"] and "ACTIVE" in seen["subscription_row"]
    assert "ops-hook" in seen["delivery_row"] and "test" in seen["delivery_row"] and "delivered" in seen["delivery_row"]
    assert len(receiver.bodies) == 1 and receiver.bodies[0]["schema"] == "pulse.notification.v1"  # the real test request
    assert seen["timeline"]["bars"] > 0 and seen["timeline"]["gaps"] == 0 and "On call now: ana" in seen["oncall_now"]
    assert "oncall.member_unreachable" in seen["unreachable_error"] and "reached by ops-hook (webhook)" in seen["oncall_now"]
    # operator
    assert seen["operator_nav"] == ["NOC", "Tenant health", "Tenants", "All devices", "All alerts"]
    assert seen["live_event_status"] == 200 and device_id in seen["feed_row"] and seen["ops_no_reload"] is True
    assert seen["tv"] == {"theme": "dark", "nav": "none"}
    assert seen["health_row"][0].startswith(slug) and seen["health_row"][1] == "2" and seen["health_row"][4] == "1"  # the device and ups-7, registered by the connector set
    assert slug in seen["op_alert_row"] and "hot-boiler" in seen["op_alert_row"]
    for name in ("21-rule-preview", "22-alerts-open", "24-twin-delta", "25-twin-conflict", "32-noc", "33-noc-tv", "31-oncall"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000, name
