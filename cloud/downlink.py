"""The downlink queue: items the cloud holds for a gateway until it acks them.

``enqueue`` runs inside the caller's tenant transaction (the item commits with the change that made
it, or not at all); after the commit the caller wakes long-polls with ``Notifier.wake``. A waiting
long-poll holds no database connection: it waits on an in-process event and looks again every
``POLL_S`` seconds, so items enqueued by another process (several workers) are found too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping

import asyncpg

from pulse.common import aio
from pulse.protocol.rules import Device
from pulse.protocol.sync import CredentialChange, DownlinkItem, DownlinkKind, rule_devices_to_payload

POLL_S = 1.0
MAX_ITEMS = 100


class Notifier:
    """gateway -> event set when something was enqueued for it (this process only)."""

    def __init__(self) -> None:
        self._events: dict[uuid.UUID, asyncio.Event] = {}

    def wake(self, gateways: Iterable[uuid.UUID]) -> None:
        for gw in gateways:
            if (event := self._events.pop(gw, None)) is not None:
                event.set()

    async def wait(self, gateway: uuid.UUID, timeout_s: float) -> None:
        """Return when woken for ``gateway`` or after ``timeout_s``, whichever is first."""
        event = self._events.setdefault(gateway, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await aio.wait_for(event.wait(), timeout_s)


async def enqueue(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, gateway: uuid.UUID, kind: DownlinkKind, payload: Mapping[str, object]
) -> int:
    """Add an item for ``gateway`` in the caller's (tenant) transaction; returns its seq."""
    seq: int = await conn.fetchval("UPDATE gateways SET downlink_seq = downlink_seq + 1 WHERE id = $1 RETURNING downlink_seq", gateway)
    await conn.execute(
        "INSERT INTO gateway_downlink (tenant_id, gateway_id, seq, kind, payload) VALUES ($1, $2, $3, $4, $5::jsonb)",
        tenant_id,
        gateway,
        seq,
        kind.value,
        json.dumps(dict(payload)),
    )
    return seq


async def gateways_serving(conn: asyncpg.Connection, device: uuid.UUID) -> list[uuid.UUID]:
    """The gateways that must know a device's credentials: its own gateway when it has one, else
    every gateway of its site that is not revoked."""
    return [
        r["id"]
        for r in await conn.fetch(
            "SELECT g.id FROM devices d JOIN gateways g ON g.tenant_id = d.tenant_id AND g.status <> 'revoked'"
            " AND (g.id = d.gateway_id OR (d.gateway_id IS NULL AND d.site_id IS NOT NULL AND g.site_id = d.site_id))"
            " WHERE d.id = $1",
            device,
        )
    ]


async def push_credential(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, device: uuid.UUID, change: CredentialChange, gateways: list[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Enqueue a credential change for the gateways serving ``device``; returns them (to wake)."""
    targets = await gateways_serving(conn, device) if gateways is None else gateways
    for gw in targets:
        await enqueue(conn, tenant_id, gw, DownlinkKind.CREDENTIAL, change.to_payload())
    return targets


async def pending(conn: asyncpg.Connection, gateway: uuid.UUID, after: int) -> list[DownlinkItem]:
    rows = await conn.fetch(
        "SELECT seq, kind, payload FROM gateway_downlink WHERE gateway_id = $1 AND seq > $2 AND acked_at IS NULL"
        " ORDER BY seq LIMIT $3",
        gateway,
        after,
        MAX_ITEMS,
    )
    return [DownlinkItem(r["seq"], DownlinkKind(r["kind"]), json.loads(r["payload"])) for r in rows]



async def push_rules(conn: asyncpg.Connection, tenant_id: uuid.UUID, gateways: list[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Enqueue the tenant's whole rule set (``{"version", "rules": [...], "devices": {...}}``: the
    devices each gateway serves, with their tags and site, so its rules scope as the cloud's) for its gateways (all
    that are not revoked, or ``gateways``), in the caller's tenant transaction; returns them (to wake).
    A set replaces the previous one at the gateway, so only the newest matters; its version is the
    time of the change in ms, which only grows."""
    rules = [json.loads(r["definition"]) for r in await conn.fetch("SELECT definition FROM rules ORDER BY id")]
    version = int(await conn.fetchval("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"))
    targets = (
        gateways
        if gateways is not None
        else [r["id"] for r in await conn.fetch("SELECT id FROM gateways WHERE status <> 'revoked'")]
    )
    for gw in targets:
        devices = rule_devices_to_payload(await _served(conn, gw))
        await enqueue(conn, tenant_id, gw, DownlinkKind.RULES, {"version": version, "rules": rules, "devices": devices})
    return targets


async def _served(conn: asyncpg.Connection, gateway: uuid.UUID) -> list[Device]:
    """The devices a gateway serves (as ``gateways_serving`` decides), with the tags and site its
    rules are scoped by, read as the cloud's runner reads them (``alerts.runner.device_of``: tag
    ``name=value`` or bare ``name``, site id as text; this layer may not import the alerts package)."""
    rows = await conn.fetch(
        "SELECT d.device_id, d.tags, d.site_id FROM gateways g JOIN devices d ON d.tenant_id = g.tenant_id"
        " AND (d.gateway_id = g.id OR (d.gateway_id IS NULL AND d.site_id IS NOT NULL AND d.site_id = g.site_id))"
        " WHERE g.id = $1 AND d.status IN ('provisioned', 'active') ORDER BY d.device_id",
        gateway,
    )
    out = []
    for r in rows:
        tags = dict(str(t).partition("=")[::2] for t in r["tags"] or ())
        out.append(Device(r["device_id"], tags, None if r["site_id"] is None else str(r["site_id"])))
    return out
