"""Sync bookkeeping shared by the gateway's uplink and the cloud's receiver: pure decisions only.

Delivery contract (DESIGN.md): the cloud commits a batch's rows and the gateway's high-water
sequence for that stream in one transaction, then acks the batch's last sequence. A batch at or
below the mark is acked and not written again; a batch that overlaps the mark is written from the
mark on. The edge deletes only what was acked. Gaps above the mark are legal: the gateway's byte
quota may have dropped old telemetry, and it reports how much separately.

Also here: reconnect backoff (exponential with full jitter), the order in which the gateway drains
its streams, and the clock rule for gateways whose clock is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pulse.protocol.batch import Header, Record, Stream

# The gateway sends these first: alerts and events matter more than telemetry, and twin reported
# updates keep their own order within their stream.
DRAIN_ORDER: tuple[Stream, ...] = (Stream.ALERTS, Stream.EVENTS, Stream.TWIN, Stream.TELEMETRY)


class Verdict(StrEnum):
    WRITE = "write"  # every record is new
    PARTIAL = "partial"  # some records are at or below the mark: write the rest
    REPLAY = "replay"  # everything was written before: ack, write nothing


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    new_records: Sequence[Record]
    new_high_water: int
    ack_seq: int


def classify(header: Header, high_water: int) -> Verdict:
    """Decide from the header alone (before decompressing) whether anything in a batch is new."""
    if header.last_seq <= high_water:
        return Verdict.REPLAY
    if header.first_seq <= high_water:
        return Verdict.PARTIAL
    return Verdict.WRITE


def admit(header: Header, records: Sequence[Record], high_water: int) -> Admission:
    """Which records of a decoded batch to write, the mark to commit with them, and what to ack."""
    verdict = classify(header, high_water)
    if verdict is Verdict.REPLAY:
        return Admission(verdict, (), high_water, header.last_seq)
    new = records if verdict is Verdict.WRITE else [r for r in records if r.seq > high_water]
    return Admission(verdict, new, header.last_seq, header.last_seq)


# ---------------------------------------------------------------------------------------------
# reconnect backoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**attempt)).

    ``jitter`` is a number in [0, 1) supplied by the caller (random.random()), so this stays pure."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, jitter: float) -> float:
        ceiling: float = min(self.cap_s, self.base_s * float(2 ** min(attempt, 32)))
        return ceiling * min(max(jitter, 0.0), 1.0)


# ---------------------------------------------------------------------------------------------
# clocks

CLOCK_TOLERANCE_MS = 120_000


@dataclass(frozen=True, slots=True)
class ClockCheck:
    offset_ms: int  # cloud clock minus gateway clock
    corrected: bool


def check_clock(gateway_time_ms: int, cloud_now_ms: int, tolerance_ms: int = CLOCK_TOLERANCE_MS) -> ClockCheck:
    """The clock rule: when the gateway's clock (sent in every batch header) differs from the
    cloud's by more than ``tolerance_ms``, the cloud shifts the batch's timestamps by the difference
    and flags the gateway; within tolerance, timestamps are kept as sent. Transit time is ignored:
    it is seconds at worst, far inside the tolerance."""
    offset = cloud_now_ms - gateway_time_ms
    return ClockCheck(offset, abs(offset) > tolerance_ms)


def corrected_ts(ts_ms: int, check: ClockCheck) -> int:
    return ts_ms + check.offset_ms if check.corrected else ts_ms


# ---------------------------------------------------------------------------------------------
# which stream next


def next_stream(backlog: Mapping[Stream, int]) -> Stream | None:
    """The stream the gateway drains next: the first in ``DRAIN_ORDER`` with a backlog."""
    for stream in DRAIN_ORDER:
        if backlog.get(stream, 0) > 0:
            return stream
    return None
