"""APIs the console's newer pages read: alert paging by cursor and severity counts, the tenant's
audit log, the operator's NOC figures, tenant health, cross-tenant devices and alerts (audited,
403 for tenant accounts), and the live event feed (a tenant's own events; every tenant's for
operators). Each gets its cross-tenant check."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration

SEVERITIES = ["critical", "major", "minor", "warning", "info"]


async def make_alerts(cloud: Cloud, tenant_id: uuid.UUID, n: int, *, site_id: str | None = None, prefix: str = "dev") -> None:
    """n alerts straight into the tenant's table, one a minute, severities in turn (the runner's
    own tests cover how alerts open; these tests are about reading them back)."""
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    async with cloud.app.state.pulse.db.tenant(tenant_id) as conn:
        await conn.executemany(
            "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, state, explanation, site_id, opened_at)"
            " VALUES ($1, $2, 'hot', $3, $4, '{\"text\": \"temp above 30\"}'::jsonb, $5, $6)",
            [
                (
                    tenant_id,
                    f"{prefix}-{i:04d}",
                    SEVERITIES[i % 5],
                    "closed" if i % 7 == 0 else "open",
                    site_id and uuid.UUID(site_id),
                    t0 + timedelta(minutes=i // 2),
                )  # two alerts share each minute: the id breaks the tie
                for i in range(n)
            ],
        )


async def test_alert_pages_follow_the_cursor_without_gaps_or_repeats(cloud: Cloud) -> None:
    tenant_id, a = await cloud.tenant_user()
    other_id, b = await cloud.tenant_user()
    await make_alerts(cloud, tenant_id, 250)
    await make_alerts(cloud, other_id, 5, prefix="other")
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        r = await cloud.client.get("/api/v1/alerts", params={"limit": 100, **({"cursor": cursor} if cursor else {})}, headers=a)
        assert r.status_code == 200, r.text
        assert "x-next-cursor" not in r.headers  # one dialect: the cursor is in the body
        seen += [x["id"] for x in r.json()["items"]]
        pages += 1
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 250 == len(set(seen))
    everything = (await cloud.client.get("/api/v1/alerts", params={"limit": 1000}, headers=a)).json()
    assert seen == [x["id"] for x in everything["items"]]  # the same order as one big page
    assert everything["next_cursor"] is None
    # filters combine with the cursor; another tenant's list never shows A's alerts
    open_major = await cloud.client.get("/api/v1/alerts", params={"state": "open", "severity": "major", "limit": 20}, headers=a)
    assert {x["severity"] for x in open_major.json()["items"]} == {"major"} and {x["state"] for x in open_major.json()["items"]} == {"open"}
    r = await cloud.client.get("/api/v1/alerts", params={"limit": 1000}, headers=b)
    assert {x["device_id"][:5] for x in r.json()["items"]} == {"other"}
    r = await cloud.client.get("/api/v1/alerts", params={"cursor": "not-a-cursor"}, headers=a)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"


async def test_alert_counts_and_site_filter_stay_inside_the_tenant(cloud: Cloud) -> None:
    tenant_id, a = await cloud.tenant_user()
    other_id, b = await cloud.tenant_user()
    site = (await cloud.client.post("/api/v1/sites", json={"name": "North"}, headers=a)).json()["id"]
    await make_alerts(cloud, tenant_id, 10, site_id=site)
    await make_alerts(cloud, tenant_id, 4, prefix="nosite")
    await make_alerts(cloud, other_id, 30)
    r = await cloud.client.get("/api/v1/alerts/counts", params={"state": ["open", "acknowledged"]}, headers=a)
    assert r.status_code == 200, r.text
    # 10 alerts with i = 0..9, i % 7 == 0 closed (0 and 7); 4 more, i = 0 closed
    assert sum(r.json().values()) == 8 + 3 and set(r.json()) == set(SEVERITIES)
    r = await cloud.client.get("/api/v1/alerts", params={"site_id": site, "limit": 100}, headers=a)
    assert len(r.json()["items"]) == 10 and {x["site_id"] for x in r.json()["items"]} == {site}
    # B filtering by A's site sees nothing
    r = await cloud.client.get("/api/v1/alerts", params={"site_id": site}, headers=b)
    assert r.json() == {"items": [], "next_cursor": None}
    r = await cloud.client.get("/api/v1/alerts/counts", params={"site_id": site}, headers=b)
    assert sum(r.json().values()) == 0


async def test_audit_log_pages_and_shows_only_the_callers_tenant(cloud: Cloud) -> None:
    _, a = await cloud.tenant_user()
    _, b = await cloud.tenant_user()
    for i in range(7):
        r = await cloud.client.post("/api/v1/gateways", json={"name": f"gw-{i}"}, headers=a)
        assert r.status_code == 201, r.text
    await cloud.client.post("/api/v1/gateways", json={"name": "b-gw"}, headers=b)
    r = await cloud.client.get("/api/v1/audit", params={"limit": 3}, headers=a)
    assert r.status_code == 200, r.text
    first = r.json()
    assert len(first["items"]) == 3 and first["next_cursor"]
    targets = [x["target"] for x in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = (await cloud.client.get("/api/v1/audit", params={"limit": 3, "cursor": cursor}, headers=a)).json()
        targets += [x["target"] for x in page["items"]]
        cursor = page["next_cursor"]
    assert targets == [f"gw-{i}" for i in reversed(range(7))]  # newest first, nothing of B
    r = await cloud.client.get("/api/v1/audit", params={"action": "gateway."}, headers=b)
    assert [x["target"] for x in r.json()["items"]] == ["b-gw"]
    r = await cloud.client.get("/api/v1/audit", params={"action": "gateway.create", "actor": "nobody"}, headers=a)
    assert r.json() == {"items": [], "next_cursor": None}
    # customers (read-only) may not read the audit log
    _, viewer = await cloud.tenant_user(role="customer")
    assert (await cloud.client.get("/api/v1/audit", headers=viewer)).status_code == 403


async def test_operator_views_span_tenants_are_audited_and_refuse_tenant_accounts(cloud: Cloud) -> None:
    a_id, a = await cloud.tenant_user()
    b_id, b = await cloud.tenant_user()
    await cloud.device_with_token(a, device_id="op-a-1")
    await cloud.device_with_token(b, device_id="op-b-1")
    await make_alerts(cloud, a_id, 3, prefix="op-a")
    await make_alerts(cloud, b_id, 2, prefix="op-b")
    ops = await cloud.user("operator", tenant=None)
    for path in ("/api/v1/operator/noc", "/api/v1/operator/health", "/api/v1/operator/devices", "/api/v1/operator/alerts"):
        assert (await cloud.client.get(path, headers=a)).status_code == 403, path
        r = await cloud.client.get(path, headers=ops)
        assert r.status_code == 200, (path, r.text)

    noc = (await cloud.client.get("/api/v1/operator/noc", headers=ops)).json()
    assert noc["tenants"] >= 2 and noc["devices"] >= 2
    assert noc["open_alerts"]["critical"] >= 2 and set(noc["db_pools"]) >= {"app", "operator"}
    assert noc["db_pools"]["operator"]["in_use"] >= 1  # this request's own connection
    health = {h["id"]: h for h in (await cloud.client.get("/api/v1/operator/health", headers=ops)).json()}
    assert health[str(a_id)]["devices"] == 1 and health[str(a_id)]["open_alerts"] == 2  # i = 0 is closed
    assert health[str(b_id)]["open_alerts"] == 1

    slugs = {h["id"]: h["slug"] for h in health.values()}
    r = await cloud.client.get("/api/v1/operator/devices", params={"q": "op-", "limit": 1}, headers=ops)
    page1 = r.json()
    r = await cloud.client.get(
        "/api/v1/operator/devices", params={"q": "op-", "limit": 1, "cursor": page1["next_cursor"]}, headers=ops
    )
    page2 = r.json()
    got = {(d["tenant_slug"], d["device_id"]) for d in page1["items"] + page2["items"]}
    assert got == {(slugs[str(a_id)], "op-a-1"), (slugs[str(b_id)], "op-b-1")} and page2["next_cursor"] is None
    r = await cloud.client.get("/api/v1/operator/alerts", params={"tenant": slugs[str(b_id)], "state": "open"}, headers=ops)
    assert [x["device_id"] for x in r.json()["items"]] == ["op-b-0001"]

    # every look was written down, with the operator's name, on the bypass path
    async with cloud.app.state.pulse.db.operator(actor="test", action="test.read") as conn:
        actions = {r["action"] for r in await conn.fetch("SELECT action FROM audit_log WHERE bypass AND actor <> 'test'")}
    assert {"noc.read", "tenants.health", "devices.list", "alerts.list"} <= actions


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/live"


async def frame(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[no-any-return]


async def test_event_feed_carries_the_tenants_own_events_and_every_tenants_for_operators(cloud: Cloud, serve: Any) -> None:
    _, a = await cloud.tenant_user()
    _, b = await cloud.tenant_user()
    _, a_dev_id, a_token = await cloud.device_with_token(a)
    _, b_dev_id, b_token = await cloud.device_with_token(b)
    ops = await cloud.user("operator", tenant=None)
    async with serve(cloud.app, lifespan=False) as base:
        async with connect(ws_url(base)) as tenant_ws, connect(ws_url(base)) as ops_ws:
            for ws, headers in ((tenant_ws, b), (ops_ws, ops)):
                await ws.send(json.dumps({"type": "auth", "token": headers["Authorization"][7:]}))
                assert (await frame(ws))["type"] == "ready"
                await ws.send(json.dumps({"type": "feed"}))
                assert (await frame(ws))["type"] == "feeding"
            # an operator may not subscribe to one device's raw telemetry
            await ops_ws.send(json.dumps({"type": "subscribe", "device": str(uuid.uuid4())}))
            assert (await frame(ops_ws))["code"] == "auth.forbidden"
            now = int(time.time() * 1000)
            for token, value in ((a_token, 1.5), (b_token, 2.5)):
                r = await cloud.client.post(
                    "/ingest/v1/telemetry",
                    json={"v": 1, "ts": now, "metrics": {"temp": value}},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200, r.text
            ops_seen: set[str] = set()
            while ops_seen != {a_dev_id, b_dev_id}:
                ops_seen |= {e["device_id"] for e in (await frame(ops_ws))["events"]}
            got = await frame(tenant_ws)
            assert [(e["device_id"], e["metrics"], e["readings"]) for e in got["events"]] == [(b_dev_id, {"temp": 2.5}, 1)]
            # a marker reading of B's proves A's reading never reached B's feed (frames arrive in order)
            r = await cloud.client.post(
                "/ingest/v1/telemetry",
                json={"v": 1, "ts": now + 1, "metrics": {"temp": 9}},
                headers={"Authorization": f"Bearer {b_token}"},
            )
            assert [e["metrics"] for e in (await frame(tenant_ws))["events"]] == [{"temp": 9}]


async def test_preview_actions_carry_the_readings_own_time_for_the_chart(cloud: Cloud) -> None:
    _, a = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(a)
    now = int(time.time() * 1000)
    readings = [(now - 600_000, 25), (now - 300_000, 33), (now - 60_000, 26)]  # a backfill: all received now
    r = await cloud.client.post(
        "/ingest/v1/telemetry",
        json=[{"v": 1, "ts": t, "metrics": {"temp": v}} for t, v in readings],
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 200, r.text
    rule = {"id": "hot", "severity": "major", "metric": "temp", "operator": "GT", "threshold": 30, "clear_threshold": 28}
    r = await cloud.client.post("/api/v1/rules/preview", json={"rule": rule, "hours": 1}, headers=a)
    assert [(x["action"], x["device_id"], x["reading_ms"]) for x in r.json()["actions"]] == [
        ("OpenAlert", device_id, readings[1][0]),
        ("CloseAlert", device_id, readings[2][0]),
    ]


async def test_recent_device_state_changes_come_newest_first_and_only_the_callers(cloud: Cloud) -> None:
    a_id, a = await cloud.tenant_user()
    b_id, b = await cloud.tenant_user()
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    for tenant, prefix in ((a_id, "a"), (b_id, "b")):
        async with cloud.app.state.pulse.db.tenant(tenant) as conn:
            await conn.executemany(
                "INSERT INTO device_states (tenant_id, device_id, status, changed_at) VALUES ($1, $2, 'offline', $3)",
                [(tenant, f"{prefix}-{i}", t0 + timedelta(minutes=i)) for i in range(5)],
            )
    r = await cloud.client.get("/api/v1/device-states", params={"recent": 3}, headers=a)
    assert [s["device_id"] for s in r.json()] == ["a-4", "a-3", "a-2"]
    r = await cloud.client.get("/api/v1/device-states", headers=b)  # without `recent`: every device, by id, as before
    assert [s["device_id"] for s in r.json()] == [f"b-{i}" for i in range(5)]
