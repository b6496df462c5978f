"""Platform health alerts reach operators through the ordinary notification path: a tenant's
webhook receiver fails every delivery, the delivery worker gives up (dead letters grow), the
platform sampler sees the growth, the platform rule opens one alert in the pulse-platform tenant,
and the fan-out and delivery workers send it to the channel an operator gave that tenant."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from notify_cloud import fast_notify, notify_cloud, open_alert, setup_tenant
from notify_receivers import Receiver

from pulse.cloud.platform.health import PLATFORM_SLUG, PLATFORM_TENANT, HealthThresholds
from pulse.cloud.platform.sampler import Sampler
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


async def test_dead_letters_growing_notify_the_operators_channel(cloud_settings: Settings, receiver: Receiver) -> None:
    async with notify_cloud(cloud_settings, fast_notify(max_attempts=2)) as c:
        # the operators' channel: a tenant-admin of the platform tenant sets it up (docs/operations.md)
        ops = await c.user("tenant-admin", PLATFORM_SLUG)
        r = await c.client.post("/api/v1/notify/channels", json={"name": "noc", "kind": "webhook", "config": {"url": receiver.url("/noc")}}, headers=ops)
        assert r.status_code == 201, r.text
        r = await c.client.post("/api/v1/notify/routes", json={"name": "all", "min_severity": "major", "channels": [r.json()["id"]]}, headers=ops)
        assert r.status_code == 201, r.text

        ticks: dict[str, Any] = {"at": T0, "mono": 0.0}
        sampler = Sampler(
            c.db,
            c.app.state.metrics,
            writer_depth=lambda: 0,
            clock=lambda: ticks["at"],
            monotonic=lambda: ticks["mono"],
            rules=c.app.state.rules,
            thresholds=HealthThresholds(dead_letter_window_s=600),
        )
        await sampler.install_rules()
        await sampler.sample_once()
        before = next(p.value for p in sampler.last_points if p.name == "notify_dead_letters")

        # a tenant whose receiver is down: every attempt answers 500 until the retries are used up
        receiver.answer("/down", *[(500, {}, b"down")] * 10)
        tenant, h, _ = await setup_tenant(c, {"kind": "webhook", "config": {"url": receiver.url("/down")}})
        await open_alert(c, h)

        async def dead() -> Any:
            return await c.db_scalar(tenant, "SELECT count(*) FROM notify_deliveries WHERE status = 'dead'")

        await c.wait_for(dead, what="the tenant's delivery to be dead-lettered")
        ticks["at"] += dt.timedelta(seconds=5)
        ticks["mono"] += 5
        await sampler.sample_once()
        assert next(p.value for p in sampler.last_points if p.name == "dead_letters_growth") == 1
        assert next(p.value for p in sampler.last_points if p.name == "notify_dead_letters") == before + 1

        async def delivered() -> Any:
            return [q for q in receiver.requests if q.path == "/noc"]

        (sent,) = await c.wait_for(delivered, what="the platform alert at the operators' channel")
        body = json.loads(sent.body)
        assert "platform.dead_letters" in json.dumps(body)
        async with c.db.tenant(PLATFORM_TENANT) as conn:
            alerts = await conn.fetch("SELECT rule_id, device_id, state FROM alerts WHERE rule_id = 'platform.dead_letters'")
        assert [(a["device_id"], a["state"]) for a in alerts] == [("platform:notify", "open")]
        # the tenant's own inbox has its alert, never the platform's
        r = await c.client.get("/api/v1/alerts", headers=h)
        assert {a["rule_id"] for a in r.json()["items"]} == {"hot"}
