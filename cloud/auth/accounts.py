"""Local accounts: login (password -> access + refresh token), refresh (rotating), bootstrap
(create tenant / user through the audited operator path)."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from pulse.cloud.auth.credentials import new_refresh_token, sha256_hex
from pulse.cloud.auth.oidc_login import Identity
from pulse.cloud.auth.passwords import hash_password, verify_password
from pulse.cloud.auth.tokens import ROLES, Principal, SessionTokens
from pulse.cloud.db.pool import Database, audit
from pulse.cloud.errors import AuthError, ConflictError, GoneError, InvalidError
from pulse.protocol.errors import Code


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"


class Accounts:
    def __init__(self, db: Database, sessions: SessionTokens, *, refresh_ttl_s: int) -> None:
        self._db = db
        self._sessions = sessions
        self._refresh_ttl = timedelta(seconds=refresh_ttl_s)

    async def login(self, email: str, password: str) -> TokenPair:
        async with self._db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_user_by_email($1)", email)
        ok = await asyncio.to_thread(verify_password, row["password_hash"] if row else None, password)
        if row is None or not ok or row["disabled"]:
            raise AuthError(Code.AUTH_BAD_LOGIN, "the email or password is wrong, or the account is disabled")
        async with self._db.identity() as conn:
            await conn.execute("SELECT pulse_identity_signed_in($1)", row["id"])
        return await self._issue(row, family=uuid.uuid4())

    async def check_session(self, p: Principal) -> None:
        """A local access token works only while its account exists, is enabled, and was not signed
        out everywhere (or had its password reset) after the token was issued."""
        try:
            user_id = uuid.UUID(p.subject)
        except ValueError as exc:
            raise AuthError(Code.AUTH_INVALID, "the token's subject is not an account") from exc
        async with self._db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_session($1)", user_id)
        if row is None or row["disabled"]:
            raise AuthError(Code.AUTH_SESSION_REVOKED, "the account was disabled or removed; ask a tenant admin")
        if row["epoch"] != p.epoch:
            raise AuthError(Code.AUTH_SESSION_REVOKED, "this session was signed out (sign out everywhere or a new password); log in again")

    async def oidc_sign_in(self, who: Identity) -> TokenPair:
        """The account of a person the identity provider vouched for (made at the first sign-in;
        tenant and roles follow the claims at every sign-in)."""
        async with self._db.identity() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM pulse_identity_oidc_user($1, $2, $3, $4, $5)", who.subject, who.email, who.tenant_id, who.roles,
                who.display_name,
            )
        assert row is not None
        if row["outcome"] == "disabled":
            raise AuthError(Code.AUTH_OIDC_FAILED, "this account is disabled in Pulse; ask a tenant admin")
        if row["outcome"] == "no_tenant":
            raise AuthError(Code.AUTH_OIDC_FAILED, "the tenant named by your identity provider does not exist in Pulse")
        if row["outcome"] == "email_taken":
            raise AuthError(Code.AUTH_OIDC_FAILED, f"{who.email} is an account of another tenant in Pulse; ask an operator")
        if row["tenant_id"] is not None:
            async with self._db.tenant(row["tenant_id"]) as conn:
                await audit(conn, actor=f"local:{row['id']}", action="user.oidc_sign_in", target=who.email, tenant_id=row["tenant_id"],
                            detail={"subject": who.subject, "roles": who.roles})
        return await self._issue(row, family=uuid.uuid4())

    async def request_reset(self, email: str, *, expires_at: datetime, token: str) -> asyncpg.Record | None:
        """A fresh one-time link for the enabled local account with this email, or None (unknown,
        disabled, or signing in through single sign-on only). Audited in the account's tenant."""
        async with self._db.identity() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM pulse_identity_reset_request($1, $2, $3, 'forgot')", email, sha256_hex(token), expires_at
            )
        if row is not None and row["tenant_id"] is not None:
            async with self._db.tenant(row["tenant_id"]) as conn:
                await audit(conn, actor="forgot", action=f"user.{row['kind']}_link", target=row["email"], tenant_id=row["tenant_id"],
                            detail={"user": str(row["user_id"]), "requested_by": "the sign-in page"})
        return row

    async def sign_out_all(self, user_id: uuid.UUID) -> None:
        async with self._db.identity() as conn:
            await conn.execute("SELECT pulse_identity_sign_out_all($1)", user_id)

    async def link(self, token: str, now: datetime) -> tuple[str, str]:
        """(kind, email) of a usable one-time link; ``users.link_invalid`` otherwise."""
        async with self._db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_link($1)", sha256_hex(token))
        if row is None or row["used"] or row["disabled"] or row["expires_at"] <= now:
            raise GoneError(Code.USERS_LINK_INVALID, "this link is unknown, used already or expired; ask an admin for a new one")
        return row["kind"], row["email"]

    async def accept(self, token: str, password: str, now: datetime) -> TokenPair:
        """Spends an invitation or reset link: sets the password and signs the user in."""
        if len(password) < 12:
            raise InvalidError(Code.API_INVALID, "passwords are at least 12 characters")
        password_hash = await asyncio.to_thread(hash_password, password)
        async with self._db.identity() as conn:
            used = await conn.fetchrow("SELECT * FROM pulse_identity_link_use($1, $2, $3)", sha256_hex(token), password_hash, now)
            assert used is not None
            if used["outcome"] != "ok":
                raise GoneError(Code.USERS_LINK_INVALID, f"this link is {used['outcome']}; ask an admin for a new one")
            user = await conn.fetchrow("SELECT * FROM pulse_identity_user($1)", used["user_id"])
            await conn.execute("SELECT pulse_identity_signed_in($1)", used["user_id"])
        assert user is not None
        if used["tenant_id"] is not None:
            async with self._db.tenant(used["tenant_id"]) as conn:
                await audit(conn, actor=f"local:{used['user_id']}", action=f"user.{used['kind']}_accepted",
                            target=str(used["user_id"]), tenant_id=used["tenant_id"])
        return await self._issue(user, family=uuid.uuid4())

    async def refresh(self, refresh_token: str) -> TokenPair:
        async with self._db.identity() as conn:
            # committed whatever the outcome: a replay must leave its family revoked
            used = await conn.fetchrow("SELECT * FROM pulse_identity_refresh_use($1)", sha256_hex(refresh_token))
            assert used is not None
            if used["outcome"] != "ok":
                raise AuthError(Code.AUTH_REFRESH_INVALID, f"the refresh token is {used['outcome']}; log in again")
            user = await conn.fetchrow("SELECT * FROM pulse_identity_user($1)", used["user_id"])
        if user is None or user["disabled"]:
            raise AuthError(Code.AUTH_REFRESH_INVALID, "the account no longer exists or is disabled; log in again")
        return await self._issue(user, family=used["family"])

    async def _issue(self, user: asyncpg.Record, *, family: uuid.UUID) -> TokenPair:
        refresh = new_refresh_token()
        async with self._db.identity() as conn:
            epoch = await conn.fetchval("SELECT epoch FROM pulse_identity_session($1)", user["id"])
            await conn.execute(
                "SELECT pulse_identity_refresh_issue($1, $2, $3, $4, $5)",
                user["id"],
                user["tenant_id"],
                family,
                sha256_hex(refresh),
                datetime.now(UTC) + self._refresh_ttl,
            )
        access = self._sessions.issue(user_id=user["id"], tenant_id=user["tenant_id"], roles=list(user["roles"]), epoch=epoch or 0)
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=self._sessions.ttl_s)


