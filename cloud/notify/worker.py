"""The notification workers: the thin runner over fan-out, delivery, stale-claim recovery and escalation.

One ``NotifyWorkers`` runs in every cloud process (PULSE_NOTIFY_WORKERS); several processes share the
work through PostgreSQL and never do one piece twice. Each piece is its own module, with its SQL in
store.py:

- **fan-out** (fanout.py): outbox events become queued deliveries, routed and throttled; opened
  alerts start their route's escalation, acknowledgements and closes stop it.
- **delivery** (delivery.py): claims are committed before sending (record-before-send); one attempt;
  the outcome recorded if the claim is still its own; retries with backoff, dead letters. Finished
  attempts are recorded in batches: whatever finished while the last batch was being written goes in
  one transaction, which also claims the next due deliveries of that tenant for the freed places (so a
  busy queue is worked without a full pass per delivery). An outcome not yet recorded when the process
  dies leaves its claim ``sending``: stale-claim recovery treats it as a crash mid-send.
- **stale claims** (recovery.py): deliveries left ``sending`` by a process that stopped mid-send are
  sent again only where the channel is idempotent (``Channel.idempotent``), else dead-lettered.
- **escalation** (escalator.py): due escalations advance level by level (escalation.py decides).

Every step takes ``now`` so tests drive the escalation on a simulated clock (``run_once(now)``);
in production the loop passes the real time and wakes on ``LISTEN pulse_notify`` or every
``poll_interval_s``. A pass asks the database which tenants have which work
(``pulse_notify_work``) and runs only those steps.
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
from pulse.common import aio

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
        self._in_flight = 0
        """Claimed deliveries whose attempt has not finished (the places ``concurrency`` bounds)."""
        self._attempted: list[tuple[uuid.UUID, delivery.Attempted]] = []
        """Finished attempts (tenant, attempt) not yet recorded."""
        self._attempts_ready = asyncio.Event()
        self._recorder: asyncio.Task[None] | None = None
        self._db_lock = asyncio.Lock()
        """Held while claiming or recording: the free places are counted once, an outcome recorded once."""
        self._stopping = False
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
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="pulse-notify")
        self._recorder = asyncio.create_task(self._record_loop(), name="pulse-notify-record")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking work; let sends in flight finish for ``grace_s`` (default: the send timeout), then cancel them.

        A send cancelled here stays ``sending`` and is treated as a stale claim by whoever runs next;
        the outcomes of the sends that finished are recorded before this returns.
        """
        self._stopping = True
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
        async with self._db_lock:  # the recorder is not inside a transaction while this is held
            if self._recorder is not None:
                self._recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._recorder
                self._recorder = None
            await self._record(claim=False)
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
                await aio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)

    # --- one pass ------------------------------------------------------------------------------

    async def run_once(self, now: dt.datetime | None = None, *, wait_sends: bool = False) -> Pass:
        """Fan out, recover stale claims, escalate, start due sends. ``now``: the clock (escalation, throttle)."""
        await self.open()
        now = now or self.clock()
        due_at = max(now, _utcnow())
        done = Pass()
        async with self.db.identity() as conn:
            work = await store.notify_work(conn, self.settings.claim_timeout_s, due_at)
        url, budget = self.settings.console_url, self.settings.max_attempts
        for w in work:
            tenant, due = w.tenant, w.due
            if w.outbox:
                async with self.db.tenant(tenant) as conn:
                    fanned = await fan_out(conn, tenant, now, console_url=url, budget=budget)
                done.fanned_out += fanned.events
                done.queued += fanned.queued
                due = due or fanned.queued > 0
            if w.stale:
                async with self.db.tenant(tenant) as conn:
                    recovered = await recover(conn, self.settings.claim_timeout_s)
                done.recovered += recovered
                due = due or recovered > 0
            if w.escalations:
                async with self.db.tenant(tenant) as conn:
                    escalated = await escalate(conn, tenant, now, console_url=url, budget=budget)
                done.escalated += escalated
                due = due or escalated > 0
            if due:
                await self._claim_and_send(tenant, done)
        if wait_sends:
            await self.drain()
        return done

    async def drain(self) -> None:
        """Wait for the sends in flight and record their outcomes (tests)."""
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)
        async with self._db_lock:
            await self._record(claim=False)

    # --- delivery ------------------------------------------------------------------------------

    async def _claim_and_send(self, tenant: uuid.UUID, done: Pass) -> None:
        async with self._db_lock:
            room = self.settings.concurrency - self._in_flight
            if room <= 0 or self._stopping:
                return
            token = uuid.uuid4()
            async with self.db.tenant_now(tenant) as conn:
                claimed = await store.claim_due(conn, token, room)
            self._start_sends(tenant, token, claimed)
        done.claimed += len(claimed)

    def _start_sends(self, tenant: uuid.UUID, token: uuid.UUID, claimed: list[asyncpg.Record]) -> None:
        # The claims are committed: a crash from here on leaves them 'sending' (see recovery.py).
        self._in_flight += len(claimed)
        for row in claimed:
            task = asyncio.create_task(self._send(tenant, token, row), name=f"pulse-notify-send-{row['id']}")
            self._sends.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("notify: a send task failed", exc_info=task.exception())

    async def _send(self, tenant: uuid.UUID, token: uuid.UUID, row: asyncpg.Record) -> None:
        assert self._ctx is not None
        try:
            started = time.perf_counter()
            outcome = await delivery.send(row, self._ctx, self.settings.claim_timeout_s / 2)
            duration_ms = int((time.perf_counter() - started) * 1000)
            result = delivery.settle(row["kind"], row["attempts"], row["budget"], outcome, _utcnow(), self.settings.backoff_s)
            self._attempted.append((tenant, delivery.Attempted(token, row, result, duration_ms)))
        finally:
            self._in_flight -= 1
        if self._recorder is None:  # driven by run_once alone (tests): record now, as the recorder would
            async with self._db_lock:
                await self._record(claim=False)
        else:
            self._attempts_ready.set()

    async def _record_loop(self) -> None:
        """Record finished attempts in batches and claim the next due deliveries for the freed places."""
        while True:
            await self._attempts_ready.wait()
            self._attempts_ready.clear()
            async with self._db_lock:
                drained = await self._record(claim=not self._stopping)
            if drained:
                self._wake.set()  # the tenant has no more due work that fits: a pass looks at the others

    async def _record(self, *, claim: bool) -> bool:
        """Record every finished attempt, one transaction per tenant, claiming that tenant's next due
        deliveries for the free places when ``claim``. Hold ``_db_lock``. True when a claim took fewer
        than the free places (that tenant's due queue is drained)."""
        attempted, self._attempted = self._attempted, []
        by_tenant: dict[uuid.UUID, list[delivery.Attempted]] = {}
        for tenant, a in attempted:
            by_tenant.setdefault(tenant, []).append(a)
        drained = False
        for tenant, attempts in by_tenant.items():
            room = self.settings.concurrency - self._in_flight if claim else 0
            token = uuid.uuid4()
            try:
                async with self.db.tenant_now(tenant) as conn:
                    await delivery.record(conn, attempts)
                    claimed = await store.claim_due(conn, token, room) if room > 0 else []
            except Exception:  # these claims stay 'sending': stale-claim recovery settles them as after a crash
                log.exception("notify workers: recording %d outcomes of tenant %s failed", len(attempts), tenant)
                drained = True
                continue
            self._start_sends(tenant, token, claimed)
            drained = drained or len(claimed) < room
        return drained


__all__ = ["MAX_BACKOFF_S", "NotifyWorkers", "Pass", "backoff"]
