"""Fleet jobs and firmware on a real PostgreSQL, through the API, HTTP ingest (direct devices answer
with their tokens) and the sync listener (real mutual TLS): staged rollout on a passed-in clock,
the abort rule, cancel, rollback, audit, firmware upload checks, ranged gateway downloads counted at
the cloud, and the tenant boundary on every endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from conftest import S3_KEYS

from pulse.cloud import jobs
from pulse.cloud.app import create_app
from pulse.cloud.settings import Settings
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate
from pulse.protocol.twin import TwinLimits

pytestmark = pytest.mark.integration

START_MS = 1_900_000_000_000


@dataclass
class Clock:
    ms: int = START_MS

    def __call__(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.ms / 1000, dt.UTC)


@dataclass
class JobCloud:
    app: Any
    client: httpx.AsyncClient
    settings: Settings
    clock: Clock
    tmp: Path
    sync_url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)

    async def tenant(self) -> dict[str, str]:
        from pulse.cloud.auth.accounts import create_tenant, create_user

        slug = "t-" + uuid.uuid4().hex[:10]
        db = self.app.state.pulse.db
        await create_tenant(db, slug=slug, name=slug, actor="test")
        email = f"{uuid.uuid4().hex[:10]}@example.com"
        await create_user(db, email=email, password="pw-" + "x" * 12, roles=["tenant-admin"], tenant=slug, actor="test")
        r = await self.client.post("/auth/login", json={"email": email, "password": "pw-" + "x" * 12})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    async def devices(self, h: dict[str, str], n: int, tags: list[str] | None = None) -> list[str]:
        out = []
        for i in range(n):
            device_id = f"d{i:02d}-" + uuid.uuid4().hex[:6]
            r = await self.client.post("/api/v1/devices", json={"device_id": device_id, "tags": tags or []}, headers=h)
            assert r.status_code == 201, r.text
            r2 = await self.client.post(f"/api/v1/devices/{r.json()['id']}/credentials", headers=h)
            self.tokens[device_id] = r2.json()["token"]
            out.append(device_id)
        return sorted(out)

    async def say(self, device_id: str, *messages: dict[str, Any]) -> None:
        """The device speaks over HTTP ingest with its own token (real wall time: ingest's window)."""
        now = int(time.time() * 1000)
        body = [{"v": 1, "ts": now + i, **m} for i, m in enumerate(messages)]
        r = await self.client.post("/ingest/v1/telemetry", content=json.dumps(body),
                                   headers={"Authorization": f"Bearer {self.tokens[device_id]}", "Content-Type": "application/json"})
        assert r.status_code == 200 and all(x["status"] == "accepted" for x in r.json()["results"]), r.text

    async def tick(self, advance_s: float = 0) -> None:
        self.clock.ms += int(advance_s * 1000)
        await jobs.run_once(self.app.state.pulse.db, clock=lambda: self.clock.ms, limits=TwinLimits())

    async def job(self, h: dict[str, str], job_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/v1/jobs/{job_id}", headers=h)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def _job_cloud(cloud_settings: Settings, tmp_path: Path, **overrides: Any) -> AsyncIterator[JobCloud]:
    settings = Settings(**{**cloud_settings.model_dump(), "jwt_secret": cloud_settings.jwt_secret.get_secret_value(),
                           "data_dir": tmp_path / "data", "sync_port": 0, "sync_host": "127.0.0.1",
                           "job_interval_s": 3600, "command_sweep_interval_s": 3600, "firmware_max_bytes": 100_000, **overrides})
    clock = Clock()
    app = create_app(settings, sync_listener=True, clock=clock)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as client:
            port = app.state.sync_listener.port
            yield JobCloud(app, client, settings, clock, tmp_path, f"https://127.0.0.1:{port}")


@pytest.fixture
async def jc(cloud_settings: Settings, tmp_path: Path) -> AsyncIterator[JobCloud]:
    async with _job_cloud(cloud_settings, tmp_path) as c:
        yield c


@pytest.fixture
async def jc_s3(cloud_settings: Settings, tmp_path: Path, s3_endpoint: str) -> AsyncIterator[JobCloud]:
    """The cloud with its firmware artifacts in moto's S3 bucket ``pulse-firmware`` (PULSE_FIRMWARE_S3_*)."""
    async with _job_cloud(cloud_settings, tmp_path, firmware_s3_bucket="pulse-firmware", firmware_s3_endpoint=s3_endpoint,
                          firmware_s3_prefix="fw", firmware_s3_access_key=S3_KEYS["aws_access_key_id"],
                          firmware_s3_secret_key=S3_KEYS["aws_secret_access_key"]) as c:
        yield c


def _outcomes(job: dict[str, Any]) -> dict[str, str]:
    return {d["device"]: d["outcome"] for d in job["devices"]}


async def test_a_desired_state_job_rolls_out_in_stages_with_a_pause_and_rolls_back(jc: JobCloud) -> None:
    h = await jc.tenant()
    devs = await jc.devices(h, 5, tags=["ups"])
    for d in devs:
        await jc.client.patch(f"/api/v1/devices/{d}/twin", json={"state": {"desired": {"interval_s": 10}}}, headers=h)
    r = await jc.client.post("/api/v1/jobs", json={
        "name": "faster reporting", "target": {"tags": ["ups"]}, "action": {"kind": "desired", "patch": {"interval_s": 30}},
        "rollout": {"canary": 1, "batch_size": 2, "pause_s": 60},
    }, headers=h)
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["state"], job["stages"], job["progress"]["queued"]) == ("running", 3, 5)
    await jc.tick()
    job = await jc.job(h, job["id"])
    assert _outcomes(job) == {devs[0]: "in_progress", **{d: "queued" for d in devs[1:]}}
    twin = (await jc.client.get(f"/api/v1/devices/{devs[0]}/twin", headers=h)).json()
    assert twin["state"]["delta"] == {"interval_s": 30}
    await jc.say(devs[0], {"type": "twin_reported", "body": {"interval_s": 30}})
    await jc.tick(1)
    job = await jc.job(h, job["id"])
    assert job["state"] == "paused" and _outcomes(job)[devs[0]] == "succeeded"
    await jc.tick(59)
    assert (await jc.job(h, job["id"]))["state"] == "paused"  # 59 s after the canary was done
    await jc.tick(1)
    job = await jc.job(h, job["id"])
    assert (job["state"], job["stage"]) == ("running", 2)
    assert [_outcomes(job)[d] for d in devs[1:]] == ["in_progress", "in_progress", "queued", "queued"]
    for d in devs[1:3]:
        await jc.say(d, {"type": "twin_reported", "body": {"interval_s": 30}})
    await jc.tick(1)
    await jc.tick(60)
    for d in devs[3:]:
        await jc.say(d, {"type": "twin_reported", "body": {"interval_s": 30}})
    await jc.tick(1)
    job = await jc.job(h, job["id"])
    assert job["state"] == "completed" and job["progress"]["succeeded"] == 5
    assert [s["succeeded"] for s in job["stage_progress"]] == [1, 2, 2]

    r = await jc.client.post(f"/api/v1/jobs/{job['id']}/rollback", headers=h)
    assert r.status_code == 201, r.text
    back = r.json()
    assert back["rollback_of"] == job["id"] and back["progress"]["queued"] == 5
    await jc.tick()
    twin = (await jc.client.get(f"/api/v1/devices/{devs[0]}/twin", headers=h)).json()
    assert twin["state"]["desired"] == {"interval_s": 10}
    actions = [r["action"] for r in await jc.sql("SELECT action FROM audit_log WHERE target = ANY($1::text[]) ORDER BY id",
                                                  [job["id"], back["id"]])]
    assert actions[0] == "job.create" and "job.paused" in actions and "job.completed" in actions and actions.count("job.create") == 2


async def test_a_canary_where_two_of_five_fail_stops_the_job_before_the_next_stage(jc: JobCloud) -> None:
    h = await jc.tenant()
    devs = await jc.devices(h, 8)
    r = await jc.client.post("/api/v1/jobs", json={
        "target": {"devices": devs}, "action": {"kind": "command", "name": "reboot"},
        "rollout": {"canary": 5, "abort_percent": 20},
    }, headers=h)
    job_id = r.json()["id"]
    await jc.tick()
    job = await jc.job(h, job_id)
    commands = {d["device"]: d["command"] for d in job["devices"] if d["command"]}
    assert sorted(commands) == devs[:5]
    await jc.say(devs[0], {"type": "command_ack", "body": {"id": commands[devs[0]], "status": "failed", "error": "battery low"}})
    await jc.say(devs[1], {"type": "command_ack", "body": {"id": commands[devs[1]], "status": "succeeded"}})
    await jc.tick(1)
    assert (await jc.job(h, job_id))["state"] == "running"  # 1 of 5 is not more than 20 %
    await jc.say(devs[2], {"type": "command_ack", "body": {"id": commands[devs[2]], "status": "failed", "error": "busy"}})
    await jc.tick(1)
    job = await jc.job(h, job_id)
    assert job["state"] == "aborted" and "2 of 5" in job["reason"]
    out = {d["device"]: (d["outcome"], d["reason"]) for d in job["devices"]}
    assert out[devs[0]] == ("failed", "battery low")
    assert {out[d][0] for d in devs[5:]} == {"cancelled"}
    assert [c for c in await jc.sql("SELECT device_id FROM commands WHERE device_id = ANY($1::text[])", devs[5:])] == []


async def test_started_devices_time_out_and_a_job_can_be_cancelled_once(jc: JobCloud) -> None:
    h = await jc.tenant()
    devs = await jc.devices(h, 3)
    r = await jc.client.post("/api/v1/jobs", json={
        "target": {"devices": devs}, "action": {"kind": "command", "name": "ping"},
        "rollout": {"canary": 1, "device_timeout_s": 30},
    }, headers=h)
    job_id = r.json()["id"]
    await jc.tick()
    await jc.tick(30)
    job = await jc.job(h, job_id)
    assert _outcomes(job)[devs[0]] == "timed_out"
    r = await jc.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert set(_outcomes(r.json()).values()) <= {"timed_out", "cancelled", "in_progress"}
    r = await jc.client.post(f"/api/v1/jobs/{job_id}/cancel", headers=h)
    assert (r.status_code, r.json()["code"]) == (409, "job.illegal_state")
    r = await jc.client.post(f"/api/v1/jobs/{job_id}/rollback", headers=h)
    assert (r.status_code, r.json()["code"]) == (409, "job.illegal_state")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"action": {"kind": "teleport"}}, 422, "job.invalid"),
        ({"action": {"kind": "command", "name": "x"}, "rollout": {"abort_percent": 500}}, 422, "job.invalid"),
        ({"action": {"kind": "command", "name": "x"}, "target": {"site": "not-a-uuid"}}, 422, "job.invalid"),
        ({"action": {"kind": "command", "name": "x"}, "target": {"tags": ["nothing-has-this"]}}, 422, "job.no_devices"),
        ({"action": {"kind": "firmware", "artifact": str(uuid.uuid4())}}, 422, "job.invalid"),
    ],
)
async def test_a_bad_job_is_refused_with_its_code(jc: JobCloud, body: dict[str, Any], status: int, code: str) -> None:
    h = await jc.tenant()
    await jc.devices(h, 1)
    r = await jc.client.post("/api/v1/jobs", json=body, headers=h)
    assert (r.status_code, r.json()["code"]) == (status, code), r.text


