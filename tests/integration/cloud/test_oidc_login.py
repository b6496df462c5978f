"""Console sign-in through a real OpenID provider process on loopback (oidc-provider-mock): the
authorization code flow with PKCE run by the cloud, tenant and roles from the ID token's claims, an
account made at the first sign-in and kept in step with the claims, and every way it is refused."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from oidc_provider import oidc_provider, set_user
from pydantic import SecretStr

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration

PASSWORD = "a-long-enough-password"


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with oidc_provider() as url:
        yield url


@pytest.fixture
async def app_client(cloud_settings: Settings, issuer: str) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = cloud_settings.model_copy(update={"oidc_issuer": issuer, "oidc_client_id": "pulse-console", "oidc_client_secret": SecretStr("console-secret")})
    app = create_app(settings, notify=NotifySettings(workers=False))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as client:
            yield app, client


async def _sso(client: httpx.AsyncClient, sub: str, *, then: str = "/", tamper: bool = False) -> dict[str, str]:
    """The browser's part: start, authorize at the provider as ``sub``, come back. The console URL
    it lands on, as {'path', 'sso_error' | 'access_token', 'refresh_token', 'then'}."""
    r = await client.get("/auth/oidc/start", params={"then": then})
    assert r.status_code == 302, r.text
    authorize = r.headers["location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0] and query["nonce"][0]
    async with httpx.AsyncClient() as browser:
        r = await browser.post(authorize, data={"sub": sub})
    assert r.status_code == 302, r.text
    back = urllib.parse.urlsplit(r.headers["location"])
    assert back.path == "/auth/oidc/callback"
    params = dict(urllib.parse.parse_qsl(back.query))
    if tamper:
        params["state"] = "x" + params["state"]
    r = await client.get("/auth/oidc/callback", params=params)
    assert r.status_code == 302, r.text
    landed = urllib.parse.urlsplit(r.headers["location"])
    out = {"path": landed.path, **dict(urllib.parse.parse_qsl(landed.fragment or landed.query))}
    return out


async def _tenant(app: Any) -> tuple[uuid.UUID, str]:
    slug = "t-" + uuid.uuid4().hex[:8]
    return await create_tenant(app.state.pulse.db, slug=slug, name=slug, actor="test"), slug


async def test_sso_signs_a_person_in_with_tenant_and_roles_from_the_claims(app_client: tuple[Any, httpx.AsyncClient], issuer: str) -> None:
    app, client = app_client
    tenant, _ = await _tenant(app)
    sub = f"ana-{uuid.uuid4().hex[:6]}"
    address = f"{sub}@example.com"
    set_user(issuer, sub, {"email": address, "name": "Ana Field", "pulse_tenant": str(tenant), "pulse_roles": ["tenant-admin"]})

    assert (await client.get("/auth/oidc")).json()["enabled"] is True
    landed = await _sso(client, sub, then="/devices")
    assert landed["path"] == "/app/signed-in" and landed["then"] == "/devices", landed
    headers = {"Authorization": f"Bearer {landed['access_token']}"}
    me = (await client.get("/api/v1/me", headers=headers)).json()
    assert me["tenant_id"] == str(tenant) and me["roles"] == ["tenant-admin"]
    users = (await client.get("/api/v1/users", headers=headers)).json()
    assert [(u["email"], u["display_name"], u["status"], u["created_by"]) for u in users] == [(address, "Ana Field", "active", "oidc")]
    # the refresh token works like a local one's
    r = await client.post("/auth/refresh", json={"refresh_token": landed["refresh_token"]})
    assert r.status_code == 200

    # the next sign-in follows the claims: demoted to customer, the old session ends
    set_user(issuer, sub, {"email": address, "pulse_tenant": str(tenant), "pulse_roles": "customer"})
    again = await _sso(client, sub)
    me = (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {again['access_token']}"})).json()
    assert me["roles"] == ["customer"]
    r = await client.get("/api/v1/devices", headers=headers)
    assert r.status_code == 401 and r.json()["code"] == "auth.session_revoked"


async def test_sso_refusals_come_back_to_the_sign_in_page_with_a_reason(app_client: tuple[Any, httpx.AsyncClient], issuer: str) -> None:
    app, client = app_client
    tenant, slug = await _tenant(app)
    cases: dict[str, tuple[dict[str, object], str]] = {
        "no role": ({"pulse_tenant": str(tenant), "pulse_roles": ["superuser"]}, "no Pulse role"),
        "no tenant": ({"pulse_roles": ["customer"]}, "names no tenant"),
        "unknown tenant": ({"pulse_tenant": str(uuid.uuid4()), "pulse_roles": ["customer"]}, "does not exist"),
        "bad tenant": ({"pulse_tenant": "acme", "pulse_roles": ["customer"]}, "not a tenant id"),
        "operator with tenant": ({"pulse_tenant": str(tenant), "pulse_roles": ["operator"]}, "operator roles only"),
    }
    for name, (claims, reason) in cases.items():
        sub = f"x-{uuid.uuid4().hex[:6]}"
        set_user(issuer, sub, {"email": f"{sub}@example.com", **claims})
        landed = await _sso(client, sub)
        assert landed["path"] == "/app/" and reason in landed["sso_error"], (name, landed)

    # an answer that does not belong to this sign-in (state) is refused
    sub = f"s-{uuid.uuid4().hex[:6]}"
    set_user(issuer, sub, {"email": f"{sub}@example.com", "pulse_tenant": str(tenant), "pulse_roles": ["customer"]})
    landed = await _sso(client, sub, tamper=True)
    assert "does not belong to this sign-in" in landed["sso_error"]
    # ... and one that comes back without the browser's cookie
    client.cookies.clear()
    r = await client.get("/auth/oidc/callback", params={"code": "abc", "state": "def"})
    assert "sso_error" in r.headers["location"]

    # another tenant's local account with the same email is not taken over
    other, other_slug = await _tenant(app)
    taken = f"taken-{uuid.uuid4().hex[:6]}@example.com"
    await create_user(app.state.pulse.db, email=taken, password=PASSWORD, roles=["customer"], tenant=other_slug, actor="test")
    sub = f"t-{uuid.uuid4().hex[:6]}"
    set_user(issuer, sub, {"email": taken, "pulse_tenant": str(tenant), "pulse_roles": ["tenant-admin"]})
    landed = await _sso(client, sub)
    assert "another tenant" in landed["sso_error"]
    del slug, other


async def test_a_disabled_sso_account_is_refused_and_a_same_tenant_local_account_is_linked(
    app_client: tuple[Any, httpx.AsyncClient], issuer: str
) -> None:
    app, client = app_client
    tenant, slug = await _tenant(app)
    address = f"lina-{uuid.uuid4().hex[:6]}@example.com"
    await create_user(app.state.pulse.db, email=address, password=PASSWORD, roles=["tenant-admin"], tenant=slug, actor="test")
    admin = (await client.post("/auth/login", json={"email": address, "password": PASSWORD})).json()["access_token"]
    sub = f"l-{uuid.uuid4().hex[:6]}"
    set_user(issuer, sub, {"email": address, "pulse_tenant": str(tenant), "pulse_roles": ["tenant-admin"]})
    landed = await _sso(client, sub)
    me = (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {landed['access_token']}"})).json()
    users = (await client.get("/api/v1/users", headers={"Authorization": f"Bearer {admin}"})).json()
    assert [u["id"] for u in users] == [me["subject"]]  # one account, linked

    other = f"o-{uuid.uuid4().hex[:6]}"
    set_user(issuer, other, {"email": f"{other}@example.com", "pulse_tenant": str(tenant), "pulse_roles": ["customer"]})
    first = await _sso(client, other)
    their_id = (await client.get("/api/v1/me", headers={"Authorization": f"Bearer {first['access_token']}"})).json()["subject"]
    r = await client.patch(f"/api/v1/users/{their_id}", json={"disabled": True}, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    landed = await _sso(client, other)
    assert "disabled" in landed["sso_error"]


async def test_without_a_client_id_there_is_no_sso(cloud_settings: Settings, issuer: str) -> None:
    settings = cloud_settings.model_copy(update={"oidc_issuer": issuer})
    app = create_app(settings, notify=NotifySettings(workers=False))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pulse.test") as client:
            assert (await client.get("/auth/oidc")).json()["enabled"] is False
            r = await client.get("/auth/oidc/start")
            assert r.status_code == 404 and r.json()["code"] == "api.not_found"
