"""Who may act on alerts (``/api/v1/permissions``), and acting from where people are paged.

Inbound routes (no Pulse session: each request proves itself with the channel's secret):
``POST /hooks/v1/pagerduty/{channel_id}`` (PagerDuty webhook v3), ``POST /hooks/v1/slack/{channel_id}``
(Slack interactivity), ``GET|POST /hooks/v1/ack/{token}`` (the signed link in an email). A refused
request changes nothing and answers a coded error (``ack.*``, docs/protocol.md)."""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Mapping
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from pulse.cloud.alerts import actions
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import CloudError, TooLargeError
from pulse.cloud.notify import inbound, store
from pulse.cloud.notify.inbound import ExternalAction, Refused
from pulse.cloud.web import read_limited
from pulse.protocol.errors import Code

permissions_router = APIRouter(prefix="/api/v1/permissions", tags=["permissions"])
hooks_router = APIRouter(prefix="/hooks/v1", tags=["inbound acknowledgements"])
MAX_BODY = 256 * 1024


class PermissionOut(BaseModel):
    permission: str
    roles: list[str] = Field(description="roles that hold it: customer, tenant-admin, external (a person PagerDuty or Slack names who is not a user here)")


class PermissionIn(BaseModel):
    roles: list[str] = Field(max_length=3, description="tenant-admin is always kept")


def _out(perms: dict[actions.Permission, frozenset[str]]) -> list[dict[str, Any]]:
    return [{"permission": p, "roles": sorted(perms[p])} for p in actions.PERMISSIONS]


@permissions_router.get("", summary="Who may acknowledge and close alerts in this tenant", response_model=list[PermissionOut])
async def list_permissions(caller: Reader, parts: Parts) -> list[dict[str, Any]]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        return _out(await actions.permissions(conn))