async def _upload(jc: JobCloud, h: dict[str, str], data: bytes, version: str = "2.0.0", sha: str | None = None) -> httpx.Response:
    return await jc.client.post("/api/v1/firmware", content=data, headers={**h, "Content-Type": "application/octet-stream"},
                                params={"version": version, "model": "ups-x", "sha256": sha or hashlib.sha256(data).hexdigest()})


async def test_firmware_upload_keeps_only_bytes_that_match_their_hash(jc: JobCloud) -> None:
    h = await jc.tenant()
    data = b"\x7fELF" + bytes(range(256)) * 40
    r = await _upload(jc, h, data)
    assert r.status_code == 201, r.text
    art = r.json()
    assert (art["size"], art["sha256"], art["bytes_served"]) == (len(data), hashlib.sha256(data).hexdigest(), 0)
    assert (jc.tmp / "data" / "firmware").rglob(art["id"])
    r = await _upload(jc, h, data)
    assert (r.status_code, r.json()["code"]) == (409, "firmware.duplicate")
    r = await _upload(jc, h, data, version="2.0.1", sha="0" * 64)
    assert (r.status_code, r.json()["code"]) == (422, "firmware.hash_mismatch")
    r = await _upload(jc, h, b"x" * 100_001, version="2.0.2")
    assert (r.status_code, r.json()["code"]) == (413, "firmware.too_large")
    r = await _upload(jc, h, data, version="bad version")
    assert (r.status_code, r.json()["code"]) == (422, "firmware.invalid")
    items = (await jc.client.get("/api/v1/firmware", headers=h)).json()["items"]
    assert [i["version"] for i in items] == ["2.0.0"]
    assert len([p for p in (jc.tmp / "data" / "firmware").rglob("*") if p.is_file()]) == 1


