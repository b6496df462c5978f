"""Firmware for the site's devices, fetched over the uplink once (docs/gateway.md "Firmware").

When the gateway publishes a ``firmware.update`` command (edge/twin.py), it adds ``url``: its own
local download for that device, good until ``firmware.url_ttl_s`` from now (an HMAC token, see
``pulse.protocol.firmware.local_token``), and starts fetching the artifact into its cache.

The cache (``<data_dir>/firmware/<artifact>``) is filled once per artifact, whatever the number of
devices: one fetch at a time per artifact, over the gateway's mutual-TLS link to the cloud
(``GET /sync/v1/firmware/{artifact}``), resumed with ``Range: bytes=N-`` from the partial file after
a cut, and checked against the manifest's size and SHA-256 before a byte is served. A file that
fails the check is deleted and fetched again from the start.

The local server (``firmware.port``, plain HTTP on the site network) answers
``GET /firmware/{artifact}?device=&expires=&token=``: a device whose URL is good gets the cached
file (waiting while the gateway fetches it); anything else gets 403 ``firmware.url_expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from pulse.edge.errors import SyncError
from pulse.edge.link import Connection
from pulse.edge.throttle import TokenBucket
from pulse.protocol import firmware
from pulse.protocol.commands import Command
from pulse.protocol.errors import Code, FirmwareError
from pulse.protocol.firmware import Manifest

log = logging.getLogger("pulse.edge.firmware")

KEY_FILE = "url.key"
MAX_MISMATCHES = 3
"""Downloads in a row that fail the hash check before the gateway gives up (a wrong manifest)."""


@dataclass
class FirmwareCounts:
    uplink_bytes: int = 0
    """Bytes of artifacts received from the cloud."""
    fetches: int = 0
    """Artifacts fetched to the end and verified."""
    resumes: int = 0
    """Requests that continued a partial download (``Range``)."""
    served: int = 0
    """Complete downloads served to local devices."""
    served_bytes: int = 0
    refused: int = 0
    """Local requests refused (bad or expired URL)."""


class FirmwareCache:
    """Artifacts on disk, fetched once each over ``connection`` (``None``: not enrolled, nothing to fetch)."""

    def __init__(self, root: Path, connection: Connection | None, *, retry_s: float = 1.0, retry_cap_s: float = 30.0,
                 chunk_timeout_s: float = 60.0, bucket: TokenBucket | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = root
        self.bucket = bucket
        """The uplink's bandwidth cap (``sync.bandwidth_bytes_per_s``), shared: firmware bytes count
        against the same budget as the data, and the fetch reads no faster than the cap allows."""
        self.clock = clock
        self.connection = connection
        self.retry_s = retry_s
        self.retry_cap_s = retry_cap_s
        self.chunk_timeout_s = chunk_timeout_s
        self.counts = FirmwareCounts()
        self.manifests: dict[str, Manifest] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._fetching: dict[str, asyncio.Task[Path]] = {}
        root.mkdir(parents=True, exist_ok=True)

    def path(self, artifact: str) -> Path:
        return self.root / artifact

    def ready(self, artifact: str) -> bool:
        return self.path(artifact).exists()

    def prefetch(self, m: Manifest) -> None:
        """Start fetching in the background (a second call while one runs does nothing)."""
        self.manifests[m.artifact] = m
        task = self._fetching.get(m.artifact)
        if (task is None or task.done()) and not self.ready(m.artifact):
            self._fetching[m.artifact] = asyncio.get_running_loop().create_task(self.ensure(m), name=f"firmware-{m.artifact}")

    async def stop(self) -> None:
        for task in self._fetching.values():
            task.cancel()
        await asyncio.gather(*self._fetching.values(), return_exceptions=True)
        self._fetching.clear()

    async def ensure(self, m: Manifest) -> Path:
        """The verified file of ``m``, fetched (or resumed) first if needed; retries link failures
        with backoff until it has it (cancel to give up)."""
        self.manifests[m.artifact] = m
        lock = self._locks.setdefault(m.artifact, asyncio.Lock())
        async with lock:
            final = self.path(m.artifact)
            if final.exists():
                return final
            delay, mismatches = self.retry_s, 0
            while True:
                try:
                    return await self._fetch(m)
                except FirmwareError as exc:
                    mismatches += 1
                    if mismatches >= MAX_MISMATCHES:
                        raise
                    log.error("firmware %s: %s; fetching it again from the start", m.artifact, exc.message)
                except (SyncError, OSError, TimeoutError) as exc:
                    log.warning("firmware %s: download interrupted (%s); resuming in %.1fs", m.artifact, exc, delay)
                    if self.connection is not None:
                        await self.connection.drop()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_cap_s)

    async def _fetch(self, m: Manifest) -> Path:
        if self.connection is None:
            raise SyncError(Code.GATEWAY_CLOUD_ERROR, "this gateway is not enrolled: it cannot fetch firmware")
        final, part = self.path(m.artifact), self.path(m.artifact + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > m.size:
            part.unlink()
            have = 0
        if have < m.size:
            if have:
                self.counts.resumes += 1
            client = self.connection.get()
            with part.open("ab") as out:
                async for chunk in client.firmware(m.artifact, have, chunk_timeout_s=self.chunk_timeout_s):
                    out.write(chunk)
                    self.counts.uplink_bytes += len(chunk)
                    if self.bucket is not None and (wait := self.bucket.reserve(len(chunk), self.clock())) > 0:
                        await asyncio.sleep(wait)  # reading no faster than the cap slows the sender (TCP flow control)
        digest = hashlib.sha256()
        with part.open("rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                digest.update(block)
        try:
            firmware.check(m, digest.hexdigest(), part.stat().st_size)
        except FirmwareError:
            part.unlink()  # start again from zero: the bytes are not the artifact
            raise
        os.replace(part, final)
        self.counts.fetches += 1
        log.info("firmware %s (%s %s) cached: %d bytes, verified", m.artifact, m.model, m.version, m.size)
        return final


class LocalUrls:
    """Per-device, expiring download URLs for this gateway's local server."""

    def __init__(self, key: bytes, base_url: str, ttl_s: float, clock: Callable[[], int] | None = None) -> None:
        self.key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s
        self.clock = clock or (lambda: int(time.time() * 1000))

    def url(self, device_id: str, artifact: str) -> str:
        expires = self.clock() + int(self.ttl_s * 1000)
        token = firmware.local_token(self.key, device_id, artifact, expires)
        query = urlencode({"device": device_id, "expires": expires, "token": token})
        return f"{self.base_url}{firmware.LOCAL_PATH.format(artifact=artifact)}?{query}"

    def valid(self, device_id: str, artifact: str, expires: int, token: str) -> bool:
        return firmware.local_token_valid(self.key, device_id, artifact, expires, token, self.clock())


