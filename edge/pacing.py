"""How the uplink paces itself on a slow or flapping link: pure decisions, the clock passed in.

- ``LinkEstimate``: a moving estimate of the link's rate and round trip from the uplink's own
  acks (bytes sent and the time each request took), and the timeout a request of ``n`` bytes gets:
  ``margin x (round trip + n / rate)``, never below the configured ``request_timeout_s``.
- ``BatchSizer``: each batch is sized in bytes to a target time on the wire (``sync.batch_target_s``
  x the estimated rate, or x the bandwidth cap when that is lower), never over ``sync.batch_bytes``;
  on top of that additive increase, multiplicative decrease: halved after a batch timed out (a
  single record always fits), grown back by an eighth of ``sync.batch_bytes`` after each ack. The
  records read for a batch follow from the bytes a record took in the last one.
- ``fit_records``: a batch whose encoding is over its byte budget keeps the records that fit, so a
  wide device's batch never spends minutes on a slow link before its first ack.
- ``LinkHealth``: the link's state as the status page shows it (connected, degraded, down), with
  since-when, from the outcomes of requests and from a request still outstanding: one outstanding
  far past its expected time makes the link degraded, so a black-holed link is never "connected".
- ``ByteWindow``: bytes sent in the last hour and day (also used to count TLS handshakes).
- ``Reachability``: whether a cheap probe (a TCP connect, no TLS) says the link came back, so the
  uplink retries at once instead of sleeping out its backoff.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EWMA = 0.3
MARGIN = 3.0


@dataclass
class LinkEstimate:
    rate_bytes_per_s: float | None = None
    rtt_s: float | None = None

    def observe(self, nbytes: int, elapsed_s: float, pipelined: bool = False) -> None:
        """A request of ``nbytes`` that was answered after ``elapsed_s``. ``pipelined``: it was sent
        while the one ahead of it was still in flight, and ``elapsed_s`` runs from that one's ack to
        its own: the link was busy with its bytes all that time, no round trip in it."""
        elapsed_s = max(elapsed_s, 1e-3)
        if nbytes < 2048:  # a small request measures the round trip
            self.rtt_s = elapsed_s if self.rtt_s is None else (1 - EWMA) * self.rtt_s + EWMA * elapsed_s
            return
        wire = elapsed_s if pipelined else max(elapsed_s - (self.rtt_s or 0.0), elapsed_s / 2)
        rate = nbytes / wire
        if pipelined and self.rate_bytes_per_s is not None:
            # acks that arrive together (the cloud stored a batch only after the one ahead of it)
            # say nothing about the link: one such sample at most doubles the estimate
            rate = min(rate, 2 * self.rate_bytes_per_s)
        self.rate_bytes_per_s = rate if self.rate_bytes_per_s is None else (1 - EWMA) * self.rate_bytes_per_s + EWMA * rate

    def reset(self) -> None:
        """After an outage the link may come back different."""
        self.rate_bytes_per_s = self.rtt_s = None

    def expected_s(self, nbytes: int) -> float | None:
        if self.rate_bytes_per_s is None:
            return None
        return (self.rtt_s or 0.0) + nbytes / self.rate_bytes_per_s

    def timeout_s(self, nbytes: int, floor_s: float) -> float:
        expected = self.expected_s(nbytes)
        return floor_s if expected is None else max(floor_s, MARGIN * expected + 2.0)


@dataclass
class BatchSizer:
    """The next batch of one stream, in bytes and in the records read for it.

    ``budget(rate)``: the bytes the link carries in ``target_s`` at ``rate`` (the estimate, or the
    cap when that is lower; ``floor`` while nothing is measured), between ``floor`` and
    ``ceiling``, and never over the AIMD size: halved after a batch timed out (from the bytes that
    batch had: a single record always goes, however small the budget), grown back by ``step``
    after each ack. ``records(rate)``: how many records to read for that budget, from the bytes a
    record took in the last batch (at most ``max_records``, at least 1)."""

    ceiling: int
    """Most bytes in one batch (``sync.batch_bytes``)."""
    max_records: int = 50_000
    """Most records in one batch (``sync.records_per_batch``)."""
    target_s: float = 4.0
    floor: int = 16_384
    """The smallest budget the rate gives, and the budget while the rate is unknown (a start, after
    an outage): a few seconds on the slowest links (6.5 s at 20 kbit/s), so the first ack, and with
    it the first measurement, comes soon. A floor, because acks spaced by the cloud's work rather
    than by the link would otherwise shrink every next batch (per-batch costs do not shrink with it)."""
    step: int = 0
    size: int = 0
    per_record: float | None = None

    def __post_init__(self) -> None:
        self.size = self.size or self.ceiling
        self.step = self.step or max(1, self.ceiling // 8)

    def budget(self, rate: float | None) -> int:
        share = self.floor if rate is None or rate <= 0 else max(self.floor, int(rate * self.target_s))
        share = min(self.ceiling, share)
        return max(1, min(self.size, share))

    def records(self, rate: float | None) -> int:
        if self.per_record is None:
            return self.max_records  # nothing encoded yet: the encoding tells (fit_records trims it)
        # a little under the budget, so a batch is rarely encoded twice (fit_records trims one that is over)
        return max(1, min(self.max_records, int(0.95 * self.budget(rate) / self.per_record)))

    def encoded(self, records: int, nbytes: int) -> None:
        """A batch of ``records`` encoded in ``nbytes``."""
        if records > 0:
            per = nbytes / records
            self.per_record = per if self.per_record is None else (1 - EWMA) * self.per_record + EWMA * per

    def after_timeout(self, sent_bytes: int) -> int:
        self.size = max(1, min(self.size, sent_bytes) // 2)
        return self.size

    def after_ack(self) -> int:
        self.size = min(self.ceiling, self.size + self.step)
        return self.size


def fit_records(records: int, nbytes: int, cap: int) -> int | None:
    """How many of ``records`` (encoded in ``nbytes``) to keep so the batch fits ``cap`` bytes; None
    when it fits already (or is a single record, which is always sent)."""
    if nbytes <= cap or records <= 1 or cap <= 0:
        return None
    return max(1, min(records - 1, int(records * cap / nbytes * 0.95)))


class LinkState(StrEnum):
    """The uplink's state as the status page shows it (edge/uplink.py); here so that the gateway
    can name it without loading the uplink."""

    NOT_ENROLLED = "not enrolled"
    DISABLED = "disabled"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing off"
    STALLED = "stalled"
    """The link is up but the backlog has not moved for ``sync.stall_after_s``: the watchdog restarted the uplink."""


class Health(StrEnum):
    CONNECTED = "connected"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass
class LinkHealth:
    state: Health = Health.DOWN
    since: float = 0.0
    failures: int = 0
    outstanding_since: float | None = None
    expected_s: float = 0.0

    def _set(self, state: Health, now: float) -> None:
        if state is not self.state:
            self.state, self.since = state, now

    def started(self, now: float, expected_s: float) -> None:
        self.outstanding_since, self.expected_s = now, expected_s

    def succeeded(self, now: float) -> None:
        self.outstanding_since, self.failures = None, 0
        self._set(Health.CONNECTED, now)

    def failed(self, now: float) -> None:
        self.outstanding_since = None
        self.failures += 1
        self._set(Health.DEGRADED if self.failures == 1 else Health.DOWN, now)

    def at(self, now: float) -> Health:
        """The state now: a request outstanding for more than twice its expected time degrades a connected link."""
        if (self.state is Health.CONNECTED and self.outstanding_since is not None
                and now - self.outstanding_since > 2 * self.expected_s):
            self._set(Health.DEGRADED, self.outstanding_since + 2 * self.expected_s)
        return self.state


@dataclass
class ByteWindow:
    """Bytes sent, kept per minute for a day."""

    minutes: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)

    def add(self, now: float, nbytes: int) -> None:
        minute = int(now // 60)
        if self.minutes and self.minutes[-1][0] == minute:
            self.minutes[-1] = (minute, self.minutes[-1][1] + nbytes)
        else:
            self.minutes.append((minute, nbytes))
        while self.minutes and self.minutes[0][0] <= minute - 1440:
            self.minutes.popleft()

    def last(self, now: float, seconds: float) -> int:
        start = (now - seconds) // 60
        return sum(n for m, n in self.minutes if m > start)


@dataclass
class Reachability:
    """Edge-triggered: the link is taken as back when a probe succeeds after a probe (or the
    session's own connect) failed since the last successful session, or, during the first
    ``eager_failures`` failures, when a probe succeeds at all. Something that accepts every
    connection while the cloud is gone (a proxy, a NAT box, a listener nobody accepts on) shortens
    the backoff at most ``eager_failures`` times: it costs the probes, never a full TLS handshake
    per probe."""

    seen_down: bool = False
    eager_failures: int = 2
    """After this few consecutive failures a successful probe alone is enough (a short cut may be
    over before the first probe): at most this many early handshakes per outage behind a proxy."""

    def observe(self, ok: bool, failures: int = 0) -> bool:
        """A probe's outcome after ``failures`` consecutive failed sessions; True when the uplink should try now."""
        if not ok:
            self.seen_down = True
            return False
        return self.seen_down or 0 < failures <= self.eager_failures

    def reset(self) -> None:
        self.seen_down = False


def link_line(link: dict[str, Any]) -> str:
    """One line about the link to the cloud (status page and ``pulse gateway status``)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(link["since_ms"] / 1000))
    parts = [f"{link['state']} since {since}"]
    if link.get("last_error_code"):
        parts.append(f"last error {link['last_error_code']}")
    if link.get("next_attempt_in_s") is not None:
        parts.append(f"next attempt in {link['next_attempt_in_s']:g} s")
    rate, rtt = link.get("est_rate_bytes_per_s"), link.get("est_rtt_s")
    parts.append(f"est. rate {'-' if rate is None else f'{rate} B/s'}, round trip {'-' if rtt is None else f'{rtt:g} s'}")
    parts.append(f"{link['bytes_last_hour']} bytes in the last hour, {link['bytes_last_day']} in the last day")
    if "handshakes_last_hour" in link:
        parts.append(f"{link['handshakes_last_hour']} TLS handshakes in the last hour, {link['handshakes_last_day']} in the last day")
    return "; ".join(parts)
