"""Local status for the installer: JSON, a small HTML page and Prometheus metrics on one port.

``GET /``             HTML page (refreshes itself every 5 s)
``GET /status``       the same figures as JSON (what ``pulse gateway status`` prints)
``GET /metrics``      Prometheus text format (prometheus-client, the gateway's own registry)

A sampler task refreshes one snapshot every second; the endpoints only read it, so a scrape or a
page reload never touches the broker or the database.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import html
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pulse.broker.server import DeviceBroker
from pulse.broker.sessions import SessionStore
from pulse.common.version import __version__
from pulse.edge.broker import Intake
from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings
from pulse.edge.connectors import page as connectors_page
from pulse.edge.pacing import link_line
from pulse.edge.rules import EdgeRuleRunner
from pulse.edge.twin import EdgeTwins

RATE_WINDOW_S = 10


class StatusBoard:
    """Samples the broker, the intake and the buffer once a second into a plain dict."""

    def __init__(
        self,
        settings: Settings,
        broker: DeviceBroker,
        intake: Intake,
        buffer: Buffer,
        rules: EdgeRuleRunner | None = None,
        link: Callable[[], dict[str, Any]] | None = None,
        twins: EdgeTwins | None = None,
        sessions: SessionStore | None = None,
        connectors: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.connectors = connectors
        """Per polled device: state, last poll, errors, poll duration against interval (edge/connectors/poller.py)."""
        self.rules = rules
        self.twins = twins
        self.settings = settings
        self.link = link
        self.broker = broker
        self.intake = intake
        self.buffer = buffer
        self.started = time.time()
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=RATE_WINDOW_S + 1)
        self.snapshot: dict[str, Any] = {}

    async def sample(self) -> dict[str, Any]:
        now = time.time()
        c = self.intake.counters
        self._samples.append((now, c.received))
        t0, n0 = self._samples[0]
        rate = (c.received - n0) / (now - t0) if now > t0 else 0.0
        stats = await self.buffer.stats()
        unsynced = [s for s in stats.streams if s.depth]
        oldest = min((s.oldest_received_ms for s in unsynced if s.oldest_received_ms is not None), default=None)
        self.snapshot = {
            "gateway": {"id": self.settings.gateway.id, "version": __version__, "uptime_s": round(now - self.started, 1)},
            "broker": {
                "connected_devices": self.broker.connected_devices(),
                "listeners": self._listeners(),
                "allow_anonymous": self.settings.broker.allow_anonymous,
            },
            "messages": {
                "per_s": round(rate, 1),
                **{k: v for k, v in asdict(c).items() if k != "by_qos"},
                "by_qos": list(c.by_qos),
            },
            "buffer": {
                "depth": sum(s.depth for s in stats.streams),
                "bytes": stats.total_bytes,
                "quota_bytes": stats.quota_bytes,
                "over_quota": stats.over_quota,
                "oldest_unsynced_age_s": round(now - oldest / 1000, 1) if oldest is not None else None,
                "streams": [asdict(s) for s in stats.streams],
                "duplicates_dropped": stats.duplicates,
                "commits": stats.commits,
            },
            "quarantine": {
                "count": stats.quarantine_count,
                "removed": stats.quarantine_removed,
                "acl_denied": stats.acl_denied,
                "last_reasons": stats.last_reasons,
            },
            "uplink": self.link() if self.link is not None else {"state": "not enrolled", "certificate_expires": None, "downlink": None},
            "alerts": await self._alerts(),
            "twin": await self._twin(),
            "sessions": self.sessions.snapshot() if self.sessions is not None else None,
            "connectors": self.connectors() if self.connectors is not None else [],
        }
        return self.snapshot

    async def _twin(self) -> dict[str, Any]:
        if self.twins is None:
            return {"waiting_commands": 0}
        return {**self.twins.counters, "waiting_commands": await self.twins.waiting()}

    async def _alerts(self) -> dict[str, Any]:
        if self.rules is None:
            return {"rules": 0, "open": []}
        open_ = await self.rules.alerts(open_only=True, limit=50)
        return {"rules": len(self.rules.rules), "open": [asdict(a) for a in open_]}

    def _listeners(self) -> list[str]:
        b = self.settings.broker
        out = [f"mqtt://{b.host}:{b.port}"]
        if b.tls_port is not None:
            out.append(f"mqtts://{b.tls_host or b.host}:{b.tls_port}")
        if b.ws_port is not None:
            out.append(f"ws://{b.ws_host or b.host}:{b.ws_port}")
        return out

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(1)


class _Metrics(Collector):
    """Prometheus view of the latest snapshot."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Any]:
        s = self.board.snapshot
        if not s:
            return
        yield GaugeMetricFamily(
            "pulse_gateway_connected_devices", "MQTT clients connected", value=s["broker"]["connected_devices"]
        )
        msgs = CounterMetricFamily("pulse_gateway_messages", "device messages by outcome", labels=["outcome"])
        for outcome in ("received", "stored", "duplicates", "quarantined", "denied", "forwarded", "storage_errors"):
            msgs.add_metric([outcome], s["messages"][outcome])
        yield msgs
        yield GaugeMetricFamily(
            "pulse_gateway_messages_per_second", "device messages per second (10 s window)", value=s["messages"]["per_s"]
        )
        depth = GaugeMetricFamily("pulse_gateway_buffer_records", "records waiting for the cloud", labels=["stream"])
        size = GaugeMetricFamily("pulse_gateway_buffer_bytes", "bytes counted against the quota", labels=["stream"])
        dropped = CounterMetricFamily("pulse_gateway_buffer_dropped", "records dropped by the quota", labels=["stream"])
        for st in s["buffer"]["streams"]:
            depth.add_metric([st["stream"]], st["depth"])
            size.add_metric([st["stream"]], st["bytes"])
            dropped.add_metric([st["stream"]], st["dropped_count"])
        yield depth
        yield size
        yield dropped
        yield GaugeMetricFamily("pulse_gateway_buffer_quota_bytes", "configured buffer quota", value=s["buffer"]["quota_bytes"])
        age = s["buffer"]["oldest_unsynced_age_s"]
        yield GaugeMetricFamily("pulse_gateway_oldest_unsynced_age_seconds", "age of the oldest buffered record", value=age or 0)
        yield GaugeMetricFamily("pulse_gateway_quarantine_records", "rows in the local quarantine", value=s["quarantine"]["count"])
        yield CounterMetricFamily("pulse_gateway_acl_denied", "publishes refused by the topic ACL", value=s["quarantine"]["acl_denied"])
        if s.get("sessions"):
            yield from session_metrics(s["sessions"])
        yield from uplink_metrics(s["uplink"])
        yield from connectors_page.metrics(s.get("connectors") or [])


