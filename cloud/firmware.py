"""Firmware artifacts: bytes on disk (``<firmware_dir>/<tenant>/<artifact>``) or in an S3-compatible
bucket (``PULSE_FIRMWARE_S3_*``), manifest in ``firmware_artifacts`` (docs/protocol.md "Firmware",
docs/cloud.md "Firmware").

An upload streams to a temporary file while its SHA-256 is computed; only bytes that match the
SHA-256 the uploader named are kept. Downloads (gateways over the sync listener, direct devices
over ingest) are ranged and counted per artifact (``bytes_served``): what crossed the uplink, with
the bytes a cut left in flight taken back when the requester resumes (``firmware_transfers``)."""

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

from pulse.cloud import s3
from pulse.cloud.db.pool import Database
from pulse.cloud.errors import NotFoundError
from pulse.cloud.settings import S3Config, Settings
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

    async def remove(self, tenant: uuid.UUID, artifact: uuid.UUID) -> None:
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


class S3FirmwareFiles:
    """The artifacts' bytes in an S3-compatible bucket (``PULSE_FIRMWARE_S3_*``), one key per
    artifact under the tenant's id: ``[<prefix>/]<tenant>/<artifact>``. An upload is received and
    checked in ``staging`` (a local directory) first, then put in the bucket, where an object is
    visible only once whole; downloads are ranged reads of the object (nothing kept on disk)."""

    def __init__(self, config: S3Config, staging: Path, max_bytes: int) -> None:
        self.config = config
        self.staging = FirmwareFiles(staging, max_bytes)
        self.max_bytes = max_bytes
        self._client = s3.client(config)

    def key(self, tenant: uuid.UUID, artifact: uuid.UUID | str) -> str:
        return s3.object_key(self.config, f"{uuid.UUID(str(tenant))}/{uuid.UUID(str(artifact))}")

    async def receive(self, tenant: uuid.UUID, chunks: AsyncIterator[bytes], expected_sha256: str) -> tuple[uuid.UUID, int]:
        artifact, size = await self.staging.receive(tenant, chunks, expected_sha256)
        try:
            await asyncio.to_thread(self._client.upload_file, str(self.staging.path(tenant, artifact)), self.config.bucket,
                                    self.key(tenant, artifact))
        except Exception as exc:  # botocore's errors, whichever
            raise FirmwareStorageError(f"could not store the artifact in {s3.describe(self.config)}: {exc}") from exc
        finally:
            await self.staging.remove(tenant, artifact)
        return artifact, size

    async def remove(self, tenant: uuid.UUID, artifact: uuid.UUID) -> None:
        try:
            await asyncio.to_thread(self._client.delete_object, Bucket=self.config.bucket, Key=self.key(tenant, artifact))
        except Exception:  # best effort: the manifest is what makes an artifact exist
            log.exception("could not delete firmware %s from %s", artifact, s3.describe(self.config))

    def read(self, tenant: uuid.UUID, artifact: uuid.UUID | str, start: int, end: int) -> AsyncIterator[bytes]:
        key = self.key(tenant, artifact)

        async def gen() -> AsyncIterator[bytes]:
            try:
                got = await asyncio.to_thread(self._client.get_object, Bucket=self.config.bucket, Key=key, Range=f"bytes={start}-{end}")
            except Exception as exc:
                raise FirmwareStorageError(f"could not read {key} from {s3.describe(self.config)}: {exc}") from exc
            body = got["Body"]
            try:
                while chunk := await asyncio.to_thread(body.read, CHUNK):
                    yield chunk
            finally:
                body.close()

        return gen()


class FirmwareStorageError(Exception):
    """The bucket refused or failed an operation (the message says which and why)."""


FirmwareStore = FirmwareFiles | S3FirmwareFiles


def store_for(settings: Settings) -> FirmwareStore:
    """Where ``settings`` keep artifacts: the S3 bucket when one is set, else ``firmware_dir``."""
    if (bucket := settings.firmware_s3) is not None:
        return S3FirmwareFiles(bucket, settings.data_dir / "firmware-staging", settings.firmware_max_bytes)
    return FirmwareFiles(settings.firmware_dir or settings.data_dir / "firmware", settings.firmware_max_bytes)


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


def unarrived(start: int, sent: int, resume_at: int) -> int:
    """Bytes of a download that began at byte ``start`` and wrote ``sent`` bytes which the same
    requester's next request, resuming at ``resume_at``, shows never arrived: those from
    ``resume_at`` on (they were in flight when the link was cut). A request that starts before
    ``start`` (the requester threw its copy away) or after what was written takes nothing back."""
    return start + sent - resume_at if start <= resume_at < start + sent else 0


