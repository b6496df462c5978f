"""The platform sampler: every PULSE_PLATFORM_SAMPLE_INTERVAL_S, one sample of the cloud's own
figures, stored in ``system_metrics`` and set on ``/metrics``, then checked by the platform
health rules.

A sample is: the rates and percentiles derived from this process's Prometheus objects since the
previous sample (``figures.derive``), the writer queue and the pools (this process), and the
database's share (``pulse_platform_sample``: notification queue, dead letters, failures,
evaluation lag, gateways and their reported backlog, device states, alerts). One writer-role
transaction reads the database's share and inserts the whole sample. Clocks are passed in:
``clock`` stamps the rows, ``monotonic`` measures the time between samples."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable

from pulse.cloud.alerts.runner import Reading, RuleRunner
from pulse.cloud.db.pool import Database
from pulse.cloud.metrics import Metrics
from pulse.cloud.platform import figures
from pulse.cloud.platform.figures import Point
from pulse.cloud.platform.health import PLATFORM_TENANT, DeadLetterWindow, HealthThresholds, definitions, readings
from pulse.protocol.rules import parse_rule

log = logging.getLogger("pulse.cloud.platform")


class Sampler:
    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        writer_depth: Callable[[], int],
        clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
        interval_s: float = 5.0,
        offline_after_s: float = 300.0,
        source: str = "",
        rules: RuleRunner | None = None,
        thresholds: HealthThresholds | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._writer_depth = writer_depth
        self._clock = clock
        self._monotonic = monotonic
        self._interval_s = interval_s
        self._offline_after_s = offline_after_s
        self._source = source
        self._rules = rules
        self._thresholds = thresholds
        self._dead = DeadLetterWindow(thresholds.dead_letter_window_s if thresholds else 900.0)
        self._before: tuple[float, figures.Reading] | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_points: list[Point] = []
        self.last_sample_at: dt.datetime | None = None

    async def install_rules(self) -> None:
        """Write the platform health rules (thresholds from settings) as the platform tenant's rules."""
        if self._thresholds is None:
            return
        async with self._db.tenant(PLATFORM_TENANT) as conn:
            for doc in definitions(self._thresholds):
                parse_rule(doc, tenant=str(PLATFORM_TENANT))  # ours: a bad one is a bug, found at start
                await conn.execute(
                    "INSERT INTO rules (tenant_id, id, version, kind, enabled, definition) VALUES ($1, $2, 1, 'threshold', true, $3::jsonb)"
                    " ON CONFLICT (tenant_id, id) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()"
                    " WHERE rules.definition IS DISTINCT FROM EXCLUDED.definition",
                    PLATFORM_TENANT,
                    doc["id"],
                    json.dumps(doc),
                )

    async def sample_once(self) -> list[Point]:
        """Take, store and check one sample; returns its points."""
        started = time.perf_counter()
        try:
            points = await self._sample()
        except Exception:
            self._metrics.samples.labels("failed").inc()
            raise
        self._metrics.samples.labels("ok").inc()
        self._metrics.sample_seconds.observe(time.perf_counter() - started)
        self.last_points = points
        self.last_sample_at = self._clock()
        return points

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _sample(self) -> list[Point]:
        now, mono = self._clock(), self._monotonic()
        reading = figures.read(self._metrics)
        points: list[Point] = []
        if self._before is not None:
            points += figures.derive(self._before[1], reading, mono - self._before[0])
        self._before = (mono, reading)
        points.append(Point("writer_queue_rows", float(self._writer_depth())))
        pools = self._db.pools()
        self._metrics.sample_pools(pools)
        for name, pool in pools.items():
            points.append(Point("db_pool_in_use", float(pool.get_size() - pool.get_idle_size()), {"pool": name}))
            points.append(Point("db_pool_max", float(pool.get_max_size()), {"pool": name}))
        async with self._db.writer_transaction() as conn:
            rows = await conn.fetch("SELECT name, labels, value FROM pulse_platform_sample($1, $2)", now, self._offline_after_s)
            sampled = [Point(r["name"], float(r["value"]), json.loads(r["labels"])) for r in rows]
            points += sampled
            dead = next((p.value for p in sampled if p.name == "notify_dead_letters"), None)
            growth = None if dead is None else self._dead.growth(mono, dead)
            if growth is not None:
                points.append(Point("dead_letters_growth", growth))
            await conn.execute(
                "INSERT INTO system_metrics (time, name, labels, value, source)"
                " SELECT $1, n, l::jsonb, v, $5 FROM unnest($2::text[], $3::text[], $4::float8[]) AS u(n, l, v)",
                now,
                [p.name for p in points],
                [json.dumps(dict(p.labels), sort_keys=True) for p in points],
                [p.value for p in points],
                self._source,
            )
        self._metrics.set_sampled((p.name, p.labels, p.value) for p in sampled)
        if self._rules is not None and self._thresholds is not None:
            devices = readings(points, growth)
            at_ms = int(now.timestamp() * 1000)
            await self._rules.evaluate_readings(PLATFORM_TENANT, [Reading(d, m) for d, m in sorted(devices.items())], at_ms)
        return points

    async def run_forever(self) -> None:
        try:
            await self.install_rules()
        except Exception:
            log.exception("installing the platform health rules failed; sampling without them")
            self._thresholds = None
        self._before = (self._monotonic(), figures.read(self._metrics))  # the first sample's rates start here
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sample_once()
            except Exception:  # keep sampling; the next one may succeed
                log.exception("platform sample failed; next in %ss", self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="pulse-platform-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
