"""Users of a tenant: tenant admins manage their own (``/api/v1/users``), operators manage any
tenant's the same way (``/api/v1/operator/tenants/{tenant}/users``, audited bypass), and the
invited accept their one-time link (``/auth/links``). Every change is audited (cloud/auth/users.py).

An invitation or reset link is mailed through PULSE_MAIL_* when a relay is configured, and is
returned once to whoever made it, so an installation without mail can still hand it over."""

from __future__ import annotations

import datetime as dt
import html
import logging
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Annotated

import asyncpg
from fastapi import APIRouter, BackgroundTasks, Depends, Request, Response
from pydantic import BaseModel, Field

from pulse.cloud.api.auth import TokensOut, _out
from pulse.cloud.api.deps import Components, Operator, OperatorAdmin, Parts, Writer
from pulse.cloud.auth import users as store
from pulse.cloud.auth.accounts import Accounts
from pulse.cloud.auth.tokens import Principal
from pulse.cloud.errors import NotFoundError, RateLimitedError
from pulse.cloud.notify.model import Delivered
from pulse.cloud.notify.senders import email
from pulse.cloud.settings import Settings
from pulse.protocol.errors import Code

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/users", tags=["users"])
operator_router = APIRouter(prefix="/api/v1/operator/tenants/{tenant_id}/users", tags=["operator"])
links_router = APIRouter(prefix="/auth/links", tags=["auth"])
forgot_router = APIRouter(tags=["auth"])


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    display_name: str
    roles: list[str]
    status: str = Field(description="invited (never signed in), active or disabled")
    last_sign_in_at: dt.datetime | None
    created_at: dt.datetime
    created_by: str


class InviteIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)
    roles: list[str] = Field(default_factory=lambda: ["customer"], min_length=1, max_length=2)
    display_name: str = Field(default="", max_length=200)


class UserPatch(BaseModel):
    roles: list[str] | None = Field(default=None, min_length=1, max_length=2)
    disabled: bool | None = None
    display_name: str | None = Field(default=None, max_length=200)


class LinkOut(BaseModel):
    user: UserOut
    kind: str = Field(description="invite or reset")
    link: str = Field(description="the one-time link; shown once, Pulse keeps only a hash")
    expires_at: dt.datetime
    mailed: bool = Field(description="whether the mail relay (PULSE_MAIL_HOST) accepted the mail")
    mail_detail: str


class LinkIn(BaseModel):
    token: str = Field(min_length=10, max_length=100)


class LinkInfo(BaseModel):
    kind: str
    email: str


class AcceptIn(BaseModel):
    token: str = Field(min_length=10, max_length=100)
    password: str = Field(min_length=1, max_length=1024)


def _user(row: object) -> UserOut:
    r = dict(row)  # type: ignore[call-overload]
    status = "disabled" if r["disabled"] else "invited" if r["invited"] else "active"
    return UserOut(
        id=r["id"], email=r["email"], display_name=r["display_name"], roles=sorted(r["roles"]), status=status,
        last_sign_in_at=r["last_sign_in_at"], created_at=r["created_at"], created_by=r["created_by"],
    )


def _self_id(p: Principal) -> str | None:
    return p.subject if p.via == "local" else None


def _accounts(request: Request) -> Accounts:
    return request.app.state.accounts  # type: ignore[no-any-return]


def link_url(request: Request, token: str) -> str:
    return f"{request.app.state.notify_settings.console_url.rstrip('/')}/app/accept#{token}"


def link_message(settings: Settings, *, to: str, kind: str, url: str, tenant: str, expires_at: dt.datetime) -> EmailMessage:
    what = "You are invited to Pulse" if kind == "invite" else "Reset your Pulse password"
    action = "accept the invitation and choose a password" if kind == "invite" else "choose a new password"
    msg = EmailMessage()
    msg["Subject"] = f"[Pulse] {what} ({tenant})"
    msg["From"] = settings.mail_sender
    msg["To"] = to
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain=settings.mail_sender.rsplit("@", 1)[1])
    text = f"{what}: tenant {tenant}.\n\nOpen this link to {action}:\n{url}\n\nThe link works once, until {expires_at:%Y-%m-%d %H:%M} UTC.\n"
    msg.set_content(text)
    msg.add_alternative(
        f"<html><body><h2>{html.escape(what)}</h2><p>Tenant {html.escape(tenant)}.</p>"
        f"<p><a href=\"{html.escape(url, quote=True)}\">Open this link to {html.escape(action)}</a></p>"
        f"<p>The link works once, until {expires_at:%Y-%m-%d %H:%M} UTC.</p></body></html>",
        subtype="html",
    )
    return msg


