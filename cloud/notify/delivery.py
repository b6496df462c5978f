"""Delivery: one attempt of one claimed delivery, and what its outcome makes of it.

The worker claims due deliveries (``store.claim_due``: status ``sending``, a claim token,
``attempts + 1``) and COMMITS the claim before sending (record-before-send); ``send`` makes one
attempt; ``record`` stores the outcome and an attempt row if the claim is still its own. Retries back
off exponentially (``backoff_s`` doubled per attempt, at most an hour) unless the receiver's
Retry-After says otherwise; after ``budget`` attempts the delivery is dead-lettered with its last
error. A permanent refusal (HTTP 400, bad credentials, an address the SSRF guard refuses) is
``failed`` at once. Deliveries of one alert to one channel go out in order (a PagerDuty resolve
never overtakes its trigger): ``claim_due`` skips a delivery while an older one is unsettled.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import uuid
from dataclasses import dataclass

import asyncpg

from pulse.cloud.notify import senders, store
from pulse.cloud.notify.errors import NotifyError
from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Retry
from pulse.cloud.notify.senders.base import ChannelConfig, SendContext
from pulse.common import aio
from pulse.protocol.errors import Code

log = logging.getLogger("pulse.cloud.notify")

MAX_BACKOFF_S = 3600.0
_STATUS = re.compile(r"(?:HTTP|answered|\()\s*(\d{3})\b")


def backoff(attempt: int, base_s: float, retry_after_s: float | None) -> float:
    """Seconds before the next attempt after ``attempt`` (1-based) failed."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), MAX_BACKOFF_S)
    return float(min(base_s * 2 ** (attempt - 1), MAX_BACKOFF_S))


@dataclass(frozen=True)
class Settled:
    """A delivery's next state after an attempt, and the attempt row to add."""

    status: str
    next_at: dt.datetime | None
    code: Code | None
    error: str | None
    outcome: str
    status_code: int | None


def settle(kind: str, attempt: int, budget: int, outcome: Outcome, now: dt.datetime, backoff_s: float) -> Settled:
    """Pure: what ``outcome`` of attempt number ``attempt`` (of ``budget``) makes of the delivery."""
    if isinstance(outcome, Delivered):
        status, next_at, code, error, name, text = "delivered", None, None, None, "delivered", outcome.detail
    elif isinstance(outcome, Retry):
        dead = attempt >= budget
        status = "dead" if dead else "pending"
        next_at = None if dead else now + dt.timedelta(seconds=backoff(attempt, backoff_s, outcome.after_s))
        code, error, name, text = outcome.code, outcome.reason, "retry", outcome.reason
    else:
        status, next_at, code, error, name, text = "failed", None, outcome.code, outcome.reason, "failed", outcome.reason
    match = _STATUS.search(text or "")
    status_code = int(match.group(1)) if match and kind in senders.HTTP_KINDS else None
    return Settled(status, next_at, code, error, name, status_code)


@functools.lru_cache(maxsize=256)
def _config(kind: str, raw: str) -> ChannelConfig:
    """A channel's stored config, validated once per (kind, text) rather than once per send: the
    configs are frozen, so sends of one channel share one. A bad config raises (not cached)."""
    return senders.validate(kind, json.loads(raw))


async def send(row: asyncpg.Record, ctx: SendContext, timeout_s: float) -> Outcome:
    """One attempt of a claimed delivery (``store.claim_due`` row); never raises but for cancellation."""
    if not row["enabled"]:
        return Failed(Code.NOTIFY_BAD_CONFIG, "the channel is disabled")
    try:
        config = _config(row["kind"], row["config"])
        n = Notification.model_validate_json(row["notification"])
        return await aio.wait_for(senders.send(row["kind"], config, n, ctx), timeout=timeout_s)
    except NotifyError as exc:
        return Failed(exc.code, exc.message)
    except TimeoutError:
        return Retry(Code.NOTIFY_TIMEOUT, f"the send took longer than {timeout_s:.0f} s")
    except Exception as exc:  # a sender bug: record it and retry rather than leave the claim to go stale
        log.exception("notify: sending delivery %s failed unexpectedly", row["id"])
        return Retry(Code.NOTIFY_UNREACHABLE, f"unexpected error while sending: {type(exc).__name__}: {exc}"[:500])


@dataclass(frozen=True)
class Attempted:
    """One finished attempt waiting to be recorded: the claim it was made under and what it settled to."""

    token: uuid.UUID
    row: asyncpg.Record
    result: Settled
    duration_ms: int


async def record(conn: asyncpg.Connection, attempts: list[Attempted]) -> int:
    """Store the attempts' results and their attempt rows in one statement (tenant transaction), each only
    if its claim is still its own; returns how many were recorded."""
    if not attempts:
        return 0
    mine = await store.settle_many(
        conn,
        [
            store.Settlement(
                a.row["id"], a.token, a.result.status, a.result.next_at, a.result.code, a.result.error,
                a.row["attempts"], a.result.outcome, a.result.status_code, a.duration_ms,
            )
            for a in attempts
        ],
    )
    for a in attempts:
        if a.row["id"] not in mine:
            log.warning(
                "notify: delivery %s was taken over while sending (stale claim); its outcome %s is not recorded", a.row["id"], a.result.outcome
            )
    return len(mine)
