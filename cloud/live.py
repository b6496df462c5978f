"""In-process pub/sub of committed telemetry, for the console's live view.

The telemetry writer calls ``LiveHub.publish(rows)`` after a batch commits; WebSocket sessions
subscribe to one device of their own tenant with ``LiveHub.subscribe(tenant_id, device_id)``.
Subscriptions are keyed by (tenant id, device id): the tenant id always comes from the verified
token of the subscriber, so a subscriber never receives another tenant's rows, even when two
tenants use the same device id.

Delivery is best effort and never slows the writer: ``publish`` is synchronous, does no I/O and
puts points on bounded per-subscriber queues; a subscriber that falls behind loses its oldest
points and is told how many (``Subscription.dropped``). The points are already stored; a client
that missed some reloads the chart from the telemetry query endpoint.

One hub per process: with several cloud replicas, each replica's WebSocket clients see the rows
that replica wrote. (A shared stream between replicas arrives with scale-out.)"""

from __future__ import annotations

import asyncio
import json
import time as _time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pulse.cloud.db.rows import TelemetryRow

Key = tuple[uuid.UUID, str]


@dataclass(frozen=True, slots=True)
class LivePoint:
    time_ms: int
    metrics: dict[str, float | bool]
    msg_type: str
    detail: dict[str, object] | None = None
    """Set for a change of the device's twin or of one of its commands (``LiveHub.notify``)."""


@dataclass(eq=False, slots=True)
class Subscription:
    key: Key
    capacity: int
    points: deque[LivePoint] = field(default_factory=deque)
    dropped: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def _offer(self, point: LivePoint) -> None:
        if len(self.points) >= self.capacity:
            self.points.popleft()
            self.dropped += 1
        self.points.append(point)
        self._wakeup.set()

    async def next_batch(self) -> tuple[list[LivePoint], int]:
        """Wait for points; returns (points, how many were dropped since the last call)."""
        while not self.points:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = list(self.points)
        self.points.clear()
        dropped, self.dropped = self.dropped, 0
        return batch, dropped


@dataclass(eq=False, slots=True)
class FeedSubscription:
    """Events of one tenant (``tenant_id``) or, for operators, of every tenant (``None``): one event
    per device per committed batch, ``{"t", "tenant_id", "device_id", "readings", "metrics"}``."""

    tenant_id: uuid.UUID | None
    capacity: int
    events: deque[dict[str, object]] = field(default_factory=deque)
    dropped: int = 0
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def _offer(self, event: dict[str, object]) -> None:
        if len(self.events) >= self.capacity:
            self.events.popleft()
            self.dropped += 1
        self.events.append(event)
        self._wakeup.set()

    async def next_batch(self) -> tuple[list[dict[str, object]], int]:
        while not self.events:
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = list(self.events)
        self.events.clear()
        dropped, self.dropped = self.dropped, 0
        return batch, dropped


class LiveHub:
    def __init__(self, *, queue_points: int = 1000, queue_events: int = 200) -> None:
        self._subs: dict[Key, set[Subscription]] = {}
        self._feeds: set[FeedSubscription] = set()
        self._queue_points = queue_points
        self._queue_events = queue_events

    def subscribe_feed(self, tenant_id: uuid.UUID | None) -> FeedSubscription:
        """The event feed of one tenant, or of all tenants with ``None`` (operators only: the caller checks)."""
        sub = FeedSubscription(tenant_id=tenant_id, capacity=self._queue_events)
        self._feeds.add(sub)
        return sub

    def unsubscribe_feed(self, sub: FeedSubscription) -> None:
        self._feeds.discard(sub)

    def subscribe(self, tenant_id: uuid.UUID, device_id: str) -> Subscription:
        sub = Subscription(key=(tenant_id, device_id), capacity=self._queue_points)
        self._subs.setdefault(sub.key, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def notify(self, tenant_id: uuid.UUID, device_id: str, kind: str, detail: dict[str, object]) -> None:
        """A committed change of a device's twin (``kind`` "twin", detail ``{"version"}``) or of one
        of its commands ("command", detail ``{"id", "state"}``), for the subscribers of the device."""
        subs = self._subs.get((tenant_id, device_id))
        if not subs:
            return
        point = LivePoint(time_ms=int(_time.time() * 1000), metrics={}, msg_type=kind, detail=detail)
        for sub in subs:
            sub._offer(point)

    def publish(self, rows: Iterable[TelemetryRow]) -> None:
        """Hand committed telemetry rows to the subscribers of their device,
        and one event per device of the batch to the feeds."""
        if self._feeds:
            rows = list(rows)
            self._publish_feed(rows)
        if not self._subs:
            return
        for row in rows:
            subs = self._subs.get((row.tenant_id, row.device_id))
            if not subs:
                continue
            point = LivePoint(time_ms=int(row.time.timestamp() * 1000), metrics=json.loads(row.metrics), msg_type=row.msg_type)
            for sub in subs:
                sub._offer(point)

    def _publish_feed(self, rows: Sequence[TelemetryRow]) -> None:
        per_device: dict[Key, dict[str, object]] = {}
        for row in rows:
            time, tenant_id, device_id, metrics = row.time, row.tenant_id, row.device_id, row.metrics
            key = (tenant_id, device_id)
            event = per_device.get(key)
            t = int(time.timestamp() * 1000)
            if event is None:
                per_device[key] = {
                    "t": t,
                    "tenant_id": str(tenant_id),
                    "device_id": str(device_id),
                    "readings": 1,
                    "metrics": metrics,
                }
            else:
                event["readings"] = int(event["readings"]) + 1  # type: ignore[call-overload]
                if t >= int(event["t"]):  # type: ignore[call-overload]
                    event["t"], event["metrics"] = t, metrics
        for (tenant_id, _), event in per_device.items():
            wire: dict[str, object] | None = None
            for feed in self._feeds:
                if feed.tenant_id is None or feed.tenant_id == tenant_id:
                    wire = wire or {**event, "metrics": json.loads(str(event["metrics"]))}
                    feed._offer(wire)