async def _gateway(jc: JobCloud, h: dict[str, str]) -> IdentityFiles:
    r = await jc.client.post("/api/v1/sites", json={"name": "s-" + uuid.uuid4().hex[:6]}, headers=h)
    site = r.json()["id"]
    name = "gw-" + uuid.uuid4().hex[:8]
    r = await jc.client.post("/api/v1/gateways", json={"name": name, "site_id": site}, headers=h)
    files = IdentityFiles(jc.tmp / name)
    r = await jc.client.post("/enroll/v1", json={"token": r.json()["enrollment"]["token"], "csr": make_key_and_csr(files, name).decode()})
    assert r.status_code == 201, r.text
    store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    return files


def _mtls(jc: JobCloud, files: IdentityFiles) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(jc.tmp / "data" / "ca" / "ca.crt"))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return httpx.AsyncClient(verify=ctx, base_url=jc.sync_url, timeout=30)


async def _two_ranges(gw: httpx.AsyncClient, artifact: str, data: bytes) -> None:
    """The gateway downloads ``data`` as bytes 0-9999, then the rest."""
    first = await gw.get(f"/sync/v1/firmware/{artifact}", headers={"Range": "bytes=0-9999"})
    assert (first.status_code, first.headers["content-range"], len(first.content)) == (206, f"bytes 0-9999/{len(data)}", 10_000)
    rest = await gw.get(f"/sync/v1/firmware/{artifact}", headers={"Range": "bytes=10000-"})
    assert rest.status_code == 206 and first.content + rest.content == data


