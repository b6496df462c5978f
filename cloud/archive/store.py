"""Where archive files are kept: a local directory (default) or an S3-compatible bucket.

Both put a whole file or nothing under its key: the local store writes a temporary file beside the
target, fsyncs it and renames it over the target; S3 makes an object visible only when its upload
completes. Readers get local paths: the local store's own files, or S3 objects downloaded into a
cache directory (kept by key, so a second read of the same day costs nothing).

S3 errors are translated here into ``ArchiveStorageError``."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from pulse.cloud import s3
from pulse.cloud.settings import ArchiveConfig, S3Config


class ArchiveStorageError(Exception):
    """The archive's storage refused or failed an operation (the message says which and why)."""


class ArchiveStore(Protocol):
    async def put(self, key: str, source: Path) -> None: ...

    async def fetch(self, key: str) -> Path | None:
        """A local path holding the object, or None when there is no such object."""
        ...

    def describe(self) -> str: ...


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not an archive key: {key!r}")
    return key


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return f"directory {self.root}"

    def path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    async def put(self, key: str, source: Path) -> None:
        await asyncio.to_thread(self._put, key, source)

    def _put(self, key: str, source: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            with source.open("rb") as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power cut
        finally:
            os.close(fd)

    async def fetch(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None


class S3Store:
    def __init__(self, config: S3Config, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self._client = s3.client(config)  # boto3 only where S3 is configured

    def describe(self) -> str:
        return s3.describe(self.config)

    def _object(self, key: str) -> str:
        return s3.object_key(self.config, _safe_key(key))

    async def put(self, key: str, source: Path) -> None:
        try:
            await asyncio.to_thread(self._client.upload_file, str(source), self.config.bucket, self._object(key))
        except Exception as exc:  # botocore's errors, whichever
            raise ArchiveStorageError(f"upload of {key} to {self.describe()} failed: {exc}") from exc

    async def fetch(self, key: str) -> Path | None:
        return await asyncio.to_thread(self._fetch, key)

    def _fetch(self, key: str) -> Path | None:
        target = self.cache_dir / _safe_key(key)
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            self._client.download_file(self.config.bucket, self._object(key), str(tmp))
            os.replace(tmp, target)
        except Exception as exc:  # botocore's errors, whichever
            if s3.missing(exc):
                return None
            raise ArchiveStorageError(f"download of {key} from {self.describe()} failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return target


def open_store(config: ArchiveConfig) -> ArchiveStore:
    """The store the settings name: S3 when a bucket is set, else the local directory."""
    if config.s3_bucket:
        return S3Store(
            S3Config(
                endpoint_url=config.s3_endpoint,
                bucket=config.s3_bucket,
                prefix=config.s3_prefix,
                region=config.s3_region,
                access_key=config.s3_access_key,
                secret_key=config.s3_secret_key,
            ),
            config.cache_dir,
        )
    return LocalStore(config.directory)