def session_metrics(x: dict[str, Any]) -> Iterator[Any]:
    """Persistent MQTT sessions (edge/sessions.py) in ``/metrics``."""
    yield GaugeMetricFamily("pulse_gateway_sessions_persistent", "persistent MQTT sessions (clean session 0)", value=x["persistent"])
    yield GaugeMetricFamily("pulse_gateway_session_queue_messages", "QoS 1 messages queued for persistent sessions", value=x["queued_now"])
    yield CounterMetricFamily("pulse_gateway_session_redelivered", "queued messages sent again with DUP", value=x["redelivered"])
    dropped = CounterMetricFamily("pulse_gateway_session_dropped", "queued messages dropped by the bounds", labels=["reason"])
    dropped.add_metric(["full"], x["dropped_full"])
    dropped.add_metric(["age"], x["dropped_age"])
    yield dropped


def uplink_metrics(u: dict[str, Any]) -> Iterator[Any]:
    """The uplink's part of ``/metrics``, from its snapshot."""
    connected = GaugeMetricFamily("pulse_gateway_uplink_connected", "1 when the last request to the cloud succeeded")
    up = u["state"] == "connected" and (u.get("link") or {}).get("state", "connected") == "connected"
    connected.add_metric([], 1 if up else 0)
    yield connected
    if "bytes_sent" in u:
        yield CounterMetricFamily("pulse_gateway_uplink_bytes_sent", "batch bytes sent to the cloud", value=u["bytes_sent"])
        yield CounterMetricFamily("pulse_gateway_uplink_batches_acked", "batches the cloud acknowledged", value=u["batches_acked"])
        yield CounterMetricFamily("pulse_gateway_uplink_errors", "failed requests to the cloud", value=u["errors"])
        yield CounterMetricFamily("pulse_gateway_uplink_records_quarantined", "records the cloud refused for good",
                                  value=u["records_quarantined"])
    if "stalled" in u:
        yield GaugeMetricFamily("pulse_gateway_uplink_stalled",
                                "1 while the backlog has not moved for sync.stall_after_s with the link up", value=1 if u["stalled"] else 0)
        yield CounterMetricFamily("pulse_gateway_uplink_stalls", "times the watchdog restarted a stalled uplink", value=u["stalls"])
    if link := u.get("link"):
        state = GaugeMetricFamily("pulse_gateway_uplink_link_state", "1 for the link's state now", labels=["state"])
        for name in ("connected", "degraded", "down"):
            state.add_metric([name], 1 if link["state"] == name else 0)
        yield state
        if link["est_rate_bytes_per_s"] is not None:
            yield GaugeMetricFamily("pulse_gateway_uplink_est_rate_bytes_per_second", "estimated link rate from the acks",
                                    value=link["est_rate_bytes_per_s"])
        if link["est_rtt_s"] is not None:
            yield GaugeMetricFamily("pulse_gateway_uplink_est_rtt_seconds", "estimated round trip to the cloud", value=link["est_rtt_s"])
        sent = GaugeMetricFamily("pulse_gateway_uplink_recent_bytes", "batch bytes sent in the last window", labels=["window"])
        sent.add_metric(["hour"], link["bytes_last_hour"])
        sent.add_metric(["day"], link["bytes_last_day"])
        yield sent
        if "handshakes_last_hour" in link:
            shakes = GaugeMetricFamily("pulse_gateway_uplink_recent_tls_handshakes", "TLS handshakes made in the last window",
                                       labels=["window"])
            shakes.add_metric(["hour"], link["handshakes_last_hour"])
            shakes.add_metric(["day"], link["handshakes_last_day"])
            yield shakes


