"""Gateway sync, the cloud side, over real mutual TLS: enrollment, batches under the delivery
contract (replay, overlap, quarantine, clock rule, tenant and site boundaries), refusals (no cert,
other CA, expired, revoked), the trusted-proxy header, the downlink long-poll, renewal, reports."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from forged import off_curve_csr

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.settings import Settings
from pulse.cloud.sync import receive
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate
from pulse.edge.link import Enrollment, save_enrollment
from pulse.protocol import batch, connectivity
from pulse.protocol.batch import Record, Stream
from pulse.protocol.connectivity import Connectivity
from pulse.protocol.sync import AFTER_HEADER, BATCH_CONTENT_TYPE, BatchAck, CredentialChange, DownlinkItem, DownlinkKind, Verdict

pytestmark = pytest.mark.integration

Cloud = Any  # tests/integration/cloud/conftest.py


@dataclass
class SyncCloud:
    cloud: Cloud  # public API client + helpers
    sync_url: str
    ca_file: Path
    tmp: Path
    settings: Settings

    async def gateway(self, headers: dict[str, str], name: str | None = None, site: str | None = None) -> tuple[str, IdentityFiles]:
        """Create a gateway through the API and enroll it like `pulse gateway enroll` would."""
        name = name or "gw-" + uuid.uuid4().hex[:8]
        r = await self.cloud.client.post("/api/v1/gateways", json={"name": name, "site_id": site}, headers=headers)
        assert r.status_code == 201, r.text
        token = r.json()["enrollment"]["token"]
        files = IdentityFiles(self.tmp / name)
        r = await self.cloud.client.post("/enroll/v1", json={"token": token, "csr": make_key_and_csr(files, name).decode()})
        assert r.status_code == 201, r.text
        store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
        return r.json()["gateway_id"], files

    def client(self, files: IdentityFiles | None, **kwargs: Any) -> httpx.AsyncClient:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if files is not None:
            ctx.load_cert_chain(str(files.cert), str(files.key))
        return httpx.AsyncClient(verify=ctx, base_url=self.sync_url, timeout=40, **kwargs)

    async def send(self, files: IdentityFiles, data: bytes, after: str | None = None) -> httpx.Response:
        headers = {"Content-Type": BATCH_CONTENT_TYPE}
        if after is not None:
            headers[AFTER_HEADER] = after
        async with self.client(files) as c:
            return await c.post("/sync/v1/batches", content=data, headers=headers)

    async def rows(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


@asynccontextmanager
async def _sync_cloud(start_cloud: Any, base: Settings, tmp: Path, **changes: object) -> AsyncIterator[SyncCloud]:
    settings = Settings(
        **{
            **base.model_dump(),
            "jwt_secret": base.jwt_secret.get_secret_value(),
            "data_dir": tmp / "data",
            "sync_port": 0,
            "sync_host": "127.0.0.1",
            **changes,
        }
    )
    async with start_cloud(settings, sync_listener=True) as cloud:
        port = cloud.app.state.sync_listener.port
        yield SyncCloud(cloud, f"https://127.0.0.1:{port}", tmp / "data" / "ca" / "ca.crt", tmp, settings)


@pytest.fixture
async def sync(cloud_settings: Settings, tmp_path: Path, start_cloud: Any) -> AsyncIterator[SyncCloud]:
    async with _sync_cloud(start_cloud, cloud_settings, tmp_path) as sc:
        yield sc


NOW_MS = int(time.time() * 1000)


def _batch(gateway: str, seqs: list[int], device: str = "dev-1", *, stream: Stream = Stream.TELEMETRY, clock_ms: int | None = None,
           version: int = batch.VERSION_1) -> bytes:
    kind = {Stream.TELEMETRY: "telemetry", Stream.EVENTS: "event", Stream.ALERTS: "alert", Stream.TWIN: "twin_reported"}[stream]
    records = [Record(s, device, NOW_MS + s, kind, {"t": float(s)}, s) for s in seqs]
    return batch.encode(records, gateway_id=gateway, stream=stream, gateway_time_ms=int(time.time() * 1000) if clock_ms is None else clock_ms,
                        version=version)


async def _device(sc: SyncCloud, headers: dict[str, str], device_id: str, **extra: object) -> str:
    r = await sc.cloud.client.post("/api/v1/devices", json={"device_id": device_id, **extra}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


# --- enrollment --------------------------------------------------------------------------------


async def test_enrollment_gives_a_certificate_naming_tenant_and_gateway_and_the_token_works_once(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    c = sync.cloud.client
    r = await c.post("/api/v1/gateways", json={"name": "north"}, headers=h)
    assert r.status_code == 201 and r.json()["gateway"]["status"] == "pending"
    gw, token = r.json()["gateway"]["id"], r.json()["enrollment"]["token"]
    files = IdentityFiles(sync.tmp / "north")
    csr = make_key_and_csr(files, "north").decode()
    # a bad CSR is refused and leaves the token usable
    r = await c.post("/enroll/v1", json={"token": token, "csr": "not a csr"})
    assert r.status_code == 422 and r.json()["code"] == "identity.bad_csr"
    r = await c.post("/enroll/v1", json={"token": token, "csr": csr})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["tenant_id"], body["gateway_id"], body["gateway_name"]) == (str(tenant), gw, "north")
    assert body["sync_url"].startswith("https://")
    cert = store_certificate(files, body["certificate"].encode(), body["ca"].encode())
    ident = CertificateAuthority.load_or_create(sync.tmp / "data" / "ca").identify(cert)
    assert (ident.tenant_id, ident.gateway_id) == (str(tenant), gw)
    assert oct((sync.tmp / "data" / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    # used once: refused the second time
    r = await c.post("/enroll/v1", json={"token": token, "csr": csr})
    assert r.status_code == 401 and r.json()["code"] == "enroll.token_invalid"
    r = await c.get(f"/api/v1/gateways/{gw}", headers=h)
    assert r.json()["status"] == "active" and r.json()["certificate_expires_at"] is not None
    # a new token replaces unused ones
    t1 = (await c.post(f"/api/v1/gateways/{gw}/enrollment-token", headers=h)).json()["token"]
    t2 = (await c.post(f"/api/v1/gateways/{gw}/enrollment-token", headers=h)).json()["token"]
    assert (await c.post("/enroll/v1", json={"token": t1, "csr": csr})).status_code == 401
    assert (await c.post("/enroll/v1", json={"token": t2, "csr": csr})).status_code == 201


async def test_expired_enrollment_token_is_refused(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    r = await sync.cloud.client.post("/api/v1/gateways", json={"name": "late"}, headers=h)
    gw, token = r.json()["gateway"]["id"], r.json()["enrollment"]["token"]
    await sync.rows("UPDATE gateway_enrollment_tokens SET expires_at = now() - interval '1 second' WHERE gateway_id = $1", uuid.UUID(gw))
    csr = make_key_and_csr(IdentityFiles(sync.tmp / "late"), "late").decode()
    r = await sync.cloud.client.post("/enroll/v1", json={"token": token, "csr": csr})
    assert r.status_code == 401 and r.json()["code"] == "enroll.token_invalid"
    r = await sync.cloud.client.post("/enroll/v1", json={"token": "pet_made-up", "csr": csr})
    assert r.status_code == 401 and r.json()["code"] == "enroll.token_invalid"


# --- uplink ------------------------------------------------------------------------------------


async def test_batch_is_written_and_acked_and_its_replay_is_acked_without_writing(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    data = _batch(gw, [1, 2, 3])
    r = await sync.send(files, data)
    assert r.status_code == 200, r.text
    ack = BatchAck.from_json(r.json())
    assert (ack.stream, ack.ack_seq, ack.verdict, ack.written, ack.quarantined) == (Stream.TELEMETRY, 3, Verdict.WRITE, 3, 0)
    assert not ack.clock_corrected
    r = await sync.send(files, data)
    replay = BatchAck.from_json(r.json())
    assert (replay.ack_seq, replay.verdict, replay.written, replay.quarantined) == (3, Verdict.REPLAY, 0, 0)
    rows = await sync.rows("SELECT seq, gateway_id, source, metrics FROM telemetry WHERE tenant_id = $1 ORDER BY seq", tenant)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert {str(r["gateway_id"]) for r in rows} == {gw} and {r["source"] for r in rows} == {"gateway"}
    g = (await sync.cloud.client.get(f"/api/v1/gateways/{gw}", headers=h)).json()
    assert g["batches_received"] == 2 and g["bytes_received"] == 2 * len(data) and g["last_batch_at"] is not None
    metrics = (await sync.cloud.client.get("/metrics")).text
    assert 'pulse_sync_batches_total{verdict="replay"}' in metrics and 'pulse_sync_records_total{result="written"}' in metrics


def _connectivity(gateway: str, events: list[tuple[int, str, str]]) -> bytes:
    """An EVENTS batch of connectivity events (seq, device, kind) as a gateway buffers them."""
    records = []
    for seq, device, kind in events:
        doc = json.loads(connectivity.event_message(Connectivity(kind), now_ms=NOW_MS + seq, will=kind == "lost"))
        records.append(Record(seq, device, NOW_MS + seq, "event", doc["metrics"], None, doc["tags"], doc.get("body")))
    return batch.encode(records, gateway_id=gateway, stream=Stream.EVENTS, gateway_time_ms=int(time.time() * 1000))


async def test_connectivity_events_set_the_device_state_at_once_in_their_order(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    await _device(sync, h, "dev-2")
    gw, files = await sync.gateway(h)

    async def states() -> dict[str, tuple[str, str | None]]:
        r = await sync.cloud.client.get("/api/v1/device-states", headers=h)
        return {s["device_id"]: (s["status"], s["reason"].get("connectivity")) for s in r.json()}

    r = await sync.send(files, _connectivity(gw, [(1, "dev-1", "connected"), (2, "dev-2", "connected"), (3, "dev-1", "lost")]))
    assert r.status_code == 200, r.text
    assert await states() == {"dev-1": ("offline", "lost"), "dev-2": ("online", "connected")}
    r = await sync.send(files, _connectivity(gw, [(4, "dev-2", "disconnected"), (5, "dev-1", "connected")]))
    assert await states() == {"dev-1": ("online", "connected"), "dev-2": ("offline", "disconnected")}
    # the events are also stored as the devices' events
    rows = await sync.rows("SELECT device_id, tags->>'pulse.connectivity' AS kind FROM telemetry WHERE tenant_id = $1 ORDER BY time", tenant)
    assert [(r["device_id"], r["kind"]) for r in rows] == [
        ("dev-1", "connected"), ("dev-2", "connected"), ("dev-1", "lost"), ("dev-2", "disconnected"), ("dev-1", "connected")]


async def test_the_cloud_reads_both_batch_formats_and_announces_them(sync: SyncCloud) -> None:
    """An old gateway sends version 1 (and never reads the ack's ``batch_versions``); a new one
    switches to version 2 once an ack announces it. The cloud stores both the same way."""
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    r = await sync.send(files, _batch(gw, [1, 2, 3], version=1))
    assert r.status_code == 200, r.text
    ack = BatchAck.from_json(r.json())
    assert (ack.verdict, ack.written) == (Verdict.WRITE, 3)
    assert ack.batch_versions == batch.VERSIONS == (1, 2)
    r = await sync.send(files, _batch(gw, [4, 5, 6], version=2))
    assert r.status_code == 200, r.text
    assert (r.json()["verdict"], r.json()["written"], r.json()["ack_seq"]) == ("write", 3, 6)
    # a replay is decided from the header, whatever the format: v2 of what v1 carried writes nothing
    r = await sync.send(files, _batch(gw, [1, 2, 3], version=2))
    assert (r.json()["verdict"], r.json()["written"]) == ("replay", 0)
    rows = await sync.rows("SELECT seq, metrics FROM telemetry WHERE tenant_id = $1 ORDER BY seq", tenant)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]
    metrics = [r["metrics"] if isinstance(r["metrics"], dict) else json.loads(r["metrics"]) for r in rows]
    assert metrics == [{"t": float(s)} for s in range(1, 7)]


async def test_overlapping_batch_writes_only_records_above_the_mark(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    assert (await sync.send(files, _batch(gw, [1, 2, 3]))).json()["written"] == 3
    r = await sync.send(files, _batch(gw, [2, 3, 4, 5]))
    assert (r.json()["verdict"], r.json()["written"], r.json()["ack_seq"]) == ("partial", 2, 5)
    # streams have their own marks
    r = await sync.send(files, _batch(gw, [1, 2], stream=Stream.EVENTS))
    assert (r.json()["verdict"], r.json()["written"]) == ("write", 2)
    rows = await sync.rows("SELECT msg_type, seq FROM telemetry WHERE tenant_id = $1 ORDER BY msg_type, seq", tenant)
    assert [(r["msg_type"], r["seq"]) for r in rows] == [("event", 1), ("event", 2)] + [("telemetry", s) for s in range(1, 6)]


async def test_edge_alerts_merge_by_fingerprint_once_and_twin_stream_is_applied(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    opened = {"action": "open", "rule_id": "hot", "device_id": "dev-1", "severity": "major", "explanation": {"text": "t > 30"}}
    records = [
        Record(1, "dev-1", NOW_MS, "alert", {}, body=opened),
        Record(2, "dev-1", NOW_MS, "alert", {}, body={"action": "explode", "rule_id": "hot", "device_id": "dev-1"}),
    ]
    alerts_batch = batch.encode(records, gateway_id=gw, stream=Stream.ALERTS, gateway_time_ms=NOW_MS)
    first = (await sync.send(files, alerts_batch)).json()
    assert (first["ack_seq"], first["quarantined"]) == (2, 1)
    replay = (await sync.send(files, alerts_batch)).json()
    assert replay["verdict"] == "replay"
    alerts = await sync.rows("SELECT rule_id, device_id, state, source FROM alerts WHERE tenant_id = $1", tenant)
    assert [(a["rule_id"], a["device_id"], a["state"], a["source"]) for a in alerts] == [("hot", "dev-1", "open", "edge")]
    q = await sync.rows("SELECT code FROM quarantine WHERE tenant_id = $1", tenant)
    assert [x["code"] for x in q] == ["rule.bad_alert_record"]
    assert (await sync.send(files, _batch(gw, [1], stream=Stream.TWIN))).json()["written"] == 1
    rows = await sync.rows("SELECT version FROM twins WHERE tenant_id = $1 AND device_id = 'dev-1'", tenant)
    assert [r["version"] for r in rows] == [1]  # applied to the twin (tests/integration/cloud/test_twin_api.py)


async def test_unknown_device_is_quarantined_and_still_acked(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    records = [Record(1, "dev-1", NOW_MS, "telemetry", {"t": 1.0}), Record(2, "ghost", NOW_MS, "telemetry", {"t": 2.0})]
    r = await sync.send(files, batch.encode(records, gateway_id=gw, stream=Stream.TELEMETRY, gateway_time_ms=NOW_MS))
    assert (r.json()["ack_seq"], r.json()["written"], r.json()["quarantined"]) == (2, 1, 1)
    q = await sync.rows("SELECT device_id, code, source, gateway_id FROM quarantine WHERE tenant_id = $1", tenant)
    assert [(x["device_id"], x["code"], x["source"], str(x["gateway_id"])) for x in q] == [("ghost", "sync.unknown_device", "gateway", gw)]


async def test_gateway_clock_far_off_is_corrected_and_flagged(sync: SyncCloud) -> None:
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    hour = 3_600_000
    now = int(time.time() * 1000)  # not NOW_MS: the clock check compares with the cloud's clock at this moment
    # the gateway's clock runs an hour behind: its timestamps are an hour early
    records = [Record(1, "dev-1", now - hour, "telemetry", {"t": 1.0})]
    r = await sync.send(files, batch.encode(records, gateway_id=gw, stream=Stream.TELEMETRY, gateway_time_ms=now - hour))
    ack = BatchAck.from_json(r.json())
    assert ack.clock_corrected and abs(ack.clock_offset_ms - hour) < 60_000
    (row,) = await sync.rows("SELECT time FROM telemetry WHERE tenant_id = $1", tenant)
    assert abs(row["time"].timestamp() * 1000 - now) < 60_000
    # within tolerance: kept as sent
    r = await sync.send(files, _batch(gw, [2], clock_ms=now + 30_000))
    assert r.json()["clock_corrected"] is False
    g = (await sync.cloud.client.get(f"/api/v1/gateways/{gw}", headers=h)).json()
    assert g["clock_corrected_at"] is not None


async def test_gateway_cannot_write_devices_of_another_tenant_or_outside_its_site(sync: SyncCloud) -> None:
    tenant_a, ha = await sync.cloud.tenant_user()
    tenant_b, hb = await sync.cloud.tenant_user()
    await _device(sync, hb, "b-device")
    site = (await sync.cloud.client.post("/api/v1/sites", json={"name": "plant"}, headers=ha)).json()["id"]
    other = (await sync.cloud.client.post("/api/v1/sites", json={"name": "elsewhere"}, headers=ha)).json()["id"]
    await _device(sync, ha, "here", site_id=site)
    await _device(sync, ha, "there", site_id=other)
    gw, files = await sync.gateway(ha, site=site)
    records = [
        Record(1, "here", NOW_MS, "telemetry", {"t": 1.0}),
        Record(2, "there", NOW_MS, "telemetry", {"t": 2.0}),
        Record(3, "b-device", NOW_MS, "telemetry", {"t": 3.0}),
    ]
    r = await sync.send(files, batch.encode(records, gateway_id=gw, stream=Stream.TELEMETRY, gateway_time_ms=NOW_MS))
    assert (r.json()["written"], r.json()["quarantined"]) == (1, 2)
    assert [x["device_id"] for x in await sync.rows("SELECT device_id FROM telemetry WHERE tenant_id = $1", tenant_a)] == ["here"]
    assert await sync.rows("SELECT 1 FROM telemetry WHERE tenant_id = $1", tenant_b) == []
    assert await sync.rows("SELECT 1 FROM quarantine WHERE tenant_id = $1", tenant_b) == []
    q = await sync.rows("SELECT device_id, code FROM quarantine WHERE tenant_id = $1 ORDER BY device_id", tenant_a)
    assert [(x["device_id"], x["code"]) for x in q] == [("b-device", "sync.unknown_device"), ("there", "sync.unknown_device")]


async def test_batch_naming_another_gateway_or_malformed_is_refused(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    other, _ = await sync.gateway(h)
    r = await sync.send(files, _batch(other, [1]))
    assert r.status_code == 403 and r.json()["code"] == "sync.gateway_mismatch"
    r = await sync.send(files, b"PSYN" + b"\0" * 10)
    assert r.status_code == 400 and r.json()["code"] == "batch.too_short"
    data = bytearray(_batch(gw, [1]))
    data[-1] ^= 0xFF
    r = await sync.send(files, bytes(data))
    assert r.status_code == 400 and r.json()["code"] == "batch.checksum_mismatch"


# --- refusals ----------------------------------------------------------------------------------

_REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


async def test_no_certificate_other_ca_and_expired_are_refused(sync: SyncCloud) -> None:
    async with sync.client(None) as c:
        with pytest.raises(_REFUSED):
            await c.get("/sync/v1/downlink")
    rogue = CertificateAuthority.load_or_create(sync.tmp / "rogue")
    _, h = await sync.cloud.tenant_user()
    gw, _ = await sync.gateway(h)
    for name, ca, kwargs in [
        ("rogue-gw", rogue, {}),
        ("old-gw", CertificateAuthority.load_or_create(sync.tmp / "data" / "ca"),
         {"now": dt.datetime.now(dt.UTC) - dt.timedelta(days=40), "lifetime": dt.timedelta(days=30)}),
    ]:
        files = IdentityFiles(sync.tmp / name)
        cert = ca.sign_gateway_csr(make_key_and_csr(files, name), tenant_id=str(uuid.uuid4()), gateway_id=gw, **kwargs)
        store_certificate(files, cert.public_bytes(serialization.Encoding.PEM), sync.ca_file.read_bytes())
        async with sync.client(files) as c:
            with pytest.raises(_REFUSED):
                await c.get("/sync/v1/downlink")


async def _refused_counts(sc: SyncCloud) -> dict[str, float]:
    r = await sc.cloud.client.get("/metrics")
    counts: dict[str, float] = {}
    for line in r.text.splitlines():
        if line.startswith("pulse_sync_tls_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_refused_handshakes_are_counted_and_logged_with_peer_and_reason(sync: SyncCloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pulse.cloud.sync.app")
    rogue = CertificateAuthority.load_or_create(sync.tmp / "rogue")
    files = IdentityFiles(sync.tmp / "rogue-gw")
    cert = rogue.sign_gateway_csr(make_key_and_csr(files, "rogue"), tenant_id=str(uuid.uuid4()), gateway_id=str(uuid.uuid4()))
    store_certificate(files, cert.public_bytes(serialization.Encoding.PEM), sync.ca_file.read_bytes())
    old = IdentityFiles(sync.tmp / "old-gw")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    ca = CertificateAuthority.load_or_create(sync.tmp / "data" / "ca")
    cert = ca.sign_gateway_csr(make_key_and_csr(old, "old"), tenant_id=str(uuid.uuid4()), gateway_id=str(uuid.uuid4()), now=past)
    store_certificate(old, cert.public_bytes(serialization.Encoding.PEM), sync.ca_file.read_bytes())
    for identity in (None, None, files, old):
        async with sync.client(identity) as c:
            with pytest.raises(_REFUSED):
                await c.get("/sync/v1/downlink")
    async with httpx.AsyncClient(base_url=sync.sync_url.replace("https:", "http:"), timeout=10) as c:  # plain HTTP
        with pytest.raises(_REFUSED):
            await c.get("/sync/v1/downlink")
    expected = {"no_certificate": 2.0, "certificate_untrusted": 1.0, "certificate_expired": 1.0, "not_tls": 1.0}
    deadline = time.monotonic() + 30  # the server may note a refusal just after the client saw it
    while (counts := await _refused_counts(sync)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert counts == expected
    logged = [r.getMessage() for r in caplog.records if "refused a TLS handshake" in r.getMessage()]
    assert any("127.0.0.1" in m and "no_certificate" in m for m in logged), logged
    # a real gateway is not affected
    _, h = await sync.cloud.tenant_user()
    _, good = await sync.gateway(h)
    async with sync.client(good) as c:
        assert (await c.get("/sync/v1/downlink")).status_code == 200


async def test_certificate_not_on_record_is_refused(sync: SyncCloud) -> None:
    """Signed by our CA but never issued through enrollment (no row): refused by the app."""
    _, h = await sync.cloud.tenant_user()
    gw, real = await sync.gateway(h)
    files = IdentityFiles(sync.tmp / "forged")
    ca = CertificateAuthority.load_or_create(sync.tmp / "data" / "ca")
    tenant = str((await sync.rows("SELECT tenant_id FROM gateways WHERE id = $1", uuid.UUID(gw)))[0]["tenant_id"])
    cert = ca.sign_gateway_csr(make_key_and_csr(files, "forged"), tenant_id=tenant, gateway_id=gw)
    store_certificate(files, cert.public_bytes(serialization.Encoding.PEM), sync.ca_file.read_bytes())
    async with sync.client(files) as c:
        r = await c.get("/sync/v1/downlink")
    assert r.status_code == 401 and r.json()["code"] == "identity.untrusted"


async def test_revocation_takes_effect_on_the_next_request(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    async with sync.client(files) as c:  # one kept-alive connection across the revocation
        assert (await c.get("/sync/v1/downlink")).status_code == 200
        r = await sync.cloud.client.post(f"/api/v1/gateways/{gw}/revoke", headers=h)
        assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["certificate_expires_at"] is None
        r = await c.get("/sync/v1/downlink")
        assert r.status_code == 401 and r.json()["code"] == "identity.revoked"
        r = await c.post("/sync/v1/batches", content=_batch(gw, [1]))
        assert r.status_code == 401
    audit = await sync.rows("SELECT actor FROM audit_log WHERE action = 'gateway.revoke' AND target = (SELECT name FROM gateways WHERE id = $1)", uuid.UUID(gw))
    assert len(audit) == 1
    # re-enrolling with a new token works again
    token = (await sync.cloud.client.post(f"/api/v1/gateways/{gw}/enrollment-token", headers=h)).json()["token"]
    r = await sync.cloud.client.post("/enroll/v1", json={"token": token, "csr": make_key_and_csr(files, "x").decode()})
    assert r.status_code == 201
    store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    async with sync.client(files) as c:
        assert (await c.get("/sync/v1/downlink")).status_code == 200


async def test_renewal_gives_a_new_certificate_for_the_same_identity(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    old = files.cert.read_bytes()
    async with sync.client(files) as c:
        r = await c.post("/sync/v1/renew", json={"csr": make_key_and_csr(files, "again").decode()})
    assert r.status_code == 200, r.text
    assert r.json()["certificate"].encode() != old
    cert = store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    assert CertificateAuthority.load_or_create(sync.tmp / "data" / "ca").identify(cert).gateway_id == gw
    async with sync.client(files) as c:
        assert (await c.get("/sync/v1/downlink")).status_code == 200


def _copy(files: IdentityFiles, directory: Path) -> IdentityFiles:
    """The gateway's identity files as they are now (to present an earlier certificate later)."""
    copy = IdentityFiles(directory)
    directory.mkdir(parents=True)
    for name in ("key", "cert", "ca"):
        getattr(copy, name).write_bytes(getattr(files, name).read_bytes())
    return copy


async def _renew(sc: SyncCloud, files: IdentityFiles, csr: bytes, path: str = "/sync/v1/renew") -> httpx.Response:
    async with sc.client(files) as c:
        r = await c.post(path, json={"csr": csr.decode()})
    if r.status_code == 200:
        store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    return r


async def _live(sc: SyncCloud, gw: str, h: dict[str, str]) -> int:
    r = await sc.cloud.client.get(f"/api/v1/gateways/{gw}", headers=h)
    assert r.status_code == 200, r.text
    return int(r.json()["live_certificates"])


async def test_renewal_keeps_the_key_and_leaves_at_most_two_live_certificates(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    assert await _live(sync, gw, h) == 1
    previous: IdentityFiles | None = None
    for i in range(5):
        before = _copy(files, sync.tmp / f"before-{i}")
        r = await _renew(sync, files, make_key_and_csr(files, "again"))
        assert r.status_code == 200, r.text
        assert await _live(sync, gw, h) == 2
        # the certificate renewed with still works during the overlap; the one before it no longer
        async with sync.client(before) as c:
            assert (await c.get("/sync/v1/downlink")).status_code == 200
        if previous is not None:
            async with sync.client(previous) as c:
                r = await c.get("/sync/v1/downlink")
                assert r.status_code == 401 and r.json()["code"] == "identity.superseded", r.text
        previous = before
    async with sync.client(files) as c:
        assert (await c.get("/sync/v1/downlink")).status_code == 200
    rows = await sync.rows(
        "SELECT count(*) AS n FROM gateway_certificates WHERE gateway_id = $1 AND revoked_at IS NULL"
        " AND (retires_at IS NULL OR retires_at > now())",
        uuid.UUID(gw),
    )
    assert rows[0]["n"] == 2


async def test_renewal_with_another_key_is_refused_and_issues_nothing(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    other = make_key_and_csr(IdentityFiles(sync.tmp / "someone-else"), "x")
    r = await _renew(sync, files, other)
    assert r.status_code == 409 and r.json()["code"] == "identity.key_changed", r.text
    assert await _live(sync, gw, h) == 1
    assert len(await sync.rows("SELECT 1 FROM gateway_certificates WHERE gateway_id = $1", uuid.UUID(gw))) == 1


async def test_renewed_certificate_replaces_its_predecessor_after_the_overlap(
    cloud_settings: Settings, tmp_path: Path, start_cloud: Any
) -> None:
    async with _sync_cloud(start_cloud, cloud_settings, tmp_path, gateway_cert_overlap_s=0) as sc:
        _, h = await sc.cloud.tenant_user()
        gw, files = await sc.gateway(h)
        old = _copy(files, sc.tmp / "old")
        assert (await _renew(sc, files, make_key_and_csr(files, "again"))).status_code == 200
        async with sc.client(old) as c:
            r = await c.get("/sync/v1/downlink")
            assert r.status_code == 401 and r.json()["code"] == "identity.superseded"
        async with sc.client(files) as c:
            assert (await c.get("/sync/v1/downlink")).status_code == 200
        assert await _live(sc, gw, h) == 1


async def test_rekey_takes_a_new_key_revokes_the_old_certificate_and_is_audited(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    old = _copy(files, sync.tmp / "old")
    fresh = IdentityFiles(sync.tmp / "fresh")
    csr = make_key_and_csr(fresh, "fresh")
    async with sync.client(files) as c:
        r = await c.post("/sync/v1/rekey", json={"csr": csr.decode()})
    assert r.status_code == 200, r.text
    store_certificate(fresh, r.json()["certificate"].encode(), r.json()["ca"].encode())
    async with sync.client(old) as c:
        r = await c.get("/sync/v1/downlink")
        assert r.status_code == 401 and r.json()["code"] == "identity.revoked"
    async with sync.client(fresh) as c:
        assert (await c.get("/sync/v1/downlink")).status_code == 200
    assert await _live(sync, gw, h) == 1
    audit = await sync.rows("SELECT actor FROM audit_log WHERE action = 'gateway.rekey' AND actor = $1", f"gateway:{gw}")
    assert [a["actor"] for a in audit] == [f"gateway:{gw}"]
    # the new key renews; the old key can no longer renew for it
    assert (await _renew(sync, fresh, make_key_and_csr(fresh, "fresh"))).status_code == 200


async def test_csr_with_an_off_curve_key_is_refused_with_a_code_on_enroll_and_renew(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    r = await sync.cloud.client.post("/api/v1/gateways", json={"name": "curve"}, headers=h)
    token = r.json()["enrollment"]["token"]
    r = await sync.cloud.client.post("/enroll/v1", json={"token": token, "csr": off_curve_csr().decode()})
    assert r.status_code == 422 and r.json()["code"] == "identity.bad_csr", r.text
    _, files = await sync.gateway(h)
    for path in ("/sync/v1/renew", "/sync/v1/rekey"):
        r = await _renew(sync, files, off_curve_csr(), path)
        assert r.status_code == 422 and r.json()["code"] == "identity.bad_csr", r.text


# --- trusted proxy -----------------------------------------------------------------------------


async def test_proxy_header_is_ignored_from_an_untrusted_address(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw_a, files_a = await sync.gateway(h)
    gw_b, files_b = await sync.gateway(h)
    header = {"X-Pulse-Client-Cert": quote(files_b.cert.read_text())}
    async with sync.client(files_a) as c:
        r = await c.post("/sync/v1/batches", content=_batch(gw_b, [1]), headers=header)
    # identified as A (its own TLS certificate), so a batch of B is refused
    assert r.status_code == 403 and r.json()["code"] == "sync.gateway_mismatch"


async def test_proxy_header_is_honoured_from_a_trusted_proxy(cloud_settings: Settings, tmp_path: Path, start_cloud: Any) -> None:
    async with _sync_cloud(start_cloud, cloud_settings, tmp_path, sync_trusted_proxies="127.0.0.1/32") as sc:
        tenant, h = await sc.cloud.tenant_user()
        await _device(sc, h, "dev-1")
        gw, files = await sc.gateway(h)
        async with sc.client(None) as c:  # the proxy: no client certificate of its own
            r = await c.get("/sync/v1/downlink")
            assert r.status_code == 401 and r.json()["code"] == "identity.no_certificate"
            header = {"X-Pulse-Client-Cert": quote(files.cert.read_text())}
            r = await c.post("/sync/v1/batches", content=_batch(gw, [1]), headers=header)
            assert r.status_code == 200 and (r.json()["ack_seq"], r.json()["written"]) == (1, 1)
        # a revoked gateway is refused through the proxy too
        await sc.cloud.client.post(f"/api/v1/gateways/{gw}/revoke", headers=h)
        async with sc.client(None) as c:
            r = await c.get("/sync/v1/downlink", headers=header)
            assert r.status_code == 401 and r.json()["code"] == "identity.revoked"


async def test_forwarded_for_from_loopback_cannot_pose_as_the_trusted_proxy(
    cloud_settings: Settings, tmp_path: Path, start_cloud: Any
) -> None:
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default; the listener must not, or anyone
    on the host could claim the proxy's address and present another gateway's public certificate."""
    async with _sync_cloud(start_cloud, cloud_settings, tmp_path, sync_trusted_proxies="192.0.2.10/32") as sc:
        _, h = await sc.cloud.tenant_user()
        await _device(sc, h, "dev-1")
        gw, victim = await sc.gateway(h)
        spoof = {
            "X-Forwarded-For": "192.0.2.10",
            "X-Real-IP": "192.0.2.10",
            "Forwarded": "for=192.0.2.10",
            "X-Pulse-Client-Cert": quote(victim.cert.read_text()),
        }
        attacker = IdentityFiles(sc.tmp / "attacker")
        async with sc.client(None) as c:  # no certificate: the listener allows that only for the proxy
            r = await c.post("/sync/v1/renew", json={"csr": make_key_and_csr(attacker, "mine").decode()}, headers=spoof)
            assert r.status_code == 401 and r.json()["code"] == "identity.no_certificate", r.text
            r = await c.post("/sync/v1/batches", content=_batch(gw, [1]), headers=spoof)
            assert r.status_code == 401 and r.json()["code"] == "identity.no_certificate", r.text
        assert await sc.rows("SELECT 1 FROM telemetry WHERE gateway_id = $1", uuid.UUID(gw)) == []


# --- downlink ----------------------------------------------------------------------------------


async def test_downlink_long_poll_returns_an_item_enqueued_during_the_wait_and_ack_stops_redelivery(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    dev = await _device(sync, h, "pump-1")
    r = await sync.cloud.client.patch(f"/api/v1/devices/{dev}", json={"gateway_id": gw}, headers=h)
    assert r.status_code == 200 and r.json()["gateway_id"] == gw
    async with sync.client(files) as c:
        assert (await c.get("/sync/v1/downlink", params={"after": 0, "wait": 0})).json() == {"items": [], "next": 0}
        poll = asyncio.create_task(c.get("/sync/v1/downlink", params={"after": 0, "wait": 20}))
        await asyncio.sleep(0.3)
        assert not poll.done()
        issued = await sync.cloud.client.post(f"/api/v1/devices/{dev}/credentials", headers=h)
        assert issued.status_code == 201
        body = (await asyncio.wait_for(poll, 15)).json()
        (item,) = [DownlinkItem.from_json(i) for i in body["items"]]
        assert item.kind is DownlinkKind.CREDENTIAL and body["next"] == item.seq
        change = CredentialChange.from_payload(item.payload)
        token = issued.json()["token"]
        cred_hex, secret = token.split("_")[1], token.split("_", 2)[2]

        assert (change.device_id, change.credential_id, change.action) == ("pump-1", cred_hex, "set")
        assert change.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
        # not acked: delivered again
        assert len((await c.get("/sync/v1/downlink", params={"after": 0})).json()["items"]) == 1
        assert (await c.post("/sync/v1/downlink/ack", json={"seq": item.seq})).status_code == 204
        assert (await c.get("/sync/v1/downlink", params={"after": 0})).json()["items"] == []
        # revoking the credential tells the gateway too
        await sync.cloud.client.delete(f"/api/v1/devices/{dev}/credentials/{uuid.UUID(cred_hex)}", headers=h)
        items = (await c.get("/sync/v1/downlink", params={"after": item.seq})).json()["items"]
        assert [(i["kind"], i["payload"]["action"]) for i in items] == [("credential", "revoke")]


async def test_device_at_a_gateways_site_reaches_that_gateway_and_report_is_shown(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    site = (await sync.cloud.client.post("/api/v1/sites", json={"name": "yard"}, headers=h)).json()["id"]
    gw, files = await sync.gateway(h, site=site)
    other, files_other = await sync.gateway(h)
    dev = await _device(sync, h, "meter-1", site_id=site)
    assert (await sync.cloud.client.post(f"/api/v1/devices/{dev}/credentials", headers=h)).status_code == 201
    async with sync.client(files) as c:
        assert len((await c.get("/sync/v1/downlink")).json()["items"]) == 1
        report = {"dropped": {"telemetry": 5}, "backlog": {"telemetry": 120}, "oldest_unsynced_ms": NOW_MS, "version": "1.0"}
        assert (await c.post("/sync/v1/report", json=report)).status_code == 204
    async with sync.client(files_other) as c:
        assert (await c.get("/sync/v1/downlink")).json()["items"] == []
    listed = {g["id"]: g for g in (await sync.cloud.client.get("/api/v1/gateways", headers=h)).json()}
    assert listed[gw]["backlog"] == {"telemetry": 120} and listed[gw]["dropped"] == {"telemetry": 5}
    assert listed[gw]["agent_version"] == "1.0" and listed[gw]["last_seen_at"] is not None
    assert listed[other]["backlog"] == {}


# --- the gateway API across tenants ------------------------------------------------------------


async def test_gateway_api_answers_404_across_tenants_and_needs_tenant_admin(sync: SyncCloud) -> None:
    slug = "t-" + uuid.uuid4().hex[:10]
    _, ha = await sync.cloud.tenant_user(slug=slug)
    _, hb = await sync.cloud.tenant_user()
    c = sync.cloud.client
    gw = (await c.post("/api/v1/gateways", json={"name": "a-gw"}, headers=ha)).json()["gateway"]["id"]
    assert (await c.get(f"/api/v1/gateways/{gw}", headers=hb)).status_code == 404
    assert (await c.patch(f"/api/v1/gateways/{gw}", json={"name": "stolen"}, headers=hb)).status_code == 404
    assert (await c.post(f"/api/v1/gateways/{gw}/enrollment-token", headers=hb)).status_code == 404
    assert (await c.post(f"/api/v1/gateways/{gw}/revoke", headers=hb)).status_code == 404
    assert (await c.get("/api/v1/gateways", headers=hb)).json() == []
    assert (await c.get(f"/api/v1/gateways/{gw}", headers=ha)).json()["status"] == "pending"
    # a device of B cannot be pointed at A's gateway
    dev_b = await _device(sync, hb, "b-dev")
    r = await c.patch(f"/api/v1/devices/{dev_b}", json={"gateway_id": gw}, headers=hb)
    assert r.status_code == 422
    r = await c.patch(f"/api/v1/gateways/{gw}", json={"name": "renamed"}, headers=ha)
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert (await c.post("/api/v1/gateways", json={"name": "renamed"}, headers=ha)).status_code == 409
    # a customer of the same tenant reads but does not change
    hc = await sync.cloud.user("customer", tenant=slug)
    assert (await c.get(f"/api/v1/gateways/{gw}", headers=hc)).status_code == 200
    assert (await c.post(f"/api/v1/gateways/{gw}/revoke", headers=hc)).status_code == 403
    assert (await c.post("/api/v1/gateways", json={"name": "x"}, headers=hc)).status_code == 403


async def test_moving_a_device_hands_its_credentials_over_and_decommissioning_revokes_them(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    c = sync.cloud.client
    gw_a, files_a = await sync.gateway(h)
    gw_b, files_b = await sync.gateway(h)
    dev = await _device(sync, h, "mover")
    cred = (await c.post(f"/api/v1/devices/{dev}/credentials", headers=h)).json()["id"]  # no gateway yet: queued nowhere
    assert (await c.patch(f"/api/v1/devices/{dev}", json={"gateway_id": gw_a}, headers=h)).status_code == 200
    assert (await c.patch(f"/api/v1/devices/{dev}", json={"gateway_id": gw_b}, headers=h)).status_code == 200
    assert (await c.post(f"/api/v1/devices/{dev}/decommission", headers=h)).status_code == 200

    async def actions(files: IdentityFiles) -> list[tuple[str, str]]:
        async with sync.client(files) as s:
            items = (await s.get("/sync/v1/downlink")).json()["items"]
        return [(i["payload"]["credential_id"], i["payload"]["action"]) for i in items]

    cid = uuid.UUID(cred).hex
    assert await actions(files_a) == [(cid, "set"), (cid, "revoke")]
    assert await actions(files_b) == [(cid, "set"), (cid, "revoke")]


async def test_two_copies_of_a_batch_sent_at_once_are_written_once(sync: SyncCloud) -> None:
    """The mark row is locked FOR UPDATE: a copy racing the original waits, then finds it a replay."""
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    data = _batch(gw, list(range(1, 501)))
    for _ in range(3):
        first, second = await asyncio.gather(sync.send(files, data), sync.send(files, data))
        assert first.status_code == second.status_code == 200
    assert sum(r["n"] for r in await sync.rows("SELECT count(*) AS n FROM telemetry WHERE tenant_id = $1", tenant)) == 500
    (mark,) = await sync.rows("SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1", uuid.UUID(gw))
    assert mark["high_water"] == 500


async def test_a_batch_sent_behind_another_is_stored_only_after_it_and_never_makes_it_a_replay(sync: SyncCloud) -> None:
    """Several batches in flight: the later one (X-Pulse-After) may arrive first; it waits for the
    earlier one, so both are written; one whose predecessor never comes is refused, writing nothing."""
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    later = asyncio.create_task(sync.send(files, _batch(gw, [4, 5, 6]), after="3"))
    await asyncio.sleep(0.3)  # the later batch is at the cloud first (no timing asserted: either order must work)
    first = await sync.send(files, _batch(gw, [1, 2, 3]))
    second = await later
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert (first.json()["verdict"], second.json()["verdict"]) == ("write", "write")
    assert second.json()["ack_seq"] == 6
    r = await sync.send(files, _batch(gw, [9, 10]), after="8")  # 7 and 8 never sent
    assert r.status_code == 409 and r.json()["code"] == "sync.out_of_order", r.text
    r = await sync.send(files, _batch(gw, [7, 8]), after="not-a-seq")
    assert r.status_code == 400 and r.json()["code"] == "batch.malformed", r.text
    rows = await sync.rows("SELECT seq FROM telemetry WHERE tenant_id = $1 ORDER BY seq", tenant)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("decoded_ahead_max", [receive.DECODED_AHEAD_MAX, 0])
async def test_a_batch_made_ready_behind_another_keeps_only_its_records_above_the_mark_that_one_left(
    sync: SyncCloud, decoded_ahead_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch sent behind another is decoded and made into rows (and quarantine rows) while it
    waits (or, past DECODED_AHEAD_MAX such batches, once its turn has come); when the batch ahead
    covers some of its records, only those above the mark are stored."""
    monkeypatch.setattr(receive, "DECODED_AHEAD_MAX", decoded_ahead_max)
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    records = [Record(s, d, NOW_MS + s, "telemetry", {"t": float(s)}, s) for s, d in ((3, "ghost"), (4, "dev-1"), (5, "ghost"), (6, "dev-1"))]
    later = asyncio.create_task(
        sync.send(files, batch.encode(records, gateway_id=gw, stream=Stream.TELEMETRY, gateway_time_ms=int(time.time() * 1000)), after="3")
    )
    await asyncio.sleep(0.3)  # the later batch is at the cloud first (no timing asserted: either order must work)
    first = await sync.send(files, _batch(gw, [1, 2, 3]))
    second = await later
    assert (first.status_code, second.status_code) == (200, 200), (first.text, second.text)
    assert (second.json()["verdict"], second.json()["written"], second.json()["quarantined"], second.json()["ack_seq"]) == ("partial", 2, 1, 6)
    rows = await sync.rows("SELECT seq FROM telemetry WHERE tenant_id = $1 ORDER BY seq", tenant)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 6]
    q = await sync.rows("SELECT device_id, raw FROM quarantine WHERE tenant_id = $1", tenant)
    assert [(x["device_id"], json.loads(x["raw"])["seq"]) for x in q] == [("ghost", 5)]


async def test_cuts_with_a_full_window_in_flight_lose_nothing_and_duplicate_nothing(sync: SyncCloud) -> None:
    """The gateway's uplink with three batches in flight, through a slow shaped link to the real
    sync listener; every connection is reset while the window is full, three times."""
    from pulse.bench.shaper import LinkProfile, Shaper
    from pulse.edge.buffer import Buffer
    from pulse.edge.config import BufferSettings, SyncSettings
    from pulse.edge.ingest import Store
    from pulse.edge.link import Enrollment
    from pulse.edge.uplink import Uplink

    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    port = int(sync.sync_url.rsplit(":", 1)[1])
    shaper = Shaper(LinkProfile(8_000, 8_000, 0.02, 0.02), ("127.0.0.1", port))
    buffer = Buffer(sync.tmp / "gateway.db", BufferSettings())
    await buffer.open()
    n = 3000
    try:
        await asyncio.gather(*[
            buffer.submit(Store(Stream.TELEMETRY, "dev-1", NOW_MS + i, "telemetry", i,
                                f'{{"v": 1, "seq": {i}, "metrics": {{"t": {i * 1.37:.2f}, "u": {(i * 7919) % 1000}}}}}'.encode(), None))
            for i in range(1, n + 1)
        ])  # type: ignore[misc]
        shaper_port = await shaper.start()
        enrollment = Enrollment("", f"https://127.0.0.1:{shaper_port}", str(tenant), gw, "window", 0)
        settings = SyncSettings(records_per_batch=100, window=3, idle_poll_s=0.05, report_interval_s=3600, request_timeout_s=10,
                                backoff_base_s=0.05, backoff_cap_s=0.2)
        uplink = Uplink(settings, buffer, enrollment, files)
        task = asyncio.create_task(uplink.run())
        try:
            for _ in range(3):
                while uplink.in_flight < 3:
                    assert not task.done()
                    await asyncio.sleep(0.005)
                assert shaper.cut() >= 1
            while buffer.backlog()[Stream.TELEMETRY] > 0:
                assert not task.done()
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await shaper.close()
        await buffer.close()
    assert uplink.status.errors >= 1  # the cuts were felt
    rows = await sync.rows("SELECT seq FROM telemetry WHERE tenant_id = $1 ORDER BY seq", tenant)
    assert [r["seq"] for r in rows] == list(range(1, n + 1))  # 0 lost, 0 duplicated, in order


async def test_bench_provisioning_gives_a_token_that_enrolls_and_syncs(sync: SyncCloud) -> None:
    from pulse.bench.sync_cloud_part import count_synced, provision

    p = await provision(sync.settings.database_url, sync.settings.roles, devices=3)
    files = IdentityFiles(sync.tmp / "bench-gw")
    r = await sync.cloud.client.post("/enroll/v1", json={"token": p.enrollment_token, "csr": make_key_and_csr(files, "b").decode()})
    assert r.status_code == 201 and r.json()["gateway_id"] == str(p.gateway_id)
    store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    records = [Record(i + 1, d, NOW_MS + i, "telemetry", {"t": 1.0}, i + 1) for i, d in enumerate(p.device_ids)]
    r = await sync.send(files, batch.encode(records, gateway_id=str(p.gateway_id), stream=Stream.TELEMETRY, gateway_time_ms=NOW_MS))
    assert r.json()["written"] == 3
    assert await count_synced(sync.settings.database_url, p.tenant_id) == (3, 3)


async def test_rule_changes_reach_every_gateway_of_the_tenant_as_a_whole_set(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, files = await sync.gateway(h)
    rule = {"id": "hot", "severity": "major", "metric": "t", "operator": "GT", "threshold": 30}
    assert (await sync.cloud.client.post("/api/v1/rules", json=rule, headers=h)).status_code == 201
    assert (await sync.cloud.client.put("/api/v1/rules/hot", json={**rule, "threshold": 35}, headers=h)).status_code == 200
    async with sync.client(files) as c:
        items = [DownlinkItem.from_json(i) for i in (await c.get("/sync/v1/downlink", params={"after": 0})).json()["items"]]
    assert [i.kind for i in items] == [DownlinkKind.RULES, DownlinkKind.RULES]
    first, second = (i.payload for i in items)
    assert second["version"] > first["version"]  # type: ignore[operator]
    assert [(r["id"], r["threshold"], r["version"]) for r in second["rules"]] == [("hot", 35, 2)]  # type: ignore[union-attr, index]
    # another tenant's gateway hears nothing of it
    _, other_h = await sync.cloud.tenant_user()
    _, other_files = await sync.gateway(other_h)
    async with sync.client(other_files) as c:
        assert (await c.get("/sync/v1/downlink", params={"after": 0})).json()["items"] == []


async def test_a_suspended_tenants_batch_is_refused_with_a_code_and_written_once_renewed(sync: SyncCloud) -> None:
    """Issue 20: SUSPENDED refuses a gateway's data before anything is written (the gateway keeps it
    buffered, since only an ack deletes); after renewal the same batch is written in full."""
    tenant, h = await sync.cloud.tenant_user()
    await _device(sync, h, "dev-1")
    gw, files = await sync.gateway(h)
    op = await sync.cloud.user("operator-admin", tenant=None)
    base = f"/api/v1/operator/tenants/{tenant}/subscriptions"
    start, end = "2020-01-01T00:00:00+00:00", "2099-01-01T00:00:00+00:00"
    r = await sync.cloud.client.post(base, json={"kind": "MAIN", "device_limit": 5, "starts_at": start, "ends_at": end}, headers=op)
    assert r.status_code == 201, r.text
    sub = r.json()["id"]
    assert (await sync.cloud.client.post(f"{base}/{sub}/events", json={"event": "suspend"}, headers=op)).status_code == 200
    data = _batch(gw, [1, 2, 3])
    r = await sync.send(files, data)
    assert r.status_code == 403 and r.json()["code"] == "subscription.suspended"
    assert await sync.rows("SELECT 1 FROM telemetry WHERE tenant_id = $1", tenant) == []
    assert await sync.rows("SELECT 1 FROM gateway_sync_marks WHERE gateway_id = $1 AND high_water > 0", uuid.UUID(gw)) == []
    r = await sync.cloud.client.post(f"{base}/{sub}/events", json={"event": "renew", "ends_at": end}, headers=op)
    assert r.status_code == 200, r.text
    r = await sync.send(files, data)
    assert r.status_code == 200, r.text
    assert BatchAck.from_json(r.json()).written == 3


async def test_pulse_gateway_device_claim_claims_a_device_served_by_that_gateway(sync: SyncCloud) -> None:
    """Issue 20: `pulse gateway device claim CODE` (a real process) over the gateway's mutual-TLS
    sync API: the device is made at the gateway's site, served by it, its credential is queued for
    the gateway, the token is printed once; the code then answers as used, and a code of another
    tenant answers as unknown."""
    tenant, h = await sync.cloud.tenant_user()
    _, other = await sync.cloud.tenant_user()
    site = (await sync.cloud.client.post("/api/v1/sites", json={"name": "field"}, headers=h)).json()["id"]
    r = await sync.cloud.client.post("/api/v1/gateways", json={"name": "gw-field", "site_id": site}, headers=h)
    assert r.status_code == 201, r.text
    data = sync.tmp / "gw-field-data"
    files = IdentityFiles(data / "identity")
    csr = make_key_and_csr(files, "gw-field").decode()
    r = await sync.cloud.client.post("/enroll/v1", json={"token": r.json()["enrollment"]["token"], "csr": csr})
    assert r.status_code == 201, r.text
    store_certificate(files, r.json()["certificate"].encode(), r.json()["ca"].encode())
    gw = r.json()["gateway_id"]
    save_enrollment(data / "identity", Enrollment("http://pulse.test", sync.sync_url, str(tenant), gw, "gw-field", 0))
    config = sync.tmp / "gw-field.toml"
    config.write_text(f'[gateway]\ndata_dir = "{data}"\n')
    code = (await sync.cloud.client.post("/api/v1/activation-codes", json={"count": 1, "tags": ["field"]}, headers=h)).json()["codes"][0]
    foreign = (await sync.cloud.client.post("/api/v1/activation-codes", json={"count": 1}, headers=other)).json()["codes"][0]

    async def claim(typed: str, device_id: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pulse.cli.main", "gateway", "device", "claim", typed, "--device-id", device_id,
            "--config", str(config), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    rc, out, err = await claim(code, "field-7")
    assert rc == 0, err
    token = out.strip().splitlines()[-1]
    assert token.startswith("pdt_")
    devices = (await sync.cloud.client.get("/api/v1/devices", params={"q": "field-7"}, headers=h)).json()["items"]
    assert [(d["site_id"], d["gateway_id"], d["tags"]) for d in devices] == [(site, gw, ["field"])]
    async with sync.client(files) as c:
        items = (await c.get("/sync/v1/downlink")).json()["items"]
    creds = [DownlinkItem.from_json(i) for i in items if i["kind"] == DownlinkKind.CREDENTIAL.value]
    assert [CredentialChange.from_payload(i.payload).device_id for i in creds] == ["field-7"]
    rc, _, err = await claim(code, "field-8")
    assert rc == 2 and "activation.code_invalid" in err
    rc, _, err = await claim(foreign, "field-9")
    assert rc == 2 and "activation.code_invalid" in err


# --- connector sets pushed to a gateway (issue 24) -----------------------------------------------

UPS = {"id": "ups-9", "kind": "snmp", "host": "10.0.0.7", "profile": "ups-mib"}
METER = {"id": "meter-9", "kind": "modbus", "host": "10.0.0.8", "profile": "power-meter", "interval_s": 5}


async def test_a_connector_set_registers_its_devices_reaches_the_gateway_and_shows_its_report(sync: SyncCloud) -> None:
    _, h = await sync.cloud.tenant_user()
    c = sync.cloud.client
    site = (await c.post("/api/v1/sites", json={"name": "plant"}, headers=h)).json()["id"]
    gw, files = await sync.gateway(h, site=site)
    assert (await c.get(f"/api/v1/gateways/{gw}/connectors", headers=h)).json()["version"] == 0
    await _device(sync, h, "meter-9")  # registered already, with no gateway: taken over by this one

    r = await c.put(f"/api/v1/gateways/{gw}/connectors", json={"devices": [UPS, METER], "expected_version": 0}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["devices"] == [UPS, METER] and r.json()["gateway"]["status"] is None
    devices = {d["device_id"]: d for d in (await c.get("/api/v1/devices", headers=h)).json()["items"]}
    assert devices["ups-9"]["gateway_id"] == gw and devices["ups-9"]["site_id"] == site and devices["ups-9"]["status"] == "active"
    assert devices["meter-9"]["gateway_id"] == gw
    async with sync.client(files) as g:
        items = (await g.get("/sync/v1/downlink")).json()["items"]
        [item] = [i for i in items if i["kind"] == "connectors"]
        assert item["payload"] == {"version": 1, "devices": [UPS, METER]}
        report = {"connectors": {"version": 1, "status": "applied; connector.defined_locally: meter-9", "polled": ["meter-9", "ups-9"],
                                 "defined_locally": ["meter-9"]}}
        assert (await g.post("/sync/v1/report", json=report)).status_code == 204
    state = (await c.get(f"/api/v1/gateways/{gw}/connectors", headers=h)).json()["gateway"]
    assert state["version"] == 1 and state["defined_locally"] == ["meter-9"] and state["reported_at"] is not None
    audit = (await c.get("/api/v1/audit", headers=h)).json()
    assert any(e["action"] == "gateway.connectors" for e in audit["items"])

    # a change based on an old version is refused with the current one, and changes nothing
    r = await c.put(f"/api/v1/gateways/{gw}/connectors", json={"devices": [], "expected_version": 0}, headers=h)
    assert r.status_code == 409 and r.json()["code"] == "connector.version_conflict" and r.json()["current_version"] == 1
    assert (await c.get(f"/api/v1/gateways/{gw}/connectors", headers=h)).json()["version"] == 1


@pytest.mark.parametrize(
    ("devices", "code"),
    [
        ([{**UPS, "colour": "red"}], "connector.unknown_field"),
        ([UPS, UPS], "connector.duplicate"),
        ([{**UPS, "profile": "toaster"}], "connector.unknown_profile"),
        ([{"id": "x", "kind": "bacnet"}], "connector.bad_device"),
    ],
)
async def test_a_connector_set_the_gateway_would_refuse_is_refused_with_its_code_and_nothing_is_stored(
    sync: SyncCloud, devices: list[dict[str, object]], code: str
) -> None:
    _, h = await sync.cloud.tenant_user()
    gw, _ = await sync.gateway(h)
    r = await sync.cloud.client.put(f"/api/v1/gateways/{gw}/connectors", json={"devices": devices}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == code, r.text
    assert (await sync.cloud.client.get(f"/api/v1/gateways/{gw}/connectors", headers=h)).json()["version"] == 0
    assert (await sync.cloud.client.get("/api/v1/devices", headers=h)).json()["items"] == []


async def test_a_connector_device_served_by_another_gateway_is_refused_and_tenants_never_see_each_others_sets(sync: SyncCloud) -> None:
    slug = "t-" + uuid.uuid4().hex[:10]
    _, ha = await sync.cloud.tenant_user(slug=slug)
    _, hb = await sync.cloud.tenant_user()
    c = sync.cloud.client
    gw1, _ = await sync.gateway(ha)
    gw2, _ = await sync.gateway(ha)
    assert (await c.put(f"/api/v1/gateways/{gw1}/connectors", json={"devices": [UPS]}, headers=ha)).status_code == 200
    r = await c.put(f"/api/v1/gateways/{gw2}/connectors", json={"devices": [UPS]}, headers=ha)
    assert r.status_code == 409 and r.json()["code"] == "connector.device_elsewhere" and r.json()["device_ids"] == "ups-9"
    # another tenant: 404 for reading and writing; its own ups-9 is its own device
    assert (await c.get(f"/api/v1/gateways/{gw1}/connectors", headers=hb)).status_code == 404
    assert (await c.put(f"/api/v1/gateways/{gw1}/connectors", json={"devices": []}, headers=hb)).status_code == 404
    gw_b, _ = await sync.gateway(hb)
    assert (await c.put(f"/api/v1/gateways/{gw_b}/connectors", json={"devices": [UPS]}, headers=hb)).status_code == 200
    assert (await c.get(f"/api/v1/gateways/{gw1}/connectors", headers=ha)).json()["version"] == 1
    # a customer reads the set but does not change it
    hc = await sync.cloud.user("customer", tenant=slug)
    assert (await c.get(f"/api/v1/gateways/{gw1}/connectors", headers=hc)).status_code == 200
    assert (await c.put(f"/api/v1/gateways/{gw1}/connectors", json={"devices": []}, headers=hc)).status_code == 403
