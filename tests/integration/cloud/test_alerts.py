"""Rules runner and alerts on a real PostgreSQL: event-driven evaluation at ingest, one open alert
per fingerprint under concurrency, restart in the middle of a window, gateway silence, merge of
edge alerts, maintenance windows, and the API (roles, cross-tenant)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pulse.cloud.alerts import merge_edge_alerts
from pulse.cloud.alerts.runner import RuleRunner
from pulse.cloud.alerts.store import apply_record
from pulse.cloud.db.pool import Database, PoolSizes
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.settings import Settings
from pulse.protocol.alerts import GATEWAY_OFFLINE, AlertRecord
from pulse.protocol.batch import Record
from pulse.protocol.rules import Severity

pytestmark = pytest.mark.integration
Cloud = Any  # the `cloud` fixture (conftest.py)

HOT = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}
T0 = 1_800_000_000_000


@pytest.fixture
async def cloud(
    cloud_settings: Settings, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> AsyncIterator[Cloud]:
    """The app with the periodic sweep effectively off (tests call sweep_once with their own clock)."""
    async with start_cloud(cloud_settings.model_copy(update={"rules_sweep_interval_s": 3600})) as c:
        yield c


def row(tenant: uuid.UUID, device: str, at_ms: int, **metrics: float) -> TelemetryRow:
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    return TelemetryRow(at, tenant, device, "telemetry", json.dumps(metrics), None, None, None, None, "http", at)


async def wait_for(fn: Any, what: str, limit_s: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        value = await fn()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def alerts(cloud: Cloud, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await cloud.client.get("/api/v1/alerts", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def test_threshold_crossing_at_http_ingest_opens_an_explained_alert_and_clearing_closes_it(cloud: Cloud) -> None:
    _, headers = await cloud.tenant_user()
    r = await cloud.client.post("/api/v1/rules", json=HOT, headers=headers)
    assert r.status_code == 201, r.text
    _, device_id, token = await cloud.device_with_token(headers)
    dev = {"Authorization": f"Bearer {token}"}

    async def send(value: float) -> None:
        env = {"v": 1, "ts": int(datetime.now(UTC).timestamp() * 1000), "metrics": {"temp_c": value}}
        r = await cloud.client.post("/ingest/v1/telemetry", json=env, headers=dev)
        assert r.status_code in (200, 202), r.text

    await send(25)
    await send(31.5)
    opened = await wait_for(lambda: alerts(cloud, headers, state="open"), "the alert")
    assert len(opened) == 1
    alert = opened[0]
    assert (alert["device_id"], alert["rule_id"], alert["severity"], alert["source"]) == (device_id, "hot", "major", "cloud")
    assert alert["explanation"]["last"] == 31.5 and "above 30" in alert["explanation"]["text"]
    await send(29)  # between the thresholds: stays open
    await send(27)
    await wait_for(lambda: alerts(cloud, headers, state="closed"), "the close")
    assert await alerts(cloud, headers, state="open") == []
    r = await cloud.client.get(f"/api/v1/alerts/{alert['id']}", headers=headers)
    assert [e["kind"] for e in r.json()["events"]] == ["opened", "closed"]


async def test_a_refused_rule_answers_422_with_the_rule_code(cloud: Cloud) -> None:
    _, headers = await cloud.tenant_user()
    r = await cloud.client.post("/api/v1/rules", json={**HOT, "treshold": 3}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (422, "rule.unknown_field")
    r = await cloud.client.post("/api/v1/rules", json={**HOT, "clear_threshold": 35}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (422, "rule.bad_threshold")
    r = await cloud.client.post("/api/v1/rules", json={**HOT, "id": GATEWAY_OFFLINE}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (422, "rule.reserved_id")


async def test_rule_edits_raise_the_version_and_customers_cannot_change_rules(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    assert (await cloud.client.post("/api/v1/rules", json=HOT, headers=headers)).status_code == 201
    r = await cloud.client.put("/api/v1/rules/hot", json={**HOT, "threshold": 40}, headers=headers)
    assert r.status_code == 200 and (r.json()["version"], r.json()["threshold"]) == (2, 40)
    customer = await cloud.user("customer", tenant=await _slug(cloud, tenant))
    assert (await cloud.client.get("/api/v1/rules/hot", headers=customer)).status_code == 200
    assert (await cloud.client.put("/api/v1/rules/hot", json=HOT, headers=customer)).status_code == 403
    assert (
        await cloud.client.post("/api/v1/alerts/bulk", json={"ids": [1], "action": "silence", "until": "2030-01-01T00:00:00Z"}, headers=customer)
    ).status_code == 403  # acknowledging follows the tenant's permissions (tests/integration/notify/test_notify_acks.py)


async def _slug(cloud: Cloud, tenant: uuid.UUID) -> str:
    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        return str(await conn.fetchval("SELECT slug FROM tenants"))


async def test_many_concurrent_evaluators_of_one_fingerprint_leave_one_open_alert(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    rec = AlertRecord("open", "hot", "boiler-1", Severity.MAJOR, T0, 1, {"text": "hot"})

    async def one() -> None:
        async with db.tenant(tenant) as conn:
            await apply_record(conn, rec)

    await asyncio.gather(*(one() for _ in range(20)))
    open_ = await alerts(cloud, headers, state="open")
    assert len(open_) == 1 and open_[0]["occurrences"] == 20

    # whole runners too, each with a reading above the threshold at once: the rule state lock
    # serialises them, the first opens the alert, the others find the condition already firing
    assert (await cloud.client.post("/api/v1/rules", json={**HOT, "id": "hot2"}, headers=headers)).status_code == 201
    runners = [RuleRunner(db) for _ in range(10)]
    await asyncio.gather(*(r.process([row(tenant, "boiler-2", T0 + i, temp_c=35 + i)]) for i, r in enumerate(runners)))
    hot2 = await alerts(cloud, headers, rule_id="hot2")
    assert len(hot2) == 1 and (hot2[0]["state"], hot2[0]["occurrences"]) == ("open", 1)


async def test_a_restart_in_the_middle_of_a_window_keeps_the_window(cloud: Cloud, cloud_settings: Settings) -> None:
    tenant, headers = await cloud.tenant_user()
    rule = {**HOT, "id": "hot-5m", "window_s": 300}
    assert (await cloud.client.post("/api/v1/rules", json=rule, headers=headers)).status_code == 201
    await RuleRunner(cloud.app.state.pulse.db).process(
        [row(tenant, "b1", T0, temp_c=31), row(tenant, "b1", T0 + 120_000, temp_c=32)]
    )
    # a new process: its own pools and runner, nothing in memory from the first
    db = Database(cloud_settings.database_url, cloud_settings.roles, sizes=PoolSizes(app=2, operator=1, writer=1))
    await db.open()
    try:
        runner = RuleRunner(db)
        await runner.process([row(tenant, "b1", T0 + 240_000, temp_c=33)])
        assert await alerts(cloud, headers) == []  # 240 s of 300
        await runner.process([row(tenant, "b1", T0 + 300_000, temp_c=31.5)])
    finally:
        await db.close()
    (alert,) = await alerts(cloud, headers)
    assert alert["explanation"]["since_ms"] == T0 and alert["explanation"]["readings"] == 4


async def test_a_silent_gateway_opens_one_gateway_offline_alert_and_its_devices_show_unreachable(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    alive = {"id": "alive", "kind": "heartbeat", "severity": "critical", "interval_s": 60}
    assert (await cloud.client.post("/api/v1/rules", json=alive, headers=headers)).status_code == 201
    now = int(datetime.now(UTC).timestamp() * 1000)
    async with db.tenant(tenant) as conn:
        site = await conn.fetchval("INSERT INTO sites (tenant_id, name) VALUES ($1, 'plant') RETURNING id", tenant)
        gw = await conn.fetchval(
            "INSERT INTO gateways (tenant_id, name, site_id, status, last_seen_at) VALUES ($1, 'gw-1', $2, 'active', $3) RETURNING id",
            tenant,
            site,
            datetime.now(UTC),
        )
        for i in range(25):
            await conn.execute(
                "INSERT INTO devices (tenant_id, device_id, site_id, gateway_id, status) VALUES ($1, $2, $3, $4, 'active')",
                tenant,
                f"s{i}",
                site,
                gw,
            )
        await conn.execute("INSERT INTO devices (tenant_id, device_id, status) VALUES ($1, 'direct', 'active')", tenant)
        # registered ahead of installation, never heard from: not watched, no alert
        await conn.execute("INSERT INTO devices (tenant_id, device_id, status) VALUES ($1, 'spare', 'provisioned')", tenant)
    runner: RuleRunner = cloud.app.state.rules
    await runner.sweep_once(now)  # monitoring starts
    async with db.tenant(tenant) as conn:  # the gateway falls silent
        await conn.execute("UPDATE gateways SET last_seen_at = $1", datetime.now(UTC) - timedelta(hours=1))
    for minutes in (5, 10, 15):
        await runner.sweep_once(now + minutes * 60_000)
    open_ = await alerts(cloud, headers, state="open")
    assert sorted((a["rule_id"], a["device_id"]) for a in open_) == [(GATEWAY_OFFLINE, "gateway:gw-1"), ("alive", "direct")]
    gw_alert = next(a for a in open_ if a["rule_id"] == GATEWAY_OFFLINE)
    assert gw_alert["site_id"] == str(site) and gw_alert["occurrences"] == 1
    r = await cloud.client.get("/api/v1/device-states", headers=headers)
    states = {s["device_id"]: s["status"] for s in r.json()}
    assert {states[f"s{i}"] for i in range(25)} == {"unreachable"} and states["direct"] == "offline"

    async with db.tenant(tenant) as conn:  # the gateway is back
        await conn.execute("UPDATE gateways SET last_seen_at = $1", datetime.fromtimestamp(now / 1000 + 16 * 60, UTC))
    await runner.sweep_once(now + 16 * 60_000)
    assert [a["rule_id"] for a in await alerts(cloud, headers, state="closed")] == [GATEWAY_OFFLINE]


async def test_edge_alerts_merge_with_cloud_alerts_by_fingerprint(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    async with db.tenant(tenant) as conn:
        await apply_record(conn, AlertRecord("open", "hot", "b7", Severity.MAJOR, T0, 1, {"text": "cloud saw it"}))

    def rec(seq: int, action: str) -> Record:
        body = {
            "action": action,
            "rule_id": "hot",
            "device_id": "b7",
            "severity": "major",
            "explanation": {"text": "edge saw it"},
        }
        return Record(seq, "b7", T0 + seq, "alert", {}, None, None, body)

    async with db.tenant(tenant) as conn:
        report = await merge_edge_alerts(conn, tenant, [rec(1, "open"), rec(2, "bogus")], gateway_name="gw-1")
    assert report.applied == 1 and report.rejected[0]["code"] == "rule.bad_alert_record"
    (alert,) = await alerts(cloud, headers)
    assert alert["occurrences"] == 2 and alert["state"] == "open"
    async with db.tenant(tenant) as conn:
        await merge_edge_alerts(conn, tenant, [rec(3, "close")], gateway_name="gw-1")
    (alert,) = await alerts(cloud, headers)
    assert (alert["state"], alert["closed_by"]) == ("closed", "edge:gw-1")


async def test_maintenance_windows_suppress_new_alerts_and_silence_mutes_notifications(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    now = datetime.now(UTC)
    r = await cloud.client.post(
        "/api/v1/maintenance-windows",
        json={
            "device_id": "m1",
            "starts_at": (now - timedelta(minutes=1)).isoformat(),
            "ends_at": (now + timedelta(hours=1)).isoformat(),
        },
        headers=headers,
    )
    assert r.status_code == 201, r.text
    at = int(now.timestamp() * 1000)
    async with db.tenant(tenant) as conn:
        out = await apply_record(conn, AlertRecord("open", "hot", "m1", Severity.MAJOR, at, 1, {"text": "x"}))
        assert out.event == "suppressed"
        first = await apply_record(conn, AlertRecord("open", "hot", "m2", Severity.MAJOR, at, 1, {"text": "x"}))
    assert await alerts(cloud, headers, device_id="m1") == []
    r = await cloud.client.post(
        f"/api/v1/alerts/{first.alert_id}/silence", json={"until": (now + timedelta(hours=2)).isoformat()}, headers=headers
    )
    assert r.status_code == 200 and r.json()["silenced_until"]
    async with db.tenant(tenant) as conn:
        closed = await apply_record(conn, AlertRecord("close", "hot", "m2", Severity.MAJOR, at + 1, 1, {"text": "y"}))
    assert closed.event == "closed" and closed.notify is False


async def test_ack_close_and_bulk_follow_the_lifecycle(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    ids = []
    async with db.tenant(tenant) as conn:
        for d in ("a", "b", "c"):
            ids.append((await apply_record(conn, AlertRecord("open", "hot", d, Severity.MINOR, T0, 1, {"text": d}))).alert_id)
    r = await cloud.client.post(f"/api/v1/alerts/{ids[0]}/ack", headers=headers)
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"]
    r = await cloud.client.post("/api/v1/alerts/bulk", json={"ids": ids, "action": "close"}, headers=headers)
    assert [a["state"] for a in r.json()] == ["closed"] * 3
    r = await cloud.client.post(f"/api/v1/alerts/{ids[1]}/ack", headers=headers)  # closed alerts are not acknowledged
    assert r.json()["state"] == "closed"
    assert len(await alerts(cloud, headers, state="closed", severity="minor")) == 3


async def test_preview_replays_recent_telemetry_without_storing_anything(cloud: Cloud) -> None:
    tenant, headers = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(headers)
    for value in (25, 33, 26):
        env = {"v": 1, "ts": int(datetime.now(UTC).timestamp() * 1000), "metrics": {"temp_c": value}}
        r = await cloud.client.post("/ingest/v1/telemetry", json=env, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 202)
    r = await cloud.client.post("/api/v1/rules/preview", json={"rule": HOT, "hours": 1}, headers=headers)
    assert r.status_code == 200, r.text
    assert [a["action"] for a in r.json()["actions"]] == ["OpenAlert", "CloseAlert"]
    assert await alerts(cloud, headers) == []


async def test_no_endpoint_reaches_another_tenants_rules_alerts_states_or_windows(cloud: Cloud) -> None:
    tenant_a, a = await cloud.tenant_user()
    _, b = await cloud.tenant_user()
    assert (await cloud.client.post("/api/v1/rules", json=HOT, headers=a)).status_code == 201
    db = cloud.app.state.pulse.db
    async with db.tenant(tenant_a) as conn:
        alert_id = (await apply_record(conn, AlertRecord("open", "hot", "x", Severity.MAJOR, T0, 1, {"text": "x"}))).alert_id
        await conn.execute("INSERT INTO device_states (tenant_id, device_id, status) VALUES ($1, 'x', 'offline')", tenant_a)
    now = datetime.now(UTC)
    r = await cloud.client.post(
        "/api/v1/maintenance-windows",
        json={"device_id": "x", "starts_at": now.isoformat(), "ends_at": (now + timedelta(hours=1)).isoformat()},
        headers=a,
    )
    window = r.json()["id"]
    c = cloud.client
    assert (await c.get("/api/v1/rules/hot", headers=b)).status_code == 404
    assert (await c.put("/api/v1/rules/hot", json=HOT, headers=b)).status_code == 404
    assert (await c.delete("/api/v1/rules/hot", headers=b)).status_code == 404
    assert (await c.get("/api/v1/rules", headers=b)).json() == []
    assert (await c.post("/api/v1/rules", json=HOT, headers=b)).status_code == 201  # same id, other tenant: its own
    assert (await c.get(f"/api/v1/alerts/{alert_id}", headers=b)).status_code == 404
    for verb in ("ack", "close"):
        assert (await c.post(f"/api/v1/alerts/{alert_id}/{verb}", headers=b)).status_code == 404
    assert (await c.post(f"/api/v1/alerts/{alert_id}/silence", json={"until": now.isoformat()}, headers=b)).status_code == 404
    assert (await c.post("/api/v1/alerts/bulk", json={"ids": [alert_id], "action": "close"}, headers=b)).status_code == 404
    assert await alerts(cloud, b) == []
    assert (await c.get("/api/v1/device-states", headers=b)).json() == []
    assert (await c.get("/api/v1/maintenance-windows", headers=b)).json() == []
    assert (await c.delete(f"/api/v1/maintenance-windows/{window}", headers=b)).status_code == 404
    r = await c.post("/api/v1/rules/preview", json={"rule": HOT, "hours": 1}, headers=b)
    assert r.status_code == 200 and r.json()["readings"] == 0
    (still,) = await alerts(cloud, a)
    assert still["state"] == "open"


async def test_sync_can_merge_edge_alerts_in_its_writer_transaction_without_touching_other_tenants(cloud: Cloud) -> None:
    tenant_a, a = await cloud.tenant_user()
    tenant_b, b = await cloud.tenant_user()
    db = cloud.app.state.pulse.db
    for tenant in (tenant_a, tenant_b):  # the same device and rule ids in two tenants
        async with db.tenant(tenant) as conn:
            await apply_record(conn, AlertRecord("open", "hot", "b7", Severity.MAJOR, T0, 1, {"text": "open"}))
    body = {"action": "close", "rule_id": "hot", "device_id": "b7", "severity": "major", "explanation": {"text": "edge: clear"}}
    async with db.writer_transaction() as conn:  # as gateway sync does: rows + high-water mark + alerts, one commit
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_a))
        report = await merge_edge_alerts(conn, tenant_a, [Record(1, "b7", T0 + 5, "alert", {}, None, None, body)])
    assert report.applied == 1
    assert [x["state"] for x in await alerts(cloud, a)] == ["closed"]
    assert [x["state"] for x in await alerts(cloud, b)] == ["open"]


async def test_an_offline_device_is_not_taken_back_to_stale_only_online_by_its_next_message(cloud: Cloud) -> None:
    # a gateway's "lost" event (the device's Will) sets it offline before the heartbeat's schedule
    # reaches stale; that schedule must not then show it as merely stale
    from pulse.cloud.alerts.store import set_device_status

    tenant, _ = await cloud.tenant_user()
    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        await set_device_status(conn, "dev-will", "online", {"text": "first message"})
        await set_device_status(conn, "dev-will", "offline", {"text": "dev-will was lost at its gateway", "connectivity": "lost"})
        await set_device_status(conn, "dev-will", "stale", {"text": "no message for 1.5 intervals"})
        row = await conn.fetchrow("SELECT status, reason FROM device_states WHERE device_id = 'dev-will'")
        assert row["status"] == "offline" and "lost" in row["reason"]
        await set_device_status(conn, "dev-will", "online", {"text": "a message"})
        assert await conn.fetchval("SELECT status FROM device_states WHERE device_id = 'dev-will'") == "online"
