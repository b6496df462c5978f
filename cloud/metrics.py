"""Prometheus metrics of one cloud process (own registry per app, so tests can build many apps)."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pulse.cloud.ingest.writer import FlushReport


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

    def on_flush(self, report: FlushReport) -> None:
        self.flush_seconds.observe(report.seconds)
        if report.ok:
            self.flush_rows.observe(report.rows)
            self.writer_rows.inc(report.rows)
        else:
            self.writer_failures.inc()

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_rows.set_function(lambda: float(depth()))

    def sample_pools(self, pools: dict[str, asyncpg.Pool]) -> None:
        for name, pool in pools.items():
            size = pool.get_size()
            idle = pool.get_idle_size()
            self.pool_connections.labels(name, "in_use").set(size - idle)
            self.pool_connections.labels(name, "idle").set(idle)
            self.pool_connections.labels(name, "max").set(pool.get_max_size())
