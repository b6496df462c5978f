"""Escalation and on-call on a simulated clock: the workers run one pass at a time with ``now`` given.

Policy: level 1 pages a webhook "team" channel and waits 5 minutes; level 2 pages whoever the
on-call schedule has now (an override puts "cem" on call, reached at his own webhook) and waits 10
minutes; no repeat. Acknowledging stops the escalation and tells everyone who was paged."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from notify_cloud import HOT, device, fast_notify, notify_cloud, reading
from notify_receivers import Receiver

from pulse.cloud.notify.worker import NotifyWorkers
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration


def bodies(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in receiver.requests if r.path == path]


async def test_unacknowledged_alert_escalates_level_by_level_and_ack_stops_it(cloud_settings: Settings, receiver: Receiver) -> None:
    async with notify_cloud(cloud_settings, fast_notify(workers=False)) as c:
        workers: NotifyWorkers = c.app.state.notify_workers
        _, h = await c.tenant_user()

        async def channel(path: str) -> str:
            r = await c.client.post("/api/v1/notify/channels", json={"name": path, "kind": "webhook", "config": {"url": receiver.url(path)}}, headers=h)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        team, ana, cem, slack = await channel("/team"), await channel("/ana"), await channel("/cem"), await channel("/slack")
        t0 = dt.datetime.now(dt.UTC).replace(microsecond=0)
        schedule = {
            "name": "plant ops",
            "time_zone": "Europe/Berlin",
            "layers": [{"name": "primary", "rotation": "daily", "handoff": "09:00", "start": "2026-01-01T00:00:00+01:00", "members": [{"name": "ana", "channel": ana}]}],
            "overrides": [{"start": (t0 - dt.timedelta(hours=1)).isoformat(), "end": (t0 + dt.timedelta(hours=2)).isoformat(), "member": {"name": "cem", "channel": cem}}],
        }
        r = await c.client.post("/api/v1/oncall/schedules", json=schedule, headers=h)
        assert r.status_code == 201, r.text
        policy = {"name": "plant", "levels": [{"delay_s": 300, "targets": [{"channel": team}]}, {"delay_s": 600, "targets": [{"schedule": r.json()["id"]}]}]}
        r = await c.client.post("/api/v1/escalation-policies", json=policy, headers=h)
        assert r.status_code == 201, r.text
        policy_id = r.json()["id"]
        r = await c.client.post("/api/v1/notify/routes", json={"name": "r", "channels": [slack], "escalation_policy": policy_id}, headers=h)
        assert r.status_code == 201, r.text
        assert (await c.client.post("/api/v1/rules", json=HOT, headers=h)).status_code == 201
        dev = await device(c, h)
        await reading(c, dev, 31.5)

        async def alert_id() -> Any:
            return [a["id"] for a in (await c.client.get("/api/v1/alerts", headers=h)).json()["items"]]

        [aid] = await c.wait_for(alert_id, what="the alert")

        async def step(seconds: float) -> None:
            await workers.run_once(t0 + dt.timedelta(seconds=seconds), wait_sends=True)
            await workers.run_once(t0 + dt.timedelta(seconds=seconds), wait_sends=True)  # sends queued by the first pass

        await step(0)
        assert [b["event"] for b in bodies(receiver, "/slack")] == ["opened"]
        assert len(bodies(receiver, "/team")) == 1 and "Escalated to level 1" in bodies(receiver, "/team")[0]["explanation"]
        detail = (await c.client.get(f"/api/v1/alerts/{aid}", headers=h)).json()
        assert detail["escalation"] == {"policy": policy_id, "level": 0, "cycle": 0, "next_at": (t0 + dt.timedelta(seconds=300)).isoformat(), "stopped": False, "stop_reason": None}
        await step(299)
        assert bodies(receiver, "/cem") == [] and len(bodies(receiver, "/team")) == 1
        await step(300)
        # level 2: the schedule's override (cem) is on call, not the layer's ana
        assert len(bodies(receiver, "/cem")) == 1 and bodies(receiver, "/ana") == []
        assert "Escalated to level 2" in bodies(receiver, "/cem")[0]["explanation"]
        assert (await c.client.post(f"/api/v1/alerts/{aid}/ack", headers=h)).status_code == 200
        await step(301)
        await step(5000)
        assert [b["event"] for b in bodies(receiver, "/cem")] == ["opened", "acknowledged"]
        assert [b["event"] for b in bodies(receiver, "/team")] == ["opened", "acknowledged"]
        assert [b["event"] for b in bodies(receiver, "/slack")] == ["opened", "acknowledged"]
        detail = (await c.client.get(f"/api/v1/alerts/{aid}", headers=h)).json()
        assert detail["escalation"]["stopped"] is True and detail["escalation"]["stop_reason"] == "acknowledged" and detail["escalation"]["level"] == 1
        assert [(n["event"], n["escalation_level"]) for n in detail["notifications"]][:3] == [("opened", None), ("escalated", 0), ("escalated", 1)]


async def test_policy_runs_out_after_its_last_level_and_repeat(cloud_settings: Settings, receiver: Receiver) -> None:
    async with notify_cloud(cloud_settings, fast_notify(workers=False)) as c:
        workers: NotifyWorkers = c.app.state.notify_workers
        _, h = await c.tenant_user()
        r = await c.client.post("/api/v1/notify/channels", json={"name": "x", "kind": "webhook", "config": {"url": receiver.url("/x")}}, headers=h)
        ch = r.json()["id"]
        r = await c.client.post("/api/v1/escalation-policies", json={"name": "p", "levels": [{"delay_s": 60, "targets": [{"channel": ch}]}], "repeat": 1}, headers=h)
        r = await c.client.post("/api/v1/notify/routes", json={"name": "r", "channels": [], "escalation_policy": r.json()["id"]}, headers=h)
        assert r.status_code == 201, r.text
        assert (await c.client.post("/api/v1/rules", json=HOT, headers=h)).status_code == 201
        await reading(c, await device(c, h), 31.5)

        async def opened() -> Any:
            return (await c.client.get("/api/v1/alerts", headers=h)).json()["items"]

        [alert] = await c.wait_for(opened, what="the alert")
        t0 = dt.datetime.now(dt.UTC)
        for s in (0, 30, 61, 90, 122, 500, 1000):
            await workers.run_once(t0 + dt.timedelta(seconds=s), wait_sends=True)
            await workers.run_once(t0 + dt.timedelta(seconds=s), wait_sends=True)
        assert len(bodies(receiver, "/x")) == 2  # level 1, then once more (repeat 1), then it stops
        detail = (await c.client.get(f"/api/v1/alerts/{alert['id']}", headers=h)).json()
        assert detail["escalation"]["stopped"] is True and detail["escalation"]["stop_reason"] == "exhausted"