async def test_a_gateway_downloads_an_artifact_in_ranges_and_the_cloud_counts_the_bytes(jc: JobCloud) -> None:
    h = await jc.tenant()
    data = bytes(range(256)) * 100
    art = (await _upload(jc, h, data)).json()
    files = await _gateway(jc, h)
    async with _mtls(jc, files) as gw:
        await _two_ranges(gw, art["id"], data)
        bad = await gw.get(f"/sync/v1/firmware/{art['id']}", headers={"Range": f"bytes={len(data)}-"})
        assert (bad.status_code, bad.json()["code"]) == (416, "firmware.bad_range")
        whole = await gw.get(f"/sync/v1/firmware/{art['id']}")
        assert whole.status_code == 200 and whole.content == data and whole.headers["x-pulse-sha256"] == art["sha256"]
    for _ in range(50):
        got = (await jc.client.get(f"/api/v1/firmware/{art['id']}", headers=h)).json()
        if got["bytes_served"] == 2 * len(data):
            break
        await asyncio.sleep(0.05)
    assert (got["bytes_served"], got["downloads"]) == (2 * len(data), 2)


async def _served(jc: JobCloud, h: dict[str, str], artifact: str, downloads: int) -> dict[str, Any]:
    """The artifact once ``downloads`` downloads are counted (the cloud counts each when its response ends)."""
    for _ in range(100):
        got: dict[str, Any] = (await jc.client.get(f"/api/v1/firmware/{artifact}", headers=h)).json()
        if got["downloads"] >= downloads:
            return got
        await asyncio.sleep(0.05)
    return got


