"""Who may call: local sessions (login, refresh rotation), refused tokens, and bearer tokens from an
external OIDC issuer validated against its JWKS (served by the test on a real loopback server)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pulse.cloud.auth.accounts import create_user
from pulse.cloud.auth.tokens import SessionTokens
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration

Cloud = Any  # the `cloud` fixture (conftest.py)


def _session_token(settings: Settings, *, secret: str | None = None, now: float | None = None, tenant: uuid.UUID) -> str:
    tokens = SessionTokens(secret or settings.jwt_secret.get_secret_value(), issuer=settings.jwt_issuer, ttl_s=60)
    return tokens.issue(user_id=uuid.uuid4(), tenant_id=tenant, roles=["tenant-admin"], now=now)


async def test_login_with_wrong_password_or_unknown_email_is_refused_alike(cloud: Cloud) -> None:
    await cloud.tenant_user()
    r1 = await cloud.client.post("/auth/login", json={"email": "nobody@example.com", "password": "whatever-password"})
    assert r1.status_code == 401 and r1.json()["code"] == "auth.bad_login"


async def test_missing_malformed_expired_and_wrongly_signed_tokens_are_refused(cloud: Cloud, cloud_settings: Settings) -> None:
    tenant, good = await cloud.tenant_user()
    assert (await cloud.client.get("/api/v1/devices", headers=good)).status_code == 200

    r = await cloud.client.get("/api/v1/devices")
    assert r.status_code == 401 and r.json()["code"] == "auth.missing"
    assert r.headers["www-authenticate"] == "Bearer"

    cases = {
        "garbage": ("Bearer not-a-jwt", "auth.invalid"),
        "expired": (f"Bearer {_session_token(cloud_settings, now=time.time() - 3600, tenant=tenant)}", "auth.expired"),
        "wrong key": (
            f"Bearer {_session_token(cloud_settings, secret='another-secret-' + 'x' * 32, tenant=tenant)}",
            "auth.invalid",
        ),
        "alg none": (
            "Bearer "
            + jwt.encode(
                {
                    "iss": "pulse",
                    "sub": "x",
                    "tid": str(tenant),
                    "roles": ["tenant-admin"],
                    "typ": "access",
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 60,
                },
                None,
                algorithm="none",
            ),
            "auth.invalid",
        ),
        "basic scheme": ("Basic dXNlcjpwYXNz", "auth.missing"),
    }
    for name, (header, code) in cases.items():
        r = await cloud.client.get("/api/v1/devices", headers={"Authorization": header})
        assert r.status_code == 401, name
        assert r.json()["code"] == code, name


async def test_refresh_token_rotates_and_a_replayed_one_revokes_the_family(cloud: Cloud) -> None:
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    tenant_id, _ = await cloud.tenant_user()
    async with cloud.app.state.pulse.db.operator(actor="test", action="lookup") as conn:
        slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = $1", tenant_id)
    await create_user(
        cloud.app.state.pulse.db, email=email, password="a-long-password-1", roles=["customer"], tenant=slug, actor="t"
    )
    first = (await cloud.client.post("/auth/login", json={"email": email, "password": "a-long-password-1"})).json()

    second = await cloud.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    pair = second.json()
    assert pair["refresh_token"] != first["refresh_token"]
    me = await cloud.client.get("/api/v1/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.json()["tenant_id"] == str(tenant_id) and me.json()["roles"] == ["customer"]

    # customers read but do not change
    r = await cloud.client.post("/api/v1/sites", json={"name": "s"}, headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"

    replay = await cloud.client.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401 and replay.json()["code"] == "auth.refresh_invalid"
    # the replay revoked the whole family, including the legitimately rotated token
    after = await cloud.client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert after.status_code == 401 and after.json()["code"] == "auth.refresh_invalid"
    unknown = await cloud.client.post("/auth/refresh", json={"refresh_token": "prt_unknown"})
    assert unknown.status_code == 401


class _Issuer:
    """A tiny OIDC issuer on loopback: discovery document and JWKS."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "test-key-1"
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        self.jwks = {"keys": [jwk]}
        self.requests: list[str] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.requests.append(self.path)
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/keys"}
                elif self.path == "/keys":
                    body = issuer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def token(self, claims: dict[str, object], *, key: Any = None, kid: str | None = None) -> str:
        now = int(time.time())
        full = {"iss": self.url, "aud": "pulse-test", "sub": "user-1", "iat": now, "exp": now + 300, **claims}
        return jwt.encode(full, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    i = _Issuer()
    i.thread.start()
    try:
        yield i
    finally:
        i.server.shutdown()
        i.server.server_close()


async def test_oidc_token_validated_against_the_issuers_jwks_is_accepted(
    cloud: Cloud, cloud_settings: Settings, issuer: _Issuer, start_cloud: Any
) -> None:
    tenant_id, admin = await cloud.tenant_user()
    await cloud.client.post("/api/v1/devices", json={"device_id": "oidc-visible"}, headers=admin)
    other_tenant, other = await cloud.tenant_user()
    await cloud.client.post("/api/v1/devices", json={"device_id": "oidc-hidden"}, headers=other)

    settings = cloud_settings.model_copy(update={"oidc_issuer": issuer.url, "oidc_audience": "pulse-test"})
    async with start_cloud(settings) as oidc_cloud:
        client = oidc_cloud.client
        good = issuer.token({"pulse_tenant": str(tenant_id), "pulse_roles": ["customer"]})
        r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200, r.text
        assert r.json() == {"subject": "user-1", "tenant_id": str(tenant_id), "roles": ["customer"], "via": "oidc"}
        r = await client.get("/api/v1/devices", headers={"Authorization": f"Bearer {good}"})
        assert [d["device_id"] for d in r.json()["items"]] == ["oidc-visible"]

        # the key set is cached: a second token needs no new fetch
        fetches = issuer.requests.count("/keys")
        r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {issuer.token({'pulse_tenant': str(tenant_id)})}"})
        assert r.status_code == 200 and issuer.requests.count("/keys") == fetches

        forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused = {
            "signed by another key": issuer.token({"pulse_tenant": str(tenant_id)}, key=forged_key),
            "unknown key id": issuer.token({"pulse_tenant": str(tenant_id)}, kid="nope"),
            "wrong audience": issuer.token({"pulse_tenant": str(tenant_id), "aud": "someone-else"}),
            "expired": issuer.token({"pulse_tenant": str(tenant_id), "exp": int(time.time()) - 600}),
        }
        for name, token in refused.items():
            r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, name
            assert r.json()["code"] in ("auth.invalid", "auth.expired"), name
        # an unknown key id re-fetched the key set once; more made-up ids do not make Pulse fetch again
        # (PyJWKClient's refresh cooldown, pyjwt >= 2.15)
        fetches = issuer.requests.count("/keys")
        for i in range(3):
            r = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {issuer.token({}, kid=f'made-up-{i}')}"})
            assert r.status_code == 401
        assert issuer.requests.count("/keys") == fetches

        # local sessions keep working next to OIDC
        r = await client.get("/api/v1/devices", headers=other)
        assert [d["device_id"] for d in r.json()["items"]] == ["oidc-hidden"]
    assert other_tenant != tenant_id
