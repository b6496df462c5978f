"""Real receivers on loopback for the notify tests: an HTTP capture server (uvicorn), the send context."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from notify_cloud import NotifyCloud, fast_notify, notify_cloud
from notify_receivers import NOW, Captured, LocalCA, Receiver

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify.model import Notification
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.ssrf import AddressGuard, SsrfPolicy, guarded_client
from pulse.cloud.settings import Settings


def _capture_app(receiver: Receiver) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        receiver.requests.append(Captured(scope["method"], scope["path"], headers, body, headers.get("host", "")))
        queue = receiver.script.get(scope["path"]) or []
        status, extra, out = queue.pop(0) if queue else (200, {}, b"ok")
        if "x-test-hang-s" in extra:  # a receiver that takes the request and does not answer (yet)
            extra = dict(extra)
            await asyncio.sleep(float(extra.pop("x-test-hang-s")))
        raw_headers = [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": out})

    return app


async def _serve(receiver: Receiver, port: int, **ssl_kwargs: Any) -> AsyncIterator[Receiver]:
    config = uvicorn.Config(_capture_app(receiver), host="127.0.0.1", port=port, log_level="warning", lifespan="off", **ssl_kwargs)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    port = free_port()
    async for r in _serve(Receiver(f"http://127.0.0.1:{port}"), port):
        yield r


@pytest.fixture
def test_ca(tmp_path: Path) -> LocalCA:
    return LocalCA(CertificateAuthority.load_or_create(tmp_path / "ca"), tmp_path / "ca")


@pytest.fixture
async def tls_receiver(test_ca: LocalCA, tmp_path: Path) -> AsyncIterator[Receiver]:
    """HTTPS on 127.0.0.1 with a certificate for the name ``localhost`` only (not for the IP)."""
    cert, key = test_ca.server_files(tmp_path, ["localhost"])
    port = free_port()
    async for r in _serve(Receiver(f"https://localhost:{port}"), port, ssl_certfile=str(cert), ssl_keyfile=str(key)):
        yield r


LOOPBACK = SsrfPolicy.allowing(["127.0.0.0/8", "::1/128"])


@pytest.fixture
async def ctx(test_ca: LocalCA) -> AsyncIterator[SendContext]:
    """What the worker will pass: one guarded client, loopback allowed (as in development), a fixed clock."""
    guard = AddressGuard(LOOPBACK)
    async with guarded_client(guard, timeout_s=5, verify=test_ca.client_context) as http:
        yield SendContext(http=http, guard=guard, now=lambda: NOW, timeout_s=5, tls_context=test_ca.client_context)


@pytest.fixture
def make_notification() -> Callable[..., Notification]:
    def make(**changes: Any) -> Notification:
        base: dict[str, Any] = {
            "alert_id": "al-1001",
            "fingerprint": "tenant-a/pump-7/rule-temp-high",
            "event": "opened",
            "severity": "critical",
            "tenant": "tenant-a",
            "device": "pump-7",
            "site": "Plant <North> & Co",
            "metric": "temp",
            "value": 92.5,
            "threshold": 80.0,
            "explanation": "temp was above 80 for 5 minutes (last 92.5 at 07:59:30)",
            "console_url": "https://pulse.example.com/alerts/al-1001",
            "occurred_at": NOW - dt.timedelta(minutes=1),
        }
        return Notification(**(base | changes))

    return make


@pytest.fixture
async def ncloud(cloud_settings: Settings) -> AsyncIterator[NotifyCloud]:
    async with notify_cloud(cloud_settings, fast_notify()) as c:
        yield c
