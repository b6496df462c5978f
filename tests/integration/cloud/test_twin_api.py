"""Device twin and commands on a real PostgreSQL, through the API, the sync listener (real mutual
TLS) and HTTP ingest: desired updates with versions and limits, history, commands and their states,
Stream.TWIN applied once (a replayed batch changes nothing), the expiry sweep, direct devices, and
the tenant boundary on every endpoint."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from pulse.cloud import twins
from pulse.cloud.settings import Settings
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate
from pulse.protocol import batch
from pulse.protocol.batch import Record, Stream
from pulse.protocol.sync import BATCH_CONTENT_TYPE, COMMAND_STATE_TYPE, TwinDesired, command_from_payload

pytestmark = pytest.mark.integration

Cloud = Any  # tests/integration/cloud/conftest.py


@dataclass
class TwinCloud:
    cloud: Cloud
    sync_url: str
    ca_file: Path
    tmp: Path
    settings: Settings

    @property
    def client(self) -> httpx.AsyncClient:
        return self.cloud.client  # type: ignore[no-any-return]

    async def site_gateway(self, headers: dict[str, str]) -> tuple[str, str, IdentityFiles]:
        """(site id, gateway id, its enrolled identity files)."""
        r = await self.client.post("/api/v1/sites", json={"name": "s-" + uuid.uuid4().hex[:6]}, headers=headers)
        assert r.status_code == 201, r.text
        site = r.json()["id"]
        name = "gw-" + uuid.uuid4().hex[:8]
        r = await self.client.post("/api/v1/gateways", json={"name": name, "site_id": site}, headers=headers)
        assert r.status_code == 201, r.text
        files = IdentityFiles(self.tmp / name)
        r = await self.client.post(
            "/enroll/v1", json={"token": r.json()["enrollment"]["token"], "csr": make_key_and_csr(files, name).decode()}
        )
        assert r.status_code == 201, r.text
        store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
        return site, r.json()["gateway_id"], files

    def gateway_client(self, files: IdentityFiles) -> httpx.AsyncClient:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(files.cert), str(files.key))
        return httpx.AsyncClient(verify=ctx, base_url=self.sync_url, timeout=40)

    async def downlink(self, files: IdentityFiles, after: int = 0) -> list[dict[str, Any]]:
        async with self.gateway_client(files) as c:
            r = await c.get("/sync/v1/downlink", params={"after": after, "wait": 0})
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]

    async def ack(self, files: IdentityFiles, seq: int) -> None:
        async with self.gateway_client(files) as c:
            assert (await c.post("/sync/v1/downlink/ack", json={"seq": seq})).status_code == 204

    async def send(self, files: IdentityFiles, data: bytes) -> dict[str, Any]:
        async with self.gateway_client(files) as c:
            r = await c.post("/sync/v1/batches", content=data, headers={"Content-Type": BATCH_CONTENT_TYPE})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


@pytest.fixture
async def tc(cloud_settings: Settings, tmp_path: Path, start_cloud: Any) -> AsyncIterator[TwinCloud]:
    settings = Settings(
        **{
            **cloud_settings.model_dump(),
            "jwt_secret": cloud_settings.jwt_secret.get_secret_value(),
            "data_dir": tmp_path / "data",
            "sync_port": 0,
            "sync_host": "127.0.0.1",
            "command_sweep_interval_s": 3600,  # the tests sweep themselves
        }
    )
    async with start_cloud(settings, sync_listener=True) as cloud:
        port = cloud.app.state.sync_listener.port
        yield TwinCloud(cloud, f"https://127.0.0.1:{port}", tmp_path / "data" / "ca" / "ca.crt", tmp_path, settings)


async def _device(tc: TwinCloud, headers: dict[str, str], site: str | None = None) -> str:
    device_id = "dev-" + uuid.uuid4().hex[:8]
    r = await tc.client.post("/api/v1/devices", json={"device_id": device_id, "site_id": site}, headers=headers)
    assert r.status_code == 201, r.text
    return device_id


# --- twin API ------------------------------------------------------------------------------------


async def test_desired_update_gives_the_document_with_delta_and_a_history_row(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    dev = await _device(tc, h)
    r = await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)
    assert r.status_code == 200
    empty = r.json()
    assert (empty["version"], empty["state"], empty["metadata"]) == (0, {"desired": {}, "reported": {}, "delta": {}}, {"desired": {}, "reported": {}})
    r = await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"cfg": {"interval_s": 5}}}, "version": 0}, headers=h)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["version"] == 1
    assert doc["state"] == {"desired": {"cfg": {"interval_s": 5}}, "reported": {}, "delta": {"cfg": {"interval_s": 5}}}
    assert isinstance(doc["metadata"]["desired"]["cfg"]["interval_s"]["timestamp"], int)
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()["state"] == doc["state"]
    r = await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"cfg": {"interval_s": None}, "led": True}}}, headers=h)
    assert r.json()["state"]["desired"] == {"led": True}
    page = (await tc.client.get(f"/api/v1/devices/{dev}/twin/history", params={"limit": 1}, headers=h)).json()
    assert len(page["items"]) == 1 and page["next_cursor"] is not None
    newest = page["items"][0]
    assert (newest["version"], newest["source"]) == (2, "user") and newest["actor"].startswith("local:")
    assert newest["change"] == {"version": 2, "desired": {"set": {"led": True}, "removed": ["cfg.interval_s"]}}
    rest = (await tc.client.get(f"/api/v1/devices/{dev}/twin/history", params={"cursor": page["next_cursor"]}, headers=h)).json()
    assert [i["version"] for i in rest["items"]] == [1] and rest["next_cursor"] is None


async def test_stale_version_is_409_with_the_current_version_and_changes_nothing(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    dev = await _device(tc, h)
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"a": 1}}}, headers=h)
    r = await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"a": 2}}, "version": 0}, headers=h)
    assert r.status_code == 409
    assert (r.json()["code"], r.json()["current_version"]) == ("twin.version_conflict", 1)
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()["state"]["desired"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"state": {"reported": {"a": 1}}}, "twin.bad_update"),
        ({"state": {"desired": {"a": 1}, "reported": None}}, "twin.bad_update"),
        ({"state": {"desired": {"note": "x" * 9000}}}, "twin.too_large"),
        ({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}, "twin.too_deep"),
        ({"state": {"desired": {"a.b": 1}}}, "twin.bad_key"),
        ({"state": {"desired": [1]}}, "twin.bad_update"),
        ({"desired": {"a": 1}}, "twin.bad_update"),
    ],
)
async def test_refused_updates_answer_422_with_their_twin_code(tc: TwinCloud, body: dict[str, Any], code: str) -> None:
    _, h = await tc.cloud.tenant_user()
    dev = await _device(tc, h)
    r = await tc.client.patch(f"/api/v1/devices/{dev}/twin", json=body, headers=h)
    assert (r.status_code, r.json()["code"]) == (422, code), r.text
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()["version"] == 0


async def test_readers_cannot_change_a_twin_or_send_commands(tc: TwinCloud) -> None:
    slug = "t-" + uuid.uuid4().hex[:10]
    _, h = await tc.cloud.tenant_user(slug=slug)
    viewer = await tc.cloud.user("customer", tenant=slug)
    dev = await _device(tc, h)
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=viewer)).status_code == 200
    assert (await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"a": 1}}}, headers=viewer)).status_code == 403
    assert (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=viewer)).status_code == 403


async def test_every_twin_and_command_endpoint_answers_404_to_another_tenant(tc: TwinCloud) -> None:
    _, ha = await tc.cloud.tenant_user()
    _, hb = await tc.cloud.tenant_user()
    dev = await _device(tc, ha)
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"a": 1}}}, headers=ha)
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=ha)).json()
    calls = [
        ("GET", f"/api/v1/devices/{dev}/twin", None),
        ("PATCH", f"/api/v1/devices/{dev}/twin", {"state": {"desired": {"a": 2}}}),
        ("GET", f"/api/v1/devices/{dev}/twin/history", None),
        ("POST", f"/api/v1/devices/{dev}/commands", {"name": "ping"}),
        ("GET", f"/api/v1/devices/{dev}/commands", None),
        ("GET", f"/api/v1/devices/{dev}/commands/{cmd['id']}", None),
    ]
    for method, path, body in calls:
        r = await tc.client.request(method, path, json=body, headers=hb)
        assert (r.status_code, r.json()["code"]) == (404, "api.not_found"), (method, path, r.text)
    # the same device id in tenant B is another device: B's twin and commands are its own
    r = await tc.client.post("/api/v1/devices", json={"device_id": dev}, headers=hb)
    assert r.status_code == 201
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=hb)).json()["version"] == 0
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=hb)).status_code == 404
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands", headers=hb)).json()["items"] == []
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=ha)).json()["state"]["desired"] == {"a": 1}


# --- commands API --------------------------------------------------------------------------------


async def test_command_is_created_queued_listed_newest_first_and_filtered_by_state(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    dev = await _device(tc, h)
    r = await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "reboot", "params": {"delay_s": 5}, "expires_in_s": 60}, headers=h)
    assert r.status_code == 201, r.text
    first = r.json()
    assert {k: first[k] for k in ("device", "name", "params", "state", "result", "error")} == {
        "device": dev, "name": "reboot", "params": {"delay_s": 5}, "state": "queued", "result": None, "error": None
    }
    created = time.mktime(time.strptime(first["created"][:19], "%Y-%m-%dT%H:%M:%S"))
    expires = time.mktime(time.strptime(first["expires"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert expires - created == 60
    second = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    page = (await tc.client.get(f"/api/v1/devices/{dev}/commands", params={"limit": 1}, headers=h)).json()
    assert [c["id"] for c in page["items"]] == [second["id"]]
    rest = (await tc.client.get(f"/api/v1/devices/{dev}/commands", params={"cursor": page["next_cursor"]}, headers=h)).json()
    assert [c["id"] for c in rest["items"]] == [first["id"]] and rest["next_cursor"] is None
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands", params={"state": "succeeded"}, headers=h)).json()["items"] == []
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{first['id']}", headers=h)).json()["id"] == first["id"]
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/nope", headers=h)).status_code == 404


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "9lives"}, "command.bad"),
        ({"name": "ping", "params": {"blob": "x" * 5000}}, "command.bad"),
        ({"name": "ping", "expires_in_s": 604801}, "api.invalid"),
        ({"name": "ping", "expires_in_s": 0}, "api.invalid"),
    ],
)
async def test_bad_commands_are_refused_with_422(tc: TwinCloud, body: dict[str, Any], code: str) -> None:
    _, h = await tc.cloud.tenant_user()
    dev = await _device(tc, h)
    r = await tc.client.post(f"/api/v1/devices/{dev}/commands", json=body, headers=h)
    assert (r.status_code, r.json()["code"]) == (422, code)


# --- through the gateway -------------------------------------------------------------------------


def _twin_batch(gateway: str, records: list[Record]) -> bytes:
    return batch.encode(records, gateway_id=gateway, stream=Stream.TWIN, gateway_time_ms=int(time.time() * 1000))


async def test_gateway_gets_desired_and_commands_and_its_twin_batch_applies_once(tc: TwinCloud) -> None:
    tenant, h = await tc.cloud.tenant_user()
    site, gw, files = await tc.site_gateway(h)
    dev = await _device(tc, h, site)
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"interval_s": 5}}}, headers=h)
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    items = await tc.downlink(files)
    kinds = [i["kind"] for i in items]
    assert kinds == ["twin_desired", "command"]
    desired = TwinDesired.from_payload(items[0]["payload"])
    assert (desired.device_id, desired.document.desired, desired.document.version) == (dev, {"interval_s": 5}, 1)
    assert command_from_payload(items[1]["payload"]).id == cmd["id"]
    await tc.ack(files, items[-1]["seq"])
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()["state"] == "delivered"

    now = int(time.time() * 1000)
    records = [
        Record(1, dev, now, "twin_reported", {}, body={"interval_s": 5.0, "fw": "1.2"}),
        Record(2, dev, now + 1, COMMAND_STATE_TYPE, {}, body={"id": cmd["id"], "state": "sent"}),
        Record(3, dev, now + 2, "command_ack", {}, body={"id": cmd["id"], "status": "succeeded", "result": {"pong": True}}),
        Record(4, dev, now + 3, "twin_reported", {}, body={"bad.key": 1}),
    ]
    data = _twin_batch(gw, records)
    ack = await tc.send(files, data)
    assert (ack["written"], ack["quarantined"]) == (3, 1)
    twin = (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()
    assert twin["state"]["delta"] == {} and twin["state"]["reported"] == {"interval_s": 5.0, "fw": "1.2"}
    assert twin["metadata"]["reported"]["fw"]["timestamp"] == now
    done = (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()
    assert (done["state"], done["result"]) == ("succeeded", {"pong": True})
    assert [s["state"] for s in done["history"]] == ["queued", "delivered", "sent", "succeeded"]
    history = (await tc.client.get(f"/api/v1/devices/{dev}/twin/history", headers=h)).json()["items"]
    assert [(i["version"], i["source"], i["actor"]) for i in history] == [(2, "device", f"gateway:{gw}"), (1, "user", history[1]["actor"])]
    q = await tc.sql("SELECT code FROM quarantine WHERE tenant_id = $1", tenant)
    assert [x["code"] for x in q] == ["twin.bad_key"]

    replay = await tc.send(files, data)
    assert (replay["verdict"], replay["written"]) == ("replay", 0)
    assert (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()["version"] == twin["version"]
    assert len((await tc.client.get(f"/api/v1/devices/{dev}/twin/history", headers=h)).json()["items"]) == 2


async def test_a_report_that_overtakes_the_downlink_ack_still_moves_the_command(tc: TwinCloud) -> None:
    tenant, h = await tc.cloud.tenant_user()
    site, gw, files = await tc.site_gateway(h)
    dev = await _device(tc, h, site)
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    now = int(time.time() * 1000)
    await tc.send(files, _twin_batch(gw, [Record(1, dev, now, COMMAND_STATE_TYPE, {}, body={"id": cmd["id"], "state": "sent"})]))
    got = (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()
    assert [s["state"] for s in got["history"]] == ["queued", "delivered", "sent"]
    # an answer for a command of another device, or one the cloud never made, changes nothing and
    # is quarantined with its code, as the same answer from a direct device is rejected
    other = await _device(tc, h, site)
    ack = await tc.send(
        files,
        _twin_batch(gw, [Record(2, other, now, "command_ack", {}, body={"id": cmd["id"], "status": "failed"}),
                         Record(3, dev, now, "command_ack", {}, body={"id": "ghost", "status": "failed"})]),
    )
    assert (ack["written"], ack["quarantined"]) == (0, 2)
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()["state"] == "sent"
    q = await tc.sql("SELECT device_id, code FROM quarantine WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [(x["device_id"], x["code"]) for x in q] == [(other, "command.bad_ack"), (dev, "command.bad_ack")]


async def test_sweep_expires_undelivered_commands_and_withdraws_them_from_the_downlink(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    site, _, files = await tc.site_gateway(h)
    dev = await _device(tc, h, site)
    short = {"name": "ping", "expires_in_s": 1}
    held = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json=short, headers=h)).json()
    late = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json=short, headers=h)).json()
    fresh = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    items = await tc.downlink(files)
    assert len(items) == 3
    await tc.ack(files, items[0]["seq"])  # "held" reached the gateway; "late" did not
    expires = max(twins.to_ms(datetime.fromisoformat(c["expires"])) for c in (held, late))
    while int(time.time() * 1000) <= expires:  # both deadlines pass
        await asyncio.sleep(0.05)
    db = tc.cloud.app.state.pulse.db
    assert await twins.sweep(db, grace_s=3600) == 1  # the delivered one is the gateway's to report, for now
    states = {c["id"]: c["state"] for c in (await tc.client.get(f"/api/v1/devices/{dev}/commands", headers=h)).json()["items"]}
    assert states == {late["id"]: "expired", held["id"]: "delivered", fresh["id"]: "queued"}
    remaining = [command_from_payload(i["payload"]).id for i in await tc.downlink(files, after=items[0]["seq"])]
    assert remaining == [fresh["id"]]
    assert await twins.sweep(db, grace_s=0) == 1
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{held['id']}", headers=h)).json()["state"] == "expired"


# --- direct devices ------------------------------------------------------------------------------


async def test_direct_device_reports_over_http_and_reads_its_twin_with_its_token(tc: TwinCloud) -> None:
    tenant, h = await tc.cloud.tenant_user()
    _, dev, token = await tc.cloud.device_with_token(h)
    auth = {"Authorization": f"Bearer {token}"}
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"interval_s": 30, "led": True}}}, headers=h)
    r = await tc.client.get("/ingest/v1/twin", headers=auth)
    assert r.status_code == 200
    assert r.json()["state"]["delta"] == {"interval_s": 30, "led": True}
    now = int(time.time() * 1000)
    body = [
        {"v": 1, "type": "twin_reported", "ts": now, "body": {"interval_s": 30}},
        {"v": 1, "type": "twin_reported", "ts": now + 1, "body": {"bad key": 1}},
        {"v": 1, "type": "telemetry", "ts": now + 2, "metrics": {"t": 1.5}},
    ]
    r = await tc.client.post("/ingest/v1/telemetry", content=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert r.json()["results"][1]["code"] == "twin.bad_key"
    twin = (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()
    assert (twin["state"]["reported"], twin["state"]["delta"]) == ({"interval_s": 30}, {"led": True})
    history = (await tc.client.get(f"/api/v1/devices/{dev}/twin/history", headers=h)).json()["items"]
    assert (history[0]["source"], history[0]["actor"]) == ("device", f"device:{dev}")
    q = await tc.sql("SELECT code FROM quarantine WHERE tenant_id = $1", tenant)
    assert [x["code"] for x in q] == ["twin.bad_key"]
    assert (await tc.client.get("/ingest/v1/twin")).status_code == 401


async def test_a_direct_device_takes_its_commands_over_http_and_answers_them(tc: TwinCloud) -> None:
    tenant, h = await tc.cloud.tenant_user()
    _, dev, token = await tc.cloud.device_with_token(h)
    _, other, other_token = await tc.cloud.device_with_token(h)
    auth = {"Authorization": f"Bearer {token}"}
    ping = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping", "params": {"n": 1}}, headers=h)).json()
    late = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "reboot", "expires_in_s": 1}, headers=h)).json()
    await asyncio.sleep(1.1)  # the reboot's deadline passes before the device asks

    # another device of the same tenant gets nothing of this device's
    assert (await tc.client.get("/ingest/v1/commands", headers={"Authorization": f"Bearer {other_token}"})).json() == []
    r = await tc.client.get("/ingest/v1/commands", headers=auth)
    assert r.status_code == 200, r.text
    assert [(c["id"], c["name"], c["params"]) for c in r.json()] == [(ping["id"], "ping", {"n": 1})]
    assert (await tc.client.get("/ingest/v1/commands", headers=auth)).json() == []  # handed over once
    state = lambda c: tc.client.get(f"/api/v1/devices/{dev}/commands/{c['id']}", headers=h)  # noqa: E731
    assert (await state(ping)).json()["state"] == "sent"
    assert (await state(late)).json()["state"] == "expired"

    now = int(time.time() * 1000)
    body = [
        {"v": 1, "type": "command_ack", "ts": now, "body": {"id": ping["id"], "status": "succeeded", "result": {"pong": True}}},
        {"v": 1, "type": "command_ack", "ts": now + 1, "body": {"id": "c-nope", "status": "succeeded"}},
        {"v": 1, "type": "command_ack", "ts": now + 2, "body": {"id": late["id"], "status": "succeeded"}},
    ]
    r = await tc.client.post("/ingest/v1/telemetry", content=json.dumps(body), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert [(x["status"], x.get("code")) for x in r.json()["results"]] == [
        ("accepted", None),
        ("rejected", "command.bad_ack"),  # no such command of this device
        ("rejected", "command.illegal_transition"),  # it expired, never sent
    ]
    done = (await state(ping)).json()
    assert (done["state"], done["result"]) == ("succeeded", {"pong": True})
    assert [s["state"] for s in done["history"]] == ["queued", "delivered", "sent", "succeeded"]
    q = await tc.sql("SELECT code FROM quarantine WHERE tenant_id = $1 ORDER BY id", tenant)
    assert [x["code"] for x in q] == ["command.bad_ack", "command.illegal_transition"]
    # the other device cannot answer this device's command
    r = await tc.client.post(
        "/ingest/v1/telemetry",
        content=json.dumps({"v": 1, "type": "command_ack", "body": {"id": ping["id"], "status": "failed"}}),
        headers={"Authorization": f"Bearer {other_token}", "Content-Type": "application/json"},
    )
    assert r.json()["results"][0]["code"] == "command.bad_ack" and (await state(ping)).json()["state"] == "succeeded"
    assert other != dev and (await tc.client.get("/ingest/v1/commands")).status_code == 401


async def test_a_simulated_direct_device_follows_its_twin_and_answers_commands_over_http(tc: TwinCloud, serve: Any) -> None:
    """`pulse sim run --http`: the simulator is a direct device, polling its twin and commands."""
    from pulse.firmware_sim.device import Device
    from pulse.firmware_sim.profiles import make_fleet
    from pulse.firmware_sim.runner import Fleet, HttpTarget

    _, h = await tc.cloud.tenant_user()
    sim = make_fleet(1, prefix="direct")[0]
    _, dev, token = await tc.cloud.device_with_token(h, device_id=sim.device_id)
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"interval_s": 1, "mode": "eco"}}}, headers=h)
    ping = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    async with serve(tc.cloud.app, lifespan=False) as base:
        fleet = Fleet([Device(sim, interval_s=0.2)], HttpTarget(base, {dev: token}), speed=1.0)
        run = asyncio.create_task(fleet.run(duration_s=30))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            twin = (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()
            cmd = (await tc.client.get(f"/api/v1/devices/{dev}/commands/{ping['id']}", headers=h)).json()
            if twin["state"]["reported"].get("interval_s") == 1 and cmd["state"] == "succeeded":
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.5)  # two more polls at least: the delta left ("mode") is not reported again
        fleet.stop()
        await run
    twin = (await tc.client.get(f"/api/v1/devices/{dev}/twin", headers=h)).json()
    assert twin["state"]["reported"]["interval_s"] == 1 and twin["state"]["delta"] == {"mode": "eco"}
    assert twin["version"] == 2  # the desired update, then one report
    cmd = (await tc.client.get(f"/api/v1/devices/{dev}/commands/{ping['id']}", headers=h)).json()
    assert (cmd["state"], cmd["result"]) == ("succeeded", {"pong": True})


async def test_a_device_behind_a_gateway_is_told_its_commands_come_over_mqtt(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    site, _, _ = await tc.site_gateway(h)
    dev_uuid, dev, token = await tc.cloud.device_with_token(h)
    assert (await tc.client.patch(f"/api/v1/devices/{dev_uuid}", json={"site_id": site}, headers=h)).status_code == 200
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    r = await tc.client.get("/ingest/v1/commands", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 409 and r.json()["code"] == "api.conflict"
    assert (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()["state"] == "queued"


# --- live view -----------------------------------------------------------------------------------


async def test_live_socket_tells_the_console_when_the_twin_or_a_command_changes(tc: TwinCloud, serve: Any) -> None:
    _, h = await tc.cloud.tenant_user()
    site, gw, files = await tc.site_gateway(h)
    dev = await _device(tc, h, site)
    dev_uuid = (await tc.client.get("/api/v1/devices", params={"q": dev}, headers=h)).json()["items"][0]["id"]

    async def frame(ws: Any) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[no-any-return]

    async with serve(tc.cloud.app, lifespan=False) as base, connect(base.replace("http://", "ws://") + "/api/v1/live") as ws:
        await ws.send(json.dumps({"type": "auth", "token": h["Authorization"][7:]}))
        assert (await frame(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "subscribe", "device": dev_uuid}))
        assert (await frame(ws))["type"] == "subscribed"
        await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"a": 1}}}, headers=h)
        assert await frame(ws) == {"type": "twin", "device": dev_uuid, "version": 1}
        cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
        assert await frame(ws) == {"type": "command", "device": dev_uuid, "id": cmd["id"], "state": "queued"}
        now = int(time.time() * 1000)
        await tc.send(files, _twin_batch(gw, [Record(1, dev, now, "twin_reported", {}, body={"a": 1}),
                                              Record(2, dev, now, "command_ack", {}, body={"id": cmd["id"], "status": "failed"})]))
        assert await frame(ws) == {"type": "twin", "device": dev_uuid, "version": 2}
        assert await frame(ws) == {"type": "command", "device": dev_uuid, "id": cmd["id"], "state": "failed"}


async def test_live_socket_tells_the_console_when_a_direct_device_reports_over_http(tc: TwinCloud, serve: Any) -> None:
    _, h = await tc.cloud.tenant_user()
    _, dev, token = await tc.cloud.device_with_token(h)
    dev_uuid = (await tc.client.get("/api/v1/devices", params={"q": dev}, headers=h)).json()["items"][0]["id"]
    async with serve(tc.cloud.app, lifespan=False) as base, connect(base.replace("http://", "ws://") + "/api/v1/live") as ws:
        await ws.send(json.dumps({"type": "auth", "token": h["Authorization"][7:]}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        await ws.send(json.dumps({"type": "subscribe", "device": dev_uuid}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "subscribed"
        report = [{"v": 1, "type": "twin_reported", "ts": int(time.time() * 1000), "body": {"fw": "2.1"}}]
        r = await tc.client.post(
            "/ingest/v1/telemetry", content=json.dumps(report), headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        )
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "accepted", r.text
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        while frame["type"] != "twin":  # points of the device may come first
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert frame == {"type": "twin", "device": dev_uuid, "version": 1}


async def test_a_device_moved_to_another_site_brings_its_twin_and_waiting_commands_to_the_new_gateway(tc: TwinCloud) -> None:
    _, h = await tc.cloud.tenant_user()
    site_a, _, _ = await tc.site_gateway(h)
    site_b, _, files_b = await tc.site_gateway(h)
    dev = await _device(tc, h, site_a)
    await tc.client.patch(f"/api/v1/devices/{dev}/twin", json={"state": {"desired": {"interval_s": 9}}}, headers=h)
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    assert await tc.downlink(files_b) == []
    dev_uuid = (await tc.client.get("/api/v1/devices", params={"q": dev}, headers=h)).json()["items"][0]["id"]
    assert (await tc.client.patch(f"/api/v1/devices/{dev_uuid}", json={"site_id": site_b}, headers=h)).status_code == 200
    items = await tc.downlink(files_b)
    assert [i["kind"] for i in items] == ["twin_desired", "command"]
    assert TwinDesired.from_payload(items[0]["payload"]).document.desired == {"interval_s": 9}
    assert command_from_payload(items[1]["payload"]).id == cmd["id"]


async def test_the_gateways_sent_report_arriving_after_the_answer_is_stale_not_quarantined(tc: TwinCloud) -> None:
    tenant, h = await tc.cloud.tenant_user()
    site, gw, files = await tc.site_gateway(h)
    dev = await _device(tc, h, site)
    cmd = (await tc.client.post(f"/api/v1/devices/{dev}/commands", json={"name": "ping"}, headers=h)).json()
    now = int(time.time() * 1000)
    ack = await tc.send(
        files,
        _twin_batch(gw, [Record(1, dev, now, "command_ack", {}, body={"id": cmd["id"], "status": "succeeded"}),
                         Record(2, dev, now, COMMAND_STATE_TYPE, {}, body={"id": cmd["id"], "state": "sent"})]),
    )
    assert ack["quarantined"] == 0
    got = (await tc.client.get(f"/api/v1/devices/{dev}/commands/{cmd['id']}", headers=h)).json()
    assert [s["state"] for s in got["history"]] == ["queued", "delivered", "succeeded"]
    assert await tc.sql("SELECT code FROM quarantine WHERE tenant_id = $1", tenant) == []
