"""Firmware artifacts: bytes on disk (``<firmware_dir>/<tenant>/<artifact>``), manifest in
``firmware_artifacts`` (docs/protocol.md "Firmware", docs/cloud.md "Firmware").

An upload streams to a temporary file while its SHA-256 is computed; only bytes that match the
SHA-256 the uploader named are kept. Downloads (gateways over the sync listener) are ranged and
counted per artifact (``bytes_served``): what crossed the uplink."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from starlette.responses import JSONResponse, Response, StreamingResponse

from pulse.cloud.db.pool import Database
from pulse.cloud.errors import NotFoundError
from pulse.protocol import firmware
from pulse.protocol.errors import Code, FirmwareError
from pulse.protocol.firmware import Manifest

CHUNK = 64 * 1024
log = logging.getLogger("pulse.cloud.firmware")


@dataclass(frozen=True, slots=True)
class Artifact:
    manifest: Manifest
    filename: str
    created_by: str
    created_at: str
    bytes_served: int
    downloads: int

    def to_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "id": m.artifact, "version": m.version, "model": m.model, "sha256": m.sha256, "size": m.size,
            "signed": m.signature is not None, "signature": m.signature, "filename": self.filename,
            "created_by": self.created_by, "created_at": self.created_at,
            "bytes_served": self.bytes_served, "downloads": self.downloads,
        }


def _artifact(row: asyncpg.Record) -> Artifact:
    m = Manifest(str(row["id"]), row["version"], row["model"], row["sha256"], row["size"], row["signature"])
    return Artifact(m, row["filename"], row["created_by"], row["created_at"].isoformat().replace("+00:00", "Z"),
                    row["bytes_served"], row["downloads"])


class FirmwareFiles:
    """The artifacts' bytes under one directory, one folder per tenant."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, tenant: uuid.UUID, artifact: uuid.UUID | str) -> Path:
        return self.root / str(tenant) / str(uuid.UUID(str(artifact)))

    async def receive(self, tenant: uuid.UUID, chunks: AsyncIterator[bytes], expected_sha256: str) -> tuple[uuid.UUID, int]:
        """Write an upload to a new artifact file; refuses one over ``max_bytes`` or whose SHA-256
        is not ``expected_sha256`` (nothing is kept then). Returns the new id and the size."""
        artifact = uuid.uuid4()
        final = self.path(tenant, artifact)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_suffix(".part")
        digest, size = hashlib.sha256(), 0
        try:
            with part.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FirmwareError(Code.FIRMWARE_TOO_LARGE, f"artifacts are at most {self.max_bytes} bytes", limit=self.max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
            firmware.check(Manifest(artifact.hex, "0", "x", expected_sha256, size), digest.hexdigest(), size)
            os.replace(part, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return artifact, size

    def remove(self, tenant: uuid.UUID, artifact: uuid.UUID) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(tenant, artifact).unlink()

    def read(self, tenant: uuid.UUID, artifact: uuid.UUID | str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start..end`` (inclusive) of an artifact, in chunks."""
        path = self.path(tenant, artifact)

        async def gen() -> AsyncIterator[bytes]:
            with path.open("rb") as f:
                f.seek(start)
                left = end - start + 1
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk

        return gen()


async def insert(conn: asyncpg.Connection, tenant: uuid.UUID, artifact: uuid.UUID, m: Manifest, *, filename: str, actor: str) -> Artifact:
    """Store the manifest of an artifact whose bytes are on disk; ``FIRMWARE_DUPLICATE`` when the
    tenant already has this model and version."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO firmware_artifacts (id, tenant_id, version, model, sha256, size, signature, filename, created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *",
            artifact, tenant, m.version, m.model, m.sha256, m.size, m.signature, filename, actor,
        )
    except asyncpg.UniqueViolationError as exc:
        raise FirmwareError(Code.FIRMWARE_DUPLICATE, f"there is already firmware {m.version} for {m.model}",
                            model=m.model, version=m.version) from exc
    return _artifact(row)


async def get(conn: asyncpg.Connection, tenant: uuid.UUID, artifact: str) -> Artifact | None:
    try:
        key = uuid.UUID(artifact)
    except ValueError:
        return None
    row = await conn.fetchrow("SELECT * FROM firmware_artifacts WHERE tenant_id = $1 AND id = $2", tenant, key)
    return None if row is None else _artifact(row)


async def listing(conn: asyncpg.Connection, tenant: uuid.UUID, model: str | None = None) -> list[Artifact]:
    rows = await conn.fetch(
        "SELECT * FROM firmware_artifacts WHERE tenant_id = $1 AND ($2::text IS NULL OR model = $2) ORDER BY created_at DESC, id",
        tenant, model,
    )
    return [_artifact(r) for r in rows]


async def served(conn: asyncpg.Connection, tenant: uuid.UUID, artifact: str, nbytes: int, *, complete: bool) -> None:
    """Count bytes sent over the uplink (and a download that reached the last byte)."""
    await conn.execute(
        "UPDATE firmware_artifacts SET bytes_served = bytes_served + $3, downloads = downloads + $4 WHERE tenant_id = $1 AND id = $2",
        tenant, uuid.UUID(artifact), nbytes, 1 if complete else 0,
    )


_recording: set[asyncio.Task[None]] = set()


async def download(files: FirmwareFiles | None, db: Database, tenant: uuid.UUID, artifact: str, range_header: str | None) -> Response:
    """The (ranged) download of one of ``tenant``'s artifacts, for a gateway (sync listener) or a
    direct device (ingest): 200, or 206 with ``Content-Range``; 416 ``firmware.bad_range``; 404 for
    an artifact the tenant does not have. The bytes written are counted on the artifact
    (``bytes_served``, and ``downloads`` when the last byte went) once the response ends."""
    async with db.tenant(tenant) as conn:
        art = await get(conn, tenant, artifact)
    if art is None or files is None:
        raise NotFoundError("firmware artifact", artifact=artifact)
    size = art.manifest.size
    try:
        span = firmware.parse_range(range_header, size)
    except FirmwareError as exc:
        return JSONResponse(exc.as_dict(), status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size - 1)
    chunks = files.read(tenant, artifact, start, end) if size else None

    async def record(sent: int) -> None:
        try:
            async with db.tenant(tenant) as conn:
                await served(conn, tenant, artifact, sent, complete=start + sent >= size)
        except Exception:  # counting must never break a download
            log.exception("could not count %d firmware bytes of %s", sent, artifact)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        try:
            if chunks is not None:
                async for chunk in chunks:
                    sent += len(chunk)
                    yield chunk
        finally:
            task = asyncio.get_running_loop().create_task(record(sent))
            _recording.add(task)
            task.add_done_callback(_recording.discard)

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1 if size else 0),
               "ETag": f'"{art.manifest.sha256}"', "X-Pulse-Sha256": art.manifest.sha256}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(body(), status_code=206 if span is not None else 200, headers=headers, media_type="application/octet-stream")
