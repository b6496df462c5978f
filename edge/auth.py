"""Per-device credentials: username = device id, secret stored only as a hash in the gateway's SQLite.

Two hash schemes, chosen by where the secret came from (the stored string names its scheme, so
both verify forever and the parameters can be raised later):

- ``sha256$salt$digest`` for secrets the gateway generates (``pulse gateway device add`` without
  ``--secret``): 32 random bytes, so guessing is hopeless whatever the hash; a fast hash keeps a
  reconnect storm of a thousand devices after a gateway restart cheap on Pi-class hardware.
- ``pdt-sha256$credential_id$hex digest`` for device tokens issued by the cloud and sent down to
  the gateway (docs/protocol.md section 6, ``credential`` items): the device's MQTT password is
  ``pdt_<credential_id>_<secret>``; only the SHA-256 of the secret ever reaches the gateway.
- ``scrypt$n$r$p$salt$digest`` for secrets a person chose (``--secret``): those may be guessable,
  so they get a memory-hard hash (hashlib.scrypt, n=2**14, r=8, p=1: 16 MiB, tens of ms), checked
  in a worker thread so the broker keeps serving.

``DeviceRegistry`` is the synchronous store the CLI uses; ``Authenticator`` is what the broker
asks at CONNECT time, through ``DeviceSecrets`` (it reads the same table, so devices added while the
gateway runs work at once).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pulse.edge.errors import DeviceError, StorageError
from pulse.edge.schema import PRAGMAS, SCHEMA
from pulse.edge.sqlite import SqliteThread
from pulse.protocol.errors import Code
from pulse.protocol.topics import check_device_id

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def new_secret() -> str:
    """A fresh device secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, generated: bool) -> str:
    salt = secrets.token_bytes(16)
    if generated:
        return f"sha256${_b64(salt)}${_b64(hashlib.sha256(salt + secret.encode()).digest())}"
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def pdt_hash(credential_id: str, secret_sha256: str) -> str:
    """The stored form of a cloud-issued device token (credential id and SHA-256 of its secret, hex)."""
    return f"pdt-sha256${credential_id}${secret_sha256}"


def is_slow(stored: str) -> bool:
    return stored.startswith("scrypt$")


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` matches the stored hash; False for any malformed stored value."""
    parts = stored.split("$")
    try:
        if parts[0] == "sha256" and len(parts) == 3:
            salt, want = _unb64(parts[1]), _unb64(parts[2])
            return hmac.compare_digest(hashlib.sha256(salt + secret.encode()).digest(), want)
        if parts[0] == "pdt-sha256" and len(parts) == 3:
            prefix = f"pdt_{parts[1]}_"
            if not secret.startswith(prefix) or len(secret) == len(prefix):
                return False
            return hmac.compare_digest(hashlib.sha256(secret[len(prefix):].encode()).hexdigest(), parts[2])
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, want = _unb64(parts[4]), _unb64(parts[5])
            got = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=len(want))
            return hmac.compare_digest(got, want)
    except (ValueError, TypeError):
        return False
    return False


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    created_ms: int
    note: str
    scheme: str


def connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection to the gateway file with the schema in place (CLI, tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    conn.executescript(SCHEMA)
    return conn


class DeviceRegistry:
    """Add, list and remove device credentials (synchronous; used by `pulse gateway device ...`)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path)

    def close(self) -> None:
        self._conn.close()

    def add(self, device_id: str, secret: str | None = None, note: str = "") -> str:
        """Create credentials; returns the secret (generated when none is given). Shown once, never stored."""
        check_device_id(device_id)
        generated = secret is None
        secret = new_secret() if secret is None else secret
        if not secret:
            raise DeviceError(Code.GATEWAY_DEVICE_UNKNOWN, "a device secret cannot be empty", device_id=device_id)
        stored = hash_secret(secret, generated=generated)
        try:
            self._conn.execute(
                "INSERT INTO devices (device_id, secret_hash, created_ms, note) VALUES (?, ?, ?, ?)",
                (device_id, stored, int(time.time() * 1000), note),
            )
        except sqlite3.IntegrityError as exc:
            raise DeviceError(
                Code.GATEWAY_DEVICE_EXISTS,
                f"device {device_id} already has credentials; remove it first to issue a new secret",
                device_id=device_id,
            ) from exc
        return secret

    def add_many(self, device_ids: list[str]) -> dict[str, str]:
        """Generated secrets for many devices in one transaction (benchmarks, bulk enrolment)."""
        for d in device_ids:
            check_device_id(d)
        out = {d: new_secret() for d in device_ids}
        now = int(time.time() * 1000)
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany(
                "INSERT INTO devices (device_id, secret_hash, created_ms) VALUES (?, ?, ?)",
                [(d, hash_secret(s, generated=True), now) for d, s in out.items()],
            )
            self._conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            self._conn.execute("ROLLBACK")
            raise DeviceError(Code.GATEWAY_DEVICE_EXISTS, "one of these devices already has credentials") from exc
        return out

    def remove(self, device_id: str) -> None:
        cur = self._conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        if cur.rowcount == 0:
            raise DeviceError(Code.GATEWAY_DEVICE_UNKNOWN, f"no device {device_id} on this gateway", device_id=device_id)

    def list(self) -> list[Device]:
        rows = self._conn.execute("SELECT device_id, created_ms, note, secret_hash FROM devices ORDER BY device_id").fetchall()
        return [Device(d, c, n, h.split("$", 1)[0]) for d, c, n, h in rows]


LookupFn = Callable[[str], Awaitable[str | None]]
"""device id -> stored secret hash, or None for an unknown device."""


class DeviceSecrets:
    """The stored secret hashes, read at CONNECT (a ``LookupFn``): a read connection to the gateway
    file on its own thread, so a CONNECT never waits behind the buffer's writes and the buffer
    knows nothing of credentials. Open it after the buffer made the schema."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db = SqliteThread("device-secrets")

    async def open(self) -> None:
        await self._db.open(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=10, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def __call__(self, device_id: str) -> str | None:
        try:
            row = await self._db.run(self._get, device_id)
        except sqlite3.Error as exc:
            raise StorageError(f"could not read the gateway database: {exc}", path=str(self._path)) from exc
        return None if row is None else str(row[0])

    def _get(self, device_id: str) -> tuple[object, ...] | None:
        row: tuple[object, ...] | None = self._db.conn.execute("SELECT secret_hash FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return row

    async def close(self) -> None:
        await self._db.close()


class Authenticator:
    """Answers "may this username/password connect?" for the broker, from the devices table."""

    def __init__(self, lookup: LookupFn, *, allow_anonymous: bool) -> None:
        self._lookup = lookup
        self.allow_anonymous = allow_anonymous

    async def check(self, username: str | None, password: str | None) -> bool:
        if username is None:
            return self.allow_anonymous and password is None
        if password is None:
            return False
        stored = await self._lookup(username)
        if stored is None:
            return False
        if is_slow(stored):
            return await asyncio.to_thread(verify_secret, password, stored)
        return verify_secret(password, stored)
