"""The replica's part in the cluster: what ``create_app`` wires so that any number of
``pulse cloud serve`` processes sharing one database act as one service.

- Live view: ``LiveRelay`` over the bus (``live.py``).
- Caches: the database notifies ``pulse_invalidate`` (triggers of migration 0022) when a device
  credential, a device's status or a tenant's subscriptions change, whoever changed them; every
  replica forgets what it cached about them. The same channel says when something was queued for
  a gateway, so the replica holding that gateway's long-poll answers at once. When the listener may have missed notifications
  (reconnection), every cache is flushed.
- Rate limits: the device and tenant buckets of HTTP ingest are shared (``cluster/ratelimit.py``).
- Once-per-cluster jobs run under ``Leadership`` (``cluster/leader.py``); the ingest stream's
  partition writers are shared out between the replicas alive (``share_jobs``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pulse.cloud.cluster.bus import Bus, cancel
from pulse.cloud.cluster.leader import Job, Leadership, SharedJob
from pulse.cloud.cluster.ratelimit import SharedRateLimiter, database_bucket
from pulse.cloud.db.pool import Database
from pulse.cloud.ingest.identity import DeviceTokenCache
from pulse.cloud.live import LiveHub, LiveRelay
from pulse.cloud.settings import Settings
from pulse.cloud.subscriptions.store import Entitlements

log = logging.getLogger("pulse.cloud.cluster")

INVALIDATE = "pulse_invalidate"


class Replica:
    def __init__(self, settings: Settings, db: Database, hub: LiveHub, tokens: DeviceTokenCache, entitlements: Entitlements) -> None:
        self.db = db
        self.bus = Bus(db.dsn_for(settings.roles.app))
        self.relay = LiveRelay(hub, self.bus, self.fetch_metrics)
        self.leadership = Leadership(
            db.dsn_for(settings.roles.app), node=self.bus.node, poll_s=settings.cluster_poll_s, lease_s=settings.cluster_lease_s
        )
        take, give = database_bucket(db, retry_after_s=settings.retry_after_s)
        self.device_limits = SharedRateLimiter(
            take, give, rate=settings.ingest_rate_per_s, burst=settings.ingest_burst, lease=settings.rate_limit_lease, lease_s=settings.rate_limit_lease_s
        )
        self.tenant_limits = (
            SharedRateLimiter(
                take,
                give,
                rate=settings.ingest_tenant_rate_per_s,
                burst=settings.ingest_tenant_burst,
                lease=settings.rate_limit_lease,
                lease_s=settings.rate_limit_lease_s,
            )
            if settings.ingest_tenant_rate_per_s > 0
            else None
        )
        self.invalidations = 0
        self.wake_gateway: Callable[[list[uuid.UUID]], None] | None = None
        """Wakes this replica's long-polls of a gateway something was queued for (set by the app)."""

        def invalidated(_sender: str, message: dict[str, Any]) -> None:
            self.invalidations += 1
            kind, ident = message.get("k"), uuid.UUID(str(message.get("id")))
            if kind == "credential":
                tokens.invalidate(credential_id=ident)
            elif kind == "device":
                tokens.invalidate(device=ident)
            elif kind == "tenant":
                entitlements.invalidate(ident)
            elif kind == "gateway" and self.wake_gateway is not None:
                self.wake_gateway([ident])

        self.bus.on(INVALIDATE, invalidated)
        self.bus.on_reset(tokens.clear)
        self.bus.on_reset(entitlements.clear)
        self.leadership.add("rate-buckets", self._forget_buckets)
        self._tasks: list[asyncio.Task[None]] = []

    def add_job(self, name: str, job: Job) -> None:
        self.leadership.add(name, job)

    def share_jobs(self, group: str, jobs: Mapping[str, SharedJob]) -> None:
        """Jobs the replicas divide fairly between them (the ingest stream's partition writers)."""
        for name, job in jobs.items():
            self.leadership.share(group, name, job)

    async def fetch_metrics(self, tenant_id: uuid.UUID, device_id: str, t_ms: int) -> dict[str, float | bool] | None:
        at = dt.datetime.fromtimestamp(t_ms / 1000, dt.UTC)
        async with self.db.tenant(tenant_id) as conn:
            raw = await conn.fetchval(
                "SELECT metrics FROM telemetry WHERE device_id = $1 AND time >= $2 AND time < $3 ORDER BY time DESC LIMIT 1",
                device_id,
                at,
                at + dt.timedelta(milliseconds=1),
            )
        if raw is None:
            return None
        return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw)

    async def _forget_buckets(self) -> None:
        while True:
            try:
                async with self.db.identity() as conn:
                    await conn.fetchval("SELECT pulse_rate_forget()")
            except Exception as exc:  # noqa: BLE001 - next round
                log.warning("could not forget full rate-limit buckets: %s", exc)
            await asyncio.sleep(600)

    def start(self) -> None:
        self.bus.start()
        self.leadership.start()
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="pulse-live-relay"),
            asyncio.create_task(self.device_limits.run(), name="pulse-rate-leases"),
        ]
        if self.tenant_limits is not None:
            self._tasks.append(asyncio.create_task(self.tenant_limits.run(), name="pulse-tenant-rate-leases"))

    async def stop(self) -> None:
        await self.leadership.stop()
        for task in self._tasks:
            await cancel(task)
        self._tasks = []
        await self.bus.stop()
