"""The NOC's pipeline strip: gateways -> ingest -> writer -> rules -> notify, each coloured by the
figure that drives it. Pure: latest sample values (name -> value, gateways' figures by gateway) in,
stages out; the thresholds are the platform health rules' (``HealthThresholds``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pulse.cloud.platform.health import HealthThresholds

Status = Literal["ok", "warn", "critical", "unknown"]


@dataclass(frozen=True, slots=True)
class Stage:
    id: str
    name: str
    status: Status
    figure: str  # the figure that drives the colour, as a person reads it


def _rate(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _level(value: float, limit: float) -> Status:
    return "critical" if value > limit else "warn" if value > limit / 2 else "ok"


def stages(latest: Mapping[str, float], backlog_ages: Mapping[str, float], t: HealthThresholds) -> list[Stage]:
    """``latest``: the newest value of each unlabelled figure (absent: never sampled);
    ``backlog_ages``: gateway name -> age of its oldest unsynced record, seconds."""
    if not latest:
        return [Stage(i, n, "unknown", "no sample yet") for i, n in _NAMES]
    oldest = max(backlog_ages.values(), default=0.0)
    worst = max(backlog_ages, key=lambda k: backlog_ages[k], default="")
    gw = Stage(
        "gateways",
        "Gateways",
        _level(oldest, t.gateway_backlog_age_s) if backlog_ages else "ok",
        f"{int(latest.get('gateways_connected', 0))} connected"
        + (f"; oldest backlog {oldest / 60:.1f} min ({worst})" if backlog_ages else "; no backlog"),
    )
    errors = latest.get("ingest_errors_per_second", 0.0)
    ingest = Stage(
        "ingest",
        "Ingest",
        "warn" if errors > 0 else "ok",
        _rate(latest.get("ingest_rows_per_second", 0.0)) + " rows/s" + (f", {errors:.2f} errors/s" if errors else ""),
    )
    queue = latest.get("writer_queue_rows", 0.0)
    p95 = latest.get("ingest_latency_p95_seconds")
    writer = Stage(
        "writer",
        "Writer",
        _level(queue, t.writer_queue_rows),
        f"{int(queue)} rows queued" + (f", p95 {p95 * 1000:.0f} ms" if p95 is not None else ""),
    )
    lag = latest.get("evaluation_lag_seconds", 0.0)
    rules = Stage("rules", "Rules", _level(lag, t.evaluation_lag_s), f"lag {lag:.1f} s")
    growth = latest.get("dead_letters_growth", 0.0)
    failed = latest.get("notify_failed_attempts", 0.0)
    notify = Stage(
        "notify",
        "Notify",
        "critical" if growth > 0 else "warn" if failed > 0 else "ok",
        f"{int(latest.get('notify_queue_depth', 0))} queued, {int(latest.get('notify_dead_letters', 0))} dead"
        + (f", {int(failed)} failed in 5 min" if failed else ""),
    )
    return [gw, ingest, writer, rules, notify]


_NAMES = (("gateways", "Gateways"), ("ingest", "Ingest"), ("writer", "Writer"), ("rules", "Rules"), ("notify", "Notify"))
