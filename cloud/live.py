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

One hub per process; with several replicas, ``LiveRelay`` carries what other processes' consoles
watch over PostgreSQL LISTEN/NOTIFY (``cluster/bus.py``), so a console sees every row whichever
process stored it. Each process announces what its consoles watch (tenants' feeds, devices), and a
process that commits rows sends only what some other process watches: with no console open
anywhere else, nothing is sent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time as _time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pulse.cloud.cluster.bus import Bus, fits
from pulse.cloud.db.rows import TelemetryRow
from pulse.common import aio

log = logging.getLogger("pulse.cloud.live")

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


@dataclass(frozen=True, slots=True)
class Interest:
    """What a process's consoles watch: the feeds of some tenants (or of all), some devices' points."""

    all_feeds: bool = False
    feed_tenants: frozenset[uuid.UUID] = frozenset()
    devices: frozenset[Key] = frozenset()
    device_tenants: frozenset[uuid.UUID] = frozenset()
    """Every device of these tenants (what ``devices`` becomes when it is too long to announce)."""

    def __bool__(self) -> bool:
        return self.all_feeds or bool(self.feed_tenants or self.devices or self.device_tenants)

    def wants_feed(self, tenant_id: uuid.UUID) -> bool:
        return self.all_feeds or tenant_id in self.feed_tenants

    def wants_points(self, key: Key) -> bool:
        return key in self.devices or key[0] in self.device_tenants

    def union(self, other: Interest) -> Interest:
        return Interest(
            self.all_feeds or other.all_feeds,
            self.feed_tenants | other.feed_tenants,
            self.devices | other.devices,
            self.device_tenants | other.device_tenants,
        )


class LiveHub:
    def __init__(self, *, queue_points: int = 1000, queue_events: int = 200) -> None:
        self._subs: dict[Key, set[Subscription]] = {}
        self._feeds: set[FeedSubscription] = set()
        self._queue_points = queue_points
        self._queue_events = queue_events
        self.on_interest: Callable[[], None] | None = None
        """Told when what this process's consoles watch changes (``LiveRelay`` announces it)."""
        self.on_notify: Callable[[uuid.UUID, str, str, dict[str, object]], None] | None = None
        """Told every ``notify`` (``LiveRelay`` passes it to the other replicas' consoles)."""

    def interest(self) -> Interest:
        feeds = {f.tenant_id for f in self._feeds}
        return Interest(
            all_feeds=None in feeds,
            feed_tenants=frozenset(t for t in feeds if t is not None),
            devices=frozenset(self._subs),
        )

    def _changed(self) -> None:
        if self.on_interest is not None:
            self.on_interest()

    def subscribe_feed(self, tenant_id: uuid.UUID | None) -> FeedSubscription:
        """The event feed of one tenant, or of all tenants with ``None`` (operators only: the caller checks)."""
        sub = FeedSubscription(tenant_id=tenant_id, capacity=self._queue_events)
        self._feeds.add(sub)
        self._changed()
        return sub

    def unsubscribe_feed(self, sub: FeedSubscription) -> None:
        self._feeds.discard(sub)
        self._changed()

    def subscribe(self, tenant_id: uuid.UUID, device_id: str) -> Subscription:
        sub = Subscription(key=(tenant_id, device_id), capacity=self._queue_points)
        self._subs.setdefault(sub.key, set()).add(sub)
        self._changed()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
        self._changed()

    def offer_points(self, key: Key, points: Sequence[LivePoint]) -> None:
        """Points of one device that another process stored (or changed: twin, command)."""
        for sub in self._subs.get(key, ()):
            for point in points:
                sub._offer(point)

    def offer_event(self, tenant_id: uuid.UUID, event: dict[str, object]) -> None:
        """A feed event (metrics decoded) of a batch another process stored."""
        for feed in self._feeds:
            if feed.tenant_id is None or feed.tenant_id == tenant_id:
                feed._offer(event)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def notify(self, tenant_id: uuid.UUID, device_id: str, kind: str, detail: dict[str, object]) -> None:
        """A committed change of a device's twin (``kind`` "twin", detail ``{"version"}``) or of one
        of its commands ("command", detail ``{"id", "state"}``), for the subscribers of the device."""
        if self.on_notify is not None:
            self.on_notify(tenant_id, device_id, kind, detail)
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
            point = LivePoint(time_ms=int(row.time.timestamp() * 1000), metrics=row.metric_values(), msg_type=row.msg_type)
            for sub in subs:
                sub._offer(point)

    def _publish_feed(self, rows: Sequence[TelemetryRow]) -> None:
        for (tenant_id, _), (t, readings, row) in feed_events(rows).items():
            wire: dict[str, object] | None = None
            for feed in self._feeds:
                if feed.tenant_id is None or feed.tenant_id == tenant_id:
                    wire = wire or {"t": t, "tenant_id": str(tenant_id), "device_id": row.device_id, "readings": readings,
                                    "metrics": row.metric_values()}
                    feed._offer(wire)


FeedEvent = tuple[int, int, TelemetryRow]
"""(time in ms of the device's newest row in a batch, how many rows the batch has of it, that row)."""


def feed_events(rows: Iterable[TelemetryRow]) -> dict[Key, FeedEvent]:
    """One feed event per device of a batch: its newest row (whose metrics the feed shows) and how many rows."""
    per_device: dict[Key, FeedEvent] = {}
    for row in rows:
        key = (row.tenant_id, row.device_id)
        t = int(row.time.timestamp() * 1000)
        seen = per_device.get(key)
        if seen is None:
            per_device[key] = (t, 1, row)
        else:
            per_device[key] = (t, seen[1] + 1, row) if t >= seen[0] else (seen[0], seen[1] + 1, seen[2])
    return per_device


Fetch = Callable[[uuid.UUID, str, int], Awaitable[dict[str, float | bool] | None]]
"""(tenant, device id, time in ms) -> the metrics of the row stored then (for rows too large to notify)."""

CHANNEL = "pulse_live"
_POINTER_AT = 6000
"""Metrics longer than this (JSON characters) travel as a pointer: the receiver reads the row."""


class LiveRelay:
    """Carries live events between the replicas over ``Bus`` (channel ``pulse_live``).

    Messages (``k``): ``i`` what the sender's consoles watch (announced on change and every
    ``announce_s``; forgotten after three periods without one), ``h`` "announce yourselves" (sent
    after a reconnection), ``p`` points of one device, ``f`` a feed event, ``n`` a twin or command
    change. A row whose metrics are too large for a notification is sent as its time only, and the
    receiving process reads it from the telemetry table (``fetch``) before showing it."""

    def __init__(self, hub: LiveHub, bus: Bus, fetch: Fetch, *, announce_s: float = 5.0, monotonic: Callable[[], float] = _time.monotonic) -> None:
        self.hub, self.bus, self.fetch = hub, bus, fetch
        self.announce_s = announce_s
        self._monotonic = monotonic
        self._remote: dict[str, tuple[float, Interest]] = {}
        self.wanted = Interest()
        """What the other processes' consoles watch, together."""
        self._announce = asyncio.Event()
        self._fetches: set[asyncio.Task[None]] = set()
        self.received = 0
        hub.on_interest = self._announce.set
        hub.on_notify = self.notify
        bus.on(CHANNEL, self._receive)
        bus.on_reset(self._reset)

    # --- sending -----------------------------------------------------------------------------

    def publish(self, rows: Sequence[TelemetryRow]) -> None:
        """After-commit listener: send the rows other processes' consoles watch."""
        wanted = self.wanted
        if not wanted:
            return
        if wanted.all_feeds or wanted.feed_tenants:
            for (tenant_id, device_id), (t, readings, row) in feed_events(rows).items():
                if wanted.wants_feed(tenant_id):
                    self._post_rows("f", tenant_id, device_id, [(t, str(readings), row.metrics)])
        if wanted.devices or wanted.device_tenants:
            per_device: dict[Key, list[tuple[int, str, str]]] = {}
            for row in rows:
                key = (row.tenant_id, row.device_id)
                if wanted.wants_points(key):
                    per_device.setdefault(key, []).append((int(row.time.timestamp() * 1000), json.dumps(row.msg_type), row.metrics))
            for (tenant_id, device_id), items in per_device.items():
                self._post_rows("p", tenant_id, device_id, items)

    def _post_rows(self, kind: str, tenant_id: uuid.UUID, device_id: str, items: list[tuple[int, str, str]]) -> None:
        """``items``: (time ms, JSON text of the type (``p``) or the readings count (``f``), metrics JSON)."""
        head = f'{{"k":"{kind}","t":"{tenant_id}","d":{json.dumps(device_id)},"r":['
        parts: list[str] = []
        size = len(head) + 2
        for t, second, metrics in items:
            part = f"[{t},{second},{metrics if len(metrics) <= _POINTER_AT else 'null'}]"
            if parts and size + len(part) + 1 > _POINTER_AT:
                self.bus.post(CHANNEL, head + ",".join(parts) + "]}")
                parts, size = [], len(head) + 2
            parts.append(part)
            size += len(part) + 1
        if parts:
            self.bus.post(CHANNEL, head + ",".join(parts) + "]}")

    def notify(self, tenant_id: uuid.UUID, device_id: str, kind: str, detail: dict[str, object]) -> None:
        """A twin or command change (``LiveHub.notify`` calls it), for other processes' consoles."""
        if self.wanted.wants_points((tenant_id, device_id)):
            self.bus.post(CHANNEL, {"k": "n", "t": str(tenant_id), "d": device_id, "c": kind, "x": detail})

    def _interest_message(self) -> dict[str, object]:
        mine = self.hub.interest()
        message: dict[str, object] = {
            "k": "i",
            "fa": mine.all_feeds,
            "ft": sorted(map(str, mine.feed_tenants)),
            "dk": sorted([str(t), d] for t, d in mine.devices),
            "dt": [],
        }
        if not fits(json.dumps(message, separators=(",", ":"))):  # too many devices: watch their tenants instead
            message["dk"], message["dt"] = [], sorted({str(t) for t, _ in mine.devices})
        if not fits(json.dumps(message, separators=(",", ":"))):  # still too long: everything
            message.update(fa=True, ft=[], dt=["*"])
        return message

    async def run(self) -> None:
        """Announce this process's interest when it changes and every ``announce_s``; forget silent processes."""
        while True:
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._announce.wait(), self.announce_s)
            self._announce.clear()
            self.bus.post(CHANNEL, self._interest_message())
            now = self._monotonic()
            if any(expires <= now for expires, _ in self._remote.values()):
                self._remote = {node: v for node, v in self._remote.items() if v[0] > now}
                self._recompute()

    # --- receiving ---------------------------------------------------------------------------

    def _reset(self) -> None:
        """Notifications may have been missed: ask everybody what they watch, and say it again."""
        self.bus.post(CHANNEL, {"k": "h"})
        self._announce.set()

    def _recompute(self) -> None:
        wanted = Interest()
        for _, interest in self._remote.values():
            wanted = wanted.union(interest)
        self.wanted = wanted

    def _receive(self, sender: str, message: dict[str, object]) -> None:
        self.received += 1
        kind = message.get("k")
        if kind == "h":
            self._announce.set()
        elif kind == "i":
            self._remote[sender] = (self._monotonic() + 3 * self.announce_s, _interest_of(message))
            self._recompute()
        elif kind in ("p", "f"):
            tenant_id, device_id = uuid.UUID(str(message["t"])), str(message["d"])
            for t, second, metrics in message["r"]:  # type: ignore[attr-defined]
                if metrics is None:
                    task = asyncio.get_running_loop().create_task(self._fetch_then_offer(str(kind), tenant_id, device_id, t, second))
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)
                else:
                    self._offer(str(kind), tenant_id, device_id, t, second, metrics)
        elif kind == "n":
            point = LivePoint(time_ms=int(_time.time() * 1000), metrics={}, msg_type=str(message["c"]), detail=dict(message["x"]))  # type: ignore[call-overload]
            self.hub.offer_points((uuid.UUID(str(message["t"])), str(message["d"])), [point])

    def _offer(self, kind: str, tenant_id: uuid.UUID, device_id: str, t: int, second: object, metrics: dict[str, float | bool]) -> None:
        if kind == "p":
            self.hub.offer_points((tenant_id, device_id), [LivePoint(time_ms=t, metrics=metrics, msg_type=str(second))])
        else:
            event = {"t": t, "tenant_id": str(tenant_id), "device_id": device_id, "readings": second, "metrics": metrics}
            self.hub.offer_event(tenant_id, event)

    async def _fetch_then_offer(self, kind: str, tenant_id: uuid.UUID, device_id: str, t: int, second: object) -> None:
        try:
            metrics = await self.fetch(tenant_id, device_id, t)
        except Exception as exc:  # noqa: BLE001 - best effort, like every live point
            log.warning("could not read a large live row of %s: %s", device_id, exc)
            return
        if metrics is not None:
            self._offer(kind, tenant_id, device_id, t, second, metrics)


def _interest_of(message: dict[str, object]) -> Interest:
    tenants = message.get("dt") or []
    if "*" in tenants:  # type: ignore[operator]
        return Interest(all_feeds=True, device_tenants=_Everything())
    return Interest(
        all_feeds=bool(message.get("fa")),
        feed_tenants=frozenset(uuid.UUID(t) for t in message.get("ft") or []),  # type: ignore[attr-defined]
        devices=frozenset((uuid.UUID(t), d) for t, d in message.get("dk") or []),  # type: ignore[attr-defined]
        device_tenants=frozenset(uuid.UUID(t) for t in tenants),  # type: ignore[attr-defined]
    )


class _Everything(frozenset[uuid.UUID]):
    """Every tenant (a process that watches more than it can announce)."""

    def __contains__(self, item: object) -> bool:
        return True

    def __bool__(self) -> bool:
        return True

    def __or__(self, other: object) -> _Everything:
        return self

    def __ror__(self, other: object) -> _Everything:
        return self
