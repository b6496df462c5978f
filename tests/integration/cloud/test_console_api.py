"""What the console reads: telemetry series and latest values, the fleet summary, the live
WebSocket, and the /app static files. Each endpoint also gets its cross-tenant check."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pulse.cloud.api.telemetry import choose_bucket
from pulse.cloud.app import create_app
from pulse.cloud.auth.tokens import SessionTokens
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.errors import InvalidError
from pulse.cloud.settings import Settings

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


async def send(cloud: Cloud, token: str, messages: list[dict[str, object]]) -> None:
    r = await cloud.client.post("/ingest/v1/telemetry", json=messages, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


async def test_series_is_bucketed_on_the_server(cloud: Cloud) -> None:
    _, headers = await cloud.tenant_user()
    dev, _, token = await cloud.device_with_token(headers)
    # minute 0: 10, 20 ; minute 1: 30 ; minute 2: a boolean and a reading without the metric
    await send(
        cloud,
        token,
        [
            {"v": 1, "ts": ms(T0), "metrics": {"temp": 10}},
            {"v": 1, "ts": ms(T0 + timedelta(seconds=30)), "metrics": {"temp": 20, "door": True}},
            {"v": 1, "ts": ms(T0 + timedelta(seconds=61)), "metrics": {"temp": 30}},
            {"v": 1, "ts": ms(T0 + timedelta(seconds=125)), "metrics": {"hum": 50}},
        ],
    )
    params = {"metric": "temp", "from": T0.isoformat(), "to": (T0 + timedelta(minutes=5)).isoformat(), "bucket": 60}
    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bucket_s"] == 60 and body["metric"] == "temp"
    assert body["points"] == [[ms(T0), 15.0, 10.0, 20.0, 2], [ms(T0 + timedelta(minutes=1)), 30.0, 30.0, 30.0, 1]]

    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry", params={**params, "metric": "door"}, headers=headers)
    assert r.json()["points"] == [[ms(T0), 1.0, 1.0, 1.0, 1]]

    # no bucket: the server picks one that keeps the answer small
    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry", params={k: v for k, v in params.items() if k != "bucket"}, headers=headers)
    assert r.json()["bucket_s"] == 1 and len(r.json()["points"]) == 3

    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry/latest", headers=headers)
    latest = r.json()
    assert latest["last_seen"].startswith("2026-03-01T12:02:05")
    assert {m["name"]: m["value"] for m in latest["metrics"]} == {"temp": 30, "door": True, "hum": 50}


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"metric": "t", "from": "2026-03-01T12:00:00Z", "to": "2026-03-01T11:00:00Z"}, "before"),
        ({"metric": "t", "from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "bucket": 1}, "buckets"),
        ({"from": "2026-01-01T00:00:00Z"}, "metric"),
    ],
)
async def test_series_refuses_bad_ranges_with_a_clear_error(cloud: Cloud, params: dict[str, object], problem: str) -> None:
    _, headers = await cloud.tenant_user()
    dev, _, _ = await cloud.device_with_token(headers)
    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry", params=params, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    assert problem in r.json()["message"]


def test_automatic_bucket_keeps_answers_small() -> None:
    assert choose_bucket(3600) == 10
    assert choose_bucket(24 * 3600) == 300
    assert choose_bucket(400 * 86400) == 86400
    assert 365 * 86400 / choose_bucket(5000 * 86400) <= 600


async def test_another_tenants_device_telemetry_answers_404(cloud: Cloud) -> None:
    _, a = await cloud.tenant_user()
    _, b = await cloud.tenant_user()
    dev, device_id, token = await cloud.device_with_token(b)
    await send(cloud, token, [{"v": 1, "metrics": {"temp": 1}}])
    # A has a device with the same device_id: still sees none of B's rows through it
    r = await cloud.client.post("/api/v1/devices", json={"device_id": device_id}, headers=a)
    a_dev = r.json()["id"]
    for path in (f"/api/v1/devices/{dev}/telemetry?metric=temp", f"/api/v1/devices/{dev}/telemetry/latest"):
        r = await cloud.client.get(path, headers=a)
        assert r.status_code == 404 and r.json()["code"] == "api.not_found", path
    r = await cloud.client.get(f"/api/v1/devices/{a_dev}/telemetry", params={"metric": "temp"}, headers=a)
    assert r.status_code == 200 and r.json()["points"] == []
    r = await cloud.client.get(f"/api/v1/devices/{a_dev}/telemetry/latest", headers=a)
    assert r.json()["metrics"] == [] and r.json()["last_seen"] is None
    r = await cloud.client.get(f"/api/v1/devices/{dev}/telemetry", params={"metric": "temp"}, headers=b)
    assert r.status_code == 200 and len(r.json()["points"]) == 1


async def test_fleet_summary_counts_only_own_tenant(cloud: Cloud) -> None:
    _, a = await cloud.tenant_user()
    b_id, b = await cloud.tenant_user()
    await cloud.device_with_token(b)
    dev, _, _ = await cloud.device_with_token(b)
    await cloud.client.patch(f"/api/v1/devices/{dev}", json={"status": "active"}, headers=b)
    await cloud.client.post("/api/v1/sites", json={"name": "b-site"}, headers=b)
    await cloud.client.post("/api/v1/gateways", json={"name": "b-gw"}, headers=b)
    async with cloud.app.state.pulse.db.tenant(b_id) as conn:
        await conn.execute(
            "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, explanation) VALUES ($1, 'x', 'hot', 'major', '{}'::jsonb)", b_id
        )
    r = await cloud.client.get("/api/v1/fleet/summary", headers=b)
    assert r.json() == {
        "devices": 2,
        "devices_by_status": {"provisioned": 1, "active": 1, "disabled": 0, "decommissioned": 0},
        "sites": 1,
        "devices_by_state": {"online": 0, "stale": 0, "offline": 0, "unreachable": 0, "never_seen": 2},
        "open_alerts": {"critical": 0, "major": 1, "minor": 0, "warning": 0, "info": 0},
        "gateways": {"online": 0, "offline": 0, "pending": 1},
    }
    r = await cloud.client.get("/api/v1/fleet/summary", headers=a)
    assert r.json()["devices"] == 0 and r.json()["sites"] == 0
    assert sum(r.json()["open_alerts"].values()) == 0 and r.json()["gateways"]["pending"] == 0


async def test_only_committed_rows_are_published_live(cloud: Cloud) -> None:
    tenant_id, _ = await cloud.tenant_user()
    sub = cloud.app.state.live.subscribe(tenant_id, "meter-9")
    now = datetime.now(UTC)

    def telemetry(metrics: str) -> TelemetryRow:
        return TelemetryRow(now, tenant_id, "meter-9", "telemetry", metrics, None, None, None, None, "test", now)

    with pytest.raises(InvalidError):  # the database refuses this row: nothing is stored, nothing published
        await cloud.app.state.writer.write([telemetry('{"kwh": ')])
    await cloud.app.state.writer.write([telemetry('{"kwh": 4.5}')])
    points, dropped = await asyncio.wait_for(sub.next_batch(), 10)
    assert [p.metrics for p in points] == [{"kwh": 4.5}] and dropped == 0
    cloud.app.state.live.unsubscribe(sub)


# --- live WebSocket --------------------------------------------------------------------------


async def frame(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[no-any-return]


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/api/v1/live"


async def test_live_socket_pushes_new_points_of_the_subscribed_device_only_within_tenant(cloud: Cloud, serve: Any) -> None:
    async with serve(cloud.app, lifespan=False) as base:
        c, client, app = cloud, cloud.client, cloud.app
        _, a = await c.tenant_user()
        _, b = await c.tenant_user()
        a_dev, shared_id, a_token = await c.device_with_token(a)
        b_dev, _, b_token = await c.device_with_token(b, device_id=shared_id)  # same device_id, other tenant
        other_dev, _, other_token = await c.device_with_token(b)

        async with connect(ws_url(base)) as ws:
            await ws.send(json.dumps({"type": "auth", "token": b["Authorization"][7:]}))
            assert (await frame(ws))["type"] == "ready"
            # A's device by its id: not found for B, and nothing subscribed
            await ws.send(json.dumps({"type": "subscribe", "device": a_dev}))
            assert (await frame(ws))["code"] == "api.not_found"
            await ws.send(json.dumps({"type": "subscribe", "device": b_dev}))
            assert (await frame(ws)) == {"type": "subscribed", "device": b_dev, "device_id": shared_id}

            now = int(time.time() * 1000)
            for token, value in ((a_token, 111), (other_token, 222), (b_token, 333)):
                r = await client.post(
                    "/ingest/v1/telemetry", json={"v": 1, "ts": now, "metrics": {"temp": value}}, headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 200, r.text
            got = await frame(ws)
            assert got == {"type": "telemetry", "device": b_dev, "points": [{"t": now, "metrics": {"temp": 333}}], "dropped": 0}
            # nothing else is queued for this socket: A's 111 and B's other device's 222 never arrive
            await ws.send(json.dumps({"type": "subscribe", "device": b_dev}))
            assert (await frame(ws))["type"] == "subscribed"
        assert app.state.live.subscribers == 0


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ({"type": "subscribe", "device": str(uuid.uuid4())}, 4401),
        ({"type": "auth", "token": "not-a-jwt"}, 4401),
        ("not json", 4400),
    ],
)
async def test_live_socket_closes_without_a_valid_token(cloud_settings: Settings, serve: Any, first: object, code: int) -> None:
    async with serve(create_app(cloud_settings)) as base, connect(ws_url(base)) as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            await frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code


async def test_live_socket_of_a_disabled_account_closes(cloud: Cloud, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse.cloud.api import live as live_api

    monkeypatch.setattr(live_api, "SESSION_RECHECK_S", 0.2)
    _, admin = await cloud.tenant_user()
    invited = await cloud.client.post("/api/v1/users/invitations", json={"email": f"w-{uuid.uuid4().hex[:6]}@example.com"}, headers=admin)
    token = invited.json()["link"].split("#", 1)[1]
    pair = (await cloud.client.post("/auth/links/accept", json={"token": token, "password": "a-long-enough-password"})).json()
    async with serve(cloud.app, lifespan=False) as base, connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": pair["access_token"]}))
        assert (await frame(ws))["type"] == "ready"
        r = await cloud.client.patch(f"/api/v1/users/{invited.json()['user']['id']}", json={"disabled": True}, headers=admin)
        assert r.status_code == 200
        with pytest.raises(ConnectionClosed) as closed:
            await frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert "disabled" in closed.value.rcvd.reason


async def test_live_socket_closes_when_its_token_expires(cloud: Cloud, serve: Any) -> None:
    tenant_id, headers = await cloud.tenant_user("customer")
    user_id = uuid.UUID((await cloud.client.get("/api/v1/me", headers=headers)).json()["subject"])
    s = cloud.settings
    tokens = SessionTokens(s.jwt_secret.get_secret_value(), issuer=s.jwt_issuer, ttl_s=s.access_token_ttl_s)
    # a token issued so long ago that it has two seconds left
    token = tokens.issue(user_id=user_id, tenant_id=tenant_id, roles=["customer"], now=time.time() - s.access_token_ttl_s + 2)
    async with serve(cloud.app, lifespan=False) as base, connect(ws_url(base)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        assert (await frame(ws))["type"] == "ready"
        with pytest.raises(ConnectionClosed) as closed:
            await frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert "expired" in closed.value.rcvd.reason


# --- /app static files -----------------------------------------------------------------------


async def test_console_is_served_with_spa_fallback(cloud_settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>console</title>")
    (tmp_path / "assets" / "app-1234.js").write_text("console.log(1)")
    (tmp_path.parent / "secret.txt").write_text("outside")
    app = create_app(cloud_settings.model_copy(update={"console_dir": tmp_path}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as client:
        r = await client.get("/app/assets/app-1234.js")
        assert r.status_code == 200 and r.text == "console.log(1)" and "immutable" in r.headers["cache-control"]
        for deep in ("/app/", "/app/devices/123", "/app/sites"):
            r = await client.get(deep)
            assert r.status_code == 200 and "<title>console</title>" in r.text, deep
            assert "default-src 'self'" in r.headers["content-security-policy"]
        assert (await client.get("/app/assets/missing.js")).status_code == 404
        r = await client.get("/app/..%2Fsecret.txt")
        assert "outside" not in r.text
        r = await client.get("/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == "/app/"


async def test_console_without_a_build_says_how_to_build_it(cloud_settings: Settings, tmp_path: Path) -> None:
    app = create_app(cloud_settings.model_copy(update={"console_dir": tmp_path / "nothing"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as client:
        r = await client.get("/app/devices")
    assert r.status_code == 503 and "deploy/install.sh" in r.text
