"""The rows Pulse stores in bulk, named once: ``telemetry`` and ``quarantine``.

Each is a NamedTuple in its table's column order, so a list of them goes to ``COPY`` as it is (as
cheap as a plain tuple) while every reader names its fields. ``telemetry_row`` is the one
constructor: HTTP ingest, the MQTT endpoint (through HTTP ingest's ``prepare``) and gateway sync
build their rows with it; the writer stores them; the rules runner and the live view read them after
the commit.

A ``TelemetryRow`` carries its metrics twice, made once: ``metrics``, the JSON text the ``metrics``
column (and the rule outbox, and the replicas' live relay) stores, and ``values``, the parsed mapping
the message arrived as, which every listener after the commit reads instead of parsing the text
again. ``values`` comes after the table's columns: ``COPY`` sends the first
``len(TELEMETRY_COLUMNS)`` fields of each record and never looks at the rest (asyncpg's binary
``copy_records_to_table`` encodes ``row[i]`` for each column ``i``; test_writer stores such rows).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

import orjson

__all__ = ["QUARANTINE_COLUMNS", "TELEMETRY_COLUMNS", "QuarantineRow", "TelemetryRow", "json_text", "telemetry_row"]

MetricValues = Mapping[str, float | bool]


class TelemetryRow(NamedTuple):
    """One stored reading, event or report: a ``telemetry`` row, its fields in the table's column
    order (so it goes to COPY as it is), then the parsed metrics. JSON columns travel as JSON text,
    encoded once."""

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
    values: MetricValues | None = None
    """``metrics`` parsed (not a column). None only for a row built field by field without it."""

    def metric_values(self) -> MetricValues:
        """The metrics as a mapping: ``values``, or (a row built without it) ``metrics`` parsed."""
        values = self.values
        return values if values is not None else json.loads(self.metrics)


_dumps = orjson.dumps
_new = tuple.__new__


def json_text(value: object) -> str:
    """Compact JSON text (orjson; the standard library for what orjson refuses, e.g. integers over 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"))


def telemetry_row(
    time: datetime,
    tenant_id: uuid.UUID,
    device_id: str,
    msg_type: str,
    metrics: MetricValues,
    tags: Mapping[str, str] | None,
    body: object,
    seq: int | None,
    gateway_id: uuid.UUID | None,
    source: str,
    received_at: datetime,
) -> TelemetryRow:
    """The one way a message becomes a row: its JSON columns encoded once (``tags`` or ``body`` None
    is NULL), its parsed ``metrics`` kept beside them for the listeners."""
    try:  # orjson inline: this runs for every stored message
        text = _dumps(metrics).decode()
        tags_text = None if tags is None else _dumps(tags).decode()
        body_text = None if body is None else _dumps(body).decode()
    except TypeError:
        text = json_text(metrics)
        tags_text = None if tags is None else json_text(tags)
        body_text = None if body is None else json_text(body)
    # tuple.__new__ straight: the NamedTuple's own __new__ is a Python function in front of it
    return _new(
        TelemetryRow,
        (time, tenant_id, device_id, msg_type, text, tags_text, body_text, seq, gateway_id, source, received_at, metrics),
    )


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


TELEMETRY_COLUMNS = TelemetryRow._fields[: TelemetryRow._fields.index("received_at") + 1]
QUARANTINE_COLUMNS = QuarantineRow._fields
