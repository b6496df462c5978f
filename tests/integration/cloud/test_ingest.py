"""HTTP ingest: what is accepted is committed before the answer; everything else is refused with a
code (and, for bad envelopes, kept in quarantine with its raw bytes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration

Cloud = Any  # the `cloud` fixture (conftest.py)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def tenant_rows(dsn: str, tenant: Any, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_one_envelope_is_stored_with_its_fields(cloud: Cloud, app_dsn: str) -> None:
    tenant, admin = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(admin)
    ts = int(time.time() * 1000) - 5000
    envelope = {"v": 1, "ts": ts, "seq": 7, "metrics": {"temp_c": 21.5, "on": True}, "tags": {"zone": "n"}}
    r = await cloud.client.post("/ingest/v1/telemetry", json=envelope, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "rejected": 0, "results": [{"index": 0, "status": "accepted"}]}
    rows = await tenant_rows(app_dsn, tenant, "SELECT * FROM telemetry")
    assert len(rows) == 1
    row = rows[0]
    assert row["device_id"] == device_id and row["msg_type"] == "telemetry" and row["seq"] == 7 and row["source"] == "http"
    assert json.loads(row["metrics"]) == {"temp_c": 21.5, "on": True} and json.loads(row["tags"]) == {"zone": "n"}
    assert int(row["time"].timestamp() * 1000) == ts


async def test_batch_reports_each_message_and_quarantines_the_bad_ones(cloud: Cloud, app_dsn: str) -> None:
    tenant, admin = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(admin)
    batch = [
        {"v": 1, "metrics": {"a": 1}},
        {"v": 2, "metrics": {"a": 1}},
        {"v": 1, "type": "event", "body": {"door": "open"}},
        {"v": 1, "metrics": {"a": "high"}},
        {"v": 1, "device": "someone-else", "metrics": {"a": 1}},
        [1, 2],
    ]
    r = await cloud.client.post("/ingest/v1/telemetry", json=batch, headers=bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 4)
    outcome = [(x["index"], x["status"], x.get("code")) for x in body["results"]]
    assert outcome == [
        (0, "accepted", None),
        (1, "rejected", "envelope.version_unsupported"),
        (2, "accepted", None),
        (3, "rejected", "envelope.bad_metric"),
        (4, "rejected", "envelope.device_mismatch"),
        (5, "rejected", "envelope.not_object"),
    ]
    assert all(x["message"] for x in body["results"] if x["status"] == "rejected")
    stored = await tenant_rows(app_dsn, tenant, "SELECT msg_type FROM telemetry ORDER BY msg_type")
    assert [r["msg_type"] for r in stored] == ["event", "telemetry"]
    quarantined = await tenant_rows(app_dsn, tenant, "SELECT code, device_id, source, raw FROM quarantine ORDER BY id")
    assert [q["code"] for q in quarantined] == [
        "envelope.version_unsupported",
        "envelope.bad_metric",
        "envelope.device_mismatch",
        "envelope.not_object",
    ]
    assert all(q["device_id"] == device_id and q["source"] == "http" for q in quarantined)
    assert json.loads(quarantined[0]["raw"]) == batch[1]


async def test_malformed_body_is_quarantined_raw_and_refused(cloud: Cloud, app_dsn: str) -> None:
    tenant, admin = await cloud.tenant_user()
    _, _, token = await cloud.device_with_token(admin)
    raw = b'{"v": 1, "metrics": {"a": 1}'  # truncated
    r = await cloud.client.post("/ingest/v1/telemetry", content=raw, headers=bearer(token))
    assert r.status_code == 422
    assert r.json()["code"] == "envelope.not_json" and r.json()["accepted"] == 0
    rows = await tenant_rows(app_dsn, tenant, "SELECT code, raw FROM quarantine")
    assert [(q["code"], q["raw"]) for q in rows] == [("envelope.not_json", raw)]

    r = await cloud.client.post("/ingest/v1/telemetry", content=b"[]", headers=bearer(token))
    assert r.status_code == 422 and r.json()["code"] == "ingest.empty"


async def test_oversize_bodies_are_refused_with_413(cloud: Cloud, app_dsn: str) -> None:
    tenant, admin = await cloud.tenant_user()
    _, _, token = await cloud.device_with_token(admin)
    limit = cloud.settings.ingest_max_body_bytes
    big = json.dumps([{"v": 1, "metrics": {"a": 1}, "tags": {"pad": "x" * 100}}] * (limit // 100)).encode()
    assert len(big) > limit
    r = await cloud.client.post("/ingest/v1/telemetry", content=big, headers=bearer(token))
    assert r.status_code == 413 and r.json()["code"] == "ingest.too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while streaming
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = await cloud.client.post("/ingest/v1/telemetry", content=chunks(), headers=bearer(token))
    assert r.status_code == 413 and r.json()["code"] == "ingest.too_large"

    many = json.dumps([{"v": 1, "metrics": {"a": 1}}] * (cloud.settings.ingest_max_messages + 1)).encode()
    assert len(many) < limit
    r = await cloud.client.post("/ingest/v1/telemetry", content=many, headers=bearer(token))
    assert r.status_code == 413 and r.json()["code"] == "ingest.too_many_messages"
    assert await tenant_rows(app_dsn, tenant, "SELECT 1 FROM telemetry") == []


async def test_bad_revoked_and_rotated_tokens_are_refused(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user()
    device, _, token = await cloud.device_with_token(admin)
    msg = {"v": 1, "metrics": {"a": 1}}
    url = "/ingest/v1/telemetry"
    assert (await cloud.client.post(url, json=msg, headers=bearer(token))).status_code == 200

    r = await cloud.client.post(url, json=msg)
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    for bad in ("garbage", token[:-1] + ("A" if token[-1] != "A" else "B"), "pdt_" + "0" * 32 + "_" + "x" * 43):
        r = await cloud.client.post(url, json=msg, headers=bearer(bad))
        assert r.status_code == 401 and r.json()["code"] == "auth.invalid", bad

    credential = (await cloud.client.get(f"/api/v1/devices/{device}/credentials", headers=admin)).json()[0]["id"]
    rotated = await cloud.client.post(f"/api/v1/devices/{device}/credentials/{credential}/rotate", headers=admin)
    new_token = rotated.json()["token"]
    assert (await cloud.client.post(url, json=msg, headers=bearer(token))).status_code == 401
    assert (await cloud.client.post(url, json=msg, headers=bearer(new_token))).status_code == 200

    r = await cloud.client.patch(f"/api/v1/devices/{device}", json={"status": "disabled"}, headers=admin)
    assert r.status_code == 200
    r = await cloud.client.post(url, json=msg, headers=bearer(new_token))
    assert r.status_code == 403 and r.json()["code"] == "auth.device_disabled"
    await cloud.client.patch(f"/api/v1/devices/{device}", json={"status": "active"}, headers=admin)
    assert (await cloud.client.post(url, json=msg, headers=bearer(new_token))).status_code == 200

    assert (await cloud.client.delete(f"/api/v1/devices/{device}/credentials/{credential}", headers=admin)).status_code == 204
    r = await cloud.client.post(url, json=msg, headers=bearer(new_token))
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid"


async def test_decommission_stops_ingest_and_is_audited(cloud: Cloud, app_dsn: str) -> None:
    tenant, admin = await cloud.tenant_user()
    device, device_id, token = await cloud.device_with_token(admin)
    r = await cloud.client.post(f"/api/v1/devices/{device}/decommission", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "decommissioned"
    r = await cloud.client.post("/ingest/v1/telemetry", json={"v": 1, "metrics": {"a": 1}}, headers=bearer(token))
    assert r.status_code == 401
    audit = await tenant_rows(
        app_dsn, tenant, "SELECT action, target, detail FROM audit_log WHERE action = 'device.decommission'"
    )
    assert [(a["target"], json.loads(a["detail"])) for a in audit] == [(device_id, {"credentials_revoked": 1})]


async def test_device_token_is_looked_up_once_per_ttl_not_per_message(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user()
    _, _, token = await cloud.device_with_token(admin)
    cache = cloud.app.state.pulse.device_tokens
    before = cache.lookups
    for _ in range(5):
        r = await cloud.client.post("/ingest/v1/telemetry", json=[{"v": 1, "metrics": {"a": 1}}] * 10, headers=bearer(token))
        assert r.status_code == 200
    assert cache.lookups - before == 1


async def test_rate_limit_breach_answers_429_and_stores_nothing(cloud_settings: Settings, start_cloud: Any, app_dsn: str) -> None:
    settings = cloud_settings.model_copy(update={"ingest_rate_per_s": 0.01, "ingest_burst": 5.0})
    async with start_cloud(settings) as cloud:
        tenant, admin = await cloud.tenant_user()
        _, _, token = await cloud.device_with_token(admin)
        r = await cloud.client.post("/ingest/v1/telemetry", json=[{"v": 1, "metrics": {"a": 1}}] * 4, headers=bearer(token))
        assert r.status_code == 200
        r = await cloud.client.post("/ingest/v1/telemetry", json=[{"v": 1, "metrics": {"a": 2}}] * 2, headers=bearer(token))
        assert r.status_code == 429 and r.json()["code"] == "ingest.rate_limited"
        assert int(r.headers["retry-after"]) >= 1
        # another device has its own bucket
        _, _, other = await cloud.device_with_token(admin)
        r = await cloud.client.post("/ingest/v1/telemetry", json={"v": 1, "metrics": {"a": 3}}, headers=bearer(other))
        assert r.status_code == 200
    values = await tenant_rows(app_dsn, tenant, "SELECT metrics->>'a' AS a FROM telemetry")
    assert sorted(v["a"] for v in values) == ["1", "1", "1", "1", "3"]


async def test_full_writer_queue_answers_503_and_acks_only_after_commit(
    cloud_settings: Settings, start_cloud: Any, app_dsn: str
) -> None:
    settings = cloud_settings.model_copy(update={"writer_queue_rows": 10, "writer_connections": 1})
    async with start_cloud(settings) as cloud:
        tenant, admin = await cloud.tenant_user()
        _, _, token = await cloud.device_with_token(admin)
        blocker = await asyncpg.connect(settings.database_url)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")  # storage stalls
            first = asyncio.create_task(
                cloud.client.post("/ingest/v1/telemetry", json=[{"v": 1, "metrics": {"a": 1}}] * 8, headers=bearer(token))
            )
            writer = cloud.app.state.writer
            for _ in range(3000):  # generous: a loaded machine may take a while to parse the request
                if writer.pending_rows == 8:
                    break
                await asyncio.sleep(0.01)
            assert writer.pending_rows == 8
            r = await cloud.client.post("/ingest/v1/telemetry", json=[{"v": 1, "metrics": {"a": 2}}] * 5, headers=bearer(token))
            assert r.status_code == 503 and r.json()["code"] == "ingest.overloaded"
            assert r.headers["retry-after"] == str(settings.retry_after_s)
            assert not first.done()  # not acknowledged while not committed
            await tx.rollback()
            r = await first
            assert r.status_code == 200 and r.json()["accepted"] == 8
        finally:
            await blocker.close()
        metrics = (await cloud.client.get("/metrics")).text
        assert 'pulse_ingest_requests_total{status="503"} 1.0' in metrics
        assert "pulse_writer_queue_rows" in metrics and 'pulse_db_pool_connections{pool="app",state="max"}' in metrics
    values = await tenant_rows(app_dsn, tenant, "SELECT metrics->>'a' AS a FROM telemetry")
    assert [v["a"] for v in values] == ["1"] * 8


async def test_health_and_openapi(cloud: Cloud) -> None:
    r = await cloud.client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    paths = (await cloud.client.get("/openapi.json")).json()["paths"]
    assert "/ingest/v1/telemetry" in paths and "/api/v1/devices/import" in paths
    assert (await cloud.client.get("/docs")).status_code == 200
    r = await cloud.client.get("/no/such/path")
    assert r.status_code == 404 and r.json()["code"] == "api.not_found"
