"""Rules scoped by tag or site open the same alerts at the gateway as in the cloud (issue 18, part B):
the rule set the cloud queues for a gateway (its downlink, real PostgreSQL) carries the tags and
site of every device the gateway serves; the gateway's runner (real SQLite) stores it and scopes
rules with them. The same readings go to both tiers; the opened (rule, device) pairs are equal, and
without the devices in the item the gateway would have matched nothing (what it did before)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pulse.cloud.alerts.runner import RuleRunner
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.downlink import pending
from pulse.edge.buffer import Buffer
from pulse.edge.config import BufferSettings
from pulse.edge.ingest import Store
from pulse.edge.rules import EdgeRuleRunner
from pulse.protocol.alerts import AlertRecord
from pulse.protocol.batch import Stream
from pulse.protocol.sync import DownlinkKind

pytestmark = pytest.mark.integration
Cloud = Any
T0 = 1_800_000_000_000


async def edge_alerts(path: Path, payload: dict[str, Any], readings: list[tuple[str, float]], *, with_devices: bool = True) -> set[tuple[str, str]]:
    buffer = Buffer(path, BufferSettings())
    await buffer.open()
    runner = EdgeRuleRunner(path, buffer, sweep_interval_s=3600, clock=lambda: T0)
    opened: list[AlertRecord] = []
    runner.on_alert = opened.append
    await runner.start()
    try:
        await runner.set_rules(payload["rules"], set_version=payload["version"], **({"devices": payload["devices"]} if with_devices else {}))
        stores = []
        for i, (device_id, temp) in enumerate(readings):
            raw = json.dumps({"v": 1, "ts": T0, "seq": i, "metrics": {"temp_c": temp}}).encode()
            stores.append(Store(Stream.TELEMETRY, device_id, T0, "telemetry", i, raw, None))
        runner.observe(stores)
        deadline = asyncio.get_running_loop().time() + 10
        while runner.evaluated < len(readings):
            assert asyncio.get_running_loop().time() < deadline, "the gateway did not evaluate the readings"
            await asyncio.sleep(0.02)
    finally:
        await runner.stop()
        await buffer.close()
    return {(r.rule_id, r.device_id) for r in opened if r.action == "open"}


async def test_a_tag_scoped_and_a_site_scoped_rule_open_the_same_alerts_at_the_gateway_and_in_the_cloud(cloud: Cloud, tmp_path: Path) -> None:
    tenant, h = await cloud.tenant_user()
    north = (await cloud.client.post("/api/v1/sites", json={"name": "north"}, headers=h)).json()["id"]
    south = (await cloud.client.post("/api/v1/sites", json={"name": "south"}, headers=h)).json()["id"]
    db = cloud.app.state.pulse.db
    async with db.tenant(tenant) as conn:
        gw = await conn.fetchval(
            "INSERT INTO gateways (tenant_id, name, site_id, status, last_seen_at) VALUES ($1, 'gw-north', $2, 'active', now()) RETURNING id",
            tenant,
            uuid.UUID(north),
        )
    # served by gw-north: n-cold and n-warm (its site), s-cold (at the south site but wired to gw-north)
    for device_id, site, tags in (("n-cold", north, ["zone=cold"]), ("n-warm", north, ["zone=warm"]), ("s-cold", south, ["zone=cold", "spare"])):
        r = await cloud.client.post("/api/v1/devices", json={"device_id": device_id, "site_id": site, "tags": tags}, headers=h)
        assert r.status_code == 201, r.text
        if device_id == "s-cold":
            r = await cloud.client.patch(f"/api/v1/devices/{r.json()['id']}", json={"gateway_id": str(gw)}, headers=h)
            assert r.status_code == 200, r.text
    for rule in (
        {"id": "cold-hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "scope": {"tags": {"zone": "cold"}}},
        {"id": "north-hot", "severity": "minor", "metric": "temp_c", "operator": "GT", "threshold": 30, "scope": {"sites": [north]}},
    ):
        r = await cloud.client.post("/api/v1/rules", json=rule, headers=h)
        assert r.status_code == 201, r.text
    async with db.tenant(tenant) as conn:
        items = [i for i in await pending(conn, gw, 0) if i.kind is DownlinkKind.RULES]
    payload = dict(items[-1].payload)  # the newest set replaces the others at the gateway
    assert payload["devices"] == {
        "n-cold": {"tags": {"zone": "cold"}, "site": north},
        "n-warm": {"tags": {"zone": "warm"}, "site": north},
        "s-cold": {"tags": {"zone": "cold", "spare": ""}, "site": south},
    }
    readings = [("n-cold", 35.0), ("n-warm", 35.0), ("s-cold", 35.0)]

    runner: RuleRunner = cloud.app.state.rules
    at = datetime.fromtimestamp(T0 / 1000, UTC)
    rows = [TelemetryRow(at, tenant, d, "telemetry", json.dumps({"temp_c": v}), None, None, None, None, "http", at) for d, v in readings]
    await runner.process(rows)
    async with db.tenant(tenant) as conn:
        in_cloud = {(r["rule_id"], r["device_id"]) for r in await conn.fetch("SELECT rule_id, device_id FROM alerts WHERE state = 'open'")}
    at_gateway = await edge_alerts(tmp_path / "gw.db", payload, readings)

    expected = {("cold-hot", "n-cold"), ("cold-hot", "s-cold"), ("north-hot", "n-cold"), ("north-hot", "n-warm")}
    assert in_cloud == expected
    assert at_gateway == in_cloud
    # before the devices travelled, scoped rules matched nothing at the gateway
    assert await edge_alerts(tmp_path / "old-gw.db", payload, readings, with_devices=False) == set()

    # a device's tags change: its gateway gets the rule set again, with the new tags
    r = await cloud.client.get("/api/v1/devices", params={"q": "n-warm"}, headers=h)
    r = await cloud.client.patch(f"/api/v1/devices/{r.json()['items'][0]['id']}", json={"tags": ["zone=cold"]}, headers=h)
    assert r.status_code == 200, r.text
    async with db.tenant(tenant) as conn:
        newest = [i for i in await pending(conn, gw, 0) if i.kind is DownlinkKind.RULES][-1].payload
    assert newest["devices"]["n-warm"] == {"tags": {"zone": "cold"}, "site": north}  # type: ignore[index]


async def test_the_drains_one_statement_reads_what_the_separate_readers_read(cloud: Cloud) -> None:
    """``load_for`` (rules, heartbeat settings, the devices' own intervals and their registry
    entries in one round trip) answers what ``load_all`` and the registry query answer."""
    from pulse.cloud.alerts.runner import device_of, load_all, load_for
    from pulse.protocol.rules import Device

    tenant, h = await cloud.tenant_user()
    site = (await cloud.client.post("/api/v1/sites", json={"name": "plant"}, headers=h)).json()["id"]
    r = await cloud.client.post("/api/v1/rules", json={"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30}, headers=h)
    assert r.status_code == 201, r.text
    db = cloud.app.state.pulse.db
    async with db.tenant(tenant) as conn:
        for device_id, attributes, tags in (
            ("own", {"interval_s": 30}, ["zone=cold", "spare"]),  # its own interval
            ("text", {"interval_s": "30"}, []),  # a string is not an interval
            ("far", {"interval_s": 10**9}, []),  # out of range
            ("plain", {}, []),
        ):
            await conn.execute(
                "INSERT INTO devices (tenant_id, device_id, status, attributes, tags, site_id) VALUES ($1, $2, 'active', $3::jsonb, $4, $5)",
                tenant, device_id, json.dumps(attributes), tags, uuid.UUID(site),
            )
        await conn.execute(
            "INSERT INTO heartbeat_settings (tenant_id, alerts_enabled, interval_s, updated_by) VALUES ($1, false, 120, 'test') "
            "ON CONFLICT (tenant_id) DO UPDATE SET alerts_enabled = false, interval_s = 120",
            tenant,
        )
        asked = ["far", "ghost", "own", "plain", "text"]  # "ghost" is not registered
        loaded = await load_for(conn, tenant, asked)
        rules, muted = await load_all(conn, tenant, asked)
        registry = {r["device_id"]: device_of(r) for r in await conn.fetch("SELECT device_id, tags, site_id FROM devices WHERE device_id = ANY($1)", asked)}
    assert loaded.rules == rules and loaded.muted == muted == frozenset({"NO_HEARTBEAT"})
    assert loaded.devices == {d: registry.get(d, Device(d)) for d in asked}
    assert loaded.devices["own"].tags == {"zone": "cold", "spare": ""} and loaded.devices["own"].site == site
    assert rules[-1].condition.intervals == {"own": 30.0}  # type: ignore[union-attr]
