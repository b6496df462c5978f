"""LISTEN/NOTIFY between the replicas that share one database.

One ``Bus`` per process keeps two dedicated connections: one LISTENs on the cluster's channels and
hands each notification to the handlers registered for its channel; the other sends. Sending is
queued (``post``, synchronous, never waits for the database) and batched: messages bound for one
channel are packed into as few notifications as fit under PostgreSQL's payload limit (8000 bytes;
we keep to ``MAX_PAYLOAD``), all sent in one round trip.

A notification is ``{"o": <sender node>, "m": [message, ...]}``; a process ignores its own.
Messages are JSON objects; one that does not fit a notification alone is refused by ``post``
(callers send a pointer to the stored data instead, see ``live.py``).

Reconnection: the listener pings its connection every ``ping_s``; when the connection fails (the
database restarted, a network cut), it reconnects every ``reconnect_s`` until it succeeds.
Notifications sent while no connection listened are lost, so after every (re)connection, and as
soon as the connection is known lost, the ``on_reset`` handlers run: caches flush, live views
re-announce what they watch.

Delivery is at most once and, between two processes, in the order sent. Transactional senders
(triggers calling ``pg_notify`` inside the transaction that changes the data) reach the listeners
only if and when that transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncpg

from pulse.common import aio

log = logging.getLogger("pulse.cloud.cluster")

MAX_PAYLOAD = 7900
"""Bytes of one notification's payload (PostgreSQL refuses 8000 and more)."""

CONNECT_SETTINGS = {
    "application_name": "pulse-cluster",
    # the server notices a peer that vanished (host down, cable cut) within ~11 s and releases its
    # session's advisory locks; a process killed on a living host is noticed at once
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
}

Handler = Callable[[str, dict[str, Any]], None]
"""(sender node, message)"""

_TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end. Cancels again until it does: on Python 3.11,
    ``asyncio.wait_for`` loses a cancellation that arrives as its inner awaitable completes."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s ended with an error", task.get_name(), exc_info=task.exception())


def node_name() -> str:
    """This process in the cluster: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def pack(node: str, messages: list[str]) -> list[str]:
    """Encoded messages -> notification payloads, each at most ``MAX_PAYLOAD`` bytes (UTF-8)."""
    head = '{"o":' + json.dumps(node) + ',"m":['
    payloads: list[str] = []
    parts: list[str] = []
    size = len(head.encode()) + 2
    for message in messages:
        n = len(message.encode()) + 1
        if parts and size + n > MAX_PAYLOAD:
            payloads.append(head + ",".join(parts) + "]}")
            parts, size = [], len(head.encode()) + 2
        parts.append(message)
        size += n
    if parts:
        payloads.append(head + ",".join(parts) + "]}")
    return payloads


def fits(message: str, node: str = "x" * 64) -> bool:
    """Whether one encoded message fits a notification on its own."""
    return len(message.encode()) + len(json.dumps(node)) + 16 <= MAX_PAYLOAD


class Bus:
    def __init__(
        self,
        dsn: str,
        *,
        node: str | None = None,
        reconnect_s: float = 1.0,
        ping_s: float = 2.0,
        queue_messages: int = 20_000,
    ) -> None:
        self.dsn = dsn
        self.node = node or node_name()
        self.reconnect_s = reconnect_s
        self.ping_s = ping_s
        self._handlers: dict[str, list[Handler]] = {}
        self._resets: list[Callable[[], None]] = []
        self._out: deque[tuple[str, str]] = deque(maxlen=queue_messages)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()
        """Set while the listening connection is up."""
        self.resets = 0
        self.dropped = 0
        """Messages dropped because the outgoing queue was full (the database did not keep up)."""

    # --- wiring ------------------------------------------------------------------------------

    def on(self, channel: str, handler: Handler) -> None:
        """Call ``handler(sender, message)`` for every message another process sends on ``channel``."""
        self._handlers.setdefault(channel, []).append(handler)

    def on_reset(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` when notifications may have been missed (connection lost or (re)made)."""
        self._resets.append(handler)

    def post(self, channel: str, message: dict[str, Any] | str) -> bool:
        """Queue a message for the other processes; False (and nothing queued) if it cannot fit a
        notification. Never waits; when the queue is full the oldest message is dropped."""
        text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
        if not fits(text, self.node):
            return False
        if len(self._out) == self._out.maxlen:
            self.dropped += 1
        self._out.append((channel, text))
        self._wake.set()
        return True

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="pulse-cluster-listen"),
            asyncio.create_task(self._send(), name="pulse-cluster-send"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel(task)
        self._tasks = []

    async def wait_connected(self, timeout_s: float = 30.0) -> None:
        await aio.wait_for(self.connected.wait(), timeout_s)

    # --- the listening connection ------------------------------------------------------------

    def _reset(self) -> None:
        self.resets += 1
        for handler in self._resets:
            try:
                handler()
            except Exception:  # one handler's bug must not keep the others' caches stale
                log.exception("cluster reset handler %s failed", handler)

    def _deliver(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        try:
            doc = json.loads(payload)
            sender, messages = str(doc["o"]), doc["m"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed notification on %s: %.200s", channel, payload)
            return
        if sender == self.node:
            return
        for handler in self._handlers.get(channel, ()):
            for message in messages:
                try:
                    handler(sender, message)
                except Exception:
                    log.exception("cluster handler for %s failed on %.200s", channel, message)

    async def _listen(self) -> None:
        lost = asyncio.Event()
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings=CONNECT_SETTINGS, timeout=10)
                lost.clear()
                conn.add_termination_listener(lambda _c: lost.set())
                for channel in self._handlers:
                    await conn.add_listener(channel, self._deliver)
                self.connected.set()
                self._reset()  # whatever was sent while nobody listened is lost: start from the database
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await aio.wait_for(lost.wait(), self.ping_s)
                    if not lost.is_set():
                        await aio.wait_for(conn.fetchval("SELECT 1"), self.ping_s * 2)
                raise ConnectionError("the listening connection ended")
            except asyncio.CancelledError:
                raise
            except (*_TRANSIENT, ConnectionError) as exc:
                if self.connected.is_set():
                    log.warning("cluster listener lost its connection (%s); caches flushed, reconnecting", exc)
                    self.connected.clear()
                    self._reset()
                else:
                    log.debug("cluster listener cannot connect yet: %s", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await aio.wait_for(conn.close(), 2)
            await asyncio.sleep(self.reconnect_s)

    # --- the sending connection ----------------------------------------------------------------

    async def _send(self) -> None:
        conn: asyncpg.Connection | None = None
        try:
            while True:
                if not self._out:
                    self._wake.clear()
                    await self._wake.wait()
                batch: dict[str, list[str]] = {}
                while self._out:
                    channel, text = self._out.popleft()
                    batch.setdefault(channel, []).append(text)
                channels, payloads = [], []
                for channel, texts in batch.items():
                    for payload in pack(self.node, texts):
                        channels.append(channel)
                        payloads.append(payload)
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self.dsn, server_settings=CONNECT_SETTINGS, timeout=10)
                    await conn.execute(
                        "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)", channels, payloads
                    )
                except _TRANSIENT as exc:  # best effort: the listeners' reset covers what is lost
                    self.dropped += len(payloads)
                    log.warning("cluster notifications not sent (%s); retrying with the next ones", exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.terminate()
                    conn = None
                    await asyncio.sleep(self.reconnect_s)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await aio.wait_for(conn.close(), 2)