async def test_a_download_cut_mid_way_and_resumed_counts_only_the_bytes_that_arrived(jc: JobCloud) -> None:
    h = await jc.tenant()
    data = hashlib.sha256(b"fw").digest() * 3000  # 96,000 bytes: the server writes it all before the cut is seen
    art = (await _upload(jc, h, data)).json()
    files = await _gateway(jc, h)
    got = b""
    async with _mtls(jc, files) as gw:
        for _ in range(2):  # cut twice: the gateway keeps what arrived and resumes from there
            async with gw.stream("GET", f"/sync/v1/firmware/{art['id']}", headers={"Range": f"bytes={len(got)}-"} if got else {}) as r:
                async for chunk in r.aiter_raw():
                    got += chunk
                    break
        rest = await gw.get(f"/sync/v1/firmware/{art['id']}", headers={"Range": f"bytes={len(got)}-"})
        assert rest.status_code == 206 and got + rest.content == data
    served = await _served(jc, h, art["id"], 1)
    assert (served["bytes_served"], served["downloads"]) == (len(data), 1)
    # a new download from the start (no Range) crosses the uplink again and is counted again
    async with _mtls(jc, files) as gw:
        assert (await gw.get(f"/sync/v1/firmware/{art['id']}")).content == data
    served = await _served(jc, h, art["id"], 2)
    assert (served["bytes_served"], served["downloads"]) == (2 * len(data), 2)


async def test_firmware_in_an_s3_bucket_is_uploaded_there_and_downloaded_in_ranges_from_it(jc_s3: JobCloud, s3_endpoint: str) -> None:
    jc = jc_s3
    h = await jc.tenant()
    data = bytes(range(256)) * 300
    art = (await _upload(jc, h, data)).json()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **S3_KEYS)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="pulse-firmware")["Contents"]]
    tenant = (await jc.sql("SELECT tenant_id FROM firmware_artifacts WHERE id = $1", uuid.UUID(art["id"])))[0]["tenant_id"]
    assert keys == [f"fw/{tenant}/{art['id']}"]
    assert not [p for p in (jc.tmp / "data").rglob(art["id"]) if p.is_file()]  # nothing kept on the cloud's disk
    assert (await _upload(jc, h, data, version="2.0.1", sha="0" * 64)).status_code == 422  # wrong hash: nothing stored
    assert len(s3.list_objects_v2(Bucket="pulse-firmware")["Contents"]) == 1
    files = await _gateway(jc, h)
    async with _mtls(jc, files) as gw:
        await _two_ranges(gw, art["id"], data)
    served = await _served(jc, h, art["id"], 1)
    assert (served["bytes_served"], served["downloads"]) == (len(data), 1)


async def test_every_job_and_firmware_endpoint_answers_404_to_another_tenant(jc: JobCloud) -> None:
    ha, hb = await jc.tenant(), await jc.tenant()
    devs = await jc.devices(ha, 2)
    await jc.devices(hb, 1)
    job = (await jc.client.post("/api/v1/jobs", json={"target": {"devices": devs}, "action": {"kind": "desired", "patch": {"a": 1}}},
                                headers=ha)).json()
    art = (await _upload(jc, ha, b"firmware-a")).json()
    for method, path in [("GET", f"/api/v1/jobs/{job['id']}"), ("POST", f"/api/v1/jobs/{job['id']}/cancel"),
                         ("POST", f"/api/v1/jobs/{job['id']}/rollback"), ("GET", f"/api/v1/firmware/{art['id']}")]:
        r = await jc.client.request(method, path, headers=hb)
        assert (r.status_code, r.json()["code"]) == (404, "api.not_found"), (method, path, r.text)
    assert (await jc.client.get("/api/v1/jobs", headers=hb)).json()["items"] == []
    assert (await jc.client.get("/api/v1/firmware", headers=hb)).json()["items"] == []
    r = await jc.client.post("/api/v1/jobs", json={"target": {"devices": devs}, "action": {"kind": "command", "name": "x"}}, headers=hb)
    assert (r.status_code, r.json()["code"]) == (422, "job.no_devices")
    r = await jc.client.post("/api/v1/jobs", json={"target": {}, "action": {"kind": "firmware", "artifact": art["id"]}}, headers=hb)
    assert (r.status_code, r.json()["code"]) == (422, "job.invalid")
    assert (await jc.client.post("/api/v1/jobs/preview", json={"target": {"devices": devs}}, headers=hb)).json()["count"] == 0
    files_b = await _gateway(jc, hb)
    async with _mtls(jc, files_b) as gw:
        r = await gw.get(f"/sync/v1/firmware/{art['id']}")
        assert (r.status_code, r.json()["code"]) == (404, "api.not_found")
    assert (await jc.job(ha, job["id"]))["state"] == "running"


