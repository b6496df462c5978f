"""What one platform sample says, derived from two readings of the process's Prometheus objects.

Pure: no I/O, no clock. ``read(metrics)`` takes a ``Reading`` (counter totals and histogram bucket
counts); ``derive(before, after, seconds)`` turns two readings into the rates and percentiles
stored in ``system_metrics``:

| name | labels | what |
|---|---|---|
| ``ingest_rows_per_second`` | | rows the telemetry writer committed per second |
| ``ingest_latency_p95_seconds`` | | 95th percentile of queue-to-commit time of writer batches |
| ``http_requests_per_second`` | ``group`` | HTTP requests per second |
| ``http_errors_per_second`` | ``group`` | of those, answered 5xx |
| ``http_latency_p95_seconds`` | ``group`` | 95th percentile of request latency |

A percentile is the upper bound of the histogram bucket where it falls (the resolution
Prometheus' ``histogram_quantile`` starts from), and absent when nothing was observed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Labels = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    value: float
    labels: Labels = field(default_factory=dict)


Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True, slots=True)
class Reading:
    writer_rows: float = 0.0
    ingest_latency: Buckets = ()
    http_requests: Mapping[str, float] = field(default_factory=dict)  # group -> requests
    http_errors: Mapping[str, float] = field(default_factory=dict)  # group -> 5xx answers
    http_latency: Mapping[str, Buckets] = field(default_factory=dict)  # group -> buckets


def buckets_of(histogram: Any, label: str | None = None) -> dict[str, Buckets]:
    """A prometheus_client histogram's cumulative buckets, by the value of ``label`` ("" without one)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for family in histogram.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                key = s.labels.get(label, "") if label else ""
                out.setdefault(key, []).append((float(s.labels["le"]), s.value))
    return {k: tuple(sorted(v)) for k, v in out.items()}


def read(metrics: Any) -> Reading:
    """The totals of ``pulse.cloud.metrics.Metrics`` that ``derive`` needs."""
    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in metrics.http_requests.collect():
        for s in family.samples:
            if s.name.endswith("_total"):
                group = s.labels["group"]
                requests[group] = requests.get(group, 0.0) + s.value
                if s.labels["status"] == "5xx":
                    errors[group] = errors.get(group, 0.0) + s.value
    rows = next((s.value for f in metrics.writer_rows.collect() for s in f.samples if s.name.endswith("_total")), 0.0)
    return Reading(
        writer_rows=rows,
        ingest_latency=buckets_of(metrics.ingest_latency).get("", ()),
        http_requests=requests,
        http_errors=errors,
        http_latency=buckets_of(metrics.http_seconds, "group"),
    )


def quantile(before: Buckets, after: Buckets, q: float) -> float | None:
    """The ``q`` quantile of what was observed between two readings of one histogram (the upper
    bound of its bucket; the largest finite bound when it fell in +Inf); None if nothing was."""
    earlier = dict(before)
    deltas = [(le, count - earlier.get(le, 0.0)) for le, count in after]
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    finite = [le for le, _ in deltas if not math.isinf(le)]
    for le, cumulative in deltas:
        if cumulative >= q * total:
            return le if not math.isinf(le) else (finite[-1] if finite else None)
    return None


def derive(before: Reading, after: Reading, seconds: float) -> list[Point]:
    """Rates and percentiles over the ``seconds`` between two readings (a counter that went down,
    a restart, counts from zero)."""
    if seconds <= 0:
        return []

    def rate(b: float, a: float) -> float:
        return round((a - b if a >= b else a) / seconds, 6)

    points = [Point("ingest_rows_per_second", rate(before.writer_rows, after.writer_rows))]
    if (p95 := quantile(before.ingest_latency, after.ingest_latency, 0.95)) is not None:
        points.append(Point("ingest_latency_p95_seconds", p95))
    for group in sorted(after.http_requests):
        labels = {"group": group}
        points.append(Point("http_requests_per_second", rate(before.http_requests.get(group, 0.0), after.http_requests[group]), labels))
        points.append(
            Point("http_errors_per_second", rate(before.http_errors.get(group, 0.0), after.http_errors.get(group, 0.0)), labels)
        )
        latency = quantile(before.http_latency.get(group, ()), after.http_latency.get(group, ()), 0.95)
        if latency is not None:
            points.append(Point("http_latency_p95_seconds", latency, labels))
    return points
