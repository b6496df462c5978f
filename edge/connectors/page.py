"""The connectors' block of the gateway's status page and metrics (edge/status.py shows it)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def _when(ms: int | None) -> str:
    return "never" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def block(rows: Sequence[dict[str, Any]]) -> str:
    """HTML: one row per polled device (state, last poll, errors, poll duration against interval)."""
    if not rows:
        return ""
    e = html.escape
    body = "".join(
        f"<tr><td>{e(r['id'])}</td><td>{e(r['kind'])} {e(r['line'])}</td><td><b>{e(r['state'])}</b></td>"
        f"<td>{_when(r['last_poll_ms'])}</td><td>{'-' if r['duration_ms'] is None else r['duration_ms']} ms / {r['interval_s']:g} s</td>"
        f"<td>{r['polls']} ({r['failed_polls']} failed, {r['point_errors']} point errors, {r['skipped']} skipped)</td>"
        f"<td>{e('-' if r['last_error'] is None else str(r['last_error']['code']) + ': ' + str(r['last_error']['message']))}</td></tr>"
        for r in rows
    )
    return ("<h2>Polled devices (connectors)</h2><table><tr><th>device</th><th>line</th><th>state</th><th>last poll</th>"
            f"<th>poll took / interval</th><th>polls</th><th>last error</th></tr>{body}</table>")


def metrics(rows: Sequence[dict[str, Any]]) -> Iterator[Any]:
    polls = CounterMetricFamily("pulse_gateway_connector_polls", "polls of a connector device by outcome", labels=["device", "outcome"])
    duration = GaugeMetricFamily("pulse_gateway_connector_poll_seconds", "how long the last poll took", labels=["device"])
    up = GaugeMetricFamily("pulse_gateway_connector_up", "1 when the device's last poll succeeded", labels=["device"])
    for r in rows:
        polls.add_metric([r["id"], "ok"], r["polls"] - r["failed_polls"])
        polls.add_metric([r["id"], "failed"], r["failed_polls"])
        duration.add_metric([r["id"]], (r["duration_ms"] or 0) / 1000)
        up.add_metric([r["id"]], 1 if r["state"] == "ok" else 0)
    yield polls
    yield duration
    yield up
