"""A gateway's periodic report (``POST /sync/v1/report``): what it dropped, its backlog per stream,
its oldest unsynced record and its version, shown on the gateway's page and in fleet health; and
what it did with the connector set pushed to it (``cloud/connectors.py``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

from pulse.cloud.connectors import record_report
from pulse.cloud.db.pool import Database
from pulse.cloud.sync.identity import GatewayCaller

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Reports:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def store(
        self, caller: GatewayCaller, *, dropped: Mapping[str, int], backlog: Mapping[str, int], oldest_unsynced_ms: int | None, version: str | None,
        connectors: Mapping[str, object] | None = None,
    ) -> None:
        oldest = None if oldest_unsynced_ms is None else _EPOCH + dt.timedelta(milliseconds=oldest_unsynced_ms)
        async with self.db.tenant(caller.tenant_id) as conn:
            await conn.execute(
                "UPDATE gateways SET dropped = $2::jsonb, backlog = $3::jsonb, oldest_unsynced_at = $4, agent_version = $5,"
                " reported_at = now() WHERE id = $1",
                caller.gateway_id,
                json.dumps(dict(dropped)),
                json.dumps(dict(backlog)),
                oldest,
                version,
            )
            if connectors is not None:
                await record_report(conn, caller.gateway_id, connectors)
