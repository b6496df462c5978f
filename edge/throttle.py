"""A token bucket on bytes sent, for metered links (``sync.bandwidth_bytes_per_s``). Pure: the
caller passes the clock in and sleeps for the returned time.

``reserve(n, now)`` takes ``n`` bytes from the bucket and returns how long to wait before sending
them. The bucket holds at most one second's worth (``burst``) and may go into debt for a batch
larger than that, so a sender that always waits as told never averages more than ``rate`` bytes a
second: by any time ``t`` after the first send it has sent at most ``burst + rate * t`` bytes
(plus the last reservation, which it is still waiting for).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float
    """Bytes per second; 0 or less: no cap."""
    burst: float = 0.0
    """Most bytes sent at once after an idle spell; defaults to one second's worth."""
    tokens: float | None = None
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.burst <= 0:
            self.burst = max(self.rate, 0.0)

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` bytes; the seconds to wait before sending them (0: send now)."""
        if self.rate <= 0:
            return 0.0
        if self.tokens is None or self.stamp is None:
            self.tokens, self.stamp = self.burst, now
        elapsed = max(0.0, now - self.stamp)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate) - n
        self.stamp = max(now, self.stamp)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
