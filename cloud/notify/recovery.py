"""Stale claims: a delivery still ``sending`` ``claim_timeout_s`` after its claim belongs to a
process that stopped mid-send; nobody knows whether the receiver got it. Channels whose receiver
folds repeats (``Channel.idempotent``: PagerDuty's dedup_key) are sent again; every other kind is
dead-lettered with ``notify.outcome_unknown`` rather than risk a duplicate page; a person can retry it.
"""

from __future__ import annotations

import logging

import asyncpg

from pulse.cloud.notify import store
from pulse.cloud.notify.senders import IDEMPOTENT_KINDS
from pulse.protocol.errors import Code

log = logging.getLogger("pulse.cloud.notify")

RESENT = "Pulse stopped while sending; sent again (the receiver folds repeats by dedup_key)"
DEAD = (
    "Pulse stopped while sending; the receiver may or may not have it. Not sent again to avoid a duplicate: "
    "retry by hand if it did not arrive"
)


def verdict(kind: str, attempts: int, budget: int) -> tuple[str, str]:
    """(new status, error) of a delivery left mid-send."""
    if kind in IDEMPOTENT_KINDS and attempts < budget:
        return "pending", RESENT
    return "dead", DEAD


async def recover(conn: asyncpg.Connection, claim_timeout_s: float) -> int:
    """Settle the tenant's stale claims (in the caller's tenant transaction); returns how many."""
    stale = await store.stale_claims(conn, claim_timeout_s)
    for row in stale:
        status, error = verdict(row["kind"], row["attempts"], row["budget"])
        await store.release_claim(conn, row["id"], status, error, Code.NOTIFY_OUTCOME_UNKNOWN)
        await store.add_attempt(conn, row["id"], row["attempts"], "unknown", None, Code.NOTIFY_OUTCOME_UNKNOWN, error, None)
        log.warning("notify: delivery %s was left mid-send; now %s", row["id"], status)
    return len(stale)
