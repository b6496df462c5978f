"""``/api/v1/live``: a WebSocket that pushes the open device's new telemetry to the console.

Protocol (JSON text frames):

    client -> {"type": "auth", "token": "<access token>"}          first frame, within AUTH_TIMEOUT_S
    server -> {"type": "ready", "tenant_id": "..."}
    client -> {"type": "subscribe", "device": "<device uuid>"}     replaces any earlier subscription
    server -> {"type": "subscribed", "device": "...", "device_id": "..."}
    server -> {"type": "telemetry", "device": "...", "points": [{"t": ms, "metrics": {...}}], "dropped": 0}
    server -> {"type": "twin", "device": "...", "version": n}         the device's twin changed (reload it)
    server -> {"type": "command", "device": "...", "id": "...", "state": "..."}   one of its commands moved
    client -> {"type": "unsubscribe"}
    client -> {"type": "feed"}                                      the event feed: one event per device per
    server -> {"type": "events", "events": [{"t", "tenant_id",      stored batch; the caller's tenant, or every
              "device_id", "readings", "metrics"}], "dropped": 0}   tenant for operators (audited)
    client -> {"type": "unfeed"}
    server -> {"type": "error", "code": "...", "message": "..."}    e.g. api.not_found for a device of
                                                                    another tenant; the socket stays open

Browsers cannot put an Authorization header on a WebSocket, so the token travels in the first
frame (never in the URL, where logs would keep it). The tenant comes only from that verified token;
a device is looked up under row-level security, so another tenant's device is "not found".
Close codes: 4400 bad frame, 4401 no or invalid token, or the token expired (the socket lives no longer
than the token it was opened with), 4403 the account has neither tenant access nor an operator role.
Operators (no tenant) may only use the feed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from typing import Any

import jwt
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from pulse.cloud.api.deps import Components, TenantCaller, operator, tenant_reader
from pulse.cloud.auth.tokens import Principal
from pulse.cloud.errors import AuthError, ForbiddenError
from pulse.cloud.live import FeedSubscription, LiveHub, Subscription
from pulse.common import aio
from pulse.protocol.errors import Code

router = APIRouter(tags=["live"])

AUTH_TIMEOUT_S = 10.0
SESSION_RECHECK_S = 30.0
"""How often an open socket checks that its account is still enabled and its session not revoked."""
MAX_FRAME_CHARS = 4096


class _BadFrame(Exception):
    pass


async def _frame(ws: WebSocket) -> dict[str, Any]:
    text = await ws.receive_text()
    if len(text) > MAX_FRAME_CHARS:
        raise _BadFrame(f"frames are at most {MAX_FRAME_CHARS} characters")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise _BadFrame("frames are JSON objects") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise _BadFrame('frames are JSON objects with a "type"')
    return doc


def _expires_at(token: str) -> float:
    """When a token that ``authenticate`` accepted stops being valid (its ``exp``; unbounded if none)."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return math.inf
    return float(exp) if isinstance(exp, int | float) else math.inf


async def _authenticate(ws: WebSocket, parts: Components) -> tuple[TenantCaller | Principal, float] | None:
    """A tenant caller, or an operator's principal (no tenant), and when the token expires."""
    try:
        first = await aio.wait_for(_frame(ws), AUTH_TIMEOUT_S)
    except TimeoutError:
        await ws.close(4401, "send {type: auth, token} first")
        return None
    except _BadFrame as exc:
        await ws.close(4400, str(exc))
        return None
    token = first.get("token")
    if first["type"] != "auth" or not isinstance(token, str):
        await ws.close(4401, "the first frame is {type: auth, token}")
        return None
    try:
        principal = await parts.auth.authenticate(f"Bearer {token}")
        if principal.via == "local":  # a disabled, removed or signed-out account does not connect
            await ws.app.state.accounts.check_session(principal)
        if principal.tenant_id is None:
            return await operator(principal), _expires_at(token)
        return await tenant_reader(principal), _expires_at(token)
    except AuthError as exc:
        await ws.close(4401, exc.message[:120])
    except ForbiddenError as exc:
        await ws.close(4403, exc.message[:120])
    return None


async def _pump(ws: WebSocket, sub: Subscription, device: uuid.UUID) -> None:
    while True:
        points, dropped = await sub.next_batch()
        wire = [{"t": p.time_ms, "metrics": p.metrics} for p in points if p.msg_type == "telemetry"]
        if wire or dropped:
            await ws.send_json({"type": "telemetry", "device": str(device), "points": wire, "dropped": dropped})
        for p in points:
            if p.detail is not None:  # the twin or a command changed: the console reloads it
                await ws.send_json({"type": p.msg_type, "device": str(device), **p.detail})


