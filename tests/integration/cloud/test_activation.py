"""Activation codes (issue 20): batches made by tenant-admins, claimed once by a direct device
(``POST /ingest/v1/activate``), expiring on a fixed clock, refused at the device limit with the same
code as the device API, rate-limited against guessing, audited, and kept inside their tenant."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from pulse.cloud.settings import Settings

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration

NOW = dt.datetime(2030, 3, 1, 12, 0, tzinfo=dt.UTC)
CODE_RE = re.compile(r"[23456789ABCDEFGHJKMNPQRSTVWXYZ]{5}-[23456789ABCDEFGHJKMNPQRSTVWXYZ]{5}")


@pytest.fixture
async def act_cloud(
    cloud_settings: Settings, start_cloud: Callable[[Settings], AbstractAsyncContextManager[Cloud]]
) -> AsyncIterator[Cloud]:
    async with start_cloud(cloud_settings.model_copy(update={"activation_burst": 3, "subscription_cache_s": 0.0})) as c:
        c.app.state.pulse.clock = lambda: NOW
        c.app.state.pulse.monotonic = lambda: 1000.0  # the bucket never refills during a test
        yield c


async def _batch(cloud: Cloud, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await cloud.client.post("/api/v1/activation-codes", json={"count": 1, **body}, headers=admin)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _activate(cloud: Cloud, code: str, device_id: str) -> Any:
    return await cloud.client.post("/ingest/v1/activate", json={"code": code, "device_id": device_id})


async def test_a_code_claims_one_device_with_its_site_tags_and_profile_and_works_once(act_cloud: Cloud) -> None:
    cloud = act_cloud
    _, admin = await cloud.tenant_user()
    site = (await cloud.client.post("/api/v1/sites", json={"name": "plant-2"}, headers=admin)).json()["id"]
    made = await _batch(cloud, admin, count=3, site_id=site, tags=["zone=b", "boiler"], profile="boiler-v2", expires_in_days=7)
    assert len(made["codes"]) == 3 and all(CODE_RE.fullmatch(c) for c in made["codes"])
    assert made["expires_at"] == (NOW + dt.timedelta(days=7)).isoformat().replace("+00:00", "Z")
    typed = made["codes"][0].lower().replace("-", " ")  # as an installer might type it
    r = await _activate(cloud, typed, "boiler-17")
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    device = (await cloud.client.get(f"/api/v1/devices/{r.json()['id']}", headers=admin)).json()
    assert (device["site_id"], device["tags"], device["attributes"]) == (site, ["boiler", "zone=b"], {"profile": "boiler-v2"})
    r = await cloud.client.post("/ingest/v1/telemetry", json={"v": 1, "metrics": {"t": 1}}, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    r = await _activate(cloud, made["codes"][0], "boiler-18")
    assert r.status_code == 404 and r.json()["code"] == "activation.code_invalid"
    listed = (await cloud.client.get("/api/v1/activation-codes", params={"batch": made["batch"]}, headers=admin)).json()["items"]
    assert len(listed) == 3 and sum(c["used_at"] is not None for c in listed) == 1
    assert "code" not in listed[0] and "code_hash" not in listed[0]
    audit = (await cloud.client.get("/api/v1/audit", params={"action": "activation."}, headers=admin)).json()["items"]
    assert {(a["action"], a["target"]) for a in audit} >= {("activation.claim", "boiler-17"), ("activation.batch", made["batch"])}


async def test_an_expired_code_is_refused_like_an_unknown_one(act_cloud: Cloud) -> None:
    cloud = act_cloud
    _, admin = await cloud.tenant_user()
    made = await _batch(cloud, admin, count=2, expires_in_days=1)
    cloud.app.state.pulse.clock = lambda: NOW + dt.timedelta(days=1) - dt.timedelta(seconds=1)
    assert (await _activate(cloud, made["codes"][0], "in-time")).status_code == 201
    cloud.app.state.pulse.clock = lambda: NOW + dt.timedelta(days=1)
    r = await _activate(cloud, made["codes"][1], "too-late")
    assert r.status_code == 404 and r.json()["code"] == "activation.code_invalid"


async def test_at_the_device_limit_a_code_gets_the_same_refusal_and_stays_usable(act_cloud: Cloud) -> None:
    cloud = act_cloud
    tenant, admin = await cloud.tenant_user()
    op = await cloud.user("operator-admin", tenant=None)
    base = f"/api/v1/operator/tenants/{tenant}/subscriptions"
    r = await cloud.client.post(
        base, json={"kind": "MAIN", "device_limit": 1, "starts_at": "2030-01-01T00:00:00Z", "ends_at": "2031-01-01T00:00:00Z"}, headers=op
    )
    assert r.status_code == 201, r.text
    await cloud.device_with_token(admin)
    made = await _batch(cloud, admin)
    r = await _activate(cloud, made["codes"][0], "over")
    assert r.status_code == 409 and r.json()["code"] == "subscription.device_limit"
    r2 = await cloud.client.post("/api/v1/devices", json={"device_id": "over-api"}, headers=admin)
    assert (r2.status_code, r2.json()["code"]) == (409, r.json()["code"])
    sub = (await cloud.client.get(base, headers=op)).json()["subscriptions"][0]["id"]
    assert (await cloud.client.patch(f"{base}/{sub}", json={"device_limit": 2}, headers=op)).status_code == 200
    assert (await _activate(cloud, made["codes"][0], "over")).status_code == 201  # the refused claim did not use the code


async def test_guessing_is_rate_limited_with_a_code(act_cloud: Cloud) -> None:
    cloud = act_cloud
    for i in range(3):
        r = await _activate(cloud, f"ZZZZZ-ZZZZ{'23456789'[i]}", f"guess-{i}")
        assert r.status_code == 404 and r.json()["code"] == "activation.code_invalid"
    r = await _activate(cloud, "ZZZZZ-ZZZZZ", "guess-9")
    assert r.status_code == 429 and r.json()["code"] == "activation.rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "body",
    [
        {"code": "K7XQ2-M9HT", "device_id": "d"},  # too short: same answer as unknown
        {"code": "O0OO0-IIII1", "device_id": "d"},  # look-alikes are not in the alphabet
    ],
)
async def test_malformed_codes_answer_as_unknown(cloud: Cloud, body: dict[str, str]) -> None:
    r = await cloud.client.post("/ingest/v1/activate", json=body)
    assert r.status_code == 404 and r.json()["code"] == "activation.code_invalid"


async def test_bad_requests_get_coded_422s(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user()
    r = await cloud.client.post("/ingest/v1/activate", json={"code": "K7XQ2-M9HTR", "device_id": "bad id!"})
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    for body in ({"count": 0}, {"count": 501}, {"count": 1, "expires_in_days": 91}, {"count": 1, "tags": ["no spaces"]}):
        r = await cloud.client.post("/api/v1/activation-codes", json=body, headers=admin)
        assert r.status_code == 422 and r.json()["code"] == "api.invalid", body


async def test_activation_codes_keep_tenants_apart(cloud: Cloud) -> None:
    _, a_admin = await cloud.tenant_user()
    b_tenant, b_admin = await cloud.tenant_user()
    a_site = (await cloud.client.post("/api/v1/sites", json={"name": "a-site"}, headers=a_admin)).json()["id"]
    a_made = await _batch(cloud, a_admin, site_id=a_site)
    assert (await cloud.client.get("/api/v1/activation-codes", headers=b_admin)).json()["items"] == []
    r = await cloud.client.get("/api/v1/activation-codes", params={"batch": a_made["batch"]}, headers=b_admin)
    assert r.json()["items"] == []
    r = await cloud.client.post("/api/v1/activation-codes", json={"count": 1, "site_id": a_site}, headers=b_admin)
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    customer = await cloud.user("customer", tenant=await _slug(cloud, b_tenant))
    assert (await cloud.client.post("/api/v1/activation-codes", json={"count": 1}, headers=customer)).status_code == 403
    assert (await cloud.client.get("/api/v1/activation-codes", headers=customer)).status_code == 403
    # a code claims a device in its own tenant, whoever sends it
    r = await _activate(cloud, a_made["codes"][0], "shared-id")
    assert r.status_code == 201
    assert (await cloud.client.get(f"/api/v1/devices/{r.json()['id']}", headers=b_admin)).status_code == 404
    assert (await cloud.client.get(f"/api/v1/devices/{r.json()['id']}", headers=a_admin)).status_code == 200


async def _slug(cloud: Cloud, tenant: uuid.UUID) -> str:
    async with cloud.app.state.pulse.db.tenant(tenant) as conn:
        return str(await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", tenant))


async def test_a_revoked_code_or_batch_is_refused_like_an_unknown_one_and_only_in_its_tenant(act_cloud: Cloud) -> None:
    cloud = act_cloud
    _, admin = await cloud.tenant_user()
    _, other = await cloud.tenant_user()
    made = await _batch(cloud, admin, count=3)
    listed = (await cloud.client.get("/api/v1/activation-codes", params={"batch": made["batch"]}, headers=admin)).json()["items"]
    first = listed[0]["id"]
    # another tenant can neither see nor revoke them
    assert (await cloud.client.delete(f"/api/v1/activation-codes/{first}", headers=other)).status_code == 404
    r = await cloud.client.delete(f"/api/v1/activation-codes/batches/{made['batch']}", headers=other)
    assert r.status_code == 404 and r.json()["code"] == "api.not_found"

    # one code used, one revoked alone, the last with its batch
    assert (await _activate(cloud, made["codes"][0], "kept-1")).status_code == 201
    by_hash = {c["id"]: c for c in (await cloud.client.get("/api/v1/activation-codes", headers=admin)).json()["items"]}
    unused = [i for i, c in by_hash.items() if c["used_at"] is None]
    r = await cloud.client.delete(f"/api/v1/activation-codes/{unused[0]}", headers=admin)
    assert r.status_code == 200 and r.json() == {"revoked": 1}
    assert (await cloud.client.delete(f"/api/v1/activation-codes/{unused[0]}", headers=admin)).json() == {"revoked": 0}
    r = await cloud.client.delete(f"/api/v1/activation-codes/batches/{made['batch']}", headers=admin)
    assert r.json() == {"revoked": 1}  # the used and the revoked one are left as they are
    for code in made["codes"][1:]:
        r = await _activate(cloud, code, "after-revoke")
        assert r.status_code == 404 and r.json()["code"] == "activation.code_invalid"
    after = (await cloud.client.get("/api/v1/activation-codes", headers=admin)).json()["items"]
    assert sorted(c["revoked_at"] is not None for c in after) == [False, True, True]
    audit = (await cloud.client.get("/api/v1/audit", params={"action": "activation.revoke"}, headers=admin)).json()["items"]
    assert len(audit) == 3
