"""Platform health rules: the cloud's own pipeline, watched by the same rules engine as devices.

The rules belong to the platform tenant (``PLATFORM_TENANT``, created by migration 0015), so their
alerts go through the same alert store (one open alert per fingerprint, hysteresis, history) and
the same notification routing: operators point the platform tenant's routes at their channels.
The thresholds come from settings (``HealthThresholds``, PULSE_HEALTH_*); ``install`` writes them
as the tenant's rules at start. Each sample becomes readings of a few pseudo-devices:

| device | metric | rule (default) |
|---|---|---|
| ``platform:rules`` | ``evaluation_lag_seconds`` | ``platform.evaluation_lag``: over 60 s (major) |
| ``platform:notify`` | ``dead_letters_growth`` | ``platform.dead_letters``: any new dead letter in the last 15 min (major) |
| ``platform:writer`` | ``writer_queue_rows`` | ``platform.writer_queue``: over 50,000 rows (major) |
| ``platform:db`` | ``db_pool_in_use_ratio`` | ``platform.db_pool``: app pool fully in use (critical) |
| ``gateway:<id>`` | ``gateway_backlog_age_seconds`` | ``platform.gateway_backlog``: oldest unsynced record over 15 min (major) |

Pure helpers (``definitions``, ``readings``, ``DeadLetterWindow``) decide; the sampler performs.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pulse.cloud.platform.figures import Point

PLATFORM_TENANT = uuid.UUID("00000000-0000-0000-0000-00000000b0b0")
PLATFORM_SLUG = "pulse-platform"


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    evaluation_lag_s: float = 60.0
    dead_letter_window_s: float = 900.0
    writer_queue_rows: int = 50_000
    gateway_backlog_age_s: float = 900.0
    pool_in_use_ratio: float = 1.0


def definitions(t: HealthThresholds) -> list[dict[str, Any]]:
    """The platform rules as rule documents (``pulse.protocol.rules.parse_rule``)."""
    return [
        {
            "id": "platform.evaluation_lag",
            "name": "Rules evaluation is behind",
            "severity": "major",
            "metric": "evaluation_lag_seconds",
            "operator": "GT",
            "threshold": t.evaluation_lag_s,
            "clear_threshold": t.evaluation_lag_s / 2,
        },
        {
            "id": "platform.dead_letters",
            "name": "Notifications are being dead-lettered",
            "severity": "major",
            "metric": "dead_letters_growth",
            "operator": "GT",
            "threshold": 0,
        },
        {
            "id": "platform.writer_queue",
            "name": "Telemetry writer queue is backing up",
            "severity": "major",
            "metric": "writer_queue_rows",
            "operator": "GT",
            "threshold": t.writer_queue_rows,
            "clear_threshold": t.writer_queue_rows / 2,
        },
        {
            "id": "platform.db_pool",
            "name": "Database pool exhausted",
            "severity": "critical",
            "metric": "db_pool_in_use_ratio",
            "operator": "GTE",
            "threshold": t.pool_in_use_ratio,
        },
        {
            "id": "platform.gateway_backlog",
            "name": "A gateway's backlog is getting old",
            "severity": "major",
            "metric": "gateway_backlog_age_seconds",
            "operator": "GT",
            "threshold": t.gateway_backlog_age_s,
            "clear_threshold": t.gateway_backlog_age_s / 2,
        },
    ]


class DeadLetterWindow:
    """How many dead letters appeared within the last ``window_s`` (seconds on the sampler's
    monotonic clock): the current count minus the smallest count seen in the window."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._seen: deque[tuple[float, float]] = deque()

    def growth(self, at: float, count: float) -> float:
        self._seen.append((at, count))
        while len(self._seen) > 1 and self._seen[0][0] < at - self._window_s:
            self._seen.popleft()
        return max(0.0, count - min(c for _, c in self._seen))


def readings(points: Iterable[Point], dead_letters_growth: float | None) -> dict[str, dict[str, float]]:
    """A sample's points as pseudo-device readings (device -> metrics) for the platform rules."""
    out: dict[str, dict[str, float]] = {}
    in_use: dict[str, float] = {}
    size: dict[str, float] = {}
    for p in points:
        if p.name == "evaluation_lag_seconds":
            out.setdefault("platform:rules", {})[p.name] = p.value
        elif p.name == "writer_queue_rows":
            out.setdefault("platform:writer", {})[p.name] = p.value
        elif p.name == "gateway_backlog_age_seconds" and p.labels.get("gateway"):
            out.setdefault(f"gateway:{p.labels['gateway']}", {})[p.name] = p.value
        elif p.name == "db_pool_in_use":
            in_use[p.labels.get("pool", "")] = p.value
        elif p.name == "db_pool_max":
            size[p.labels.get("pool", "")] = p.value
    if size.get("app"):
        out.setdefault("platform:db", {})["db_pool_in_use_ratio"] = round(in_use.get("app", 0.0) / size["app"], 4)
    if dead_letters_growth is not None:
        out.setdefault("platform:notify", {})["dead_letters_growth"] = dead_letters_growth
    return out
