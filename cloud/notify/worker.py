"""The notification workers: fan-out, delivery (with retries and dead letters), escalation.

One ``NotifyWorkers`` runs in every cloud process (PULSE_NOTIFY_WORKERS); several processes share the
work through PostgreSQL and never do one piece twice:

- **fan-out**: takes ``notify_outbox`` rows (filled by a trigger with every ``alert_events`` row
  whose ``notify`` is true) with ``FOR UPDATE SKIP LOCKED``, routes the alert (routing.py), queues one
  delivery per channel (``UNIQUE (channel_id, dedup)``) and deletes the outbox row, in one transaction.
  Opened alerts go to the matching routes' channels (throttled per channel and fingerprint) and
  start the route's escalation policy; acknowledgements and closes go to every channel that heard
  about the alert, and stop its escalation.
- **delivery**: claims due deliveries (status ``sending``, a claim token, ``attempts + 1``) and
  COMMITS the claim before sending (record-before-send); sends; records the outcome and an attempt
  row if the claim is still its own. Retries back off exponentially (``backoff_s`` doubled per
  attempt, at most an hour) unless the receiver's Retry-After says otherwise; after ``max_attempts``
  the delivery is dead-lettered with its last error. A permanent refusal (HTTP 400, bad credentials,
  an address the SSRF guard refuses) is ``failed`` at once. Deliveries of one alert to one channel go
  out in order (a PagerDuty resolve never overtakes its trigger).
- **stale claims**: a delivery still ``sending`` ``claim_timeout_s`` after its claim belongs to a
  process that stopped mid-send; nobody knows whether the receiver got it. PagerDuty deliveries are
  sent again (PagerDuty folds repeats with the same dedup_key into one incident); every other kind is
  dead-lettered with ``notify.outcome_unknown`` rather than risk a duplicate page; a person can retry it.
- **escalation**: alerts whose route named a policy advance level by level (escalation.py decides;
  on-call schedules resolve to the person on call and their channel) until acknowledged or closed.

Every step takes ``now`` so tests drive the escalation on a simulated clock (``run_once(now)``);
in production the loop passes the real time and wakes on ``LISTEN pulse_notify`` or every
``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from pulse.cloud.db.pool import Database
from pulse.cloud.notify import senders, store
from pulse.cloud.notify.errors import NotifyError
from pulse.cloud.notify.escalation import EscalationState, Notify, Policy, Stop, Wait, next_step
from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Retry
from pulse.cloud.notify.oncall import Schedule, on_call_at
from pulse.cloud.notify.routing import AlertFacts, Route, route, throttled
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.settings import NotifySettings, send_context
from pulse.protocol.errors import Code

log = logging.getLogger("pulse.cloud.notify")

EVENTS = {"opened": "opened", "flapping_started": "opened", "acknowledged": "acknowledged", "closed": "closed"}
"""alert_events kinds that are notified, and the notification event each one is."""
IDEMPOTENT_KINDS = frozenset({"pagerduty"})
"""Channels whose receiver folds repeats (dedup_key): a send whose outcome is unknown is sent again."""
MAX_BACKOFF_S = 3600.0
BATCH = 200
_STATUS = re.compile(r"(?:HTTP|answered|\()\s*(\d{3})\b")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def backoff(attempt: int, base_s: float, retry_after_s: float | None) -> float:
    """Seconds before the next attempt after ``attempt`` (1-based) failed."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), MAX_BACKOFF_S)
    return float(min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S))


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
    def __init__(self, db: Database, settings: NotifySettings, *, clock: Callable[[], dt.datetime] = _utcnow) -> None:
        self.db = db
        self.settings = settings
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
            self._ctx = await self._stack.enter_async_context(send_context(self.settings))

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
            tenants = [
                r[0]
                for r in await conn.fetch(
                    "SELECT * FROM pulse_notify_busy_tenants(clock_timestamp() - make_interval(secs => $1), $2)",
                    self.settings.claim_timeout_s,
                    due_at,
                )
            ]
        for tenant in tenants:
            await self._fan_out(tenant, now, done)
            await self._recover(tenant, done)
            await self._escalate(tenant, now, done)
            await self._claim_and_send(tenant, done)
        if wait_sends:
            await self.drain()
        return done

    async def drain(self) -> None:
        """Wait for the sends in flight (tests)."""
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    # --- fan-out -------------------------------------------------------------------------------

    async def _fan_out(self, tenant: uuid.UUID, now: dt.datetime, done: Pass) -> None:
        async with self.db.tenant(tenant) as conn:
            rows = await conn.fetch(
                "SELECT o.event_id, e.alert_id, e.kind, e.at FROM notify_outbox o JOIN alert_events e ON e.id = o.event_id "
                "ORDER BY o.event_id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
                BATCH,
            )
            if not rows:
                return
            routes = [store.route_of(r) for r in await conn.fetch("SELECT * FROM notify_routes WHERE enabled ORDER BY created_at, id")]
            slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = pulse_current_tenant()") or str(tenant)
            for row in rows:
                event = EVENTS.get(row["kind"])
                if event is not None:
                    done.queued += await self._route_event(conn, row, event, routes, slug, now)
            await conn.execute("DELETE FROM notify_outbox WHERE event_id = ANY($1)", [r["event_id"] for r in rows])
            done.fanned_out += len(rows)

    async def _route_event(
        self, conn: asyncpg.Connection, event_row: asyncpg.Record, event: str, routes: list[Route], slug: str, now: dt.datetime
    ) -> int:
        alert = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", event_row["alert_id"])
        if alert is None:
            return 0
        n = await self._notification(conn, alert, event, event_row["at"], slug)
        dedup = f"event:{event_row['event_id']}"
        queued = 0
        if event == "opened":
            facts = await _facts(conn, alert)
            routing = route(routes, facts)
            channels = await _enabled_channels(conn, list(routing.channels))
            for channel_id, kind in channels.items():
                if await self._throttled(conn, channel_id, alert, routing.channels[str(channel_id)], now):
                    continue
                if await store.enqueue(
                    conn, channel_id=channel_id, kind=kind, event="opened", dedup=dedup, notification=n, alert_id=alert["id"], budget=self.settings.max_attempts
                ):
                    queued += 1
            if routing.escalation_policy and alert["state"] == "open":
                await conn.execute(
                    "INSERT INTO alert_escalations (alert_id, tenant_id, policy_id, next_at) VALUES ($1, pulse_current_tenant(), $2, $3) "
                    "ON CONFLICT (alert_id) DO NOTHING",
                    alert["id"],
                    uuid.UUID(routing.escalation_policy),
                    now,
                )
            return queued
        # acknowledged / closed: whoever heard about the alert hears this too; escalation stops.
        await conn.execute(
            "UPDATE alert_escalations SET stopped = true, stop_reason = $2, next_at = NULL WHERE alert_id = $1 AND NOT stopped",
            alert["id"],
            event,
        )
        heard = await conn.fetch(
            "SELECT DISTINCT d.channel_id, c.kind FROM notify_deliveries d JOIN notify_channels c ON c.id = d.channel_id "
            "WHERE d.alert_id = $1 AND d.event IN ('opened', 'escalated') AND c.enabled",
            alert["id"],
        )
        for h in heard:
            if await store.enqueue(
                conn, channel_id=h["channel_id"], kind=h["kind"], event=event, dedup=dedup, notification=n, alert_id=alert["id"], budget=self.settings.max_attempts
            ):
                queued += 1
        return queued

    async def _throttled(self, conn: asyncpg.Connection, channel_id: uuid.UUID, alert: asyncpg.Record, throttle_s: int, now: dt.datetime) -> bool:
        if throttle_s <= 0:
            return False
        fingerprint = f"{alert['device_id']}/{alert['rule_id']}"
        last = await conn.fetchval(
            "SELECT last_sent_at FROM notify_throttle WHERE channel_id = $1 AND fingerprint = $2 FOR UPDATE", channel_id, fingerprint
        )
        if throttled(last, throttle_s, now):
            return True
        await conn.execute(
            "INSERT INTO notify_throttle (tenant_id, channel_id, fingerprint, last_sent_at) VALUES (pulse_current_tenant(), $1, $2, $3) "
            "ON CONFLICT (channel_id, fingerprint) DO UPDATE SET last_sent_at = EXCLUDED.last_sent_at",
            channel_id,
            fingerprint,
            now,
        )
        return False

    async def _notification(self, conn: asyncpg.Connection, alert: asyncpg.Record, event: str, at: dt.datetime, slug: str, prefix: str = "") -> Notification:
        explanation = json.loads(alert["explanation"])
        site = None
        if alert["site_id"] is not None:
            site = await conn.fetchval("SELECT name FROM sites WHERE id = $1", alert["site_id"])
        else:
            site = await conn.fetchval(
                "SELECT s.name FROM devices d JOIN sites s ON s.id = d.site_id WHERE d.device_id = $1", alert["device_id"]
            )
        value = explanation.get("last")
        threshold = explanation.get("threshold")
        return Notification(
            alert_id=str(alert["id"]),
            fingerprint=f"{alert['device_id']}/{alert['rule_id']}#{alert['id']}",
            event=event,  # type: ignore[arg-type]
            severity=alert["severity"],
            tenant=slug,
            device=alert["device_id"],
            site=site,
            metric=explanation.get("metric"),
            value=value if isinstance(value, (int, float, bool, str)) else None,
            threshold=float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None,
            explanation=prefix + (explanation.get("text") or f"{alert['rule_id']} on {alert['device_id']}"),
            console_url=f"{self.settings.console_url.rstrip('/')}/app/alerts/{alert['id']}",
            occurred_at=at,
        )

    # --- stale claims --------------------------------------------------------------------------

    async def _recover(self, tenant: uuid.UUID, done: Pass) -> None:
        async with self.db.tenant(tenant) as conn:
            stale = await conn.fetch(
                "SELECT id, kind, attempts, budget FROM notify_deliveries WHERE status = 'sending' "
                "AND claimed_at < clock_timestamp() - make_interval(secs => $1) FOR UPDATE SKIP LOCKED",
                self.settings.claim_timeout_s,
            )
            for row in stale:
                if row["kind"] in IDEMPOTENT_KINDS and row["attempts"] < row["budget"]:
                    status, error = "pending", "Pulse stopped while sending; sent again (the receiver folds repeats by dedup_key)"
                else:
                    status, error = "dead", (
                        "Pulse stopped while sending; the receiver may or may not have it. Not sent again to avoid a duplicate: "
                        "retry by hand if it did not arrive"
                    )
                await conn.execute(
                    "UPDATE notify_deliveries SET status = $2, last_error = $3, last_code = $4, claim_token = NULL, "
                    "next_attempt_at = CASE WHEN $2 = 'pending' THEN clock_timestamp() END WHERE id = $1",
                    row["id"],
                    status,
                    error,
                    str(Code.NOTIFY_OUTCOME_UNKNOWN),
                )
                await _attempt(conn, row["id"], row["attempts"], "unknown", None, Code.NOTIFY_OUTCOME_UNKNOWN, error, None)
                log.warning("notify: delivery %s was left mid-send; now %s", row["id"], status)
            done.recovered += len(stale)

    # --- escalation ----------------------------------------------------------------------------

    async def _escalate(self, tenant: uuid.UUID, now: dt.datetime, done: Pass) -> None:
        async with self.db.tenant(tenant) as conn:
            rows = await conn.fetch(
                "SELECT e.*, a.state, p.name AS policy_name, p.levels, p.repeat FROM alert_escalations e "
                "JOIN alerts a ON a.id = e.alert_id JOIN escalation_policies p ON p.id = e.policy_id "
                "WHERE NOT e.stopped AND e.next_at <= $1 ORDER BY e.next_at LIMIT $2 FOR UPDATE OF e SKIP LOCKED",
                now,
                BATCH,
            )
            if not rows:
                return
            slug = await conn.fetchval("SELECT slug FROM tenants WHERE id = pulse_current_tenant()") or str(tenant)
            for row in rows:
                done.escalated += await self._escalate_one(conn, row, now, slug)

    async def _escalate_one(self, conn: asyncpg.Connection, row: asyncpg.Record, now: dt.datetime, slug: str) -> int:
        alert_id = row["alert_id"]
        try:
            policy: Policy = store.pure_policy(row["policy_name"], json.loads(row["levels"]), row["repeat"])
        except NotifyError as exc:
            await conn.execute("UPDATE alert_escalations SET stopped = true, stop_reason = $2, next_at = NULL WHERE alert_id = $1", alert_id, exc.message[:300])
            return 0
        state = EscalationState(level=row["level"], notified_at=row["notified_at"], cycle=row["cycle"])
        new, step = next_step(policy, row["state"], state, now)
        if isinstance(step, Stop):
            await conn.execute("UPDATE alert_escalations SET stopped = true, stop_reason = $2, next_at = NULL WHERE alert_id = $1", alert_id, step.reason)
            return 0
        if isinstance(step, Wait):
            await conn.execute("UPDATE alert_escalations SET next_at = $2 WHERE alert_id = $1", alert_id, step.until)
            return 0
        assert isinstance(step, Notify)
        channels, unstaffed = await self._targets(conn, step, now)
        if step.level == 0 and step.cycle == 0:  # the route already paged these channels when the alert opened
            told = {r["channel_id"] for r in await conn.fetch("SELECT channel_id FROM notify_deliveries WHERE alert_id = $1 AND event = 'opened'", alert_id)}
            channels = [c for c in channels if c not in told]
        alert = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1", alert_id)
        prefix = f"Escalated to level {step.level + 1}" + (f" (round {step.cycle + 1})" if step.cycle else "") + ": "
        if unstaffed:
            prefix += f"[nobody on call in {', '.join(unstaffed)}] "
        n = await self._notification(conn, alert, "opened", now, slug, prefix)
        kinds = await _enabled_channels(conn, [str(c) for c in channels])
        queued = 0
        for channel_id, kind in kinds.items():
            if await store.enqueue(
                conn,
                channel_id=channel_id,
                kind=kind,
                event="escalated",
                dedup=f"esc:{alert_id}:{step.cycle}:{step.level}",
                notification=n,
                alert_id=alert_id,
                level=step.level,
                budget=self.settings.max_attempts,
            ):
                queued += 1
        wait = policy.levels[step.level].wait
        await conn.execute(
            "UPDATE alert_escalations SET level = $2, cycle = $3, notified_at = $4, next_at = $5 WHERE alert_id = $1",
            alert_id,
            new.level,
            new.cycle,
            new.notified_at,
            now + wait,
        )
        if unstaffed:
            log.warning("notify: escalation of alert %s: nobody on call in schedule(s) %s", alert_id, ", ".join(unstaffed))
        return max(queued, 1)

    async def _targets(self, conn: asyncpg.Connection, step: Notify, now: dt.datetime) -> tuple[list[uuid.UUID], list[str]]:
        channels: list[uuid.UUID] = []
        unstaffed: list[str] = []
        for target in step.targets:
            if target.kind == "channel":
                channels.append(uuid.UUID(target.id))
                continue
            loaded = await store.load_schedule(conn, uuid.UUID(target.id))
            if loaded is None:
                unstaffed.append(target.id)
                continue
            row, overrides = loaded
            layers = json.loads(row["layers"])
            schedule: Schedule = store.schedule_of(row["name"], row["time_zone"], layers, overrides)
            who = on_call_at(schedule, now).who
            channel = store.member_channels(layers, overrides).get(who) if who else None
            if channel:
                channels.append(uuid.UUID(channel))
            else:
                unstaffed.append(row["name"] if who is None else f"{row['name']} ({who} has no channel)")
        return list(dict.fromkeys(channels)), unstaffed

    # --- delivery ------------------------------------------------------------------------------

    async def _claim_and_send(self, tenant: uuid.UUID, done: Pass) -> None:
        room = self.settings.concurrency - len(self._sends)
        if room <= 0:
            return
        token = uuid.uuid4()
        async with self.db.tenant(tenant) as conn:
            claimed = await conn.fetch(
                "UPDATE notify_deliveries d SET status = 'sending', claim_token = $1, claimed_at = clock_timestamp(), attempts = d.attempts + 1 "
                "FROM notify_channels c WHERE c.id = d.channel_id AND d.id IN ("
                "  SELECT q.id FROM notify_deliveries q WHERE q.status = 'pending' AND q.next_attempt_at <= clock_timestamp() "
                "  AND NOT EXISTS (SELECT 1 FROM notify_deliveries p WHERE p.alert_id = q.alert_id AND p.channel_id = q.channel_id "
                "                  AND p.status IN ('pending', 'sending') AND p.created_at < q.created_at) "
                "  ORDER BY q.next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) "
                "RETURNING d.id, d.kind, d.notification, d.attempts, d.budget, c.config, c.enabled",
                token,
                room,
            )
        # The claims are committed: a crash from here on leaves them 'sending' (see _recover).
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
        outcome: Outcome
        if not row["enabled"]:
            outcome = Failed(Code.NOTIFY_BAD_CONFIG, "the channel is disabled")
        else:
            try:
                config = senders.validate(row["kind"], json.loads(row["config"]))
                n = Notification.model_validate_json(row["notification"])
                outcome = await asyncio.wait_for(senders.send(row["kind"], config, n, self._ctx), timeout=self.settings.claim_timeout_s / 2)
            except NotifyError as exc:
                outcome = Failed(exc.code, exc.message)
            except TimeoutError:
                outcome = Retry(Code.NOTIFY_TIMEOUT, f"the send took longer than {self.settings.claim_timeout_s / 2:.0f} s")
            except Exception as exc:  # a sender bug: record it and retry rather than leave the claim to go stale
                log.exception("notify: sending delivery %s failed unexpectedly", row["id"])
                outcome = Retry(Code.NOTIFY_UNREACHABLE, f"unexpected error while sending: {type(exc).__name__}: {exc}"[:500])
        duration_ms = int((time.perf_counter() - started) * 1000)
        await self._record(tenant, token, row, outcome, duration_ms)

    async def _record(self, tenant: uuid.UUID, token: uuid.UUID, row: asyncpg.Record, outcome: Outcome, duration_ms: int) -> None:
        attempt = row["attempts"]
        now = _utcnow()
        if isinstance(outcome, Delivered):
            status, next_at, code, error, kind = "delivered", None, None, None, "delivered"
            text = outcome.detail
        elif isinstance(outcome, Retry):
            dead = attempt >= row["budget"]
            status = "dead" if dead else "pending"
            next_at = None if dead else now + dt.timedelta(seconds=backoff(attempt, self.settings.backoff_s, outcome.after_s))
            code, error, kind, text = outcome.code, outcome.reason, "retry", outcome.reason
        else:
            status, next_at, code, error, kind, text = "failed", None, outcome.code, outcome.reason, "failed", outcome.reason
        match = _STATUS.search(text or "")
        status_code = int(match.group(1)) if match and row["kind"] in ("slack", "pagerduty", "teams", "webhook") else None
        async with self.db.tenant(tenant) as conn:
            mine = await conn.fetchval(
                "UPDATE notify_deliveries SET status = $3, next_attempt_at = $4, last_code = COALESCE($5, last_code), "
                "last_error = COALESCE($6, last_error), delivered_at = CASE WHEN $3 = 'delivered' THEN clock_timestamp() END, "
                "claim_token = NULL WHERE id = $1 AND claim_token = $2 RETURNING id",
                row["id"],
                token,
                status,
                next_at,
                None if code is None else str(code),
                error,
            )
            if mine is None:
                log.warning("notify: delivery %s was taken over while sending (stale claim); its outcome %s is not recorded", row["id"], kind)
                return
            await _attempt(conn, row["id"], attempt, kind, status_code, code, error, duration_ms)


