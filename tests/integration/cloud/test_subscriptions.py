"""Subscriptions in the cloud (issue 20): operators create and change them, tenants read theirs,
the worker moves them on at fixed clock times, the device limit refuses at every door with one
code, SUSPENDED and EXPIRED tenants' data is refused (and kept), and no tenant sees another's."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from pulse.cloud.notify import store as notify_store
from pulse.cloud.settings import Settings
from pulse.cloud.subscriptions.worker import run_once

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration

E = dt.datetime(2030, 6, 1, tzinfo=dt.UTC)  # the end of the term in these tests
T0 = E - dt.timedelta(days=365)
DAY = dt.timedelta(days=1)


@pytest.fixture
async def subs_cloud(
    cloud_settings: Settings, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> AsyncIterator[Cloud]:
    # ingest asks afresh on every request, so the worker's changes show at once
    async with start_cloud(cloud_settings.model_copy(update={"subscription_cache_s": 0.0})) as c:
        yield c


async def _operator(cloud: Cloud) -> dict[str, str]:
    return await cloud.user("operator-admin", tenant=None)


async def _give(cloud: Cloud, op: dict[str, str], tenant: uuid.UUID, **body: Any) -> dict[str, Any]:
    body.setdefault("starts_at", T0.isoformat())
    r = await cloud.client.post(f"/api/v1/operator/tenants/{tenant}/subscriptions", json=body, headers=op)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _ingest(cloud: Cloud, token: str) -> Any:
    return await cloud.client.post(
        "/ingest/v1/telemetry", json={"v": 1, "metrics": {"t": 1}}, headers={"Authorization": f"Bearer {token}"}
    )


async def test_a_tenant_at_its_limit_gets_the_same_coded_refusal_from_the_api_and_the_csv_import(cloud: Cloud) -> None:
    tenant, admin = await cloud.tenant_user()
    op = await _operator(cloud)
    main = await _give(cloud, op, tenant, kind="MAIN", device_limit=1, ends_at=(E + 365 * DAY).isoformat())
    await _give(cloud, op, tenant, kind="ADDON", device_limit=1, parent=main["id"])
    for device_id in ("one", "two"):
        r = await cloud.client.post("/api/v1/devices", json={"device_id": device_id}, headers=admin)
        assert r.status_code == 201, r.text
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "three"}, headers=admin)
    assert r.status_code == 409
    assert r.json()["code"] == "subscription.device_limit"
    assert (r.json()["device_limit"], r.json()["devices"], r.json()["adding"]) == (2, 2, 1)
    r = await cloud.client.post(
        "/api/v1/devices/import", content="device_id\nthree\n", headers={**admin, "Content-Type": "text/csv"}
    )
    assert r.status_code == 409
    assert r.json()["code"] == "subscription.device_limit"
    r = await cloud.client.get("/api/v1/devices", headers=admin)
    assert [d["device_id"] for d in r.json()["items"]] == ["one", "two"]  # nothing dropped, nothing half-added
    summary = (await cloud.client.get("/api/v1/subscription", headers=admin)).json()
    assert (summary["device_limit"], summary["devices"], summary["refusal"]) == (2, 2, None)
    # a decommissioned device frees its place
    one = next(d for d in (await cloud.client.get("/api/v1/devices", headers=admin)).json()["items"] if d["device_id"] == "one")
    assert (await cloud.client.post(f"/api/v1/devices/{one['id']}/decommission", headers=admin)).status_code == 200
    r = await cloud.client.post("/api/v1/devices/import", content="device_id\nthree\n", headers={**admin, "Content-Type": "text/csv"})
    assert r.status_code == 201, r.text


async def test_a_tenant_without_subscriptions_is_unmetered(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user()
    summary = (await cloud.client.get("/api/v1/subscription", headers=admin)).json()
    assert summary == {"device_limit": None, "devices": 0, "refusal": None, "subscriptions": []}
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "free"}, headers=admin)
    assert r.status_code == 201


async def test_the_worker_moves_a_subscription_through_its_lifecycle_at_fixed_times(subs_cloud: Cloud, app_dsn: str) -> None:
    cloud = subs_cloud
    db = cloud.app.state.pulse.db
    tenant, admin = await cloud.tenant_user()
    op = await _operator(cloud)
    main = await _give(cloud, op, tenant, kind="MAIN", device_limit=5, ends_at=E.isoformat())
    addon = await _give(cloud, op, tenant, kind="ADDON", device_limit=3, parent=main["id"])
    _, _, token = await cloud.device_with_token(admin)
    async with db.tenant(tenant) as conn:
        channel = await notify_store.create_channel(conn, name="ops", kind="webhook", config={"url": "https://example.com/hook"})

    async def states() -> tuple[str, str]:
        subs = {s["id"]: s["state"] for s in (await cloud.client.get("/api/v1/subscription", headers=admin)).json()["subscriptions"]}
        return subs[main["id"]], subs[addon["id"]]

    async def notices() -> list[str]:
        async with db.tenant(tenant) as conn:
            rows = await conn.fetch(
                "SELECT notification->>'explanation' AS text FROM notify_deliveries WHERE channel_id = $1 AND event = 'notice'"
                " ORDER BY created_at",
                channel["id"],
            )
        return [r["text"] for r in rows]

    await run_once(db, E - 31 * DAY)
    assert await states() == ("ACTIVE", "ACTIVE") and await notices() == []
    await run_once(db, E - 30 * DAY)
    assert len(await notices()) == 1 and "ends on 2030-06-01" in (await notices())[0]
    await run_once(db, E - 30 * DAY)  # a second pass at the same time sends nothing again
    assert len(await notices()) == 1
    await run_once(db, E - dt.timedelta(seconds=1))
    assert await states() == ("ACTIVE", "ACTIVE") and len(await notices()) == 2  # the 7-day notice
    await run_once(db, E)
    assert await states() == ("GRACE", "GRACE") and len(await notices()) == 3
    assert (await _ingest(cloud, token)).status_code == 200  # grace: data still accepted
    await run_once(db, E + 14 * DAY - dt.timedelta(seconds=1))
    assert await states() == ("GRACE", "GRACE")
    await run_once(db, E + 14 * DAY)
    assert await states() == ("SUSPENDED", "SUSPENDED") and len(await notices()) == 4
    r = await _ingest(cloud, token)
    assert r.status_code == 403 and r.json()["code"] == "subscription.suspended"
    summary = (await cloud.client.get("/api/v1/subscription", headers=admin)).json()
    assert (summary["device_limit"], summary["refusal"]) == (0, "subscription.suspended")
    await run_once(db, E + 104 * DAY)
    assert await states() == ("EXPIRED", "EXPIRED")
    r = await _ingest(cloud, token)
    assert r.status_code == 403 and r.json()["code"] == "subscription.expired"
    async with db.tenant(tenant) as conn:  # data retained
        assert await conn.fetchval("SELECT count(*) FROM telemetry") == 1
    history = (await cloud.client.get("/api/v1/subscription/history", params={"subscription": main["id"]}, headers=admin)).json()
    assert [(h["actor"], h["before_state"], h["after_state"]) for h in history["items"]] == [
        ("clock", "SUSPENDED", "EXPIRED"),
        ("clock", "GRACE", "SUSPENDED"),
        ("clock", "ACTIVE", "GRACE"),
        (op_actor := history["items"][-1]["actor"], None, "ACTIVE"),
    ]
    assert op_actor != "clock"
    audit = (await cloud.client.get("/api/v1/audit", params={"action": "subscription."}, headers=admin)).json()["items"]
    assert {a["action"] for a in audit} >= {"subscription.create", "subscription.transition"}


async def test_renewing_a_suspended_subscription_lets_data_in_again_and_carries_its_addons(subs_cloud: Cloud) -> None:
    cloud = subs_cloud
    db = cloud.app.state.pulse.db
    tenant, admin = await cloud.tenant_user()
    op = await _operator(cloud)
    main = await _give(cloud, op, tenant, kind="MAIN", device_limit=5, ends_at=E.isoformat())
    addon = await _give(cloud, op, tenant, kind="ADDON", device_limit=3, parent=main["id"])
    _, _, token = await cloud.device_with_token(admin)
    await run_once(db, E + 20 * DAY)
    assert (await _ingest(cloud, token)).status_code == 403
    new_end = E + 400 * DAY
    base = f"/api/v1/operator/tenants/{tenant}/subscriptions"
    r = await cloud.client.post(f"{base}/{main['id']}/events", json={"event": "renew", "ends_at": new_end.isoformat()}, headers=op)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "ACTIVE"
    subs = {s["id"]: s for s in (await cloud.client.get("/api/v1/subscription", headers=admin)).json()["subscriptions"]}
    assert (subs[addon["id"]]["state"], subs[addon["id"]]["ends_at"]) == ("ACTIVE", new_end.isoformat().replace("+00:00", "Z"))
    assert (await _ingest(cloud, token)).status_code == 200
    # the table's refusals, each with a code
    r = await cloud.client.post(f"{base}/{addon['id']}/events", json={"event": "suspend"}, headers=op)
    assert r.status_code == 409 and r.json()["code"] == "subscription.illegal_transition"
    r = await cloud.client.post(f"{base}/{main['id']}/events", json={"event": "renew"}, headers=op)
    assert r.status_code == 422 and r.json()["code"] == "subscription.invalid"
    r = await cloud.client.patch(f"{base}/{main['id']}", json={"device_limit": 1}, headers=op)
    assert r.status_code == 200 and r.json()["device_limit"] == 1
    r = await cloud.client.post(f"{base}/{main['id']}/events", json={"event": "expire"}, headers=op)
    assert r.status_code == 200 and r.json()["state"] == "EXPIRED"
    r = await cloud.client.post(f"{base}/{main['id']}/events", json={"event": "renew", "ends_at": new_end.isoformat()}, headers=op)
    assert r.status_code == 409 and r.json()["code"] == "subscription.illegal_transition"


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "MAIN", "device_limit": 5},  # no ends_at
        {"kind": "ADDON", "device_limit": 5},  # no parent
        {"kind": "MAIN", "device_limit": 5, "ends_at": T0.isoformat()},  # ends before it starts
        {"kind": "TEMPORARY", "device_limit": 5, "ends_at": "2030-01-01T00:00:00"},  # no time zone
    ],
)
async def test_bad_subscriptions_are_refused_with_a_code(cloud: Cloud, body: dict[str, Any]) -> None:
    tenant, _ = await cloud.tenant_user()
    op = await _operator(cloud)
    r = await cloud.client.post(
        f"/api/v1/operator/tenants/{tenant}/subscriptions", json={"starts_at": T0.isoformat(), **body}, headers=op
    )
    assert r.status_code == 422 and r.json()["code"] == "subscription.invalid", r.text


async def test_subscription_endpoints_keep_tenants_apart(cloud: Cloud) -> None:
    a_tenant, a_admin = await cloud.tenant_user()
    b_tenant, b_admin = await cloud.tenant_user()
    op = await _operator(cloud)
    a_main = await _give(cloud, op, a_tenant, kind="MAIN", device_limit=7, ends_at=E.isoformat())
    # B sees none of A's subscriptions or history
    b_summary = (await cloud.client.get("/api/v1/subscription", headers=b_admin)).json()
    assert b_summary["subscriptions"] == [] and b_summary["device_limit"] is None
    r = await cloud.client.get("/api/v1/subscription/history", params={"subscription": a_main["id"]}, headers=b_admin)
    assert r.status_code == 200 and r.json()["items"] == []
    assert (await cloud.client.get("/api/v1/subscription/history", params={"subscription": a_main["id"]}, headers=a_admin)).json()[
        "items"
    ]
    # tenant accounts may not use the operator routes, not even for their own tenant
    for headers, tenant in ((a_admin, a_tenant), (b_admin, a_tenant)):
        r = await cloud.client.get(f"/api/v1/operator/tenants/{tenant}/subscriptions", headers=headers)
        assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
        r = await cloud.client.post(
            f"/api/v1/operator/tenants/{tenant}/subscriptions",
            json={"kind": "MAIN", "device_limit": 1000, "starts_at": T0.isoformat(), "ends_at": E.isoformat()},
            headers=headers,
        )
        assert r.status_code == 403
    # an operator naming A's subscription under B's tenant finds nothing, and changes nothing
    base_b = f"/api/v1/operator/tenants/{b_tenant}/subscriptions"
    r = await cloud.client.patch(f"{base_b}/{a_main['id']}", json={"device_limit": 1}, headers=op)
    assert r.status_code == 404 and r.json()["code"] == "api.not_found"
    r = await cloud.client.post(f"{base_b}/{a_main['id']}/events", json={"event": "suspend"}, headers=op)
    assert r.status_code == 404
    r = await cloud.client.post(base_b, json={"kind": "ADDON", "device_limit": 1, "starts_at": T0.isoformat(), "parent": a_main["id"]}, headers=op)
    assert r.status_code == 404
    r = await cloud.client.get(f"/api/v1/operator/tenants/{uuid.uuid4()}/subscriptions", headers=op)
    assert r.status_code == 404
    a_view = (await cloud.client.get(f"/api/v1/operator/tenants/{a_tenant}/subscriptions", headers=op)).json()
    assert [(s["id"], s["device_limit"], s["state"]) for s in a_view["subscriptions"]] == [(a_main["id"], 7, "ACTIVE")]
