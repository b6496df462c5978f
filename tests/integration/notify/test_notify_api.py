"""The notify API: channels, routes, deliveries, escalation policies, on-call schedules.

Every endpoint is also called by another tenant, who gets 404 (and nothing changes)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from notify_cloud import PASSWORD, PD_KEY, NotifyCloud

from pulse.cloud.auth.accounts import create_user

pytestmark = pytest.mark.integration


async def _channel(c: NotifyCloud, h: dict[str, str], **changes: Any) -> dict[str, Any]:
    body = {"name": "pd-" + uuid.uuid4().hex[:6], "kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": "http://127.0.0.1:9/v2/enqueue"}} | changes
    r = await c.client.post("/api/v1/notify/channels", json=body, headers=h)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_channel_crud_redacts_secrets_and_keeps_them_on_put(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    ch = await _channel(ncloud, h, name="pager")
    assert ch["config"] == {"routing_key": "***", "events_url": "http://127.0.0.1:9/v2/enqueue"}
    assert ch["kind"] == "pagerduty" and ch["enabled"] is True and ch["created"]
    r = await ncloud.client.put(f"/api/v1/notify/channels/{ch['id']}", json={"name": "pager2", "kind": "pagerduty", "config": ch["config"], "enabled": False}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "pager2" and r.json()["enabled"] is False
    page = (await ncloud.client.get("/api/v1/notify/channels", headers=h)).json()
    assert [i["id"] for i in page["items"]] == [ch["id"]] and page["next_cursor"] is None


async def test_stored_secret_survives_a_put_with_the_redacted_value(ncloud: NotifyCloud) -> None:
    tenant, h = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    await ncloud.client.put(f"/api/v1/notify/channels/{ch['id']}", json={"name": ch["name"], "kind": "pagerduty", "config": ch["config"]}, headers=h)
    async with ncloud.db.tenant(tenant) as conn:
        stored = await conn.fetchval("SELECT config->>'routing_key' FROM notify_channels WHERE id = $1", uuid.UUID(ch["id"]))
    assert stored == PD_KEY


async def test_slack_and_teams_webhook_urls_are_credentials_and_never_shown_back(ncloud: NotifyCloud) -> None:
    tenant, h = await ncloud.tenant_user()
    for kind, url in (("slack", "https://hooks.slack.com/services/T000/B000/XXXXSECRET"), ("teams", "https://example.webhook.office.com/workflows/abc?sig=SECRET")):
        r = await ncloud.client.post("/api/v1/notify/channels", json={"name": kind, "kind": kind, "config": {"url": url}}, headers=h)
        assert r.status_code == 201, r.text
        ch = r.json()
        assert "SECRET" not in r.text and ch["config"]["url"] == f"https://{url.split('/')[2]}/***"
        listed = await ncloud.client.get("/api/v1/notify/channels", headers=h)
        assert "SECRET" not in listed.text
        # the console sends back what it read: the stored URL stays
        r = await ncloud.client.put(f"/api/v1/notify/channels/{ch['id']}", json={"name": kind, "kind": kind, "config": ch["config"]}, headers=h)
        assert r.status_code == 200, r.text
        async with ncloud.db.tenant(tenant) as conn:
            stored = await conn.fetchval("SELECT config->>'url' FROM notify_channels WHERE id = $1", uuid.UUID(ch["id"]))
        assert stored == url
        # a redacted URL is never stored as if it were one
        r = await ncloud.client.post("/api/v1/notify/channels", json={"name": kind + "2", "kind": kind, "config": ch["config"]}, headers=h)
        assert r.status_code == 422 and r.json()["code"] == "notify.bad_config"


async def test_bad_channel_config_names_the_field(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    r = await ncloud.client.post("/api/v1/notify/channels", json={"name": "x", "kind": "webhook", "config": {"url": "ftp://nope"}}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_config" and "url" in r.json()["message"]
    r = await ncloud.client.post("/api/v1/notify/channels", json={"name": "x", "kind": "pagerduty", "config": {"routing_key": "***"}}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_config"
    r = await ncloud.client.post("/api/v1/notify/channels", json={"name": "x", "kind": "fax", "config": {}}, headers=h)
    assert r.status_code == 422


async def test_channel_list_pages(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    made = [(await _channel(ncloud, h))["id"] for _ in range(3)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await ncloud.client.get("/api/v1/notify/channels", params=params, headers=h)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


async def test_routes_validate_channels_and_policies_of_the_tenant(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    _, other = await ncloud.tenant_user()
    theirs = await _channel(ncloud, other)
    r = await ncloud.client.post("/api/v1/notify/routes", json={"name": "r", "channels": [theirs["id"]]}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_route"
    mine = await _channel(ncloud, h)
    body = {"name": "crit", "min_severity": "major", "alert_types": ["threshold"], "sites": [], "device_tags": {"line": "3"}, "channels": [mine["id"]], "throttle_s": 60}
    r = await ncloud.client.post("/api/v1/notify/routes", json=body, headers=h)
    assert r.status_code == 201, r.text
    route = r.json()
    assert {k: route[k] for k in body} == body and route["enabled"] is True and route["escalation_policy"] is None
    r = await ncloud.client.put(f"/api/v1/notify/routes/{route['id']}", json=body | {"min_severity": "critical"}, headers=h)
    assert r.json()["min_severity"] == "critical"
    # deleting the channel takes it out of the route
    assert (await ncloud.client.delete(f"/api/v1/notify/channels/{mine['id']}", headers=h)).status_code == 204
    assert (await ncloud.client.get(f"/api/v1/notify/routes/{route['id']}", headers=h)).json()["channels"] == []


async def test_policy_and_schedule_validation(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    six = [{"delay_s": 60, "targets": [{"channel": ch["id"]}]}] * 6
    r = await ncloud.client.post("/api/v1/escalation-policies", json={"name": "p", "levels": six}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_policy"
    r = await ncloud.client.post("/api/v1/escalation-policies", json={"name": "p", "levels": [{"delay_s": 60, "targets": [{"schedule": str(uuid.uuid4())}]}]}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_policy"
    r = await ncloud.client.post("/api/v1/oncall/schedules", json=_schedule(ch["id"]) | {"time_zone": "Mars/Olympus"}, headers=h)
    assert r.status_code == 422 and r.json()["code"] == "notify.bad_schedule"


def _schedule(channel: str | None) -> dict[str, Any]:
    return {
        "name": "plant ops",
        "time_zone": "Europe/Berlin",
        "layers": [
            {
                "name": "primary",
                "rotation": "weekly",
                "handoff": "09:00",
                "handoff_weekday": 0,
                "start": "2026-11-02T00:00:00+01:00",
                "members": [{"name": "ana", "channel": channel}, {"name": "ben", "channel": channel}],
            }
        ],
        "overrides": [{"start": "2026-11-25T12:00:00Z", "end": "2026-11-25T18:00:00Z", "member": {"name": "cem", "channel": channel}}],
    }


async def test_schedule_now_and_timeline(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    r = await ncloud.client.post("/api/v1/oncall/schedules", json=_schedule(ch["id"]), headers=h)
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["layers"][0]["members"][0] == {"name": "ana", "channel": ch["id"]} and s["overrides"][0]["id"]
    # 2026-11-02 (Monday) 09:00 Berlin: ana's week; 2026-11-09: ben's; 2026-11-23: ben again; override cem on 25th noon-18 UTC
    now = (await ncloud.client.get(f"/api/v1/oncall/schedules/{s['id']}/now", params={"at": "2026-11-03T10:00:00Z"}, headers=h)).json()
    reached_by = {"channel": ch["id"], "name": ch["name"], "kind": ch["kind"], "enabled": True}  # how paging reaches ana
    ana = {"name": "ana", "channel": ch["id"], "user_id": None, "reached_by": reached_by}
    assert now == {"member": ana, "layer": "primary", "until": "2026-11-09T08:00:00+00:00"}
    now = (await ncloud.client.get(f"/api/v1/oncall/schedules/{s['id']}/now", params={"at": "2026-11-25T13:00:00Z"}, headers=h)).json()
    assert now["member"]["name"] == "cem" and now["layer"] == "override" and now["until"] == "2026-11-25T18:00:00+00:00"
    tl = (await ncloud.client.get(f"/api/v1/oncall/schedules/{s['id']}/timeline", params={"days": 14, "start": "2026-11-20T00:00:00Z"}, headers=h)).json()
    assert tl["from"] == "2026-11-20T00:00:00+00:00" and tl["to"] == "2026-12-04T00:00:00+00:00"
    who = [(seg["start"], seg["member"]["name"]) for seg in tl["segments"]]
    assert who[:4] == [
        ("2026-11-20T00:00:00+00:00", "ana"),
        ("2026-11-23T08:00:00+00:00", "ben"),
        ("2026-11-25T12:00:00+00:00", "cem"),
        ("2026-11-25T18:00:00+00:00", "ben"),
    ]


async def test_every_endpoint_answers_404_to_another_tenant(ncloud: NotifyCloud) -> None:
    _, h = await ncloud.tenant_user()
    _, other = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    route = (await ncloud.client.post("/api/v1/notify/routes", json={"name": "r", "channels": [ch["id"]]}, headers=h)).json()
    policy = (await ncloud.client.post("/api/v1/escalation-policies", json={"name": "p", "levels": [{"delay_s": 60, "targets": [{"channel": ch["id"]}]}]}, headers=h)).json()
    sched = (await ncloud.client.post("/api/v1/oncall/schedules", json=_schedule(ch["id"]), headers=h)).json()
    delivery = (await ncloud.client.post(f"/api/v1/notify/channels/{ch['id']}/test", headers=h)).json()["delivery_id"]
    channel_body = {"name": "x", "kind": "pagerduty", "config": {"routing_key": PD_KEY}}
    calls = [
        ("GET", f"/api/v1/notify/channels/{ch['id']}", None),
        ("PUT", f"/api/v1/notify/channels/{ch['id']}", channel_body),
        ("POST", f"/api/v1/notify/channels/{ch['id']}/test", None),
        ("DELETE", f"/api/v1/notify/channels/{ch['id']}", None),
        ("GET", f"/api/v1/notify/routes/{route['id']}", None),
        ("PUT", f"/api/v1/notify/routes/{route['id']}", {"name": "r"}),
        ("DELETE", f"/api/v1/notify/routes/{route['id']}", None),
        ("GET", f"/api/v1/notify/deliveries/{delivery}", None),
        ("POST", f"/api/v1/notify/deliveries/{delivery}/retry", None),
        ("GET", f"/api/v1/escalation-policies/{policy['id']}", None),
        ("PUT", f"/api/v1/escalation-policies/{policy['id']}", {"name": "p", "levels": [{"delay_s": 60, "targets": [{"channel": str(uuid.uuid4())}]}]}),
        ("DELETE", f"/api/v1/escalation-policies/{policy['id']}", None),
        ("GET", f"/api/v1/oncall/schedules/{sched['id']}", None),
        ("PUT", f"/api/v1/oncall/schedules/{sched['id']}", _schedule(None)),
        ("DELETE", f"/api/v1/oncall/schedules/{sched['id']}", None),
        ("GET", f"/api/v1/oncall/schedules/{sched['id']}/now", None),
        ("GET", f"/api/v1/oncall/schedules/{sched['id']}/timeline", None),
    ]
    for method, path, body in calls:
        r = await ncloud.client.request(method, path, json=body, headers=other)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["code"] == "api.not_found"
    # the lists show the other tenant nothing, and filters by foreign ids find nothing
    for path in ("/api/v1/notify/channels", "/api/v1/notify/routes", "/api/v1/notify/deliveries", "/api/v1/escalation-policies", "/api/v1/oncall/schedules"):
        assert (await ncloud.client.get(path, headers=other)).json() == {"items": [], "next_cursor": None}, path
    r = await ncloud.client.get("/api/v1/notify/deliveries", params={"channel_id": ch["id"]}, headers=other)
    assert r.json()["items"] == []
    # everything is still there for its owner
    for method, path, _ in calls:
        if method == "GET":
            assert (await ncloud.client.get(path, headers=h)).status_code == 200, path


async def test_readers_see_but_cannot_change(ncloud: NotifyCloud) -> None:
    tenant, h = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    async with ncloud.db.tenant(tenant) as conn:
        tenant_slug = await conn.fetchval("SELECT slug FROM tenants")
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    await create_user(ncloud.db, email=email, password=PASSWORD, roles=["customer"], tenant=tenant_slug, actor="test")
    token = (await ncloud.client.post("/auth/login", json={"email": email, "password": PASSWORD})).json()["access_token"]
    viewer = {"Authorization": f"Bearer {token}"}
    assert (await ncloud.client.get(f"/api/v1/notify/channels/{ch['id']}", headers=viewer)).status_code == 200
    r = await ncloud.client.post(f"/api/v1/notify/channels/{ch['id']}/test", headers=viewer)
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"


async def test_members_are_users_or_contacts_who_can_be_reached_and_now_says_how(ncloud: NotifyCloud) -> None:
    tenant, h = await ncloud.tenant_user()
    other_tenant, _ = await ncloud.tenant_user()
    ch = await _channel(ncloud, h)
    off = await _channel(ncloud, h)
    async with ncloud.db.tenant(tenant) as conn:
        await conn.execute("UPDATE notify_channels SET enabled = false WHERE id = $1", uuid.UUID(off["id"]))
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    await ncloud.user("customer", await ncloud.slug(tenant), email)
    user_id = await ncloud.db_scalar(tenant, "SELECT id FROM users WHERE email = $1", email)
    stranger = f"{uuid.uuid4().hex[:8]}@example.com"
    await ncloud.user("customer", await ncloud.slug(other_tenant), stranger)
    stranger_id = await ncloud.db_scalar(other_tenant, "SELECT id FROM users WHERE email = $1", stranger)

    def body(*members: dict[str, Any], override: dict[str, Any] | None = None) -> dict[str, Any]:
        layer = {"name": "primary", "rotation": "daily", "start": "2026-11-02T00:00:00+01:00", "members": list(members)}
        overrides = [{"start": "2026-11-25T12:00:00Z", "end": "2026-11-25T18:00:00Z", "member": override}] if override else []
        return {"name": "ops", "time_zone": "UTC", "layers": [layer], "overrides": overrides}

    refusals = [
        (body({"name": "ana", "channel": ch["id"]}, {"name": "ben"}), "oncall.member_unreachable"),
        (body({"name": "ana", "channel": off["id"]}), "oncall.member_unreachable"),
        (body({"name": "ana", "channel": ch["id"]}, override={"name": "cem"}), "oncall.member_unreachable"),
        (body({"user_id": str(stranger_id), "channel": ch["id"]}), "oncall.unknown_user"),
        (body({"user_id": str(uuid.uuid4()), "channel": ch["id"]}), "oncall.unknown_user"),
        (body({"channel": ch["id"]}), "api.invalid"),
    ]
    for refused, code in refusals:
        r = await ncloud.client.post("/api/v1/oncall/schedules", json=refused, headers=h)
        assert r.status_code == 422 and r.json()["code"] == code, (refused, r.text)
    assert (await ncloud.client.get("/api/v1/oncall/schedules", headers=h)).json()["items"] == []  # nothing saved

    r = await ncloud.client.post("/api/v1/oncall/schedules", json=body({"user_id": str(user_id), "channel": ch["id"]}), headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["layers"][0]["members"] == [{"name": email, "user_id": str(user_id), "channel": ch["id"]}]
    now = (await ncloud.client.get(f"/api/v1/oncall/schedules/{r.json()['id']}/now", params={"at": "2026-11-03T10:00:00Z"}, headers=h)).json()
    assert now["member"] == {
        "name": email, "channel": ch["id"], "user_id": str(user_id),
        "reached_by": {"channel": ch["id"], "name": ch["name"], "kind": ch["kind"], "enabled": True},
    }  # fmt: skip
