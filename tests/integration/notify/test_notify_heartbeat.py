"""The built-in heartbeat (issue 18, part B): a tenant made by ``create_tenant`` (what ``pulse cloud
admin create-tenant`` runs) with no rule at all: its device has a state from its first message, and
when it stops reporting a NO_HEARTBEAT alert opens and is notified to a receiver on loopback. The
sweep is driven with explicit clocks (the periodic one is an hour away)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from notify_cloud import NotifyCloud, device, fast_notify, notify_cloud, reading, soon
from notify_receivers import Receiver

from pulse.cloud.alerts.runner import RuleRunner
from pulse.cloud.settings import Settings
from pulse.protocol.alerts import NO_HEARTBEAT

pytestmark = pytest.mark.integration


@pytest.fixture
async def quiet(cloud_settings: Settings) -> AsyncIterator[NotifyCloud]:
    async with notify_cloud(cloud_settings.model_copy(update={"rules_sweep_interval_s": 3600}), fast_notify()) as c:
        yield c


async def states(c: NotifyCloud, h: dict[str, str]) -> dict[str, str]:
    r = await c.client.get("/api/v1/device-states", headers=h)
    assert r.status_code == 200, r.text
    return {s["device_id"]: s["status"] for s in r.json()}


async def last_seen(c: NotifyCloud, tenant: Any, device_id: str) -> int:
    state = await c.db_scalar(tenant, "SELECT state FROM rule_state WHERE rule_id = $1 AND device_id = $2", NO_HEARTBEAT, device_id)
    return int(json.loads(state)["last_seen_ms"])


async def hooked_tenant(c: NotifyCloud, receiver: Receiver) -> tuple[Any, dict[str, str]]:
    tenant, h = await c.tenant_user()
    r = await c.client.post("/api/v1/notify/channels", json={"name": "hook", "kind": "webhook", "config": {"url": receiver.url("/hook")}}, headers=h)
    assert r.status_code == 201, r.text
    r = await c.client.post("/api/v1/notify/routes", json={"name": "all", "min_severity": "info", "channels": [r.json()["id"]]}, headers=h)
    assert r.status_code == 201, r.text
    return tenant, h


async def test_a_device_that_stops_reporting_gets_no_heartbeat_with_no_rule_written_and_it_is_notified(quiet: NotifyCloud, receiver: Receiver) -> None:
    c = quiet
    tenant, h = await hooked_tenant(c, receiver)
    assert await c.db_scalar(tenant, "SELECT count(*) FROM rules") == 0  # nobody wrote a rule
    dev = await device(c, h)
    device_id = await c.db_scalar(tenant, "SELECT device_id FROM devices")
    r = await c.client.post("/api/v1/devices", json={"device_id": "spare-1"}, headers=h)  # never reports
    assert r.status_code == 201, r.text
    await reading(c, dev, 21.0)
    assert await c.wait_for(lambda: states(c, h), what="a state from the first message") == {device_id: "online"}
    seen = await last_seen(c, tenant, device_id)

    runner: RuleRunner = c.app.state.rules
    await runner.sweep_once(seen + 449_000)  # default: every 300 s, stale after 1.5x, offline after 3x
    assert (await states(c, h))[device_id] == "online"
    await runner.sweep_once(seen + 450_000)
    assert (await states(c, h))[device_id] == "stale"
    assert await c.db_scalar(tenant, "SELECT count(*) FROM alerts") == 0
    await runner.sweep_once(seen + 900_000)
    assert await states(c, h) == {device_id: "offline"}  # spare-1 was never seen: no state, no alert
    r = await c.client.get("/api/v1/alerts", params={"state": "open"}, headers=h)
    [alert] = r.json()["items"]
    assert (alert["rule_id"], alert["device_id"], alert["severity"]) == (NO_HEARTBEAT, device_id, "major")
    assert "not heard from" in alert["explanation"]["text"]

    hooks = await c.wait_for(lambda: soon([json.loads(q.body) for q in receiver.requests if q.path == "/hook"]), what="the notification")
    assert len(hooks) == 1 and NO_HEARTBEAT in json.dumps(hooks[0]) and device_id in json.dumps(hooks[0])

    await reading(c, dev, 21.5)  # heard again: the alert closes by itself
    closed = await c.wait_for(
        lambda: c.db_scalar(tenant, "SELECT count(*) FROM alerts WHERE state = 'closed' AND closed_by = 'rule'"), what="the close"
    )
    assert closed == 1 and (await states(c, h))[device_id] == "online"


async def test_the_tenant_adjusts_the_default_and_switches_alerts_off_audited_and_states_are_still_kept(quiet: NotifyCloud, receiver: Receiver) -> None:
    c = quiet
    tenant, h = await hooked_tenant(c, receiver)
    r = await c.client.get("/api/v1/device-states/settings", headers=h)
    assert r.status_code == 200 and r.json() == {
        "alerts_enabled": True, "interval_s": 300.0, "stale_after": 1.5, "offline_after": 3.0, "severity": "major", "version": 1,
    }  # fmt: skip
    for bad, code in (({"interval_s": 0}, "api.invalid"), ({"stale_after": 4}, "rule.bad_heartbeat"), ({"surprise": 1}, "api.invalid"), ({"severity": "loud"}, "api.invalid")):
        r = await c.client.put("/api/v1/device-states/settings", json=bad, headers=h)
        assert r.status_code == 422 and r.json()["code"] == code, (bad, r.text)
    customer = await c.user("customer", await c.slug(tenant))
    r = await c.client.put("/api/v1/device-states/settings", json={"alerts_enabled": False}, headers=customer)
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
    r = await c.client.put("/api/v1/device-states/settings", json={"alerts_enabled": False, "interval_s": 60}, headers=h)
    assert r.status_code == 200 and r.json()["alerts_enabled"] is False and r.json()["version"] == 2
    audit = await c.db_scalar(tenant, "SELECT detail FROM audit_log WHERE action = 'heartbeat.settings'")
    assert json.loads(audit)["before"]["alerts_enabled"] is True and json.loads(audit)["after"]["interval_s"] == 60

    dev = await device(c, h)
    device_id = await c.db_scalar(tenant, "SELECT device_id FROM devices")
    await reading(c, dev, 20.0)
    await c.wait_for(lambda: states(c, h), what="the state")
    seen = await last_seen(c, tenant, device_id)
    runner: RuleRunner = c.app.state.rules
    await runner.sweep_once(seen + 180_000)  # 3 x the tenant's 60 s
    assert (await states(c, h))[device_id] == "offline"
    assert await c.db_scalar(tenant, "SELECT count(*) FROM alerts") == 0  # alerts off: state only

    # a device's own interval (its profile attribute) wins over the tenant default
    dev_uuid = await c.db_scalar(tenant, "SELECT id FROM devices WHERE device_id = $1", device_id)
    r = await c.client.patch(f"/api/v1/devices/{dev_uuid}", json={"attributes": {"interval_s": 3600}}, headers=h)
    assert r.status_code == 200, r.text
    await reading(c, dev, 20.5)

    async def online() -> bool:
        return (await states(c, h))[device_id] == "online"

    await c.wait_for(online, what="online again")
    seen = await last_seen(c, tenant, device_id)
    await runner.sweep_once(seen + 180_000)
    assert (await states(c, h))[device_id] == "online"


async def test_no_heartbeat_is_a_reserved_rule_id(quiet: NotifyCloud) -> None:
    _, h = await quiet.tenant_user()
    body = {"id": NO_HEARTBEAT, "kind": "heartbeat", "severity": "major", "interval_s": 10}
    r = await quiet.client.post("/api/v1/rules", json=body, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "rule.reserved_id"


@pytest.fixture
async def clocked(cloud_settings: Settings) -> AsyncIterator[tuple[NotifyCloud, list[dt.datetime]]]:
    """The app with a clock the test sets (for the uptime window's end); the periodic sweep an hour away."""
    now = [dt.datetime.now(dt.UTC)]
    settings = cloud_settings.model_copy(update={"rules_sweep_interval_s": 3600})
    async with notify_cloud(settings, fast_notify(), clock=lambda: now[0]) as c:
        yield c, now


async def listed(c: NotifyCloud, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    r = await c.client.get("/api/v1/devices", params=params, headers=h)
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


async def test_devices_list_filters_and_sorts_by_state_and_last_seen_and_the_uptime_comes_from_state_history(
    clocked: tuple[NotifyCloud, list[dt.datetime]],
) -> None:
    c, clock = clocked
    tenant, h = await c.tenant_user()
    ids = {}
    for name, attrs in (("a-silent", {}), ("b-slow", {"interval_s": 3600}), ("c-spare", {})):
        r = await c.client.post("/api/v1/devices", json={"device_id": name, "attributes": attrs}, headers=h)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    for name in ("a-silent", "b-slow"):
        r = await c.client.post(f"/api/v1/devices/{ids[name]}/credentials", headers=h)
        await reading(c, {"Authorization": f"Bearer {r.json()['token']}"}, 20.0)

    async def both() -> bool:
        return len(await states(c, h)) == 2

    await c.wait_for(both, what="two states")
    seen = {n: await last_seen(c, tenant, n) for n in ("a-silent", "b-slow")}
    runner: RuleRunner = c.app.state.rules
    t0 = seen["a-silent"]
    await runner.sweep_once(t0 + 450_000)
    await runner.sweep_once(t0 + 900_000)

    everyone = await listed(c, h)
    assert [(d["device_id"], d["state"]) for d in everyone] == [("a-silent", "offline"), ("b-slow", "online"), ("c-spare", "never_seen")]
    assert round(dt.datetime.fromisoformat(everyone[0]["last_seen_at"]).timestamp() * 1000) == t0
    assert everyone[2]["last_seen_at"] is None
    assert [d["device_id"] for d in await listed(c, h, state="offline")] == ["a-silent"]
    assert [d["device_id"] for d in await listed(c, h, state="never_seen")] == ["c-spare"]
    assert [d["device_id"] for d in await listed(c, h, sort="state")] == ["a-silent", "b-slow", "c-spare"]
    by_recent = sorted(("a-silent", "b-slow"), key=lambda n: (-seen[n], n))
    assert [d["device_id"] for d in await listed(c, h, sort="-last_seen")] == [*by_recent, "c-spare"]
    by_oldest = sorted(("a-silent", "b-slow"), key=lambda n: (seen[n], n))
    assert [d["device_id"] for d in await listed(c, h, sort="last_seen")] == ["c-spare", *by_oldest]
    paged, cursor = [], None  # the Page[T] cursor walks a sorted list too
    while True:
        r = await c.client.get("/api/v1/devices", params={"sort": "state", "limit": 1} | ({"cursor": cursor} if cursor else {}), headers=h)
        paged += [d["device_id"] for d in r.json()["items"]]
        if not (cursor := r.json()["next_cursor"]):
            break
    assert paged == ["a-silent", "b-slow", "c-spare"]
    for bad in ({"sort": "name"}, {"state": "asleep"}, {"sort": "state", "cursor": "bm90LWEtY3Vyc29y"}):
        r = await c.client.get("/api/v1/devices", params=bad, headers=h)
        assert r.status_code == 422 and r.json()["code"] == "api.invalid", (bad, r.text)
    summary = (await c.client.get("/api/v1/fleet/summary", headers=h)).json()["devices_by_state"]
    assert summary == {"online": 1, "stale": 0, "offline": 1, "unreachable": 0, "never_seen": 1}

    clock[0] = dt.datetime.fromtimestamp(t0 / 1000, dt.UTC) + dt.timedelta(hours=2)
    r = await c.client.get(f"/api/v1/devices/{ids['a-silent']}/uptime", headers=h)
    assert r.status_code == 200, r.text
    up = r.json()
    assert [g["status"] for g in up["segments"]] == ["unknown", "online", "stale", "offline"]
    assert up["seconds"]["online"] == pytest.approx(450, abs=0.01) and up["seconds"]["stale"] == pytest.approx(450, abs=0.01)
    assert up["seconds"]["offline"] == pytest.approx(7200 - 900, abs=0.01)
    assert up["online_ratio"] == pytest.approx(450 / 7200, abs=1e-4)
    week = (await c.client.get(f"/api/v1/devices/{ids['a-silent']}/uptime", params={"window": "7d"}, headers=h)).json()
    assert week["seconds"]["unknown"] == pytest.approx(7 * 86400 - 7200, abs=0.01)
    never = (await c.client.get(f"/api/v1/devices/{ids['c-spare']}/uptime", headers=h)).json()
    assert [g["status"] for g in never["segments"]] == ["unknown"] and never["online_ratio"] is None
    r = await c.client.get(f"/api/v1/devices/{ids['a-silent']}/uptime", params={"window": "1y"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"

    # another tenant sees none of it
    _, other = await c.tenant_user()
    assert await listed(c, other, state="offline") == []
    r = await c.client.get(f"/api/v1/devices/{ids['a-silent']}/uptime", headers=other)
    assert r.status_code == 404
    r = await c.client.get(f"/api/v1/devices/{ids['a-silent']}", headers=other)
    assert r.status_code == 404