async def _attempt(
    conn: asyncpg.Connection, delivery_id: uuid.UUID, n: int, outcome: str, status_code: int | None, code: Code | None, error: str | None, duration_ms: int | None
) -> None:
    await conn.execute(
        "INSERT INTO notify_attempts (tenant_id, delivery_id, n, outcome, status_code, code, error, duration_ms) "
        "VALUES (pulse_current_tenant(), $1, $2, $3, $4, $5, $6, $7)",
        delivery_id,
        n,
        outcome,
        status_code,
        None if code is None else str(code),
        error,
        duration_ms,
    )


async def _enabled_channels(conn: asyncpg.Connection, ids: list[str]) -> dict[uuid.UUID, str]:
    if not ids:
        return {}
    rows = await conn.fetch("SELECT id, kind FROM notify_channels WHERE id = ANY($1::uuid[]) AND enabled", ids)
    kinds = {r["id"]: r["kind"] for r in rows}
    return {uuid.UUID(i): kinds[uuid.UUID(i)] for i in ids if uuid.UUID(i) in kinds}


async def _facts(conn: asyncpg.Connection, alert: asyncpg.Record) -> AlertFacts:
    types = {alert["kind"], alert["rule_id"]}
    rule_kind = await conn.fetchval("SELECT kind FROM rules WHERE id = $1", alert["rule_id"])
    if rule_kind:
        types.add(rule_kind)
    device = await conn.fetchrow("SELECT tags, site_id FROM devices WHERE device_id = $1", alert["device_id"])
    tags: dict[str, str] = {}
    for tag in (device["tags"] if device else None) or ():
        name, _, value = str(tag).partition("=")
        tags[name] = value
    site = alert["site_id"] or (device["site_id"] if device else None)
    if site is None and str(alert["device_id"]).startswith("gateway:"):
        site = await conn.fetchval("SELECT site_id FROM gateways WHERE name = $1", str(alert["device_id"]).removeprefix("gateway:"))
    return AlertFacts(severity=alert["severity"], types=frozenset(types), site=None if site is None else str(site), device_tags=tags)

