"""The public server (`pulse cloud serve`) believes X-Forwarded-For only from PULSE_TRUSTED_PROXIES:
by default from nobody, not even loopback (uvicorn's own default), so per-address limits count the
socket's peer. Real uvicorn on loopback, with the options `pulse cloud serve` passes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from pulse.cloud.db.embedded import free_port
from pulse.cloud.settings import Settings
from pulse.cloud.web import proxy_options

pytestmark = pytest.mark.integration


async def _echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"client": scope["client"][0] if scope.get("client") else None}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def _server(settings: Settings) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(_echo, host="127.0.0.1", port=port, lifespan="off", log_config=None, **proxy_options(settings.proxies))  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _client_seen(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(url + "/", headers={"X-Forwarded-For": "198.51.100.7"})
    return str(r.json()["client"])


async def test_forwarded_for_from_loopback_is_ignored_by_default() -> None:
    async with _server(Settings(mode="development")) as url:
        assert await _client_seen(url) == "127.0.0.1"


async def test_forwarded_for_is_believed_from_a_configured_proxy() -> None:
    async with _server(Settings(mode="development", trusted_proxies="127.0.0.1/32")) as url:
        assert await _client_seen(url) == "198.51.100.7"


def test_trusted_proxies_must_be_addresses() -> None:
    with pytest.raises(ValueError, match="PULSE_TRUSTED_PROXIES"):
        Settings(mode="development", trusted_proxies="not-an-address")
