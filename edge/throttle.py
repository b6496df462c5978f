"""A token bucket on bytes sent, for metered links (``sync.bandwidth_bytes_per_s``). Pure: the
caller passes the clock in and sleeps for the returned time.

``reserve(n, now)`` takes ``n`` bytes from the bucket and returns how long to wait before sending
them. The bucket holds one second's worth (``burst``) or, when a send reserves more than that, that
send's size: the credit earned while the previous batch was on the wire is kept, so a sender whose
sends take time still reaches its cap. It starts full, as after an idle spell: the first send goes
at once (the uplink sizes its batches to a few seconds of the cap, so that is the most it sends
ahead of the cap). A sender that always waits as told never averages more than
``rate`` bytes a second: by any time ``t`` after the first send it has sent at most
``max(burst, largest send) + rate * t`` bytes (plus the last reservation, which it is still waiting for).
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
        if self.tokens is None or self.stamp is None:  # the first send: as after a long idle spell
            self.tokens, self.stamp = max(self.burst, float(n)), now
        elapsed = max(0.0, now - self.stamp)
        # The bucket holds at least what this send reserves: with a burst smaller than a batch, the
        # credit earned while the previous batch was on the wire was thrown away and the sender
        # reached about half its cap (issue 28).
        self.tokens = min(max(self.burst, float(n)), self.tokens + elapsed * self.rate) - n
        self.stamp = max(now, self.stamp)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