def load_key(path: Path) -> bytes:
    """The gateway's URL key (made once, kept beside its identity)."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class FirmwareService:
    """The cache, the URLs and the command rewrite the twin uses when it publishes."""

    def __init__(self, cache: FirmwareCache, urls: LocalUrls) -> None:
        self.cache = cache
        self.urls = urls

    def prepare(self, cmd: Command) -> Command:
        """A ``firmware.update`` command as this gateway publishes it: with its local ``url``; the
        artifact's fetch starts now. Other commands pass unchanged; a malformed manifest too (the
        device refuses it and says why)."""
        if cmd.name != firmware.COMMAND_NAME:
            return cmd
        try:
            m = firmware.manifest_from_params(cmd.params)
        except FirmwareError as exc:
            log.warning("command %s: firmware manifest refused: %s", cmd.id, exc.message)
            return cmd
        self.cache.prefetch(m)
        return replace(cmd, params=m.to_params(url=self.urls.url(cmd.device_id, m.artifact)))

    def snapshot(self) -> dict[str, Any]:
        c = self.cache.counts
        return {"uplink_bytes": c.uplink_bytes, "fetches": c.fetches, "resumes": c.resumes, "served": c.served,
                "served_bytes": c.served_bytes, "refused": c.refused,
                "cached": sorted(p.name for p in self.cache.root.iterdir() if not p.name.endswith(".part"))}

    def app(self) -> Starlette:
        async def download(request: Request) -> Response:
            artifact = request.path_params["artifact"]
            q = request.query_params
            device, token, expires = q.get("device", ""), q.get("token", ""), q.get("expires", "")
            m = self.cache.manifests.get(artifact)
            if m is None or not expires.isdigit() or not self.urls.valid(device, artifact, int(expires), token):
                self.cache.counts.refused += 1
                return JSONResponse({"code": str(Code.FIRMWARE_URL_EXPIRED),
                                     "message": "this download URL is wrong or has expired; the gateway sends a new one with the command"},
                                    status_code=403)
            try:
                path = await self.cache.ensure(m)
            except FirmwareError as exc:
                return JSONResponse(exc.as_dict(), status_code=502)
            self.cache.counts.served += 1
            self.cache.counts.served_bytes += m.size
            return FileResponse(path, media_type="application/octet-stream", headers={"X-Pulse-Sha256": m.sha256})

        async def status(request: Request) -> Response:
            return JSONResponse(self.snapshot())

        return Starlette(routes=[Route(firmware.LOCAL_PATH, download), Route("/firmware", status)])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def server(service: FirmwareService, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(service.app(), host=host, port=port, log_level="warning", lifespan="off", access_log=False)
    return _Server(config)

