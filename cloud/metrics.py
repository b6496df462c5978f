"""Prometheus metrics of one cloud process (own registry per app, so tests can build many apps).

Names follow Prometheus' conventions: ``pulse_`` prefix, units in the name (``_seconds``,
``_bytes``, ``_rows``), counters exposed with ``_total``, latencies as histograms. The platform
sampler (``pulse.cloud.platform``) reads the same objects every few seconds and stores rates and
percentiles in ``system_metrics``, and sets the gauges that come from the database
(``set_sampled``), so ``/metrics`` and the NOC show one set of figures.

``HttpMetrics`` is the ASGI middleware that counts requests and their latency per route group
(``route_group``: ``api:<area>``, ``ingest``, ``auth``, ``ops``, ``console``, ``other``), a bounded
set of labels whatever paths clients try."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pulse.cloud.ingest.writer import FlushReport
from pulse.common import logs


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingest_messages = Counter(
            "pulse_ingest_messages", "Device messages received over HTTP ingest, by result", ["result"], registry=r
        )
        self.ingest_requests = Counter(
            "pulse_ingest_requests", "HTTP ingest requests, by response status", ["status"], registry=r
        )
        self.writer_rows = Counter("pulse_writer_rows", "Rows committed by the telemetry writer", registry=r)
        self.writer_failures = Counter("pulse_writer_failed_flushes", "Writer flushes the database refused", registry=r)
        self.flush_seconds = Histogram(
            "pulse_writer_flush_seconds",
            "Time to COPY and commit one writer batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.flush_rows = Histogram(
            "pulse_writer_flush_rows", "Rows per writer batch", buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000), registry=r
        )
        self.queue_rows = Gauge("pulse_writer_queue_rows", "Rows waiting in the writer queue (not yet being written)", registry=r)
        self.pool_connections = Gauge(
            "pulse_db_pool_connections", "Database pool connections, by pool and state", ["pool", "state"], registry=r
        )

        self.sync_batches = Counter(
            "pulse_sync_batches", "Gateway sync batches stored or acked, by verdict (write, partial, replay)", ["verdict"], registry=r
        )
        self.sync_records = Counter(
            "pulse_sync_records", "Records of gateway sync batches, by result (written, quarantined)", ["result"], registry=r
        )
        self.sync_tls_refused = Counter(
            "pulse_sync_tls_refused",
            "TLS handshakes the gateway sync listener refused, by reason (no_certificate, certificate_untrusted,"
            " certificate_expired, protocol_version, not_tls, timeout, closed, ...)",
            ["reason"],
            registry=r,
        )
        self.sync_bytes = Counter("pulse_sync_bytes_received", "Bytes of gateway sync batches received", registry=r)

        self.ingest_latency = Histogram(
            "pulse_ingest_latency_seconds",
            "Time from a request's rows entering the writer queue to their commit (the longest wait of each batch)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "pulse_http_requests", "HTTP requests, by route group and status class (2xx, 4xx, 5xx)", ["group", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "pulse_http_request_duration_seconds", "HTTP request latency, by route group", ["group"], buckets=LATENCY_BUCKETS, registry=r
        )
        # figures the platform sampler reads from the database (pulse_platform_sample) and sets
        self.notify_queue = Gauge("pulse_notify_queue_deliveries", "Notification deliveries pending or being sent", registry=r)
        self.notify_dead = Gauge("pulse_notify_dead_letters", "Notification deliveries dead-lettered (retries used up)", registry=r)
        self.notify_failed = Gauge(
            "pulse_notify_failed_attempts_5m", "Notification attempts that did not deliver, in the last 5 minutes", registry=r
        )
        self.evaluation_lag = Gauge(
            "pulse_rules_evaluation_lag_seconds", "Age of the oldest stored reading not yet evaluated by the rules (0: none waiting)", registry=r
        )
        self.gateways_connected = Gauge("pulse_gateways_connected", "Active gateways heard from within the offline limit", registry=r)
        self.gateway_backlog = Gauge(
            "pulse_gateway_backlog_records", "Records a gateway reported waiting to sync, by gateway", ["gateway", "name"], registry=r
        )
        self.gateway_backlog_age = Gauge(
            "pulse_gateway_backlog_age_seconds", "Age of a gateway's oldest unsynced record, by gateway", ["gateway", "name"], registry=r
        )
        self.devices = Gauge("pulse_devices", "Devices by evaluated state", ["state"], registry=r)
        self.alerts_open = Gauge("pulse_alerts_open", "Alerts open or acknowledged, every tenant", registry=r)
        self.samples = Counter("pulse_sampler_samples", "Platform samples taken, by result (ok, failed)", ["result"], registry=r)
        self.sample_seconds = Histogram(
            "pulse_sampler_duration_seconds", "Time to take and store one platform sample", buckets=LATENCY_BUCKETS, registry=r
        )

    def on_flush(self, report: FlushReport) -> None:
        self.flush_seconds.observe(report.seconds)
        if report.ok:
            self.flush_rows.observe(report.rows)
            self.writer_rows.inc(report.rows)
            self.ingest_latency.observe(report.waited_s)
        else:
            self.writer_failures.inc()

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_rows.set_function(lambda: float(depth()))

    def watch_stream(self, figures: Callable[[], dict[str, float]]) -> None:
        """With the ingest stream: this replica's connection, partitions held and what its writers stored."""
        for key, help_text in (
            ("connected", "1 while this replica is connected to the ingest stream"),
            ("partitions", "Ingest stream partitions whose writer runs on this replica"),
            ("stored_messages", "Stream messages this replica's partition writers stored (since start)"),
            ("skipped_messages", "Redelivered stream messages skipped as already stored (since start)"),
            ("takeovers", "Times this replica's writers (re)started a partition from its mark (since start)"),
            ("releases", "Partitions this replica handed over at a clean point, to share them out or stopping (since start)"),
            ("replicas", "Replicas alive sharing the stream's partitions, as this replica last counted them"),
        ):
            Gauge(f"pulse_stream_{key}", help_text, registry=self.registry).set_function(partial(_figure, figures, key))

    def sample_pools(self, pools: dict[str, asyncpg.Pool]) -> None:
        for name, pool in pools.items():
            size = pool.get_size()
            idle = pool.get_idle_size()
            self.pool_connections.labels(name, "in_use").set(size - idle)
            self.pool_connections.labels(name, "idle").set(idle)
            self.pool_connections.labels(name, "max").set(pool.get_max_size())

    def set_sampled(self, points: Iterable[tuple[str, Mapping[str, str], float]]) -> None:
        """Set the gauges whose figures come from the database's share of a sample
        (``pulse_platform_sample``: name, labels, value). Per-gateway series are replaced whole,
        so a gateway that stopped reporting a backlog leaves /metrics."""
        simple = {
            "notify_queue_depth": self.notify_queue,
            "notify_dead_letters": self.notify_dead,
            "notify_failed_attempts": self.notify_failed,
            "evaluation_lag_seconds": self.evaluation_lag,
            "gateways_connected": self.gateways_connected,
            "alerts_open": self.alerts_open,
        }
        per_gateway = {"gateway_backlog_records": self.gateway_backlog, "gateway_backlog_age_seconds": self.gateway_backlog_age}
        for gauge in per_gateway.values():
            gauge.clear()
        self.devices.clear()
        for name, labels, value in points:
            if name in simple:
                simple[name].set(value)
            elif name in per_gateway:
                per_gateway[name].labels(labels.get("gateway", ""), labels.get("name", "")).set(value)
            elif name == "devices":
                self.devices.labels(labels.get("state", "")).set(value)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_TOP_LEVEL = {"ingest": "ingest", "auth": "auth", "health": "ops", "metrics": "ops", "openapi.json": "ops", "docs": "ops"}


