"""The notification workers: the thin runner over fan-out, delivery, stale-claim recovery and escalation.

One ``NotifyWorkers`` runs in every cloud process (PULSE_NOTIFY_WORKERS); several processes share the
work through PostgreSQL and never do one piece twice. Each piece is its own module, with its SQL in
store.py:

- **fan-out** (fanout.py): outbox events become queued deliveries, routed and throttled; opened
  alerts start their route's escalation, acknowledgements and closes stop it.
- **delivery** (delivery.py): claims are committed before sending (record-before-send); one attempt;
  the outcome recorded if the claim is still its own; retries with backoff, dead letters.
- **stale claims** (recovery.py): deliveries left ``sending`` by a process that stopped mid-send are
  sent again only where the channel is idempotent (``Channel.idempotent``), else dead-lettered.
- **escalation** (escalator.py): due escalations advance level by level (escalation.py decides).

Every step takes ``now`` so tests drive the escalation on a simulated clock (``run_once(now)``);
in production the loop passes the real time and wakes on ``LISTEN pulse_notify`` or every
``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import delivery, store
from pulse.cloud.notify.delivery import MAX_BACKOFF_S, backoff
from pulse.cloud.notify.escalator import escalate
from pulse.cloud.notify.fanout import fan_out
from pulse.cloud.notify.inbound import AckLinks
from pulse.cloud.notify.recovery import recover
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.settings import NotifySettings, send_context

log = logging.getLogger("pulse.cloud.notify")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Pass:
    """What one pass did (for tests and the loop's "anything happened?")."""

    fanned_out: int = 0
    queued: int = 0
    escalated: int = 0
    claimed: int = 0
    recovered: int = 0

    def __bool__(self) -> bool:
        return bool(self.fanned_out or self.queued or self.escalated or self.claimed or self.recovered)


class NotifyWorkers:
    def __init__(
        self, db: Database, settings: NotifySettings, *, clock: Callable[[], dt.datetime] = _utcnow, ack_links: AckLinks | None = None
    ) -> None:
        self.db = db
        self.settings = settings
        self.ack_links = ack_links
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._stack = contextlib.AsyncExitStack()
        self._ctx: SendContext | None = None
        self._listener: asyncpg.Connection | None = None

    # --- life ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """The shared send context (one guarded HTTP client); ``start`` calls it, tests may alone."""
        if self._ctx is None:
            self._ctx = await self._stack.enter_async_context(send_context(self.settings, ack_links=self.ack_links))

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="pulse-notify")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work; let sends in flight finish for ``grace_s`` (default: the send timeout), then cancel them.

        A send cancelled here stays ``sending`` and is treated as a stale claim by whoever runs next.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sends:
            _done, pending = await asyncio.wait(self._sends, timeout=self.settings.timeout_s if grace_s is None else grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._unlisten()
        await self._stack.aclose()
        self._ctx = None

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            self._listener = await asyncpg.connect(self.db.dsn_for(self.db.roles.app))
            await self._listener.add_listener("pulse_notify", lambda *_: self._wake.set())
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("notify workers: LISTEN failed (%s); polling every %ss", exc, self.settings.poll_interval_s)
            self._listener = None

    async def _unlisten(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    async def _loop(self) -> None:
        await self.open()
        while True:
            await self._listen()
            self._wake.clear()
            try:
                did = await self.run_once()
            except Exception:  # keep going: the next pass may succeed (database restart, ...)
                log.exception("notify workers: a pass failed; trying again")
                did = Pass()
            if did:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)

    # --- one pass ------------------------------------------------------------------------------

    async def run_once(self, now: dt.datetime | None = None, *, wait_sends: bool = False) -> Pass:
        """Fan out, recover stale claims, escalate, start due sends. ``now``: the clock (escalation, throttle)."""
        await self.open()
        now = now or self.clock()
        due_at = max(now, _utcnow())
        done = Pass()
        async with self.db.identity() as conn:
            tenants = await store.busy_tenants(conn, self.settings.claim_timeout_s, due_at)
        url, budget = self.settings.console_url, self.settings.max_attempts
        for tenant in tenants:
            async with self.db.tenant(tenant) as conn:
                fanned = await fan_out(conn, tenant, now, console_url=url, budget=budget)
            done.fanned_out += fanned.events
            done.queued += fanned.queued
            async with self.db.tenant(tenant) as conn:
                done.recovered += await recover(conn, self.settings.claim_timeout_s)
            async with self.db.tenant(tenant) as conn:
                done.escalated += await escalate(conn, tenant, now, console_url=url, budget=budget)
            await self._claim_and_send(tenant, done)
        if wait_sends:
            await self.drain()
        return done

    async def drain(self) -> None:
        """Wait for the sends in flight (tests)."""
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    # --- delivery ------------------------------------------------------------------------------

    async def _claim_and_send(self, tenant: uuid.UUID, done: Pass) -> None:
        room = self.settings.concurrency - len(self._sends)
        if room <= 0:
            return
        token = uuid.uuid4()
        async with self.db.tenant(tenant) as conn:
            claimed = await store.claim_due(conn, token, room)
        # The claims are committed: a crash from here on leaves them 'sending' (see recovery.py).
        for row in claimed:
            task = asyncio.create_task(self._send(tenant, token, row), name=f"pulse-notify-send-{row['id']}")
            self._sends.add(task)
            task.add_done_callback(self._sent)
        done.claimed += len(claimed)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("notify: a send task failed", exc_info=task.exception())
        self._wake.set()

    async def _send(self, tenant: uuid.UUID, token: uuid.UUID, row: asyncpg.Record) -> None:
        assert self._ctx is not None
        started = time.perf_counter()
        outcome = await delivery.send(row, self._ctx, self.settings.claim_timeout_s / 2)
        duration_ms = int((time.perf_counter() - started) * 1000)
        result = delivery.settle(row["kind"], row["attempts"], row["budget"], outcome, _utcnow(), self.settings.backoff_s)
        async with self.db.tenant(tenant) as conn:
            await delivery.record(conn, token, row, result, duration_ms)


__all__ = ["MAX_BACKOFF_S", "NotifyWorkers", "Pass", "backoff"]