@permissions_router.put("/{permission}", summary="Set which roles hold a permission (tenant admins)", response_model=PermissionOut)
async def set_permission(permission: actions.Permission, body: PermissionIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        roles = await actions.set_permission(conn, permission, body.roles, by=caller.actor)
        await audit(conn, actor=caller.actor, action="permission.set", target=permission, tenant_id=caller.tenant_id, detail={"roles": sorted(roles)})
    return {"permission": permission, "roles": sorted(roles)}


# --- inbound: PagerDuty, Slack, Teams ------------------------------------------------------------------


class InboundOut(BaseModel):
    result: Literal["acknowledged", "closed", "unchanged", "ignored"] = Field(
        description="unchanged: the alert was already in that state (a repeated delivery); ignored: an event Pulse does not act on"
    )
    alert_id: int | None = None


def _too_large(size: int | None) -> TooLargeError:
    return TooLargeError(Code.ACK_BAD_PAYLOAD, f"the body is over {MAX_BODY} bytes", size=size)


async def _channel(parts: Parts, channel_id: uuid.UUID, kind: str, secret_field: str) -> tuple[uuid.UUID, dict[str, Any], str]:
    """(tenant, stored config, inbound secret) of an enabled channel of ``kind`` with its secret set."""
    async with parts.db.identity() as conn:
        row = await conn.fetchrow("SELECT * FROM pulse_inbound_channel($1)", channel_id)
    config: dict[str, Any] = json.loads(row["config"]) if row is not None else {}
    secret = config.get(secret_field)
    if row is None or row["kind"] != kind or not row["enabled"] or not isinstance(secret, str):
        raise Refused(Code.ACK_NOT_CONFIGURED, f"no enabled {kind} channel with a {secret_field} at this URL", channel_id=str(channel_id))
    return row["tenant_id"], config, secret


async def _external_actor(conn: asyncpg.Connection, via: str, action: ExternalAction, users: Mapping[str, str]) -> actions.Actor:
    """The tenant's user the channel's ``users`` map names for this provider user, else an external person."""
    detail: dict[str, object] = {"external_user": action.user_id, "external_name": action.user_name, "event_id": action.event_id}
    email = users.get(action.user_id) if action.user_id else None
    if email:
        row = await conn.fetchrow("SELECT id, roles, disabled FROM users WHERE lower(email) = lower($1)", email)
        if row is not None and not row["disabled"]:
            return actions.Actor(f"local:{row['id']}", frozenset(row["roles"]), via, detail)
    return actions.Actor(f"{via}:{action.user_name}"[:200], frozenset({"external"}), via, detail)


async def _tenant_alert(conn: asyncpg.Connection, ref: str) -> int:
    alert_id = await conn.fetchval("SELECT id FROM alerts WHERE id = $1", int(ref))
    if alert_id is None:
        raise Refused(Code.ACK_UNKNOWN_ALERT, "no such alert in this channel's tenant", alert_id=ref)
    return int(alert_id)


async def _perform(conn: asyncpg.Connection, tenant: uuid.UUID, alert_id: int, action: ExternalAction, actor: actions.Actor) -> dict[str, Any]:
    [row], changed = await actions.act(conn, [alert_id], action.action, actor)
    if not changed:
        return {"result": "unchanged", "alert_id": alert_id}
    verb = "acknowledged" if action.action == "ack" else "closed"
    await audit(conn, actor=actor.name, action=f"alert.{action.action}", target=str(alert_id), tenant_id=tenant, detail={"via": actor.via, **actor.detail})
    return {"result": verb, "alert_id": row["id"]}


@hooks_router.post(
    "/pagerduty/{channel_id}",
    summary="PagerDuty webhook v3: incident.acknowledged / incident.resolved acknowledge / close the alert",
    response_model=InboundOut,
)
async def pagerduty_hook(channel_id: uuid.UUID, request: Request, parts: Parts) -> dict[str, Any]:
    body = await read_limited(request, MAX_BODY, _too_large)
    tenant, config, secret = await _channel(parts, channel_id, "pagerduty", "webhook_secret")
    inbound.verify_pagerduty(secret, body, request.headers.get("x-pagerduty-signature"))
    action = inbound.parse_pagerduty(body)
    if action is None or action.ref.startswith("pulse-test-"):  # a channel test's own incident: no alert behind it
        return {"result": "ignored"}
    async with parts.db.tenant(tenant) as conn:
        alert_id = await store.alert_of_incident(conn, channel_id, action.ref)
        if alert_id is None:
            raise Refused(Code.ACK_UNKNOWN_ALERT, "no alert of this channel's tenant was paged with this incident_key", incident_key=action.ref)
        actor = await _external_actor(conn, "pagerduty", action, config.get("users") or {})
        return await _perform(conn, tenant, alert_id, action, actor)


@hooks_router.post(
    "/slack/{channel_id}",
    summary="Slack interactivity: the Acknowledge button of a Pulse message acknowledges the alert",
    response_model=InboundOut,
)
async def slack_hook(channel_id: uuid.UUID, request: Request, parts: Parts) -> dict[str, Any]:
    body = await read_limited(request, MAX_BODY, _too_large)
    tenant, config, secret = await _channel(parts, channel_id, "slack", "signing_secret")
    headers = request.headers
    inbound.verify_slack(secret, body, headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature"), parts.clock())
    action = inbound.parse_slack(body)
    if action is None:
        return {"result": "ignored"}
    async with parts.db.tenant(tenant) as conn:
        alert_id = await _tenant_alert(conn, action.ref)
        actor = await _external_actor(conn, "slack", action, config.get("users") or {})
        return await _perform(conn, tenant, alert_id, action, actor)


@hooks_router.post(
    "/teams/{channel_id}",
    summary="A Teams workflow forwards an Acknowledge (or close) response: acts on the alert as the responder",
    response_model=InboundOut,
)
async def teams_hook(channel_id: uuid.UUID, request: Request, parts: Parts) -> dict[str, Any]:
    body = await read_limited(request, MAX_BODY, _too_large)
    tenant, _, secret = await _channel(parts, channel_id, "teams", "action_secret")
    inbound.verify_shared_secret(secret, request.headers.get("x-pulse-secret"))
    action = inbound.parse_teams(body)
    async with parts.db.tenant(tenant) as conn:
        alert_id = await _tenant_alert(conn, action.ref)
        actor = await _external_actor(conn, "teams", action, {action.user_id: action.user_id})
        return await _perform(conn, tenant, alert_id, action, actor)


# --- email links ---------------------------------------------------------------------------------
# GET shows what the link would do and a button; only the POST acts, so mail scanners and link
# previews that fetch the URL acknowledge nothing.


def _page(title: str, text: str, *, status: int = 200, form: str | None = None, code: str | None = None) -> HTMLResponse:
    button = f'<form method="post" action="{html.escape(form, quote=True)}"><button type="submit">Acknowledge</button></form>' if form else ""
    coded = f"<p><code>{html.escape(code)}</code></p>" if code else ""
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">"
        f"<title>Pulse: {html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{coded}{button}</body></html>",
        status_code=status,
        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _refused_page(exc: CloudError) -> HTMLResponse:
    return _page("This link does not work", exc.message, status=exc.status, code=str(exc.code))


async def _link_alert(parts: Parts, token: str) -> tuple[inbound.LinkClaim, uuid.UUID]:
    claim = inbound.verify_link(inbound.link_key(parts.settings.jwt_secret.get_secret_value()), token, parts.clock())
    async with parts.db.identity() as conn:
        tenant = await conn.fetchval("SELECT pulse_inbound_tenant($1)", claim.tenant)
    if tenant is None:
        raise Refused(Code.ACK_UNKNOWN_ALERT, "the tenant of this link no longer exists")
    return claim, tenant


async def _alert_row(conn: asyncpg.Connection, alert_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT id, device_id, rule_id, severity, state FROM alerts WHERE id = $1", alert_id)
    if row is None:
        raise Refused(Code.ACK_UNKNOWN_ALERT, "the alert of this link no longer exists")
    return row


@hooks_router.get("/ack/{token}", summary="An email's acknowledge link: a page that asks to confirm (acts on nothing)", response_class=HTMLResponse)
async def ack_link_page(token: str, parts: Parts) -> HTMLResponse:
    try:
        claim, tenant = await _link_alert(parts, token)
        async with parts.db.tenant(tenant) as conn:
            row = await _alert_row(conn, claim.alert_id)
    except CloudError as exc:
        return _refused_page(exc)
    what = f"Alert {row['id']}: {row['severity']} {row['rule_id']} on {row['device_id']}, now {row['state']}."
    if row["state"] != "open":
        return _page("Nothing to acknowledge", what)
    return _page("Acknowledge this alert?", f"{what} You acknowledge it as {claim.recipient}.", form=f"/hooks/v1/ack/{token}")


@hooks_router.post("/ack/{token}", summary="An email's acknowledge link, confirmed: acknowledges the alert as the recipient", response_class=HTMLResponse)
async def ack_link(token: str, parts: Parts) -> HTMLResponse:
    try:
        claim, tenant = await _link_alert(parts, token)
        async with parts.db.tenant(tenant) as conn:
            row = await _alert_row(conn, claim.alert_id)
            action = ExternalAction("ack", str(row["id"]), claim.recipient, claim.recipient, "")
            actor = await _external_actor(conn, "email", action, {claim.recipient: claim.recipient})
            done = await _perform(conn, tenant, row["id"], action, actor)
    except CloudError as exc:
        return _refused_page(exc)
    if done["result"] == "unchanged":
        return _page("Already acknowledged", f"Alert {row['id']} was acknowledged or closed before; nothing changed.")
    return _page("Acknowledged", f"Alert {row['id']} is acknowledged by {claim.recipient}; escalation stops.")
