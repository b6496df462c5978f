"""What anyone can reach on the public server, served by real uvicorn on loopback with the options
`pulse cloud serve` uses: bodies are limited while they are read (413 api.too_large), enrollment is
throttled per source address (429 enroll.rate_limited)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import uvicorn

from pulse.cloud.app import create_app
from pulse.cloud.db.embedded import free_port
from pulse.cloud.settings import Settings
from pulse.cloud.web import proxy_options

pytestmark = pytest.mark.integration


@asynccontextmanager
async def served(base: Settings, monotonic: Callable[[], float] | None = None, **changes: object) -> AsyncIterator[int]:
    settings = Settings(**{**base.model_dump(), "jwt_secret": base.jwt_secret.get_secret_value(), **changes})
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, monotonic=monotonic), host="127.0.0.1", port=port, log_config=None, lifespan="on", **proxy_options(settings.proxies)  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


def _exchange(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, dict[str, object]]:
    """Send a request head and some body bytes on a raw socket, never finishing the body, and read
    the answer. A server that waited for the whole body would never answer (the socket times out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head)
        for part in body_parts:
            s.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            _header(data, b"content-length") or 0
        ):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def _header(data: bytes, name: bytes) -> bytes | None:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@pytest.mark.parametrize("path", ["/enroll/v1", "/auth/login", "/auth/refresh"])
async def test_declared_body_over_the_limit_is_refused_before_it_is_read(cloud_settings: Settings, path: str) -> None:
    async with served(cloud_settings) as port:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: pulse.test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {256 * 1024 * 1024}\r\n\r\n"
        ).encode()
        status, body = await asyncio.to_thread(_exchange, port, head, [b'{"token": "'])
    assert status == 413 and body["code"] == "api.too_large", body


async def test_chunked_body_is_counted_as_it_streams_and_refused_past_the_limit(cloud_settings: Settings) -> None:
    async with served(cloud_settings, public_max_body_bytes=8192) as port:
        head = b"POST /enroll/v1 HTTP/1.1\r\nHost: pulse.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"a" * 4096
        parts = [b'1\r\n"\r\n'] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 3  # 12 KiB and no last chunk
        status, body = await asyncio.to_thread(_exchange, port, head, parts)
    assert status == 413 and body["code"] == "api.too_large", body


async def test_bodies_under_the_limit_reach_the_endpoint(cloud_settings: Settings) -> None:
    async with served(cloud_settings) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
        r = await c.post("/enroll/v1", json={"token": "pet_unknown", "csr": "x" * 10_000})
        assert r.status_code == 401 and r.json()["code"] == "enroll.token_invalid"
        r = await c.post("/enroll/v1", content=b"{" * 70_000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "api.too_large"


ENROLL = {"token": "pet_not-a-real-token", "csr": "x"}


async def test_enrollment_is_rate_limited_per_source_address_and_forwarded_for_does_not_escape_it(cloud_settings: Settings) -> None:
    async with served(cloud_settings, enroll_burst=2, enroll_rate_per_min=0.01) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            codes = []
            for i in range(4):  # a new X-Forwarded-For each time: believed from nobody by default
                r = await c.post("/enroll/v1", json=ENROLL, headers={"X-Forwarded-For": f"198.51.100.{i}"})
                codes.append((r.status_code, r.json()["code"]))
            assert codes == [(401, "enroll.token_invalid")] * 2 + [(429, "enroll.rate_limited")] * 2
            assert int(r.headers["retry-after"]) >= 1


async def test_behind_a_configured_proxy_each_forwarded_address_has_its_own_budget(cloud_settings: Settings) -> None:
    async with served(cloud_settings, enroll_burst=1, enroll_rate_per_min=0.01, trusted_proxies="127.0.0.1") as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            for i in range(3):
                r = await c.post("/enroll/v1", json=ENROLL, headers={"X-Forwarded-For": f"198.51.100.{i}"})
                assert r.status_code == 401, r.text
            r = await c.post("/enroll/v1", json=ENROLL, headers={"X-Forwarded-For": "198.51.100.0"})
            assert r.status_code == 429 and r.json()["code"] == "enroll.rate_limited"


async def test_the_enrollment_budget_refills_with_the_clock(cloud_settings: Settings) -> None:
    now = [1000.0]
    async with served(cloud_settings, monotonic=lambda: now[0], enroll_burst=1, enroll_rate_per_min=6) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as c:
            assert (await c.post("/enroll/v1", json=ENROLL)).status_code == 401
            r = await c.post("/enroll/v1", json=ENROLL)
            assert r.status_code == 429 and r.headers["retry-after"] == "10"
            now[0] += 10  # 6 a minute: one every 10 s
            assert (await c.post("/enroll/v1", json=ENROLL)).status_code == 401