def route_group(path: str, api_areas: frozenset[str]) -> str:
    """The label for a request path: ``api:<area>`` for /api/v1/<area>/... when ``area`` is one the
    app serves, the top-level groups in ``_TOP_LEVEL``, ``console`` for the web console, else
    ``other`` (so unknown paths cannot grow the label set)."""
    parts = path.split("/", 4)
    first = parts[1] if len(parts) > 1 else ""
    if first == "api":
        area = parts[3] if len(parts) > 3 and parts[2] == "v1" else ""
        return f"api:{area}" if area in api_areas else "other"
    if first in _TOP_LEVEL:
        return _TOP_LEVEL[first]
    if first in ("", "assets", "console", "favicon.ico", "index.html"):
        return "console"
    return "other"


def api_areas(paths: Iterable[str]) -> frozenset[str]:
    """The areas (``/api/v1/<area>``) of the app's route paths."""
    return frozenset(p.split("/")[3] for p in paths if p.startswith("/api/v1/") and len(p.split("/")) > 3)


def route_paths(routers: Iterable[Any]) -> Iterator[str]:
    """The paths of the routes of ``routers`` (FastAPI routers), and of routers they include."""
    for router in routers:
        for route in router.routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                yield path
            included = getattr(route, "original_router", None)  # a router included in this one
            if included is not None:
                yield from route_paths([included])


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_of(scope: Any) -> str:
    """The client's ``X-Request-ID`` when it is a sane token, else a new one (logged and answered)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if _REQUEST_ID.fullmatch(text):
                return text
    return uuid.uuid4().hex


class HttpMetrics:
    """ASGI middleware: per route group, requests by status class and latency (HTTP only; the
    live WebSocket is not a request with a latency); and each request's id (``X-Request-ID``, in
    its log records and its answer). ``areas`` is read once, at the first request,
    from the app's routes."""

    def __init__(self, app: Any, *, metrics: Metrics, areas: Callable[[], frozenset[str]]) -> None:
        self.app = app
        self._metrics = metrics
        self._areas_of = areas
        self._areas: frozenset[str] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._areas is None:
            try:
                self._areas = self._areas_of()
            except Exception:  # noqa: BLE001 - counting must never cost a request its answer
                self._areas = frozenset()
        group = route_group(scope.get("path", ""), self._areas)
        status = 500
        started = time.perf_counter()
        request_id = request_id_of(scope)

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            with logs.bound(request_id=request_id):
                await self.app(scope, receive, sending)
        finally:
            self._metrics.http_seconds.labels(group).observe(time.perf_counter() - started)
            self._metrics.http_requests.labels(group, f"{status // 100}xx").inc()


def _figure(figures: Callable[[], dict[str, float]], key: str) -> float:
    return float(figures()[key])
