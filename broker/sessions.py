"""Persistent MQTT sessions (clean session 0) in a SQLite file, so they survive restarts.

Shared by the gateway's broker (the tables live in the gateway's file, beside the buffer) and the
cloud's MQTT endpoint (a file in its data directory). Two tables (``SCHEMA``):

- ``mqtt_sessions``  one row per persistent session: client id, username, its subscriptions
                     (``[[filter, qos], ...]`` as JSON);
- ``mqtt_queue``     QoS 1 messages for a persistent session, in order (``id``): topic, payload, QoS,
                     when queued, an optional deadline (``expires_ms``: a command's; dropped unsent
                     after it), and once sent the packet id it was sent with. A row is deleted
                     when the client acknowledges it (PUBACK); a row that was sent and not
                     acknowledged before the connection ended is sent again, with DUP set and the
                     same packet id, when the session resumes (also after a gateway restart).

Bounds (``queue_max`` per session, ``max_age_s``; the gateway's ``broker.session_queue_max`` and
``broker.session_queue_max_age_s``): when a
session's queue is full the oldest message is dropped; a message older than the age limit is
dropped instead of being delivered. Both are counted (``dropped_full``, ``dropped_age``) and shown
on the status page ("sessions") and in /metrics.

Durability: the session store has its own ``sqlite3`` connection in WAL mode with
``synchronous=NORMAL``: a commit survives the gateway process being killed (SIGKILL), not
necessarily a power cut in the same instant. Statements are small (one row) and run on the event
loop; they are only made for persistent sessions, never on the device-to-buffer path.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from pulse.broker.errors import SessionStoreError

log = logging.getLogger("pulse.broker.sessions")

SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_sessions (
    client_id      TEXT PRIMARY KEY,
    username       TEXT,
    subscriptions  TEXT NOT NULL,
    updated_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_queue (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id  TEXT NOT NULL,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    qos        INTEGER NOT NULL,
    queued_ms  INTEGER NOT NULL,
    expires_ms INTEGER,
    packet_id  INTEGER
);
CREATE INDEX IF NOT EXISTS mqtt_queue_client ON mqtt_queue (client_id, id);
"""
"""The two tables; the gateway's schema (edge/schema.py) includes them in its own file."""

PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA busy_timeout=10000")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _storage(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """sqlite3 errors leave this module as SessionStoreError (mqtt.session_store_failed)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise SessionStoreError(f"the session store failed: {exc}", operation=fn.__name__) from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    """Set once sent: a message sent again goes with this packet id and DUP set."""


@dataclass
class SessionCounters:
    queued: int = 0
    delivered: int = 0
    redelivered: int = 0
    dropped_full: int = 0
    dropped_age: int = 0
    expired: int = 0


class SessionStore:
    def __init__(self, path: Path, *, queue_max: int, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.queue_max = queue_max
        self.max_age_ms = int(max_age_s * 1000)
        self.clock = clock
        self.counters = SessionCounters()
        self._db: sqlite3.Connection | None = None
        self._known: set[str] = set()
        """Client ids with a stored session: a clean-session connect touches the file only for those."""

    def open(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                db.execute(pragma)
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise SessionStoreError(f"cannot open the session store: {exc}", path=str(self.path)) from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise SessionStoreError("the session store is closed", path=str(self.path))
        return self._db

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- sessions ---------------------------------------------------------------------------

    @_storage
    def load(self) -> list[StoredSession]:
        rows = self.db.execute("SELECT client_id, username, subscriptions FROM mqtt_sessions ORDER BY client_id").fetchall()
        self._known = {row[0] for row in rows}
        return [StoredSession(cid, user, [(f, int(q)) for f, q in json.loads(subs)]) for cid, user, subs in rows]

    @_storage
    def save(self, client_id: str, username: str | None, subscriptions: list[tuple[str, int]]) -> None:
        self.db.execute(
            "INSERT INTO mqtt_sessions (client_id, username, subscriptions, updated_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (client_id) DO UPDATE SET username = excluded.username, subscriptions = excluded.subscriptions, "
            "updated_ms = excluded.updated_ms",
            (client_id, username, json.dumps(sorted(subscriptions)), self._now_ms()),
        )
        self._known.add(client_id)

    @_storage
    def delete(self, client_id: str) -> None:
        """A clean-session connect ends the stored session and drops what it held."""
        if client_id not in self._known:
            return
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM mqtt_queue WHERE client_id = ?", (client_id,))
            db.execute("DELETE FROM mqtt_sessions WHERE client_id = ?", (client_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._known.discard(client_id)

    def persistent(self) -> int:
        return len(self._known)

    # --- the queue --------------------------------------------------------------------------

    @_storage
    def enqueue(self, client_id: str, topic: str, payload: bytes, qos: int, *, expires_ms: int | None = None) -> None:
        """Queue a message; ``expires_ms``: never delivered from then on (a command's deadline)."""
        now = self._now_ms()
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT INTO mqtt_queue (client_id, topic, payload, qos, queued_ms, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (client_id, topic, payload, qos, now, expires_ms),
            )
            over = db.execute("SELECT count(*) FROM mqtt_queue WHERE client_id = ?", (client_id,)).fetchone()[0] - self.queue_max
            if over > 0:
                db.execute(
                    "DELETE FROM mqtt_queue WHERE id IN (SELECT id FROM mqtt_queue WHERE client_id = ? ORDER BY id LIMIT ?)",
                    (client_id, over),
                )
                self.counters.dropped_full += over
                log.warning("session %s: queue full (%d), dropped the oldest %d message(s)", client_id, self.queue_max, over)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.counters.queued += 1

    @_storage
    def pending(self, client_id: str, limit: int = 100) -> list[Queued]:
        """The session's next messages in order, after dropping those older than the age limit."""
        now = self._now_ms()
        old = self.db.execute("DELETE FROM mqtt_queue WHERE client_id = ? AND queued_ms < ?", (client_id, now - self.max_age_ms)).rowcount
        if old:
            self.counters.dropped_age += old
            log.warning("session %s: dropped %d message(s) older than %d s", client_id, old, self.max_age_ms // 1000)
        expired = self.db.execute("DELETE FROM mqtt_queue WHERE client_id = ? AND expires_ms <= ?", (client_id, now)).rowcount
        if expired:
            self.counters.expired += expired
            log.info("session %s: dropped %d message(s) past their deadline, unsent", client_id, expired)
        rows = self.db.execute(
            "SELECT id, topic, payload, qos, packet_id FROM mqtt_queue WHERE client_id = ? ORDER BY id LIMIT ?", (client_id, limit)
        ).fetchall()
        return [Queued(i, t, bytes(p), int(q), pid) for i, t, p, q, pid in rows]

    @_storage
    def sent(self, queued_id: int, packet_id: int) -> None:
        self.db.execute("UPDATE mqtt_queue SET packet_id = ? WHERE id = ?", (packet_id, queued_id))

    @_storage
    def acked(self, queued_id: int) -> None:
        self.db.execute("DELETE FROM mqtt_queue WHERE id = ?", (queued_id,))
        self.counters.delivered += 1

    @_storage
    def depth(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM mqtt_queue").fetchone()[0])

    def snapshot(self) -> dict[str, int]:
        c = self.counters
        return {
            "persistent": self.persistent(),
            "queued_now": self.depth(),
            "queued": c.queued,
            "delivered": c.delivered,
            "redelivered": c.redelivered,
            "dropped_full": c.dropped_full,
            "dropped_age": c.dropped_age,
            "expired": c.expired,
            "queue_max": self.queue_max,
            "queue_max_age_s": self.max_age_ms // 1000,
        }
