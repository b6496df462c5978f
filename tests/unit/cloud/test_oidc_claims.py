"""How an ID token's claims become a Pulse identity (tenant and roles from the configured claims),
and the PKCE pair (RFC 7636, S256)."""

from __future__ import annotations

import base64
import hashlib
import uuid

import pytest

from pulse.cloud.auth.oidc_login import OidcClient, OidcLogin, pkce_pair
from pulse.cloud.errors import AuthError

pytestmark = pytest.mark.unit

TENANT = uuid.UUID("6f1c8a52-3f0e-4b6c-9a51-1c2d3e4f5a6b")
LOGIN = OidcLogin(
    OidcClient(issuer="https://sso.example.com/realms/pulse", client_id="pulse-console", client_secret=None,
               scopes="openid email", tenant_claim="org", roles_claim="groups"),
    cookie_secret="x" * 40,
)


@pytest.mark.parametrize(
    ("claims", "tenant", "roles"),
    [
        ({"org": str(TENANT), "groups": ["tenant-admin", "staff"]}, TENANT, ["tenant-admin"]),
        ({"org": str(TENANT), "groups": "customer tenant-admin"}, TENANT, ["customer", "tenant-admin"]),
        ({"groups": ["operator"]}, None, ["operator"]),
        ({"org": "", "groups": ["operator-admin", "operator"]}, None, ["operator", "operator-admin"]),
    ],
)
def test_tenant_and_roles_come_from_the_configured_claims(claims: dict[str, object], tenant: uuid.UUID | None, roles: list[str]) -> None:
    who = LOGIN.identity({"sub": "u1", "email": "ana@example.com", "name": "Ana", **claims})
    assert (who.tenant_id, who.roles, who.email, who.display_name) == (tenant, roles, "ana@example.com", "Ana")
    assert who.subject == "https://sso.example.com/realms/pulse u1"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"org": str(TENANT), "groups": ["tenant-admin"]}, "no email"),
        ({"email": "a@example.com", "org": str(TENANT), "groups": ["staff"]}, "no Pulse role"),
        ({"email": "a@example.com", "org": str(TENANT)}, "no Pulse role"),
        ({"email": "a@example.com", "groups": ["customer"]}, "names no tenant"),
        ({"email": "a@example.com", "org": "acme", "groups": ["customer"]}, "not a tenant id"),
        ({"email": "a@example.com", "org": str(TENANT), "groups": ["operator"]}, "operator roles only"),
        ({"email": "a@example.com", "groups": ["operator", "customer"]}, "operator roles only"),
    ],
)
def test_claims_without_what_pulse_needs_are_refused_with_a_reason(claims: dict[str, object], reason: str) -> None:
    with pytest.raises(AuthError) as refused:
        LOGIN.identity({"sub": "u1", **claims})
    assert refused.value.code == "auth.oidc_failed" and reason in refused.value.message


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert pkce_pair()[0] != verifier
