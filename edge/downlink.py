"""The downlink: what the cloud holds for this gateway, fetched by long-poll (works behind NAT).

Loop (``Downlink.run``, supervised like the uplink: every failure backs off and retries forever)::

    GET /sync/v1/downlink?after=<cursor>&wait=<sync.downlink_wait_s>
    apply the items and store the new cursor in gateway.db, in one SQLite transaction
    POST /sync/v1/downlink/ack {"seq": cursor}

The cursor is persisted before the ack, so after a crash or restart nothing is applied twice (the
next poll asks for items after the stored cursor) and nothing is lost (items stay in the cloud
until acked; the ack is repeated at the start of every session).

What is applied:

- ``credential`` ``set``: the device may connect with the token ``pdt_<credential_id>_<secret>``
  as its MQTT password. Stored as ``pdt-sha256$<credential_id>$<sha256 of the secret>`` in the
  ``devices`` table; it replaces whatever secret the device had on this gateway (one credential
  per device at a time: the newest wins). ``revoke`` removes it when it is still the stored one, and
  ends the device's open MQTT sessions.
- ``twin_desired``, ``command``, ``rules``, ``connectors``: kept in the ``downlink`` table (status
  ``pending``) for the parts of the gateway that act on them (rules: edge/rules.py; twin and
  commands: edge/twin.py; polled devices: edge/connectors/host.py), which mark each with what they did.
- An item that cannot be read is kept with status ``refused: <reason>`` and does not block the rest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pulse.edge.auth import connect as connect_db
from pulse.edge.auth import pdt_hash
from pulse.edge.config import SyncSettings
from pulse.edge.errors import StorageError
from pulse.edge.identity import IdentityFiles
from pulse.edge.link import Connection, Enrollment, reachable
from pulse.edge.uplink import LinkState, LinkStatus, bounded, supervise
from pulse.protocol.errors import RuleError
from pulse.protocol.sync import CredentialChange, DownlinkItem, DownlinkKind

log = logging.getLogger("pulse.edge.downlink")

CURSOR_KEY = "downlink_cursor"
MIN_EMPTY_POLL_S = 1.0
Disconnect = Callable[[str], Awaitable[int]]
ApplyRules = Callable[..., Awaitable[object]]  # EdgeRuleRunner.set_rules(docs, set_version=)
ApplyTwin = Callable[[], Awaitable[object]]  # EdgeTwins.apply_downlink(): acts on pending twin/command items
ApplyConnectors = Callable[[object], Awaitable[str]]  # ConnectorHost.apply(payload) -> the item's status
"""device id -> number of MQTT sessions ended."""


def read_cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
    return int(row[0]) if row else 0


def apply_items(conn: sqlite3.Connection, raw_items: list[Any], next_seq: int, now_ms: int) -> tuple[int, list[str]]:
    """Apply downlink items and move the cursor, in one transaction. Returns the new cursor and the
    devices whose credential was revoked (to disconnect). Items at or below the cursor are skipped."""
    cursor = read_cursor(conn)
    revoked: list[str] = []
    rows: list[tuple[int, str, str, int, str]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        new_cursor = max(cursor, next_seq)
        for raw in raw_items:
            try:
                item = DownlinkItem.from_json(raw)
            except ValueError as exc:
                seq = raw.get("seq") if isinstance(raw, dict) else None
                if isinstance(seq, int) and seq > cursor:
                    rows.append((seq, str(raw.get("kind")), json.dumps(raw, default=str), now_ms, f"refused: {exc}"))
                    new_cursor = max(new_cursor, seq)
                log.error("downlink: unreadable item %r: %s", raw, exc)
                continue
            if item.seq <= cursor:
                continue
            new_cursor = max(new_cursor, item.seq)
            status = "pending"
            if item.kind is DownlinkKind.CREDENTIAL:
                try:
                    change = CredentialChange.from_payload(item.payload)
                except ValueError as exc:
                    status = f"refused: {exc}"
                else:
                    status = _apply_credential(conn, change, now_ms)
                    if change.action == "revoke":
                        revoked.append(change.device_id)
            rows.append((item.seq, item.kind.value, json.dumps(dict(item.payload)), now_ms, status))
        conn.executemany(
            "INSERT INTO downlink (seq, kind, payload, received_ms, status) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (seq) DO UPDATE SET kind = excluded.kind, payload = excluded.payload, status = excluded.status",
            rows,
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (CURSOR_KEY, str(new_cursor)),
        )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return new_cursor, revoked


def _pending(conn: sqlite3.Connection, kind: DownlinkKind) -> tuple[int, dict[str, Any]] | None:
    """The newest pending item of a kind whose items each replace the whole previous one (rules, connectors)."""
    row = conn.execute("SELECT seq, payload FROM downlink WHERE kind = ? AND status = 'pending' ORDER BY seq DESC LIMIT 1",
                       (kind.value,)).fetchone()
    if row is None:
        return None
    payload = json.loads(row[1])
    return int(row[0]), payload if isinstance(payload, dict) else {}


def _mark(conn: sqlite3.Connection, kind: DownlinkKind, seq: int, status: str) -> None:
    with conn:
        conn.execute("UPDATE downlink SET status = 'superseded' WHERE kind = ? AND status = 'pending' AND seq < ?", (kind.value, seq))
        conn.execute("UPDATE downlink SET status = ? WHERE seq = ?", (status, seq))


def _apply_credential(conn: sqlite3.Connection, change: CredentialChange, now_ms: int) -> str:
    if change.action == "set":
        assert change.secret_sha256 is not None
        conn.execute(
            "INSERT INTO devices (device_id, secret_hash, created_ms, note) VALUES (?, ?, ?, 'from the cloud')"
            " ON CONFLICT (device_id) DO UPDATE SET secret_hash = excluded.secret_hash, note = excluded.note",
            (change.device_id, pdt_hash(change.credential_id, change.secret_sha256), now_ms),
        )
        return "applied"
    cur = conn.execute(
        "DELETE FROM devices WHERE device_id = ? AND secret_hash LIKE ?", (change.device_id, f"pdt-sha256${change.credential_id}$%")
    )
    return "applied" if cur.rowcount else "applied (credential was not stored)"


class Downlink:
    def __init__(self, settings: SyncSettings, database: Path, enrollment: Enrollment, files: IdentityFiles,
                 disconnect: Disconnect | None = None, apply_rules: ApplyRules | None = None,
                 apply_twin: ApplyTwin | None = None, apply_connectors: ApplyConnectors | None = None) -> None:
        self.apply_rules = apply_rules
        self.apply_connectors = apply_connectors
        self.apply_twin = apply_twin
        self.settings = settings
        self.database = database
        self.enrollment = enrollment
        self.files = files
        self.disconnect = disconnect
        self.status = LinkStatus()
        self.cursor = 0
        self.items_applied = 0
        self._attempts = [0]
        self._conn = Connection(enrollment, files, timeout_s=settings.request_timeout_s)
        self.wire = self._conn.counts

    def snapshot(self) -> dict[str, Any]:
        return {**self.status.as_dict(), "cursor": self.cursor, "items_applied": self.items_applied,
                "tls_handshakes": self.wire.handshakes}

    async def run(self) -> None:
        await supervise("downlink", self.status, self._session, self.settings, self._attempts,
                        lambda: reachable(self.enrollment.sync_url, min(2.0, self.settings.probe_interval_s)))

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def work() -> Any:
            conn = connect_db(self.database)
            try:
                return fn(conn, *args)
            finally:
                conn.close()

        try:
            return await bounded(asyncio.to_thread(work), self.settings.request_timeout_s, "writing the downlink to gateway.db")
        except sqlite3.Error as exc:
            raise StorageError(f"could not apply downlink items: {exc}", path=str(self.database)) from exc

    async def _session(self) -> None:
        s = self.settings
        if self.status.state is not LinkState.CONNECTED:
            self.status.state = LinkState.CONNECTING
        self.cursor = await self._db(read_cursor)
        poll_timeout = s.downlink_wait_s + s.request_timeout_s
        await self._apply_pending_rules()  # one received before a crash, not yet in use
        await self._apply_pending_connectors()
        await self._apply_pending_twin()
        async with self._conn.session() as client:
            if self.cursor:
                await bounded(client.ack_downlink(self.cursor), s.request_timeout_s * 2, "acking the downlink")
            while True:
                started = time.monotonic()
                raw, nxt = await bounded(client.downlink(self.cursor, s.downlink_wait_s, poll_timeout), poll_timeout + 5,
                                         "polling the downlink")
                self._succeeded()
                if not raw and nxt <= self.cursor:
                    if time.monotonic() - started < MIN_EMPTY_POLL_S:
                        await asyncio.sleep(MIN_EMPTY_POLL_S)  # a cloud that does not hold the poll open is not hammered
                    continue
                now_ms = int(time.time() * 1000)
                cursor, revoked = await self._db(apply_items, raw, nxt, now_ms)
                self.items_applied += len(raw)
                self.cursor = cursor
                for device_id in revoked:
                    if self.disconnect is not None:
                        ended = await bounded(self.disconnect(device_id), s.request_timeout_s, "disconnecting a revoked device")
                        if ended:
                            log.info("downlink: credential of %s revoked; %d session(s) ended", device_id, ended)
                await self._apply_pending_rules()
                await self._apply_pending_connectors()
                await self._apply_pending_twin()
                await bounded(client.ack_downlink(cursor), s.request_timeout_s * 2, "acking the downlink")

    async def _apply_pending_twin(self) -> None:
        """Desired state and commands stored by ``apply_items`` are taken by the twin feature
        (edge/twin.py) after they are stored; a crash in between leaves them pending for the next session."""
        if self.apply_twin is not None:
            await self.apply_twin()

    async def _apply_pending_rules(self) -> None:
        """Put the newest received rule set in use (each set replaces the whole previous one, so
        older pending ones are superseded). Stored first, applied after: a crash in between leaves
        it pending, and the next session applies it."""
        if self.apply_rules is None:
            return
        newest = await self._db(_pending, DownlinkKind.RULES)
        if newest is None:
            return
        seq, payload = newest
        rules, version = payload.get("rules"), payload.get("version")
        if not isinstance(rules, list) or type(version) is not int:
            status = "refused: a rules item is {version: int, rules: [...]}"
        else:
            try:
                devices = payload.get("devices")  # a cloud before issue 18 sends none: scopes stay as stored
                await self.apply_rules(rules, set_version=version, **({} if devices is None else {"devices": devices}))
                status = "applied"
                log.info("downlink: rule set version %d in use (%d rules)", version, len(rules))
            except RuleError as exc:
                status = f"refused: {exc.code}: {exc.message}"
                log.error("downlink: rule set version %s refused: %s", version, exc)
        await self._db(_mark, DownlinkKind.RULES, seq, status)

    async def _apply_pending_connectors(self) -> None:
        """Put the newest received connector set in use (stored first, applied after, as rule sets)."""
        if self.apply_connectors is None:
            return
        newest = await self._db(_pending, DownlinkKind.CONNECTORS)
        if newest is None:
            return
        seq, payload = newest
        status = await self.apply_connectors(payload)
        await self._db(_mark, DownlinkKind.CONNECTORS, seq, status)

    def _succeeded(self) -> None:
        self.status.state = LinkState.CONNECTED
        self.status.last_success_ms = int(time.time() * 1000)
        self._attempts[0] = 0
