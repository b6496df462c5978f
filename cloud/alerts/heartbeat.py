"""The built-in heartbeat: every device's connectivity state without a rule anyone wrote.

Each tenant has one heartbeat rule, ``NO_HEARTBEAT``, made from its ``heartbeat_settings`` row (no
row: ``DEFAULTS``). The runner evaluates it with the tenant's own rules, so a device has a state
(ONLINE, STALE, OFFLINE; none yet = never seen) from the first message it sends, and its last seen
time is the rule state's ``last_seen_ms``. The expected interval per device comes from, in order:
its twin's reported ``interval_s``, its twin's desired ``interval_s``, its registry attribute
``interval_s`` (the device's profile), else the tenant's ``interval_s``.

``alerts_enabled`` false: states are still kept, no NO_HEARTBEAT alert opens (an open one closes
when the device is heard from again, as always).

Seam for gateway connectivity (connect / Will events, another branch): a device behind a gateway
whose connection is known to be lost can be marked with ``store.set_device_status`` like the
gateway-offline path in ``runner._sweep_tenant`` does; nothing here assumes the only source of
truth is silence."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from pulse.protocol.alerts import NO_HEARTBEAT
from pulse.protocol.rules import DeviceStatus, Heartbeat, Rule, Severity


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    alerts_enabled: bool = True
    interval_s: float = 300.0
    stale_after: float = 1.5
    offline_after: float = 3.0
    severity: str = "major"
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = HeartbeatSettings()
_VALID_INTERVAL = (1.0, 604_800.0)


async def load_settings(conn: asyncpg.Connection) -> HeartbeatSettings:
    row = await conn.fetchrow(f"SELECT {SETTINGS_COLUMNS} FROM heartbeat_settings")
    return settings_of(row)


def settings_of(row: asyncpg.Record | None) -> HeartbeatSettings:
    """The tenant's settings from its ``heartbeat_settings`` row (``SETTINGS_COLUMNS``); no row: ``DEFAULTS``."""
    return DEFAULTS if row is None else HeartbeatSettings(**dict(row))


SETTINGS_COLUMNS = "alerts_enabled, interval_s, stale_after, offline_after, severity, version"

INTERVAL_SQL = (
    "COALESCE(t.document->'state'->'reported'->'interval_s', t.document->'state'->'desired'->'interval_s', d.attributes->'interval_s')"
)
"""A device's own expected interval as jsonb (``devices d`` joined with ``twins t``), or NULL."""

TWIN_JOIN = "LEFT JOIN twins t ON t.tenant_id = d.tenant_id AND t.device_id = d.device_id"


async def device_intervals(conn: asyncpg.Connection, device_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Devices with their own expected interval (twin reported, twin desired, registry attribute);
    ``device_ids``: only those (what a batch of messages needs), else every device (the sweep)."""
    rows = await conn.fetch(
        f"SELECT d.device_id, {INTERVAL_SQL} AS v FROM devices d {TWIN_JOIN} "
        "WHERE (d.attributes ? 'interval_s' OR t.document->'state'->'reported' ? 'interval_s' "
        "OR t.document->'state'->'desired' ? 'interval_s') AND ($1::text[] IS NULL OR d.device_id = ANY($1::text[]))",
        None if device_ids is None else list(device_ids),
    )
    out: dict[str, float] = {}
    for r in rows:
        value = interval_of(r["v"])
        if value is not None:
            out[r["device_id"]] = value
    return out


def interval_of(v: str | float | None) -> float | None:
    """A device's own interval: its jsonb as JSON text (a number converts, a string or bool does not)
    or as a number, if in the valid range; else None."""
    try:
        value = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if _VALID_INTERVAL[0] <= value <= _VALID_INTERVAL[1] else None


def builtin_rule(tenant_id: uuid.UUID, settings: HeartbeatSettings, intervals: dict[str, float]) -> Rule:
    return Rule(
        id=NO_HEARTBEAT,
        tenant=str(tenant_id),
        version=settings.version,
        severity=Severity(settings.severity),
        condition=Heartbeat(
            interval_s=settings.interval_s,
            stale_after=settings.stale_after,
            offline_after=settings.offline_after,
            alert_on=DeviceStatus.OFFLINE,
            intervals=intervals,
        ),
        name="Device stopped reporting (built in)",
    )


async def load_builtin(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, device_ids: Sequence[str] | None = None
) -> tuple[Rule, HeartbeatSettings]:
    """The tenant's NO_HEARTBEAT, with the intervals of ``device_ids`` (None: of every device)."""
    settings = await load_settings(conn)
    return builtin_rule(tenant_id, settings, await device_intervals(conn, device_ids)), settings