_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


async def create_tenant(db: Database, *, slug: str, name: str, actor: str) -> uuid.UUID:
    if not _SLUG_RE.fullmatch(slug):
        raise InvalidError(Code.API_INVALID, "a tenant slug is 1-63 lower-case letters, digits or '-'")
    async with db.operator(actor=actor, action="tenant.create", target=slug, detail={"name": name}) as conn:
        try:
            tenant_id: uuid.UUID = await conn.fetchval(
                "INSERT INTO tenants (slug, name) VALUES ($1, $2) RETURNING id", slug, name
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a tenant with slug {slug!r} exists") from exc
    return tenant_id


async def create_user(
    db: Database,
    *,
    email: str,
    password: str | None,
    roles: list[str],
    tenant: str | None,
    actor: str,
    display_name: str = "",
) -> uuid.UUID:
    """``tenant`` is a tenant id or slug; None for operators."""
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise InvalidError(Code.API_INVALID, f"roles are some of: {', '.join(ROLES)}")
    operator_roles = {"operator", "operator-admin"} & set(roles)
    if tenant is None and not operator_roles:
        raise InvalidError(Code.API_INVALID, "a customer or tenant-admin belongs to a tenant (--tenant)")
    if tenant is not None and operator_roles:
        raise InvalidError(Code.API_INVALID, "operators belong to no tenant; leave out --tenant")
    if password is not None and len(password) < 12:
        raise InvalidError(Code.API_INVALID, "passwords are at least 12 characters")
    password_hash = await asyncio.to_thread(hash_password, password) if password is not None else None
    async with db.operator(actor=actor, action="user.create", target=email, detail={"roles": roles, "tenant": tenant}) as conn:
        tenant_id = None
        if tenant is not None:
            tenant_id = await conn.fetchval("SELECT id FROM tenants WHERE slug = $1 OR id::text = $1", tenant)
            if tenant_id is None:
                raise InvalidError(Code.API_INVALID, f"no tenant {tenant!r}")
        try:
            user_id: uuid.UUID = await conn.fetchval(
                "INSERT INTO users (tenant_id, email, password_hash, roles, display_name) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                tenant_id,
                email,
                password_hash,
                roles,
                display_name,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ConflictError(Code.API_CONFLICT, f"a user with email {email!r} exists") from exc
    return user_id
