"""Serving the downlink to a gateway: the long-poll ``GET /sync/v1/downlink`` and its ack. The
queue itself (what twins, rules and credentials put there for a gateway) is ``cloud/downlink.py``."""

from __future__ import annotations

import time

from pulse.cloud import twins
from pulse.cloud.db.pool import Database
from pulse.cloud.downlink import POLL_S, Notifier, pending
from pulse.cloud.sync.identity import GatewayCaller
from pulse.protocol.sync import MAX_DOWNLINK_WAIT_S, DownlinkItem


class Downlink:
    def __init__(self, db: Database, notifier: Notifier) -> None:
        self.db = db
        self.notifier = notifier

    async def items(self, caller: GatewayCaller, after: int, wait_s: float) -> tuple[list[DownlinkItem], int]:
        """Items after ``after``, at once if there are any, else when one arrives or ``wait_s`` ends.
        No database connection is held while waiting."""
        end = time.monotonic() + min(max(wait_s, 0.0), float(MAX_DOWNLINK_WAIT_S))
        while True:
            async with self.db.tenant(caller.tenant_id) as conn:
                items = await pending(conn, caller.gateway_id, after)
            left = end - time.monotonic()
            if items or left <= 0:
                return items, (items[-1].seq if items else after)
            await self.notifier.wait(caller.gateway_id, min(POLL_S, left))

    async def ack(self, caller: GatewayCaller, seq: int) -> None:
        async with self.db.tenant(caller.tenant_id) as conn:
            # the commands among the acked items reached the gateway: delivered
            await twins.deliver_acked(conn, caller.tenant_id, caller.gateway_id, seq, int(time.time() * 1000))
            await conn.execute(
                "UPDATE gateway_downlink SET acked_at = now() WHERE gateway_id = $1 AND seq <= $2 AND acked_at IS NULL",
                caller.gateway_id,
                seq,
            )