async def test_a_gateway_cache_fetches_once_for_many_devices_refetches_a_bad_file_and_refuses_bad_urls(jc: JobCloud, serve: Any) -> None:
    """edge/firmware.py against the real sync listener: concurrent device downloads cause one fetch;
    a partial file that is not the artifact is thrown away and fetched again; a URL for another
    device, a forged one or an expired one gets 403 firmware.url_expired."""
    import asyncio

    from pulse.edge.firmware import FirmwareCache, FirmwareService, LocalUrls
    from pulse.edge.link import Connection, Enrollment
    from pulse.protocol.firmware import manifest_from_params

    h = await jc.tenant()
    data = bytes(range(256)) * 300
    art = (await _upload(jc, h, data)).json()
    files = await _gateway(jc, h)
    enrollment = Enrollment("http://pulse.test", jc.sync_url, "t", "g", "gw", 0)
    connection = Connection(enrollment, files, timeout_s=10)
    now = [1_000_000]
    cache = FirmwareCache(jc.tmp / "gw-cache", connection, retry_s=0.05)
    service = FirmwareService(cache, LocalUrls(b"k" * 32, "http://unused", 60, clock=lambda: now[0]))
    manifest = manifest_from_params({**art, "artifact": art["id"]})
    (jc.tmp / "gw-cache" / f"{art['id']}.part").write_bytes(b"\xff" * len(data))  # a full-length file that is not it
    try:
        async with serve(service.app()) as local, httpx.AsyncClient(base_url=local, timeout=30) as c:
            cache.manifests[manifest.artifact] = manifest
            urls = [service.urls.url(f"dev-{i}", manifest.artifact).removeprefix("http://unused") for i in range(5)]
            got = await asyncio.gather(*(c.get(u) for u in urls))
            assert [r.status_code for r in got] == [200] * 5 and all(r.content == data for r in got)
            assert (cache.counts.fetches, cache.counts.uplink_bytes, cache.counts.served) == (1, len(data), 5)
            other = urls[0].replace("device=dev-0", "device=dev-9")
            forged = urls[0][:-4] + "0000"
            for bad in (other, forged):
                r = await c.get(bad)
                assert (r.status_code, r.json()["code"]) == (403, "firmware.url_expired")
            now[0] += 60_000
            r = await c.get(urls[1])
            assert (r.status_code, r.json()["code"]) == (403, "firmware.url_expired")
            assert service.snapshot()["cached"] == [art["id"]]
    finally:
        await cache.stop()
        await connection.drop()


