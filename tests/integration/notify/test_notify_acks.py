"""Acknowledging and resolving alerts from where people are paged, on a real cloud served by uvicorn
on loopback (requests are real HTTP with httpx), real PostgreSQL, the notify workers run one pass at
a time: who may act (a tenant permission), PagerDuty webhooks, Slack buttons, email links."""

from __future__ import annotations

from typing import Any

import pytest
from notify_cloud import open_alert, setup_tenant

pytestmark = pytest.mark.integration


async def test_who_may_acknowledge_is_a_permission_the_tenant_admin_sets(ncloud: Any) -> None:
    c = ncloud
    tenant, admin, _ = await setup_tenant(c)
    slug = await c.slug(tenant)
    customer = await c.user("customer", slug)
    r = await c.client.get("/api/v1/permissions", headers=customer)
    assert r.status_code == 200
    assert r.json() == [
        {"permission": "alerts.ack", "roles": ["customer", "external", "tenant-admin"]},
        {"permission": "alerts.close", "roles": ["external", "tenant-admin"]},
    ]
    first, second = await open_alert(c, admin), await open_alert(c, admin)
    # by default a customer may acknowledge, not close
    r = await c.client.post(f"/api/v1/alerts/{first}/ack", headers=customer)
    assert (r.status_code, r.json()["state"], r.json()["acknowledged_by"].startswith("local:")) == (200, "acknowledged", True)
    r = await c.client.post(f"/api/v1/alerts/{first}/close", headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "ack.forbidden")
    # only tenant admins change the permission; tenant-admin always keeps it
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": []}, headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "auth.forbidden")
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": ["operator"]}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (422, "api.invalid")
    r = await c.client.put("/api/v1/permissions/alerts.nope", json={"roles": []}, headers=admin)
    assert r.status_code == 422
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": []}, headers=admin)
    assert r.json() == {"permission": "alerts.ack", "roles": ["tenant-admin"]}
    r = await c.client.post(f"/api/v1/alerts/{second}/ack", headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "ack.forbidden")
    detail = (await c.client.get(f"/api/v1/alerts/{second}", headers=admin)).json()
    assert detail["state"] == "open" and [e["kind"] for e in detail["events"]] == ["opened"]
    r = await c.client.post(f"/api/v1/alerts/{second}/ack", headers=admin)
    assert r.json()["state"] == "acknowledged"
    audit = (await c.client.get("/api/v1/audit", params={"action": "permission.set"}, headers=admin)).json()["items"]
    assert [a["target"] for a in audit] == ["alerts.ack"]
    # another tenant's permissions are its own
    _, other = await c.tenant_user()
    r = await c.client.get("/api/v1/permissions", headers=other)
    assert r.json()[0]["roles"] == ["customer", "external", "tenant-admin"]