def metrics_text(snapshot: dict[str, Any]) -> str:
    """The uplink's metrics of a snapshot in Prometheus text format (what ``/metrics`` shows of it)."""

    class _Uplink(Collector):
        def collect(self) -> Iterator[Any]:
            yield from uplink_metrics(snapshot["uplink"])

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Uplink())
    return generate_latest(registry).decode()


def _sessions_html(x: dict[str, Any] | None) -> str:
    if not x:
        return ""
    return (f"<h2>Sessions</h2><p>{x['persistent']} persistent sessions, {x['queued_now']} messages queued for devices away "
            f"(at most {x['queue_max']} per session, {x['queue_max_age_s']} s); {x['redelivered']} sent again after a drop; "
            f"dropped: {x['dropped_full']} (queue full), {x['dropped_age']} (too old)</p>")


def _page(s: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(st['stream'])}</td><td>{st['depth']}</td><td>{st['bytes']}</td><td>{st['acked_seq']}</td>"
        f"<td>{st['dropped_count']}</td></tr>"
        for st in s["buffer"]["streams"]
    )
    reasons = (
        "".join(
            f"<li><code>{e(str(r['code']))}</code> {e(str(r['device_id']))}: {e(str(r['message']))}</li>"
            for r in reversed(s["quarantine"]["last_reasons"])
        )
        or "<li>none</li>"
    )
    age = s["buffer"]["oldest_unsynced_age_s"]
    alerts = (
        "".join(
            f"<li><b>{e(a['severity'])}</b> {e(a['device_id'])} / {e(a['rule_id'])}{' (flapping)' if a['flapping'] else ''}: {e(a['text'])}</li>"
            for a in s["alerts"]["open"]
        )
        or "<li>none</li>"
    )
    t = s.get("twin") or {"waiting_commands": 0}
    u = s["uplink"]
    if "bytes_sent" in u:
        down = u.get("downlink") or {}
        last_ok = "never" if u["last_success_ms"] is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(u["last_success_ms"] / 1000))
        stalled = ("<p><b>stalled</b>: the backlog has not moved while the link is up; the watchdog restarted the "
                   f"uplink ({u['stalls']} times so far)</p>") if u.get("stalled") else ""
        link = stalled + (f"<p>{e(u['state'])} to {e(u['sync_url'])} as {e(u['gateway_id'])}; last successful sync {last_ok}; "
                f"{u['batches_acked']} batches acked, {u['bytes_sent']} bytes sent; certificate valid until "
                f"{e(str(u['certificate_expires']))}; downlink {e(str(down.get('state')))}, cursor {down.get('cursor')}</p>"
                f"<p>last error: {e(str(u['last_error_code'] or '-'))} {e(str(u['last_error'] or ''))}</p>")
        if u.get("link"):
            link += f"<p>link: {e(link_line(u['link']))}</p>"
    else:
        link = f"<p>{e(u['state'])}</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>Pulse gateway {e(s["gateway"]["id"])}</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}td,th{{padding:.2em .8em;text-align:left}}</style></head>
