"""Console sign-in through an external OpenID Connect provider: authorization code flow with PKCE
(S256), run by the cloud (a confidential or public client; no browser CORS needed at the issuer).

    /auth/oidc/start     -> 302 to the issuer's authorization endpoint; the state, nonce and PKCE
                            verifier travel in a signed, short-lived, HttpOnly cookie
    /auth/oidc/callback  -> the code is exchanged at the token endpoint (with the verifier), the ID
                            token is checked (signature by the issuer's JWKS, iss, aud = client id,
                            exp, nonce), and its claims give email, tenant and roles

Any standard issuer works (Keycloak, Entra ID, Google Workspace, Authentik): only the discovery
document, the authorization and token endpoints and the JWKS are used."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from pulse.cloud.auth.tokens import ROLES
from pulse.cloud.errors import AuthError
from pulse.protocol.errors import Code

COOKIE = "pulse_oidc"
_STATE_TTL_S = 600
_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@dataclass(frozen=True, slots=True)
class OidcClient:
    issuer: str
    client_id: str
    client_secret: str | None
    scopes: str
    tenant_claim: str
    roles_claim: str
    email_claim: str = "email"


@dataclass(frozen=True, slots=True)
class Identity:
    """What a verified ID token says about the person."""

    subject: str  # '<issuer> <sub>'
    email: str
    display_name: str
    tenant_id: uuid.UUID | None
    roles: list[str]


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _signing_key(jwks: jwt.PyJWKClient, token: str) -> Any:
    """The key the token names (``kid``); a token without one is checked against the issuer's only
    signing key (RFC 7515 lets an issuer with one key leave ``kid`` out)."""
    if jwt.get_unverified_header(token).get("kid") is None:
        keys = jwks.get_signing_keys()
        if len(keys) != 1:
            raise jwt.InvalidTokenError("the ID token names no key (kid) and the issuer has several")
        return keys[0].key
    return jwks.get_signing_key_from_jwt(token).key


def _fail(message: str) -> AuthError:
    return AuthError(Code.AUTH_OIDC_FAILED, message)


class OidcLogin:
    def __init__(self, client: OidcClient, *, cookie_secret: str, timeout_s: float = 10.0) -> None:
        self.client = client
        self._secret = cookie_secret
        self._timeout = timeout_s
        self._discovery: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = asyncio.Lock()

    async def discovery(self) -> dict[str, Any]:
        async with self._lock:
            if self._discovery is None:
                url = self.client.issuer.rstrip("/") + "/.well-known/openid-configuration"
                try:
                    async with httpx.AsyncClient(timeout=self._timeout) as http:
                        r = await http.get(url)
                        r.raise_for_status()
                        doc = r.json()
                    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                        if not isinstance(doc.get(key), str):
                            raise ValueError(f"no {key}")
                except (httpx.HTTPError, ValueError) as exc:
                    raise _fail(f"the identity provider's discovery document at {url} is unusable: {exc}") from exc
                self._discovery = doc
                self._jwks = jwt.PyJWKClient(doc["jwks_uri"], cache_jwk_set=True, lifespan=300, timeout=int(self._timeout))
            return self._discovery

    async def start(self, redirect_uri: str, *, then: str = "/") -> tuple[str, str]:
        """(the issuer's authorization URL, the cookie value to set)."""
        doc = await self.discovery()
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        now = int(time.time())
        cookie = jwt.encode(
            {"st": state, "nc": nonce, "cv": verifier, "ru": redirect_uri, "then": then, "iat": now, "exp": now + _STATE_TTL_S},
            self._secret, algorithm="HS256",
        )
        query = {
            "response_type": "code", "client_id": self.client.client_id, "redirect_uri": redirect_uri, "scope": self.client.scopes,
            "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256",
        }
        return doc["authorization_endpoint"] + "?" + urllib.parse.urlencode(query), cookie

    async def finish(self, *, code: str, state: str, cookie: str | None) -> tuple[Identity, str]:
        """Checks the state against the cookie, exchanges the code, verifies the ID token.
        Returns the identity and where in the console to go next."""
        if not cookie:
            raise _fail("the sign-in took too long or started in another browser; try again")
        try:
            saved = jwt.decode(cookie, self._secret, algorithms=["HS256"], options={"require": ["exp", "st", "nc", "cv", "ru"]})
        except jwt.InvalidTokenError as exc:
            raise _fail("the sign-in took too long or started in another browser; try again") from exc
        if not secrets.compare_digest(str(saved["st"]), state):
            raise _fail("the answer from the identity provider does not belong to this sign-in; try again")
        doc = await self.discovery()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": saved["ru"], "code_verifier": saved["cv"],
                "client_id": self.client.client_id}
        auth = httpx.BasicAuth(self.client.client_id, self.client.client_secret) if self.client.client_secret else None
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                r = await http.post(doc["token_endpoint"], data=form, auth=auth)
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise _fail(f"the identity provider's token endpoint did not answer usefully: {exc}") from exc
        if r.status_code != 200 or not isinstance(body.get("id_token"), str):
            raise _fail(f"the identity provider refused the code: {body.get('error', r.status_code)} {body.get('error_description', '')}".strip())
        claims = await self._verify(body["id_token"], nonce=str(saved["nc"]))
        return self.identity(claims), str(saved.get("then") or "/")

    async def _verify(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        assert self._jwks is not None
        jwks = self._jwks
        try:
            key = await asyncio.to_thread(_signing_key, jwks, id_token)
            claims: dict[str, Any] = jwt.decode(
                id_token, key, algorithms=_ALGS, audience=self.client.client_id, issuer=self.client.issuer,
                options={"require": ["exp", "iss", "sub", "aud"]}, leeway=30,
            )
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise _fail(f"the identity provider's ID token is not valid: {exc}") from exc
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise _fail("the ID token does not belong to this sign-in (nonce)")
        return claims

    def identity(self, claims: dict[str, Any]) -> Identity:
        """Tenant and roles from the configured claims; refused when they name no Pulse role."""
        email = claims.get(self.client.email_claim)
        if not isinstance(email, str) or "@" not in email:
            raise _fail(f"the ID token has no email in claim {self.client.email_claim!r}; ask your identity administrator")
        raw_roles = claims.get(self.client.roles_claim)
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        roles = sorted({r for r in raw_roles if r in ROLES}) if isinstance(raw_roles, list) else []
        if not roles:
            raise _fail(f"the ID token gives no Pulse role in claim {self.client.roles_claim!r} ({', '.join(ROLES)})")
        raw_tenant = claims.get(self.client.tenant_claim)
        tenant: uuid.UUID | None = None
        if raw_tenant not in (None, ""):
            try:
                tenant = uuid.UUID(str(raw_tenant))
            except ValueError as exc:
                raise _fail(f"claim {self.client.tenant_claim!r} is not a tenant id") from exc
        operator = bool({"operator", "operator-admin"} & set(roles))
        if operator and (tenant is not None or set(roles) - {"operator", "operator-admin"}):
            raise _fail("an operator account has operator roles only and no tenant claim")
        if not operator and tenant is None:
            raise _fail(f"the ID token names no tenant in claim {self.client.tenant_claim!r}")
        name = claims.get("name") if isinstance(claims.get("name"), str) else ""
        return Identity(subject=f"{self.client.issuer} {claims['sub']}", email=email, display_name=str(name)[:200],
                        tenant_id=tenant, roles=roles)
