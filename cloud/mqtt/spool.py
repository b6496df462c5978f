"""The MQTT endpoint's local durable spool: where an acknowledged message waits while PostgreSQL is
unavailable.

A QoS 1 PUBLISH is acknowledged (PUBACK) only once it is committed: to PostgreSQL through the
telemetry writer, or, when the database cannot be reached, here (one SQLite file in
``PULSE_DATA_DIR/mqtt/``, WAL, ``synchronous=FULL``: a committed row survives the process being
killed and a power cut). ``Spool`` keeps what ingest needs to store the message later exactly as it
would have then: who sent it (tenant, device, credential), the topic's message type, the raw
bytes and when it arrived. The endpoint drains the spool in arrival order as soon as the database
answers again (``MqttEndpoint._drain``), deleting each message after its rows are committed; while
the spool holds anything, new messages join it behind the older ones, so a device's messages reach
PostgreSQL in the order it sent them.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path

from pulse.cloud.errors import StorageUnavailableError

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT NOT NULL,
    device         TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    credential_id  TEXT NOT NULL,
    msg_type       TEXT,
    raw            BLOB NOT NULL,
    received_ms    INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Spooled:
    id: int
    tenant_id: uuid.UUID
    device: uuid.UUID
    device_id: str
    credential_id: uuid.UUID
    msg_type: str | None
    raw: bytes
    received_ms: int


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.count = 0
        self.spooled = 0
        self.drained = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            self.count = int(db.execute("SELECT count(*) FROM spool").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"cannot open the MQTT spool {self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StorageUnavailableError("the MQTT spool is closed")
        return self._db

    def put(self, *, tenant_id: uuid.UUID, device: uuid.UUID, device_id: str, credential_id: uuid.UUID, msg_type: str | None,
            raw: bytes, received_ms: int) -> None:
        """Commit one message; raises ``StorageUnavailableError`` when the file cannot be written."""
        try:
            self._conn().execute(
                "INSERT INTO spool (tenant_id, device, device_id, credential_id, msg_type, raw, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(tenant_id), str(device), device_id, str(credential_id), msg_type, raw, received_ms),
            )
        except sqlite3.Error as exc:
            raise StorageUnavailableError(f"the MQTT spool could not be written: {exc}") from exc
        self.count += 1
        self.spooled += 1

    def head(self, limit: int = 500) -> list[Spooled]:
        rows = self._conn().execute(
            "SELECT id, tenant_id, device, device_id, credential_id, msg_type, raw, received_ms FROM spool ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        return [Spooled(i, uuid.UUID(t), uuid.UUID(d), di, uuid.UUID(c), m, bytes(r), int(ms)) for i, t, d, di, c, m, r, ms in rows]

    def delete(self, spooled_id: int) -> None:
        self._conn().execute("DELETE FROM spool WHERE id = ?", (spooled_id,))
        self.count -= 1
        self.drained += 1
