"""Device connectivity events (protocol/connectivity.py) set the device's state when they arrive.

A gateway reports a device's MQTT connection coming and going as device events on the EVENTS
stream. When a batch of events has committed, the sync service sets each such device's state
(``device_states``, the table the heartbeat rules also write) in a tenant transaction of its own:
``online`` on ``connected``, ``offline`` on ``disconnected`` and ``lost`` (the device's Will), in
the order of the batch, so the device is shown offline as soon as its gateway knows, before any
heartbeat window runs out. (Not in the batch's transaction: that one runs as the writer role,
which has no grant on device states. A crash in between leaves the state to the next event or
to the heartbeat rules.) The
heartbeat rules keep their own schedule: a device that stays connected but silent still goes
STALE and OFFLINE by its rule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from pulse.cloud.alerts.store import set_device_status
from pulse.cloud.db.rows import TelemetryRow
from pulse.protocol.connectivity import Connectivity, kind_of, status_of


def changes(rows: Sequence[TelemetryRow]) -> list[tuple[str, Connectivity, datetime]]:
    """(device id, kind, time) of the connectivity events among stored rows, in their order."""
    found = []
    for row in rows:
        if row.msg_type != "event" or row.tags is None:
            continue
        tags = json.loads(row.tags)
        kind = kind_of("event", tags if isinstance(tags, dict) else None)
        if kind is not None:
            found.append((row.device_id, kind, row.time))
    return found


async def apply(conn: asyncpg.Connection, rows: Sequence[TelemetryRow]) -> int:
    """Set the states the rows' connectivity events call for, in the caller's ``db.tenant()`` transaction."""
    found = changes(rows)
    for device_id, kind, at in found:
        verb = {Connectivity.CONNECTED: "connected", Connectivity.DISCONNECTED: "disconnected", Connectivity.LOST: "was lost"}[kind]
        await set_device_status(
            conn, device_id, status_of(kind), {"text": f"{device_id} {verb} at its gateway", "connectivity": kind.value, "at": at.isoformat()}
        )
    return len(found)
