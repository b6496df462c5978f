"""Per-device token buckets (pure: time is passed in)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    bucket: Bucket
    retry_after_s: int = 0


def take(bucket: Bucket | None, cost: float, *, now: float, rate: float, burst: float) -> Decision:
    """Spend ``cost`` tokens from a bucket that refills at ``rate``/s up to ``burst``.

    A refused request spends nothing; ``retry_after_s`` is when enough tokens will be there."""
    if bucket is None:
        bucket = Bucket(tokens=burst, updated=now)
    tokens = min(burst, bucket.tokens + max(0.0, now - bucket.updated) * rate)
    if cost <= tokens:
        return Decision(True, Bucket(tokens - cost, now))
    wait = (min(cost, burst) - tokens) / rate
    return Decision(False, Bucket(tokens, now), retry_after_s=max(1, math.ceil(wait)))


class RateLimiter:
    def __init__(self, *, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[object, Bucket] = {}

    def take(self, key: object, cost: float, now: float) -> Decision:
        decision = take(self._buckets.get(key), cost, now=now, rate=self.rate, burst=self.burst)
        self._buckets[key] = decision.bucket
        return decision
