"""Stream message bodies: the rows of one accepted request, as ingest built them.

msgpack of ``[STREAM_FORMAT, telemetry, quarantine]``; each row a list in its table's column order
(``db/rows.py``) with times as Unix microseconds and uuids as 16 bytes. Only Pulse writes these
(ingest, after authenticating the device: the tenant of every row comes from its credential), so
the decoder checks the shape and refuses anything else with ``StreamFormatError``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.protocol.stream import STREAM_FORMAT

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StreamFormatError(ValueError):
    """A stream message this version of Pulse cannot read."""


def _us(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _uuid(raw: bytes | None) -> uuid.UUID | None:
    return None if raw is None else uuid.UUID(bytes=raw)


def encode(telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = ()) -> bytes:
    t = [
        [_us(r.time), r.tenant_id.bytes, r.device_id, r.msg_type, r.metrics, r.tags, r.body, r.seq,
         None if r.gateway_id is None else r.gateway_id.bytes, r.source, _us(r.received_at)]
        for r in telemetry
    ]
    q = [
        [r.tenant_id.bytes, r.device_id, None if r.gateway_id is None else r.gateway_id.bytes, r.source, r.code, r.reason, r.raw,
         _us(r.received_at)]
        for r in quarantine
    ]
    body: bytes = msgpack.packb([STREAM_FORMAT, t, q], use_bin_type=True)
    return body


def decode(body: bytes) -> tuple[list[TelemetryRow], list[QuarantineRow]]:
    try:
        version, t, q = msgpack.unpackb(body, raw=False)
        if version != STREAM_FORMAT:
            raise StreamFormatError(f"stream message format {version!r}; this writer reads {STREAM_FORMAT}")
        telemetry = [_telemetry(r) for r in t]
        quarantine = [_quarantine(r) for r in q]
    except StreamFormatError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StreamFormatError(f"not a stream message: {exc}") from exc
    return telemetry, quarantine


def _telemetry(r: list[Any]) -> TelemetryRow:
    time, tenant, device, kind, metrics, tags, body, seq, gateway, source, received = r
    return TelemetryRow(_at(time), uuid.UUID(bytes=tenant), device, kind, metrics, tags, body, seq, _uuid(gateway), source, _at(received))


def _quarantine(r: list[Any]) -> QuarantineRow:
    tenant, device, gateway, source, code, reason, raw, received = r
    return QuarantineRow(uuid.UUID(bytes=tenant), device, _uuid(gateway), source, code, reason, raw, _at(received))
