"""Who is calling: session JWTs issued by Pulse, and bearer tokens from an external OIDC issuer.

The tenant id of a request comes only from here (a verified token), never from a body or URL."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from pulse.cloud.errors import AuthError
from pulse.protocol.errors import Code

ROLES = ("customer", "tenant-admin", "operator", "operator-admin")
TENANT_READ = frozenset({"customer", "tenant-admin"})
TENANT_WRITE = frozenset({"tenant-admin"})
OPERATOR = frozenset({"operator", "operator-admin"})
OPERATOR_ADMIN = frozenset({"operator-admin"})
_LOCAL_ALG = "HS256"
_OIDC_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    tenant_id: uuid.UUID | None
    roles: frozenset[str]
    via: Literal["local", "oidc"]
    epoch: int = 0
    """A local token's session epoch (``sev``): it works while the account's epoch is the same."""

    @property
    def actor(self) -> str:
        return f"{self.via}:{self.subject}"


class SessionTokens:
    """Issues and verifies Pulse's own short-lived access tokens (HS256)."""

    def __init__(self, secret: str, *, issuer: str, ttl_s: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self.ttl_s = ttl_s

    def issue(
        self, *, user_id: uuid.UUID, tenant_id: uuid.UUID | None, roles: list[str], now: float | None = None, epoch: int = 0
    ) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "tid": str(tenant_id) if tenant_id else None,
            "roles": roles,
            "typ": "access",
            "sev": epoch,
            "iat": int(now),
            "exp": int(now) + self.ttl_s,
        }
        return jwt.encode(claims, self._secret, algorithm=_LOCAL_ALG)

    def verify(self, token: str) -> Principal:
        claims = _decode(
            lambda: jwt.decode(
                token,
                self._secret,
                algorithms=[_LOCAL_ALG],
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        )
        if claims.get("typ") != "access":
            raise AuthError(Code.AUTH_INVALID, "this is not an access token")
        return Principal(
            subject=str(claims["sub"]),
            tenant_id=_tenant(claims.get("tid")),
            roles=_roles(claims.get("roles")),
            via="local",
            epoch=claims["sev"] if isinstance(claims.get("sev"), int) else 0,
        )


def _decode(fn: Any) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = fn()
    except jwt.ExpiredSignatureError as exc:
        raise AuthError(Code.AUTH_EXPIRED, "the token has expired; log in again or use your refresh token") from exc
    except jwt.PyJWKClientError as exc:
        raise AuthError(Code.AUTH_INVALID, f"the token's signing key could not be found at the issuer: {exc}") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(Code.AUTH_INVALID, f"the token is not valid: {exc}") from exc
    return claims


def _tenant(value: object) -> uuid.UUID | None:
    if value in (None, ""):
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise AuthError(Code.AUTH_INVALID, "the token's tenant is not a tenant id") from exc


def _roles(value: object) -> frozenset[str]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list):
        return frozenset()
    return frozenset(r for r in value if r in ROLES)


class OidcVerifier:
    """Verifies bearer tokens from an external issuer against its JWKS (fetched, then cached)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | None,
        jwks_url: str | None,
        tenant_claim: str,
        roles_claim: str,
        cache_s: int,
    ) -> None:
        self.issuer = issuer
        self._audience = audience
        self._jwks_url = jwks_url
        self._tenant_claim = tenant_claim
        self._roles_claim = roles_claim
        self._cache_s = cache_s
        self._client: jwt.PyJWKClient | None = None
        self._lock = asyncio.Lock()

    async def _jwks_client(self) -> jwt.PyJWKClient:
        async with self._lock:
            if self._client is None:
                url = self._jwks_url or await self._discover()
                self._client = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=self._cache_s, timeout=10)
            return self._client

    async def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(url)
                response.raise_for_status()
                jwks = response.json()["jwks_uri"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise AuthError(Code.AUTH_INVALID, f"the OIDC issuer's discovery document at {url} is unusable: {exc}") from exc
        return str(jwks)

    async def verify(self, token: str) -> Principal:
        client = await self._jwks_client()
        key = await asyncio.to_thread(lambda: _decode_key(client, token))
        options: dict[str, Any] = {"require": ["exp", "iss", "sub"], "verify_aud": self._audience is not None}
        claims = _decode(
            lambda: jwt.decode(token, key, algorithms=_OIDC_ALGS, issuer=self.issuer, audience=self._audience, options=options)
        )
        return Principal(
            subject=str(claims["sub"]),
            tenant_id=_tenant(claims.get(self._tenant_claim)),
            roles=_roles(claims.get(self._roles_claim)),
            via="oidc",
        )


def _decode_key(client: jwt.PyJWKClient, token: str) -> Any:
    try:
        return client.get_signing_key_from_jwt(token).key
    except jwt.PyJWKClientError as exc:
        raise AuthError(Code.AUTH_INVALID, f"the token's signing key is not in the issuer's key set: {exc}") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(Code.AUTH_INVALID, f"the token is not valid: {exc}") from exc


class Authenticator:
    """Routes a bearer token to the OIDC verifier (its ``iss`` is the configured issuer) or to
    Pulse's own session tokens."""

    def __init__(self, sessions: SessionTokens, oidc: OidcVerifier | None) -> None:
        self.sessions = sessions
        self.oidc = oidc

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError(Code.AUTH_MISSING, "send Authorization: Bearer <access token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(Code.AUTH_MISSING, "send Authorization: Bearer <access token>")
        token = token.strip()
        if self.oidc is not None:
            try:
                unverified = jwt.decode(token, options={"verify_signature": False})
            except jwt.InvalidTokenError as exc:
                raise AuthError(Code.AUTH_INVALID, f"the token is not valid: {exc}") from exc
            if unverified.get("iss") == self.oidc.issuer:
                return await self.oidc.verify(token)
        return self.sessions.verify(token)
