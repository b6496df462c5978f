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
    """Buckets by key. ``max_keys`` bounds memory when keys come from outside (source addresses):
    past it the least recently used bucket is forgotten (that key starts again with a full burst)."""

    def __init__(self, *, rate: float, burst: float, max_keys: int | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[object, Bucket] = {}

    def take(self, key: object, cost: float, now: float) -> Decision:
        decision = take(self._buckets.pop(key, None), cost, now=now, rate=self.rate, burst=self.burst)
        self._buckets[key] = decision.bucket
        if self.max_keys is not None:
            while len(self._buckets) > self.max_keys:
                del self._buckets[next(iter(self._buckets))]
        return decision
