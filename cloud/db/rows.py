"""The rows Pulse stores in bulk, named once: ``telemetry`` and ``quarantine``.

Each is a NamedTuple in its table's column order, so a list of them goes to ``COPY`` as it is (as
cheap as a plain tuple) while every reader names its fields. HTTP ingest and gateway sync build
them; the writer stores them; the rules runner and the live view read them after the commit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple

__all__ = ["QUARANTINE_COLUMNS", "TELEMETRY_COLUMNS", "QuarantineRow", "TelemetryRow"]


class TelemetryRow(NamedTuple):
    """One stored reading, event or report: a ``telemetry`` row, its fields in the table's column
    order (so it goes to COPY as it is). JSON columns travel as JSON text, encoded once."""

    time: datetime
    tenant_id: uuid.UUID
    device_id: str
    msg_type: str
    metrics: str
    tags: str | None
    body: str | None
    seq: int | None
    gateway_id: uuid.UUID | None
    source: str  # "http" | "gateway" | "mqtt"
    received_at: datetime


class QuarantineRow(NamedTuple):
    """One refused message, kept with the reason: a ``quarantine`` row in column order."""

    tenant_id: uuid.UUID
    device_id: str | None
    gateway_id: uuid.UUID | None
    source: str
    code: str
    reason: str
    raw: bytes
    received_at: datetime


TELEMETRY_COLUMNS = TelemetryRow._fields
QUARANTINE_COLUMNS = QuarantineRow._fields
