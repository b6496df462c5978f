"""The quarantine API (issue 18, part B) on a real PostgreSQL: messages refused at HTTP ingest and a
record a gateway synced for a device it did not know are listed newest first, filtered by code and
device, paged by cursor, their raw bytes shown as text or base64 (never interpreted); a tenant
admin re-submits one after registering its device, it goes through ingest again and is stored
(audited, once); one still refused stays; another tenant sees and changes none of it."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from pulse.cloud.db.rows import QuarantineRow
from pulse.cloud.ingest.writer import write_rows
from pulse.protocol.batch import Record

pytestmark = pytest.mark.integration
Cloud = Any


async def items(cloud: Cloud, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await cloud.client.get("/api/v1/quarantine", params=params, headers=h)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def test_quarantine_lists_filters_pages_shows_raw_safely_and_resubmits_through_ingest(cloud: Cloud) -> None:
    tenant, h = await cloud.tenant_user()
    _, meter, token = await cloud.device_with_token(h, "meter-1")
    dev = {"Authorization": f"Bearer {token}"}
    bad_version = b'{"v": 2, "metrics": {"kwh": 1}, "note": "<script>alert(1)</script>"}'
    r = await cloud.client.post("/ingest/v1/telemetry", content=bad_version, headers=dev | {"content-type": "application/json"})
    assert r.status_code == 422, r.text
    binary = b"\xff\xfe\x00<b>not json</b>"
    r = await cloud.client.post("/ingest/v1/telemetry", content=binary, headers=dev | {"content-type": "application/json"})
    assert r.status_code == 422, r.text
    # what gateway sync quarantines for a device the tenant has not registered (sync/receive.py)
    now_ms = int(time.time() * 1000)
    rec = Record(seq=7, device_id="meter-2", ts_ms=now_ms, type="telemetry", metrics={"kwh": 42.5}, device_seq=3)
    raw = json.dumps({"stream": "telemetry", **rec._asdict()}).encode()
    async with cloud.app.state.pulse.db.writer_transaction() as conn:
        row = QuarantineRow(tenant, "meter-2", None, "gateway", "sync.unknown_device", "device meter-2 is not registered", raw, datetime.now(UTC))
        await write_rows(conn, [], [row])

    everything = await items(cloud, h)
    assert [(q["device_id"], q["source"]) for q in everything] == [("meter-2", "gateway"), (meter, "http"), (meter, "http")]
    gw, not_json, v2 = everything
    assert v2["raw_encoding"] == "utf-8" and v2["raw"].encode() == bad_version and v2["code"].startswith("envelope.")
    assert not_json["raw_encoding"] == "base64" and base64.b64decode(not_json["raw"]) == binary and not not_json["raw_truncated"]
    assert [q["id"] for q in await items(cloud, h, code="sync.unknown_device")] == [gw["id"]]
    assert [q["id"] for q in await items(cloud, h, device_id=meter)] == [not_json["id"], v2["id"]]
    assert await items(cloud, h, resubmitted="true") == []
    walked, cursor = [], None
    while True:
        r = await cloud.client.get("/api/v1/quarantine", params={"limit": 1} | ({"cursor": cursor} if cursor else {}), headers=h)
        walked += [q["id"] for q in r.json()["items"]]
        if not (cursor := r.json()["next_cursor"]):
            break
    assert walked == [q["id"] for q in everything]
    r = await cloud.client.get("/api/v1/quarantine", params={"cursor": "not-a-cursor"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    one = (await cloud.client.get(f"/api/v1/quarantine/{v2['id']}", headers=h)).json()
    assert one["raw"].encode() == bad_version

    # the device is not registered yet: nothing to send it as
    r = await cloud.client.post(f"/api/v1/quarantine/{gw['id']}/resubmit", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "quarantine.no_device"
    customer = await cloud_user(cloud, tenant, "customer")
    r = await cloud.client.post(f"/api/v1/quarantine/{gw['id']}/resubmit", headers=customer)
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
    r = await cloud.client.post("/api/v1/devices", json={"device_id": "meter-2"}, headers=h)
    assert r.status_code == 201, r.text
    meter2 = r.json()["id"]
    r = await cloud.client.post(f"/api/v1/quarantine/{gw['id']}/resubmit", headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["resubmitted_by"]
    latest = (await cloud.client.get(f"/api/v1/devices/{meter2}/telemetry/latest", headers=h)).json()
    assert [(m["name"], m["value"]) for m in latest["metrics"]] == [("kwh", 42.5)]
    r = await cloud.client.post(f"/api/v1/quarantine/{gw['id']}/resubmit", headers=h)
    assert r.status_code == 409 and r.json()["code"] == "api.conflict"  # once
    assert [q["id"] for q in await items(cloud, h, resubmitted="true")] == [gw["id"]]
    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        audited = await conn.fetch("SELECT target, detail FROM audit_log WHERE action = 'quarantine.resubmit'")
    assert [(a["target"], json.loads(a["detail"])["accepted"]) for a in audited] == [(str(gw["id"]), 1)]

    # still refused: it stays in quarantine, as it was
    r = await cloud.client.post(f"/api/v1/quarantine/{v2['id']}/resubmit", headers=h)
    assert r.status_code == 422 and r.json()["code"] == "quarantine.still_refused", r.text
    assert r.json()["ingest_code"] == v2["code"]
    assert (await cloud.client.get(f"/api/v1/quarantine/{v2['id']}", headers=h)).json()["resubmitted_at"] is None
    assert len(await items(cloud, h)) == 3

    # another tenant: nothing of it
    _, other = await cloud.tenant_user()
    assert await items(cloud, other) == []
    assert await items(cloud, other, device_id=meter) == []
    for method, path in (("GET", f"/api/v1/quarantine/{v2['id']}"), ("POST", f"/api/v1/quarantine/{v2['id']}/resubmit")):
        r = await cloud.client.request(method, path, headers=other)
        assert r.status_code == 404 and r.json()["code"] == "api.not_found", (method, path)
    assert (await cloud.client.get(f"/api/v1/quarantine/{v2['id']}", headers=h)).json()["resubmitted_at"] is None


async def cloud_user(cloud: Cloud, tenant: uuid.UUID, role: str) -> dict[str, str]:
    from pulse.cloud.auth.accounts import create_user

    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", tenant)
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    await create_user(cloud.app.state.pulse.db, email=email, password="correct horse battery staple", roles=[role], tenant=slug, actor="test")
    r = await cloud.client.post("/auth/login", json={"email": email, "password": "correct horse battery staple"})
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
