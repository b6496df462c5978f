"""Stream message bodies: the rows of one accepted request, as ingest built them.

msgpack of ``[STREAM_FORMAT, telemetry, quarantine]``; each row a list in its table's column order
(``db/rows.py``) with times as Unix microseconds and uuids as 16 bytes. Only Pulse writes these
(ingest, after authenticating the device: the tenant of every row comes from its credential), so
the decoder checks the shape and refuses anything else with ``StreamFormatError``.

Gateway sync's rows (``sync/receive.py``) carry their provenance: msgpack of
``[STREAM_FORMAT_GATEWAY, telemetry, quarantine, [gateway uuid, sync stream, [record seq, ...]]]``,
one record sequence per telemetry row, so the partition writer can skip records it stored already
(``consumer.py``). The decoder reads both versions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.protocol.stream import STREAM_FORMAT, STREAM_FORMAT_GATEWAY

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class StreamFormatError(ValueError):
    """A stream message this version of Pulse cannot read."""


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a gateway sync message's rows come from: the gateway, its sync stream
    (``protocol.batch.Stream``), and the gateway's record sequence of each telemetry row, in order."""

    gateway_id: uuid.UUID
    sync_stream: int
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Message:
    telemetry: list[TelemetryRow]
    quarantine: list[QuarantineRow]
    provenance: Provenance | None = None


def _us(at: datetime) -> int:
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _uuid(raw: bytes | None) -> uuid.UUID | None:
    return None if raw is None else uuid.UUID(bytes=raw)


def encode(telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = (), provenance: Provenance | None = None) -> bytes:
    """Format 1 (ingest's rows), or with ``provenance`` format 2 (a gateway's rows)."""
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
    if provenance is None:
        body: bytes = msgpack.packb([STREAM_FORMAT, t, q], use_bin_type=True)
        return body
    if len(provenance.seqs) != len(telemetry):
        raise ValueError("one record sequence per telemetry row")
    p = [provenance.gateway_id.bytes, provenance.sync_stream, list(provenance.seqs)]
    body = msgpack.packb([STREAM_FORMAT_GATEWAY, t, q, p], use_bin_type=True)
    return body


def decode(body: bytes) -> tuple[list[TelemetryRow], list[QuarantineRow]]:
    message = decode_message(body)
    return message.telemetry, message.quarantine


def decode_message(body: bytes) -> Message:
    """Either format, with the provenance of format 2."""
    try:
        version, t, q, *rest = msgpack.unpackb(body, raw=False)
        if version not in (STREAM_FORMAT, STREAM_FORMAT_GATEWAY) or len(rest) != (version == STREAM_FORMAT_GATEWAY):
            raise StreamFormatError(
                f"stream message format {version!r} with {3 + len(rest)} parts; this writer reads {STREAM_FORMAT} and {STREAM_FORMAT_GATEWAY}"
            )
        telemetry = [_telemetry(r) for r in t]
        quarantine = [_quarantine(r) for r in q]
        provenance = None
        if rest:
            gateway, sync_stream, seqs = rest[0]
            if not isinstance(sync_stream, int) or len(seqs) != len(telemetry) or not all(isinstance(s, int) for s in seqs):
                raise StreamFormatError("gateway provenance does not match the rows")
            provenance = Provenance(uuid.UUID(bytes=gateway), sync_stream, tuple(seqs))
    except StreamFormatError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise StreamFormatError(f"not a stream message: {exc}") from exc
    return Message(telemetry, quarantine, provenance)


def _telemetry(r: list[Any]) -> TelemetryRow:
    time, tenant, device, kind, metrics, tags, body, seq, gateway, source, received = r
    return TelemetryRow(_at(time), uuid.UUID(bytes=tenant), device, kind, metrics, tags, body, seq, _uuid(gateway), source, _at(received))


def _quarantine(r: list[Any]) -> QuarantineRow:
    tenant, device, gateway, source, code, reason, raw, received = r
    return QuarantineRow(uuid.UUID(bytes=tenant), device, _uuid(gateway), source, code, reason, raw, _at(received))
