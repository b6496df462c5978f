"""The webhook inbox of `pulse up`: a local receiver for Pulse's webhook notifications, so a
newcomer sees alerts arrive without configuring Slack or PagerDuty.

It is also the reference receiver docs/notifications.md describes: it recomputes the
``X-Signature-SHA256`` HMAC over the raw body, refuses signatures older than five minutes (a
captured request cannot be replayed later) and counts repeats of one ``X-Pulse-Event-Id`` instead
of listing them twice.

Every accepted notification is appended to ``inbox.jsonl`` in the data directory, so a second
start shows what arrived before. ``GET /`` is a page for people (it refreshes itself),
``GET /messages`` the same as JSON, newest first, ``POST /hook`` the receiving end.
"""

from __future__ import annotations

import datetime as dt
import hmac
import html
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pulse.cloud.notify.senders.webhook import signature

MAX_BODY_BYTES = 256 * 1024
SIGNATURE_MAX_AGE_S = 300
KEEP = 1000  # messages kept in memory and shown; the file keeps everything


@dataclass
class Message:
    event_id: str
    received_at: str
    body: dict[str, Any]
    repeats: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "received_at": self.received_at, "repeats": self.repeats, "body": self.body}


class Inbox:
    """Receives, checks and keeps webhook notifications; ``serve`` runs it on a thread."""

    def __init__(self, path: Path, secret: str) -> None:
        self.path = path
        self.secret = secret
        self._lock = threading.Lock()
        self._messages: OrderedDict[str, Message] = OrderedDict()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    self._keep(Message(row["event_id"], row["received_at"], row["body"], row.get("repeats", 0)))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: skip it
        self.app = Starlette(
            routes=[
                Route("/", self._page, methods=["GET"]),
                Route("/messages", self._list, methods=["GET"]),
                Route("/hook", self._hook, methods=["POST"]),
            ]
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def _keep(self, message: Message) -> None:
        self._messages[message.event_id] = message
        self._messages.move_to_end(message.event_id)
        while len(self._messages) > KEEP:
            self._messages.popitem(last=False)

    def messages(self) -> list[Message]:
        with self._lock:
            return list(reversed(self._messages.values()))

    async def _hook(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"code": "inbox.too_large", "message": f"bodies are at most {MAX_BODY_BYTES} bytes"}, 413)
        ts_text = request.headers.get("x-signature-timestamp", "")
        given = request.headers.get("x-signature-sha256", "")
        if not ts_text.isdigit() or not given:
            return JSONResponse({"code": "inbox.unsigned", "message": "X-Signature-Timestamp and X-Signature-SHA256 are required"}, 401)
        if abs(time.time() - int(ts_text)) > SIGNATURE_MAX_AGE_S:
            return JSONResponse({"code": "inbox.stale_signature", "message": "the signature's timestamp is more than 5 minutes away"}, 401)
        if not hmac.compare_digest(signature(self.secret, int(ts_text), raw), given):
            return JSONResponse({"code": "inbox.bad_signature", "message": "the signature does not match the body"}, 401)
        try:
            body = json.loads(raw)
        except ValueError:
            return JSONResponse({"code": "inbox.bad_json", "message": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"code": "inbox.bad_json", "message": "the body is not a JSON object"}, 400)
        event_id = request.headers.get("x-pulse-event-id") or str(body.get("event_id", ""))
        if not event_id:
            return JSONResponse({"code": "inbox.no_event_id", "message": "X-Pulse-Event-Id is required"}, 400)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        with self._lock:
            seen = self._messages.get(event_id)
            if seen is not None:
                seen.repeats += 1
                message = seen
            else:
                message = Message(event_id, now, body)
                self._keep(message)
            with self.path.open("a") as f:
                f.write(json.dumps(message.as_dict()) + "\n")
        return Response(status_code=204)

    async def _list(self, request: Request) -> Response:
        return JSONResponse([m.as_dict() for m in self.messages()])

    async def _page(self, request: Request) -> Response:
        rows = []
        for m in self.messages():
            b = m.body
            sev = html.escape(str(b.get("severity", "")))
            value = "" if b.get("value") is None else html.escape(str(b.get("value")))
            rows.append(
                f"<tr class='{sev}'><td>{html.escape(m.received_at[11:19])}</td><td>{html.escape(str(b.get('event', '')))}</td>"
                f"<td><span class='sev'>{sev}</span></td><td>{html.escape(str(b.get('device', '')))}</td>"
                f"<td>{html.escape(str(b.get('metric') or ''))} {value}</td>"
                f"<td>{html.escape(str(b.get('explanation', '')))}</td>"
                f"<td>{'' if not m.repeats else f'{m.repeats} repeat(s)'}</td>"
                f"<td><a href='{html.escape(str(b.get('console_url', '#')))}'>open</a></td></tr>"
            )
        table = "".join(rows) or "<tr><td colspan='8' class='empty'>Nothing yet. Alerts that open, are acknowledged or close show up here.</td></tr>"
        page = f"""<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>Pulse webhook inbox</title><style>
body{{font:14px system-ui,sans-serif;margin:2rem;color:#1d2330}} table{{border-collapse:collapse;width:100%}}
td,th{{padding:.4rem .6rem;border-bottom:1px solid #e3e6ee;text-align:left;vertical-align:top}}
.sev{{padding:.1rem .4rem;border-radius:.3rem;background:#e3e6ee}} .critical .sev{{background:#d64545;color:#fff}}
.major .sev{{background:#e8833a;color:#fff}} .minor .sev,.warning .sev{{background:#f2c94c}} .empty{{color:#777}}
</style></head><body><h1>Webhook inbox</h1>
<p>{len(self._messages)} notification(s) received by this demo's webhook channel. Signatures are checked; this page refreshes itself.</p>
<table><tr><th>time (UTC)</th><th>event</th><th>severity</th><th>device</th><th>value</th><th>why</th><th></th><th></th></tr>{table}</table>
</body></html>"""
        return HTMLResponse(page)

    def serve(self, host: str, port: int) -> None:
        """Start on a background thread; returns once it listens."""
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="webhook-inbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the webhook inbox could not listen on {host}:{port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