async def test_the_gateways_firmware_fetch_takes_its_bytes_from_the_uplinks_bandwidth_cap(jc: JobCloud) -> None:
    """On a metered link the firmware and the data share one budget: every byte fetched is taken
    from the uplink's bucket (here on a clock that stands still, so the debt is exactly the artifact
    less the bucket's credit), and the uplink's next batch waits for it."""
    from pulse.edge.firmware import FirmwareCache
    from pulse.edge.link import Connection, Enrollment
    from pulse.edge.throttle import TokenBucket
    from pulse.protocol.firmware import manifest_from_params

    h = await jc.tenant()
    data = bytes(range(256)) * 380  # under this test cloud's 100,000-byte artifact limit
    r = await _upload(jc, h, data)
    assert r.status_code == 201, r.text
    art = r.json()
    files = await _gateway(jc, h)
    connection = Connection(Enrollment("http://pulse.test", jc.sync_url, "t", "g", "gw", 0), files, timeout_s=10)
    rate, burst = 1_000_000.0, 1000.0  # bytes/s and the bucket's credit: the waits of this test add up to about 0.1 s
    bucket = TokenBucket(rate, burst)
    cache = FirmwareCache(jc.tmp / "capped-cache", connection, bucket=bucket, clock=lambda: 100.0)
    try:
        await cache.ensure(manifest_from_params({**art, "artifact": art["id"]}))
    finally:
        await cache.stop()
        await connection.drop()
    assert cache.counts.uplink_bytes == len(data)
    # every byte was taken from the bucket: the debt is the artifact less the first send's credit
    # (a first send goes at once, up to one chunk of at most 64 KiB)
    debt = -(bucket.tokens or 0.0)
    assert len(data) - 65536 <= debt <= len(data) - burst
    assert bucket.reserve(1000, 100.0) == pytest.approx((debt + 1000) / rate)  # the uplink's next batch waits for it


async def test_a_direct_device_downloads_its_firmware_from_the_cloud_with_its_token(jc: JobCloud) -> None:
    h, hb = await jc.tenant(), await jc.tenant()
    dev = (await jc.devices(h, 1))[0]
    other = (await jc.devices(hb, 1))[0]
    data = b"direct firmware" * 1000
    art = (await _upload(jc, h, data)).json()
    r = await jc.client.post("/api/v1/jobs", json={"target": {"devices": [dev]}, "action": {"kind": "firmware", "artifact": art["id"]}},
                             headers=h)
    assert r.status_code == 201, r.text
    await jc.tick()
    auth = {"Authorization": f"Bearer {jc.tokens[dev]}"}
    waiting = (await jc.client.get("/ingest/v1/commands", headers=auth)).json()
    assert [c["name"] for c in waiting] == ["firmware.update"]
    params = waiting[0]["params"]
    assert (params["url"], params["sha256"], params["size"]) == (f"/ingest/v1/firmware/{art['id']}", art["sha256"], len(data))
    got = await jc.client.get(params["url"], headers=auth)
    assert got.status_code == 200 and got.content == data
    part = await jc.client.get(params["url"], headers={**auth, "Range": "bytes=10-19"})
    assert (part.status_code, part.content) == (206, data[10:20])
    assert (await jc.client.get(params["url"])).status_code == 401
    r = await jc.client.get(params["url"], headers={"Authorization": f"Bearer {jc.tokens[other]}"})
    assert (r.status_code, r.json()["code"]) == (404, "api.not_found")
    await jc.say(dev, {"type": "twin_reported", "body": {"firmware": {"version": "2.0.0"}}},
                 {"type": "command_ack", "body": {"id": waiting[0]["id"], "status": "succeeded"}})
    await jc.tick(1)
    job = await jc.job(h, (await jc.client.get("/api/v1/jobs", headers=h)).json()["items"][0]["id"])
    assert job["state"] == "completed" and job["progress"]["succeeded"] == 1
    r = await jc.client.post("/api/v1/jobs/preview", json={"target": {"firmware": "2.0.0"}}, headers=h)
    assert r.json()["devices"] == [dev]


async def test_a_large_stage_starts_in_rounds_of_bounded_transactions_within_one_pass(jc: JobCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "STARTS_PER_ROUND", 2)
    h = await jc.tenant()
    devs = await jc.devices(h, 5)
    job = (await jc.client.post("/api/v1/jobs", json={"target": {"devices": devs}, "action": {"kind": "command", "name": "ping"}},
                                headers=h)).json()
    rounds = await jobs.run_once(jc.app.state.pulse.db, clock=lambda: jc.clock.ms, limits=TwinLimits())
    assert rounds >= 3
    assert set(_outcomes(await jc.job(h, job["id"])).values()) == {"in_progress"}
    assert len(await jc.sql("SELECT id FROM commands WHERE device_id = ANY($1::text[])", devs)) == 5
