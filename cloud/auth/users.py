"""Tenant users: invite, change roles, disable, remove, reset a password (issue 20).

Every function takes a connection already inside a transaction (a tenant-admin's RLS-bound one or
an operator's audited bypass one) and the tenant id, and names the tenant in every statement, so
both paths run the same SQL. Every change writes an audit row in the same transaction.

One-time links (invitations and resets) carry 256 random bits; only their SHA-256 is stored. The
link itself goes to the invitee by mail and, once, to whoever made it (so an installation without a
mail relay can still hand it over)."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

import asyncpg

from pulse.cloud.auth.credentials import sha256_hex
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import ConflictError, InvalidError, NotFoundError
from pulse.protocol.errors import Code

TENANT_ROLES = ("customer", "tenant-admin")
LinkKind = Literal["invite", "reset"]
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
# who invited: their email when the app can see their account (same tenant, or any for operators)
USER_COLUMNS = (
    "u.id, u.email, u.display_name, u.roles, u.disabled, u.last_sign_in_at, u.created_at,"
    " coalesce(c.email, u.created_by) AS created_by, (u.password_hash IS NULL AND u.last_sign_in_at IS NULL) AS invited"
)
USERS = "users u LEFT JOIN users c ON u.created_by = 'local:' || c.id::text"


def new_link_token() -> str:
    return "pul_" + secrets.token_urlsafe(32)


def check_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value) or len(value) > 320:
        raise InvalidError(Code.API_INVALID, f"{value!r} is not an email address")
    return value


def check_roles(roles: list[str]) -> list[str]:
    bad = [r for r in roles if r not in TENANT_ROLES]
    if bad or not roles:
        raise InvalidError(Code.API_INVALID, f"a tenant user's roles are some of: {', '.join(TENANT_ROLES)}")
    return sorted(set(roles))


@dataclass(frozen=True, slots=True)
class Link:
    token: str
    kind: LinkKind
    expires_at: dt.datetime


async def list_users(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> list[asyncpg.Record]:
    return list(await conn.fetch(f"SELECT {USER_COLUMNS} FROM {USERS} WHERE u.tenant_id = $1 ORDER BY lower(u.email)", tenant_id))


async def get_user(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM {USERS} WHERE u.tenant_id = $1 AND u.id = $2", tenant_id, user_id)
    if row is None:
        raise NotFoundError("user")
    return row


async def invite(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    email: str,
    roles: list[str],
    display_name: str,
    actor: str,
    expires_at: dt.datetime,
) -> tuple[asyncpg.Record, Link]:
    email, roles = check_email(email), check_roles(roles)
    try:
        async with conn.transaction():  # a savepoint: the duplicate is reported, the transaction lives on
            user_id = await conn.fetchval(
                "INSERT INTO users (tenant_id, email, roles, display_name, created_by) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                tenant_id, email, roles, display_name, actor,
            )
    except asyncpg.UniqueViolationError as exc:
        raise ConflictError(Code.API_CONFLICT, f"a user with email {email!r} exists (in this or another tenant)") from exc
    link = await _new_link(conn, tenant_id, user_id, "invite", actor=actor, expires_at=expires_at)
    await audit(conn, actor=actor, action="user.invite", target=email, tenant_id=tenant_id,
                detail={"user": str(user_id), "roles": roles, "expires_at": expires_at.isoformat()})
    return await get_user(conn, tenant_id, user_id), link


async def new_link(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: str, invite_expires_at: dt.datetime,
    reset_expires_at: dt.datetime,
) -> tuple[asyncpg.Record, Link]:
    """A fresh link for the user: a new invitation while they never accepted one, else a password
    reset. Earlier open links of the user stop working."""
    user = await get_user(conn, tenant_id, user_id)
    if user["disabled"]:
        raise ConflictError(Code.API_CONFLICT, "the account is disabled; enable it first")
    kind: LinkKind = "invite" if user["invited"] else "reset"
    await conn.execute("UPDATE user_links SET used_at = now() WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL", tenant_id, user_id)
    link = await _new_link(conn, tenant_id, user_id, kind, actor=actor,
                           expires_at=invite_expires_at if kind == "invite" else reset_expires_at)
    await audit(conn, actor=actor, action=f"user.{kind}_link", target=user["email"], tenant_id=tenant_id,
                detail={"user": str(user_id), "expires_at": link.expires_at.isoformat()})
    return user, link


async def _new_link(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, kind: LinkKind, *, actor: str, expires_at: dt.datetime
) -> Link:
    token = new_link_token()
    await conn.execute(
        "INSERT INTO user_links (user_id, tenant_id, kind, token_hash, expires_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        user_id, tenant_id, kind, sha256_hex(token), expires_at, actor,
    )
    return Link(token, kind, expires_at)


async def update(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    actor: str,
    self_id: str | None,
    roles: list[str] | None = None,
    disabled: bool | None = None,
    display_name: str | None = None,
) -> asyncpg.Record:
    """``self_id``: the caller's own user id, when the caller is a tenant user (nobody disables or
    demotes themselves)."""
    before = await get_user(conn, tenant_id, user_id)
    is_self = self_id == str(user_id)
    changes: dict[str, object] = {}
    if roles is not None:
        roles = check_roles(roles)
        if is_self and "tenant-admin" not in roles:
            raise ConflictError(Code.USERS_SELF, "you cannot take the tenant-admin role from yourself; ask another admin")
        if roles != sorted(before["roles"]):
            changes["roles"] = roles
    if disabled is not None and disabled != before["disabled"]:
        if is_self and disabled:
            raise ConflictError(Code.USERS_SELF, "you cannot disable your own account; ask another admin")
        changes["disabled"] = disabled
    if display_name is not None and display_name != before["display_name"]:
        changes["display_name"] = display_name
    if not changes:
        return before
    await conn.execute(
        "UPDATE users SET roles = coalesce($3, roles), disabled = coalesce($4, disabled), display_name = coalesce($5, display_name),"
        " session_epoch = session_epoch + CASE WHEN $4 OR $3::text[] IS NOT NULL THEN 1 ELSE 0 END WHERE tenant_id = $1 AND id = $2",
        tenant_id, user_id, changes.get("roles"), changes.get("disabled"), changes.get("display_name"),
    )
    # the account's access tokens stop at once (new epoch); a disabled one's refresh tokens stop too,
    # while a user whose roles changed refreshes into a token with the new roles without signing in
    if changes.get("disabled") is True:
        await conn.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            tenant_id, user_id,
        )
        await conn.execute("UPDATE user_links SET used_at = now() WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL", tenant_id, user_id)
    await _keep_an_admin(conn, tenant_id, before)
    action = "user.disable" if changes.get("disabled") is True else "user.enable" if changes.get("disabled") is False else "user.update"
    await audit(conn, actor=actor, action=action, target=before["email"], tenant_id=tenant_id,
                detail={"user": str(user_id), "before": {k: _plain(before[k]) for k in changes}, "after": changes})
    return await get_user(conn, tenant_id, user_id)


async def remove(conn: asyncpg.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID, *, actor: str, self_id: str | None) -> None:
    before = await get_user(conn, tenant_id, user_id)
    if self_id == str(user_id):
        raise ConflictError(Code.USERS_SELF, "you cannot remove your own account; ask another admin")
    await conn.execute("DELETE FROM users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id)
    await _keep_an_admin(conn, tenant_id, before)
    await audit(conn, actor=actor, action="user.remove", target=before["email"], tenant_id=tenant_id,
                detail={"user": str(user_id), "roles": list(before["roles"])})


async def _keep_an_admin(conn: asyncpg.Connection, tenant_id: uuid.UUID, before: asyncpg.Record) -> None:
    """Called after a change to ``before``'s account: if it was an enabled tenant admin, another must remain."""
    if before["disabled"] or "tenant-admin" not in before["roles"]:
        return
    admins = await conn.fetchval(
        "SELECT count(*) FROM users WHERE tenant_id = $1 AND NOT disabled AND 'tenant-admin' = ANY (roles)", tenant_id
    )
    if admins == 0:
        raise ConflictError(Code.USERS_LAST_ADMIN, "this would leave the tenant without an enabled tenant admin; nothing was changed")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, list | tuple) else value