<body><h1>Pulse gateway {e(s["gateway"]["id"])}</h1>
<p>version {e(s["gateway"]["version"])}, up {s["gateway"]["uptime_s"]:.0f} s; uplink: {e(s["uplink"]["state"])}</p>
<h2>Devices</h2><p>{s["broker"]["connected_devices"]} connected; {s["messages"]["per_s"]} messages/s;
listening on {e(", ".join(s["broker"]["listeners"]))}</p>
<h2>Buffer</h2><p>{s["buffer"]["depth"]} records, {s["buffer"]["bytes"]} of {s["buffer"]["quota_bytes"]} bytes;
oldest unsynced: {"-" if age is None else f"{age:.0f} s"}{" <b>over quota</b>" if s["buffer"]["over_quota"] else ""}</p>
<table><tr><th>stream</th><th>records</th><th>bytes</th><th>acked up to</th><th>dropped</th></tr>{rows}</table>
<h2>Cloud link</h2>{link}
<h2>Quarantine</h2><p>{s["quarantine"]["count"]} messages ({s["quarantine"]["acl_denied"]} refused by the topic ACL)</p>
<ul>{reasons}</ul>
<h2>Twins and commands</h2><p>{t.get("reported", 0)} reports merged, {t.get("desired", 0)} desired changes from the cloud;
commands: {t.get("commands_sent", 0)} sent, {t.get("answers", 0)} answered, {t.get("commands_expired", 0)} expired unsent,
{t["waiting_commands"]} waiting for their device</p>
{_sessions_html(s.get("sessions"))}
<h2>Alerts</h2><p>{s["alerts"]["rules"]} rules; {len(s["alerts"]["open"])} open alerts (raised here, synced to the cloud)</p>
<ul>{alerts}</ul>{connectors_page.block(s.get("connectors") or [])}<p><a href="/status">JSON</a> · <a href="/metrics">metrics</a></p></body></html>"""


def make_app(board: StatusBoard) -> Starlette:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Metrics(board))

    async def status(request: Request) -> Response:
        return JSONResponse(board.snapshot or await board.sample())

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(board.snapshot or await board.sample()))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/", page), Route("/status", status), Route("/metrics", metrics)])


class _Server(uvicorn.Server):
    """uvicorn inside the gateway's loop: the gateway, not uvicorn, handles SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """The status page's listening socket, bound here so that a port in use is our error, not uvicorn's exit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def server(board: StatusBoard, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(make_app(board), host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    return _Server(config)