async def _mail(request: Request, parts: Components, *, to: str, link: store.Link, tenant: str) -> tuple[bool, str]:
    s = parts.settings
    if not s.mail_host:
        return False, "no mail relay is configured (PULSE_MAIL_HOST); hand the link over yourself"
    config = email.Config(
        host=s.mail_host, port=s.mail_port, security=s.mail_security, username=s.mail_username, password=s.mail_password,
        sender=s.mail_sender, to=[to],
    )
    message = link_message(s, to=to, kind=link.kind, url=link_url(request, link.token), tenant=tenant, expires_at=link.expires_at)
    outcome = await email.submit(config, message, timeout_s=request.app.state.notify_settings.timeout_s)
    if not isinstance(outcome, Delivered):
        log.warning("the %s mail to %s was not sent: %s", link.kind, to, outcome.detail)
    return isinstance(outcome, Delivered), outcome.detail


async def _link_out(request: Request, parts: Components, user: object, link: store.Link, tenant: str) -> LinkOut:
    out = _user(user)
    mailed, detail = await _mail(request, parts, to=out.email, link=link, tenant=tenant)
    return LinkOut(user=out, kind=link.kind, link=link_url(request, link.token), expires_at=link.expires_at, mailed=mailed, mail_detail=detail)


def _expiries(parts: Components) -> tuple[dt.datetime, dt.datetime]:
    now = parts.clock()
    return now + dt.timedelta(seconds=parts.settings.invite_ttl_s), now + dt.timedelta(seconds=parts.settings.reset_ttl_s)


# --- tenant admins ----------------------------------------------------------------------------


@router.get("", response_model=list[UserOut], summary="The tenant's users (tenant admins)")
async def list_users(caller: Writer, parts: Parts) -> list[UserOut]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return [_user(r) for r in await store.list_users(conn, caller.tenant_id)]


@router.post("/invitations", status_code=201, response_model=LinkOut, summary="Invite a user by email (a one-time link)")
async def invite(body: InviteIn, caller: Writer, parts: Parts, request: Request) -> LinkOut:
    invite_at, _ = _expiries(parts)
    async with parts.db.tenant(caller.tenant_id) as conn:
        user, link = await store.invite(
            conn, caller.tenant_id, email=body.email, roles=body.roles, display_name=body.display_name, actor=caller.actor,
            expires_at=invite_at,
        )
        tenant = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", caller.tenant_id)
    return await _link_out(request, parts, user, link, tenant)


@router.patch("/{user_id}", response_model=UserOut, summary="Change a user's roles, name, or disable / enable them")
async def patch_user(user_id: uuid.UUID, body: UserPatch, caller: Writer, parts: Parts) -> UserOut:
    async with parts.db.tenant(caller.tenant_id) as conn:
        row = await store.update(
            conn, caller.tenant_id, user_id, actor=caller.actor, self_id=_self_id(caller.principal),
            roles=body.roles, disabled=body.disabled, display_name=body.display_name,
        )
    return _user(row)


@router.delete("/{user_id}", status_code=204, summary="Remove a user")
async def remove_user(user_id: uuid.UUID, caller: Writer, parts: Parts) -> Response:
    async with parts.db.tenant(caller.tenant_id) as conn:
        await store.remove(conn, caller.tenant_id, user_id, actor=caller.actor, self_id=_self_id(caller.principal))
    return Response(status_code=204)


@router.post("/{user_id}/link", status_code=201, response_model=LinkOut,
             summary="A new one-time link: the invitation again, or a password reset once the user has signed in")
async def new_link(user_id: uuid.UUID, caller: Writer, parts: Parts, request: Request) -> LinkOut:
    invite_at, reset_at = _expiries(parts)
    async with parts.db.tenant(caller.tenant_id) as conn:
        user, link = await store.new_link(
            conn, caller.tenant_id, user_id, actor=caller.actor, invite_expires_at=invite_at, reset_expires_at=reset_at
        )
        tenant = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", caller.tenant_id)
    return await _link_out(request, parts, user, link, tenant)


# --- operators: the same for any tenant (every request audited) --------------------------------


