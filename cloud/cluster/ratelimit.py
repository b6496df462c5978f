"""Token buckets shared by every replica, kept in PostgreSQL and spent locally in leases.

A bucket lives in ``cluster_rate_buckets`` and refills by the database's clock, so every process
counts against the same tokens whatever its own clock says. A process does not ask the database
for every message: when its local lease of a key runs short it takes what the request needs plus
up to ``lease`` tokens more in one call (``pulse_rate_take``), and spends the extra locally on the
next requests. Tokens leased and not spent within ``lease_s`` go back to the bucket
(``pulse_rate_give``).

Accuracy: every token spent anywhere was taken from the shared bucket first, so the cluster never
admits more than the limit (``burst`` + ``rate`` x elapsed seconds). The error is on the strict
side only: a request may be refused while other processes hold unspent leases of the same key, at
most ``lease`` tokens each, for at most ``lease_s`` seconds before they give them back. With N
processes a key may be refused up to (N - 1) x ``lease`` tokens early. A database that does not
answer makes requests that need a fresh lease fail with 503 and Retry-After, as storing them would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from pulse.cloud.db.pool import Database
from pulse.cloud.errors import StorageUnavailableError
from pulse.common import aio

log = logging.getLogger("pulse.cloud.cluster")


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


@dataclass(slots=True)
class _Lease:
    tokens: float
    expires: float


Take = Callable[[str, float, float, float, float], Awaitable[tuple[float, float]]]
"""(key, want, need, rate, burst) -> (granted, retry after seconds): one call to the shared bucket."""
Give = Callable[[list[str], list[float]], Awaitable[None]]


def database_bucket(db: Database, *, retry_after_s: int = 1) -> tuple[Take, Give]:
    """The shared buckets of ``db`` (through the app role's SECURITY DEFINER functions). A database
    that does not answer makes ``take`` raise ``StorageUnavailableError`` (503, Retry-After)."""

    async def take(key: str, want: float, need: float, rate: float, burst: float) -> tuple[float, float]:
        try:
            async with db.identity() as conn:
                row = await conn.fetchrow("SELECT granted, retry_after_s FROM pulse_rate_take($1, $2, $3, $4, $5)", key, want, need, rate, burst)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StorageUnavailableError(
                "the database does not answer (rate limits); nothing from this request was stored; retry later", retry_after_s=retry_after_s
            ) from exc
        return float(row["granted"]), float(row["retry_after_s"])

    async def give(keys: list[str], amounts: list[float]) -> None:
        async with db.identity() as conn:
            await conn.execute("SELECT pulse_rate_give($1::text[], $2::float8[])", keys, amounts)

    return take, give


class SharedRateLimiter:
    """Buckets of ``rate`` tokens/s up to ``burst``, one per key, shared through the database."""

    def __init__(
        self,
        take: Take,
        give: Give,
        *,
        rate: float,
        burst: float,
        lease: float,
        lease_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._take, self._give = take, give
        self.rate, self.burst = rate, burst
        self.lease = max(0.0, min(lease, burst))
        self.lease_s = lease_s
        self._monotonic = monotonic
        self._leases: dict[str, _Lease] = {}
        self.round_trips = 0

    async def take(self, key: str, cost: float) -> Verdict:
        now = self._monotonic()
        held = self._leases.get(key)
        if held is not None and held.tokens >= cost:
            held.tokens -= cost
            return Verdict(True)
        need = cost - (held.tokens if held is not None else 0.0)
        self.round_trips += 1
        granted, retry = await self._take(key, need + self.lease, need, self.rate, self.burst)
        held = self._leases.setdefault(key, _Lease(0.0, now + self.lease_s))  # again: others ran while we waited
        held.tokens += granted
        if granted > 0:
            held.expires = now + self.lease_s
        if held.tokens >= cost:
            held.tokens -= cost
            return Verdict(True)
        return Verdict(False, retry_after_s=max(1, math.ceil(retry)))

    def refund(self, key: str, cost: float) -> None:
        """Put back what an admitted request did not use after all (another limit refused it)."""
        held = self._leases.get(key)
        if held is not None:
            held.tokens += cost

    async def give_back(self, *, everything: bool = False) -> int:
        """Return the unspent tokens of leases older than ``lease_s`` (all with ``everything``)."""
        now = self._monotonic()
        keys, amounts = [], []
        for key, held in list(self._leases.items()):
            if everything or held.expires <= now:
                del self._leases[key]
                if held.tokens > 0:
                    keys.append(key)
                    amounts.append(held.tokens)
        if keys:
            await self._give(keys, amounts)
        return len(keys)

    async def run(self) -> None:
        """Give back expired leases every ``lease_s`` until cancelled (then give back everything)."""
        try:
            while True:
                await asyncio.sleep(self.lease_s)
                try:
                    await self.give_back()
                except Exception as exc:  # noqa: BLE001 - tokens not returned refill with time anyway
                    log.warning("could not give back leased rate-limit tokens: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await aio.wait_for(self.give_back(everything=True), 2)
