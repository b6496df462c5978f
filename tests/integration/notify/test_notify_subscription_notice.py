"""Issue 20: a subscription's renewal notice reaches the tenant's channels through the delivery
queue (a real webhook receiver on loopback), once, and another tenant's channels hear nothing."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from notify_cloud import PASSWORD, NotifyCloud
from notify_receivers import Receiver

from pulse.cloud.auth.accounts import create_user
from pulse.cloud.subscriptions.worker import run_once

pytestmark = pytest.mark.integration

END = dt.datetime(2031, 2, 1, tzinfo=dt.UTC)


async def test_a_renewal_notice_is_delivered_to_the_tenants_webhook_once(ncloud: NotifyCloud, receiver: Receiver) -> None:
    tenant, h = await ncloud.tenant_user()
    _, other = await ncloud.tenant_user()
    for headers, path in ((h, "/mine"), (other, "/other")):
        r = await ncloud.client.post(
            "/api/v1/notify/channels", json={"name": "hook", "kind": "webhook", "config": {"url": receiver.url(path)}}, headers=headers
        )
        assert r.status_code == 201, r.text
    await create_user(ncloud.db, email="ops@example.com", password=PASSWORD, roles=["operator-admin"], tenant=None, actor="test")
    op = {"Authorization": "Bearer " + (await ncloud.client.post("/auth/login", json={"email": "ops@example.com", "password": PASSWORD})).json()["access_token"]}
    r = await ncloud.client.post(
        f"/api/v1/operator/tenants/{tenant}/subscriptions",
        json={"kind": "MAIN", "device_limit": 10, "starts_at": (END - dt.timedelta(days=365)).isoformat(), "ends_at": END.isoformat()},
        headers=op,
    )
    assert r.status_code == 201, r.text
    done = await run_once(ncloud.db, END - dt.timedelta(days=7))
    assert (done.transitions, done.notices) == (0, 1)
    await ncloud.wait_for(lambda: _soon(len(receiver.requests) >= 1), what="the notice")
    assert (await run_once(ncloud.db, END - dt.timedelta(days=6))).notices == 0
    body = json.loads(receiver.requests[0].body)
    assert (body["event"], body["severity"]) == ("notice", "info")
    assert "ends on 2031-02-01" in body["explanation"]
    assert [req.path for req in receiver.requests] == ["/mine"]


async def _soon(value: bool) -> bool:
    return value