async def _tenant_name(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> str:
    name = await conn.fetchval("SELECT name FROM tenants WHERE id = $1", tenant_id)
    if name is None:
        raise NotFoundError("tenant")
    return str(name)


@operator_router.get("", response_model=list[UserOut], summary="A tenant's users (operators; audited)")
async def op_list_users(tenant_id: uuid.UUID, p: Operator, parts: Parts) -> list[UserOut]:
    async with parts.db.operator(actor=p.actor, action="users.list", target=str(tenant_id), tenant_id=tenant_id) as conn:
        await _tenant_name(conn, tenant_id)
        return [_user(r) for r in await store.list_users(conn, tenant_id)]


@operator_router.post("/invitations", status_code=201, response_model=LinkOut,
                      summary="Invite a user of a tenant, e.g. its first admin (operator admins; audited)")
async def op_invite(tenant_id: uuid.UUID, body: InviteIn, p: OperatorAdmin, parts: Parts, request: Request) -> LinkOut:
    invite_at, _ = _expiries(parts)
    async with parts.db.operator(actor=p.actor, action="users.invite", target=body.email, tenant_id=tenant_id) as conn:
        tenant = await _tenant_name(conn, tenant_id)
        user, link = await store.invite(
            conn, tenant_id, email=body.email, roles=body.roles, display_name=body.display_name, actor=p.actor, expires_at=invite_at
        )
    return await _link_out(request, parts, user, link, tenant)


@operator_router.patch("/{user_id}", response_model=UserOut, summary="Change a tenant's user (operator admins; audited)")
async def op_patch_user(tenant_id: uuid.UUID, user_id: uuid.UUID, body: UserPatch, p: OperatorAdmin, parts: Parts) -> UserOut:
    async with parts.db.operator(actor=p.actor, action="users.update", target=str(user_id), tenant_id=tenant_id) as conn:
        await _tenant_name(conn, tenant_id)
        row = await store.update(
            conn, tenant_id, user_id, actor=p.actor, self_id=None, roles=body.roles, disabled=body.disabled,
            display_name=body.display_name,
        )
    return _user(row)


@operator_router.delete("/{user_id}", status_code=204, summary="Remove a tenant's user (operator admins; audited)")
async def op_remove_user(tenant_id: uuid.UUID, user_id: uuid.UUID, p: OperatorAdmin, parts: Parts) -> Response:
    async with parts.db.operator(actor=p.actor, action="users.remove", target=str(user_id), tenant_id=tenant_id) as conn:
        await _tenant_name(conn, tenant_id)
        await store.remove(conn, tenant_id, user_id, actor=p.actor, self_id=None)
    return Response(status_code=204)


@operator_router.post("/{user_id}/link", status_code=201, response_model=LinkOut,
                      summary="A new invitation or reset link for a tenant's user (operator admins; audited)")
async def op_new_link(tenant_id: uuid.UUID, user_id: uuid.UUID, p: OperatorAdmin, parts: Parts, request: Request) -> LinkOut:
    invite_at, reset_at = _expiries(parts)
    async with parts.db.operator(actor=p.actor, action="users.link", target=str(user_id), tenant_id=tenant_id) as conn:
        tenant = await _tenant_name(conn, tenant_id)
        user, link = await store.new_link(conn, tenant_id, user_id, actor=p.actor, invite_expires_at=invite_at, reset_expires_at=reset_at)
    return await _link_out(request, parts, user, link, tenant)


# --- the invited: look at and spend a one-time link (no account yet: the link is the credential) --


@links_router.post("/inspect", response_model=LinkInfo, summary="What a one-time link is for (410 users.link_invalid if unusable)")
async def link_info(body: LinkIn, parts: Parts, accounts: Annotated[Accounts, Depends(_accounts)]) -> LinkInfo:
    kind, address = await accounts.link(body.token, parts.clock())
    return LinkInfo(kind=kind, email=address)


@links_router.post("/accept", response_model=TokensOut, summary="Spend a one-time link: set the password and sign in")
async def accept(body: AcceptIn, parts: Parts, accounts: Annotated[Accounts, Depends(_accounts)]) -> TokensOut:
    return _out(await accounts.accept(body.token, body.password, parts.clock()))


class ForgotIn(BaseModel):
    email: str = Field(min_length=3, max_length=320)


class ForgotOut(BaseModel):
    message: str


@forgot_router.post(
    "/auth/forgot", status_code=202, response_model=ForgotOut,
    summary="Forgot password: a reset link by mail (the answer is the same whether the account exists)",
    responses={429: {"description": "users.rate_limited"}},
)
async def forgot(body: ForgotIn, request: Request, parts: Parts, background: BackgroundTasks,
                 accounts: Annotated[Accounts, Depends(_accounts)]) -> ForgotOut:
    if parts.forgot_limiter is not None:
        source = request.client.host if request.client else "unknown"
        decision = parts.forgot_limiter.take(source, 1, parts.monotonic())
        if not decision.allowed:
            raise RateLimitedError(f"too many requests from {source}; retry in {decision.retry_after_s} s",
                                   retry_after_s=decision.retry_after_s, code=Code.USERS_RATE_LIMITED)
    if not parts.settings.mail_host:
        return ForgotOut(message="This installation sends no mail: ask a tenant admin for a password-reset link.")
    token = store.new_link_token()
    expires_at = parts.clock() + dt.timedelta(seconds=parts.settings.reset_ttl_s)
    row = await accounts.request_reset(body.email.strip(), expires_at=expires_at, token=token)
    if row is not None:  # mailed after the answer, so the answer takes as long whether or not the account exists
        link = store.Link(token, row["kind"], expires_at)
        background.add_task(_mail, request, parts, to=row["email"], link=link, tenant=row["tenant_name"])
    return ForgotOut(message="If an account with this email can sign in with a password, a link to set a new one is on its way.")