async def _pump_feed(ws: WebSocket, feed: FeedSubscription) -> None:
    while True:
        events, dropped = await feed.next_batch()
        await ws.send_json({"type": "events", "events": events, "dropped": dropped})


@router.websocket("/api/v1/live")
async def live(ws: WebSocket) -> None:
    parts: Components = ws.app.state.pulse
    hub: LiveHub = ws.app.state.live
    await ws.accept()
    authenticated = await _authenticate(ws, parts)
    if authenticated is None:
        return
    caller, expires_at = authenticated
    tenant_id = caller.tenant_id if isinstance(caller, TenantCaller) else None
    await ws.send_json(
        {"type": "ready", "tenant_id": None if tenant_id is None else str(tenant_id), "operator": tenant_id is None}
    )
    sub: Subscription | None = None
    pump: asyncio.Task[None] | None = None
    feed: FeedSubscription | None = None
    feed_pump: asyncio.Task[None] | None = None

    async def stop_feed() -> None:
        nonlocal feed, feed_pump
        if feed_pump is not None:
            feed_pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await feed_pump
        if feed is not None:
            hub.unsubscribe_feed(feed)
        feed, feed_pump = None, None

    async def stop() -> None:
        nonlocal sub, pump
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await pump
        if sub is not None:
            hub.unsubscribe(sub)
        sub, pump = None, None

    try:
        while True:
            try:
                # the socket lives as long as its token: then 4401, and the client comes back with a fresh one;
                # meanwhile it checks every SESSION_RECHECK_S that the account was not disabled or signed out
                left = max(0.0, expires_at - time.time()) if expires_at < math.inf else math.inf
                frame = await aio.wait_for(_frame(ws), min(left, SESSION_RECHECK_S))
            except TimeoutError:
                reason = None
                if expires_at - time.time() <= 0:
                    reason = "the access token expired; reconnect with a fresh one"
                else:
                    principal = caller.principal if isinstance(caller, TenantCaller) else caller
                    if principal.via == "local":
                        try:
                            await ws.app.state.accounts.check_session(principal)
                        except AuthError as exc:
                            reason = exc.message[:120]
                if reason is None:
                    continue
                await stop()
                await stop_feed()
                await ws.close(4401, reason)
                return
            except _BadFrame as exc:
                await ws.send_json({"type": "error", "code": str(Code.API_INVALID), "message": str(exc)})
                continue
            if frame["type"] == "unsubscribe":
                await stop()
                continue
            if frame["type"] == "unfeed":
                await stop_feed()
                continue
            if frame["type"] == "feed":
                await stop_feed()
                if tenant_id is None:  # every tenant's events: the operators' audited path
                    async with parts.db.operator(actor=caller.actor, action="live.feed"):
                        pass
                feed = hub.subscribe_feed(tenant_id)
                feed_pump = asyncio.create_task(_pump_feed(ws, feed), name="pulse-live-feed")
                await ws.send_json({"type": "feeding", "scope": "all tenants" if tenant_id is None else "tenant"})
                continue
            if tenant_id is None:
                await ws.send_json(
                    {"type": "error", "code": str(Code.AUTH_FORBIDDEN), "message": "operators may use the feed only"}
                )
                continue
            if frame["type"] != "subscribe":
                await ws.send_json(
                    {"type": "error", "code": str(Code.API_INVALID), "message": f"unknown frame type {frame['type']!r}"}
                )
                continue
            try:
                device = uuid.UUID(str(frame.get("device")))
            except ValueError:
                await ws.send_json({"type": "error", "code": str(Code.API_INVALID), "message": "device is a device's id (UUID)"})
                continue
            async with parts.db.tenant(tenant_id) as conn:
                device_id = await conn.fetchval("SELECT device_id FROM devices WHERE id = $1", device)
            await stop()
            if device_id is None:
                await ws.send_json({"type": "error", "code": str(Code.API_NOT_FOUND), "message": "no such device in your tenant"})
                continue
            sub = hub.subscribe(tenant_id, device_id)
            pump = asyncio.create_task(_pump(ws, sub, device), name="pulse-live-pump")
            await ws.send_json({"type": "subscribed", "device": str(device), "device_id": device_id})
    except WebSocketDisconnect:
        pass
    finally:
        await stop()
        await stop_feed()