async def begin_transfer(conn: asyncpg.Connection, tenant: uuid.UUID, artifact: str, requester: str, start: int, *,
                         resumed: bool) -> int:
    """Record ``requester``'s new download of ``artifact`` from byte ``start``. When it ``resumed``
    (it carried a ``Range``: the requester holds the bytes before ``start``), take back off the
    artifact's count what the previous download wrote past ``start`` (and the download it counted,
    if that one had reached the last byte). Returns the new download's number."""
    key = uuid.UUID(artifact)
    await conn.execute(
        "INSERT INTO firmware_transfers (tenant_id, artifact_id, requester, seq, start, running) VALUES ($1, $2, $3, 0, 0, false)"
        " ON CONFLICT DO NOTHING", tenant, key, requester,
    )
    prev = await conn.fetchrow(
        "SELECT seq, start, sent, complete, running FROM firmware_transfers WHERE tenant_id = $1 AND artifact_id = $2 AND requester = $3"
        " FOR UPDATE", tenant, key, requester,
    )
    assert prev is not None
    # a previous download still running settles itself when it ends (end_transfer), against this start
    back = 0 if prev["running"] or not resumed else unarrived(prev["start"], prev["sent"], start)
    if back:
        await conn.execute(
            "UPDATE firmware_artifacts SET bytes_served = bytes_served - $3, downloads = downloads - $4 WHERE tenant_id = $1 AND id = $2",
            tenant, key, back, 1 if prev["complete"] else 0,
        )
    seq: int = prev["seq"] + 1
    await conn.execute(
        "UPDATE firmware_transfers SET seq = $4, start = $5, resumed = $6, sent = 0, complete = false, running = true"
        " WHERE tenant_id = $1 AND artifact_id = $2 AND requester = $3", tenant, key, requester, seq, start, resumed,
    )
    return seq


async def end_transfer(conn: asyncpg.Connection, tenant: uuid.UUID, artifact: str, requester: str, seq: int, *,
                       start: int, sent: int, size: int) -> int:
    """Count a download that ended after writing ``sent`` bytes from ``start`` (and a completed
    download when they reach the last byte). When the same requester already asked again, its new
    ``Range`` start says how much of these bytes arrived: only those are counted. Returns the bytes
    counted."""
    key = uuid.UUID(artifact)
    row = await conn.fetchrow(
        "SELECT seq, start, resumed FROM firmware_transfers WHERE tenant_id = $1 AND artifact_id = $2 AND requester = $3 FOR UPDATE",
        tenant, key, requester,
    )
    counted = sent
    if row is not None and row["seq"] != seq and row["resumed"]:
        counted -= unarrived(start, sent, row["start"])
    complete = start + counted >= size
    if row is not None and row["seq"] == seq:
        await conn.execute(
            "UPDATE firmware_transfers SET sent = $4, complete = $5, running = false WHERE tenant_id = $1 AND artifact_id = $2 AND requester = $3",
            tenant, key, requester, counted, complete,
        )
    await conn.execute(
        "UPDATE firmware_artifacts SET bytes_served = bytes_served + $3, downloads = downloads + $4 WHERE tenant_id = $1 AND id = $2",
        tenant, key, counted, 1 if complete else 0,
    )
    return counted


_recording: set[asyncio.Task[None]] = set()


async def download(files: FirmwareStore | None, db: Database, tenant: uuid.UUID, artifact: str, range_header: str | None,
                   *, requester: str) -> Response:
    """The (ranged) download of one of ``tenant``'s artifacts, for a gateway (sync listener) or a
    direct device (ingest), ``requester`` naming which (``gateway:<id>``, ``device:<id>``): 200, or
    206 with ``Content-Range``; 416 ``firmware.bad_range``; 404 for an artifact the tenant does not
    have. When the response ends, the bytes written to the connection are counted on the artifact
    (``bytes_served``, and ``downloads`` when the last byte went); the requester's next ranged
    request takes back those that its ``Range`` start shows never arrived (``begin_transfer``)."""
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
        seq = await begin_transfer(conn, tenant, artifact, requester, start, resumed=span is not None)
    chunks = files.read(tenant, artifact, start, end) if size else None

    async def record(sent: int) -> None:
        try:
            async with db.tenant(tenant) as conn:
                await end_transfer(conn, tenant, artifact, requester, seq, start=start, sent=sent, size=size)
        except Exception:  # counting must never break a download
            log.exception("could not count %d firmware bytes of %s", sent, artifact)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        try:
            if chunks is not None:
                async for chunk in chunks:
                    yield chunk
                    sent += len(chunk)  # after the server took it: a chunk the send failed on never left
        finally:
            task = asyncio.get_running_loop().create_task(record(sent))
            _recording.add(task)
            task.add_done_callback(_recording.discard)

    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start + 1 if size else 0),
               "ETag": f'"{art.manifest.sha256}"', "X-Pulse-Sha256": art.manifest.sha256}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(body(), status_code=206 if span is not None else 200, headers=headers, media_type="application/octet-stream")
