"""The device registry and sites: filters, paging, updates, credentials shown once, CSV import that
is all-or-nothing with a per-row report."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

pytestmark = pytest.mark.integration

Cloud = Any  # the `cloud` fixture (conftest.py)
CSV = {"Content-Type": "text/csv"}


async def test_sites_crud(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    c = cloud.client
    r = await c.post("/api/v1/sites", json={"name": "Plant 1", "latitude": 48.1, "longitude": 11.5}, headers=h)
    assert r.status_code == 201
    site = r.json()["id"]
    assert (await c.post("/api/v1/sites", json={"name": "Plant 1"}, headers=h)).json()["code"] == "api.conflict"
    r = await c.patch(f"/api/v1/sites/{site}", json={"address": "Main St 1"}, headers=h)
    assert r.json()["address"] == "Main St 1" and r.json()["name"] == "Plant 1"
    assert [s["name"] for s in (await c.get("/api/v1/sites", headers=h)).json()] == ["Plant 1"]
    r = await c.post("/api/v1/devices", json={"device_id": "d1", "site_id": site}, headers=h)
    device = r.json()["id"]
    assert (await c.delete(f"/api/v1/sites/{site}", headers=h)).status_code == 204
    assert (await c.get(f"/api/v1/sites/{site}", headers=h)).status_code == 404
    assert (await c.get(f"/api/v1/devices/{device}", headers=h)).json()["site_id"] is None
    r = await c.post("/api/v1/sites", json={"name": "x", "latitude": 91}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid" and "latitude" in r.json()["message"]


async def test_device_filters_and_paging(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    c = cloud.client
    site = (await c.post("/api/v1/sites", json={"name": "North"}, headers=h)).json()["id"]
    for i in range(7):
        body = {
            "device_id": f"pump-{i}",
            "name": f"Pump {i}",
            "tags": ["pump", f"line{i % 2}"],
            "status": "active" if i < 3 else "provisioned",
        }
        if i % 2 == 0:
            body["site_id"] = site
        assert (await c.post("/api/v1/devices", json=body, headers=h)).status_code == 201
    await c.post("/api/v1/devices", json={"device_id": "valve-1", "name": "Big valve"}, headers=h)

    async def ids(**params: Any) -> list[str]:
        r = await c.get("/api/v1/devices", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [d["device_id"] for d in r.json()["items"]]

    assert await ids(site=site) == ["pump-0", "pump-2", "pump-4", "pump-6"]
    assert await ids(tag="line1") == ["pump-1", "pump-3", "pump-5"]
    assert await ids(tag=["line0", "pump"], status="active") == ["pump-0", "pump-2"]
    assert await ids(q="VALVE") == ["valve-1"]
    assert await ids(q="big") == ["valve-1"]
    assert await ids(q="%") == []

    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await c.get("/api/v1/devices", params=params, headers=h)).json()
        seen += [d["device_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"pump-{i}" for i in range(7)] + ["valve-1"]
    assert (await c.get("/api/v1/devices", params={"limit": 0}, headers=h)).json()["code"] == "api.invalid"


async def test_device_update_validation_and_decommissioned_is_final(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    c = cloud.client
    dev = (await c.post("/api/v1/devices", json={"device_id": "d1"}, headers=h)).json()["id"]
    assert (await c.post("/api/v1/devices", json={"device_id": "d1"}, headers=h)).status_code == 409
    assert (await c.post("/api/v1/devices", json={"device_id": "bad id!"}, headers=h)).status_code == 422
    r = await c.patch(f"/api/v1/devices/{dev}", json={"tags": ["b", "a", "a"], "attributes": {"fw": "1.2"}}, headers=h)
    assert r.json()["tags"] == ["a", "b"] and r.json()["attributes"] == {"fw": "1.2"}
    assert (await c.patch(f"/api/v1/devices/{dev}", json={"status": "decommissioned"}, headers=h)).status_code == 422
    assert (await c.patch(f"/api/v1/devices/{dev}", json={"name": None}, headers=h)).status_code == 422
    assert (await c.post(f"/api/v1/devices/{dev}/decommission", headers=h)).status_code == 200
    r = await c.patch(f"/api/v1/devices/{dev}", json={"name": "again"}, headers=h)
    assert r.status_code == 409 and r.json()["code"] == "api.conflict"
    assert (await c.post(f"/api/v1/devices/{dev}/credentials", headers=h)).status_code == 409


async def test_credential_secret_is_shown_once_and_stored_hashed(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    c = cloud.client
    dev = (await c.post("/api/v1/devices", json={"device_id": "d1"}, headers=h)).json()["id"]
    issued = (await c.post(f"/api/v1/devices/{dev}/credentials", headers=h)).json()
    assert issued["token"].startswith("pdt_")
    listed = (await c.get(f"/api/v1/devices/{dev}/credentials", headers=h)).text
    secret = issued["token"].split("_", 2)[2]  # pdt_<credential id>_<secret>; the secret may itself hold "_"
    assert len(secret) == 43
    assert issued["token"] not in listed and secret not in listed
    async with cloud.app.state.pulse.db.operator(actor="test", action="inspect") as conn:
        stored = await conn.fetchval("SELECT secret_hash FROM device_credentials WHERE id = $1", uuid.UUID(issued["id"]))
    assert secret not in stored and len(stored) == 64


async def test_csv_import_is_all_or_nothing_with_a_row_report(cloud: Cloud) -> None:
    _, h = await cloud.tenant_user()
    c = cloud.client
    await c.post("/api/v1/sites", json={"name": "North"}, headers=h)
    await c.post("/api/v1/devices", json={"device_id": "exists"}, headers=h)
    bad = (
        "device_id,name,site,tags,status\n"
        "ok-1,First,North,a;b,active\n"
        "exists,Dup,,,\n"
        "ok-2,Second,Nowhere,,\n"
        "bad id,,,,\n"
        "ok-1,Again,,,\n"
        "ok-3,,,,retired\n"
    )
    r = await c.post("/api/v1/devices/import", content=bad, headers={**h, **CSV})
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "api.import_rejected" and body["imported"] == 0
    assert [(e["row"], e["code"]) for e in body["errors"]] == [
        (3, "api.conflict"),
        (4, "api.invalid"),
        (5, "api.invalid"),
        (6, "api.conflict"),
        (7, "api.invalid"),
    ]
    assert [d["device_id"] for d in (await c.get("/api/v1/devices", headers=h)).json()["items"]] == ["exists"]

    good = "device_id,name,site,tags\nok-1,First,North,a;b\nok-2,Second,,\n"
    r = await c.post("/api/v1/devices/import", content=good, headers={**h, **CSV})
    assert r.status_code == 201 and r.json() == {"imported": 2, "errors": []}
    devices = {d["device_id"]: d for d in (await c.get("/api/v1/devices", headers=h)).json()["items"]}
    assert devices["ok-1"]["tags"] == ["a", "b"] and devices["ok-1"]["site_id"] is not None

    r = await c.post("/api/v1/devices/import", content="name\nx\n", headers={**h, **CSV})
    assert r.status_code == 422 and "device_id" in r.json()["message"]


async def test_tenant_in_a_body_is_ignored_and_bad_bodies_get_coded_errors(cloud: Cloud) -> None:
    a_tenant, a = await cloud.tenant_user()
    b_tenant, b = await cloud.tenant_user()
    c = cloud.client
    r = await c.post("/api/v1/sites", json={"name": "planted", "tenant_id": str(b_tenant)}, headers=a)
    assert r.status_code == 201
    r = await c.post("/api/v1/devices", json={"device_id": "planted", "tenant_id": str(b_tenant)}, headers=a)
    assert r.status_code == 201
    assert (await c.get("/api/v1/sites", headers=b)).json() == []
    assert (await c.get("/api/v1/devices", headers=b)).json()["items"] == []
    assert [s["name"] for s in (await c.get("/api/v1/sites", headers=a)).json()] == ["planted"]

    for body in (b"not json", b"[1, 2]", b'{"device_id": 5}'):
        r = await c.post("/api/v1/devices", content=body, headers={**a, "Content-Type": "application/json"})
        assert r.status_code == 422, body
        assert r.json()["code"] == "api.invalid" and r.json()["message"]
    r = await c.get("/api/v1/devices/not-a-uuid", headers=a)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    assert a_tenant != b_tenant
