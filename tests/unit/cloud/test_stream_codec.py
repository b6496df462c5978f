"""Stream message bodies: rows survive the trip, with a gateway's provenance in format 2 and without
it in format 1 (both read); bodies over the server's limit are split in order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgpack
import pytest

from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.stream import codec
from pulse.cloud.stream.publisher import _bodies, _gateway_bodies
from pulse.protocol.stream import STREAM_FORMAT, STREAM_FORMAT_GATEWAY

T0 = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)
TENANT = uuid.uuid4()


def _row(i: int, *, gateway: uuid.UUID | None = None) -> TelemetryRow:
    return TelemetryRow(T0 + timedelta(milliseconds=i), TENANT, f"dev-{i % 3}", "telemetry", f'{{"t":{i}}}', None,
                        '{"x":1}' if i % 2 else None, i, gateway, "http", T0)


def test_rows_survive_the_round_trip() -> None:
    telemetry = [_row(i) for i in range(5)] + [_row(9, gateway=uuid.uuid4())]
    quarantine = [QuarantineRow(TENANT, None, None, "mqtt", "envelope.invalid", "bad", b"\x00\xff", T0)]
    assert codec.decode(codec.encode(telemetry, quarantine)) == (telemetry, quarantine)


@pytest.mark.parametrize("body", [
    b"", b"\x00garbage", msgpack.packb([99, [], []]), msgpack.packb([1, [[1, 2]], []]),
    msgpack.packb([1, [], [], [uuid.uuid4().bytes, 1, []]]),  # format 1 carries no provenance
    msgpack.packb([2, [], []]),  # format 2 does
    msgpack.packb([2, [], [], [uuid.uuid4().bytes, 1, [5]]]),  # a sequence for a row that is not there
])
def test_anything_else_is_refused_with_stream_format_error(body: bytes) -> None:
    with pytest.raises(codec.StreamFormatError):
        codec.decode(body)


def test_a_body_over_the_limit_is_split_and_keeps_the_order() -> None:
    rows = [_row(i) for i in range(100)]
    whole = codec.encode(rows)
    bodies = _bodies(rows, [], len(whole) // 3)
    assert len(bodies) > 1 and all(len(b) <= len(whole) // 3 for b in bodies)
    assert [r for b in bodies for r in codec.decode(b)[0]] == rows
    assert _bodies(rows, [], len(whole)) == [whole]


def test_a_gateways_rows_carry_their_provenance_in_format_2_and_ingests_stay_format_1() -> None:
    gateway = uuid.uuid4()
    rows = [_row(i, gateway=gateway) for i in range(4)]
    provenance = codec.Provenance(gateway, 2, (7, 9, 10, 12))
    body = codec.encode(rows, (), provenance)
    assert msgpack.unpackb(body)[0] == STREAM_FORMAT_GATEWAY
    assert codec.decode_message(body) == codec.Message(rows, [], provenance)
    plain = codec.encode(rows)
    assert msgpack.unpackb(plain)[0] == STREAM_FORMAT
    assert codec.decode_message(plain) == codec.Message(rows, [], None)
    with pytest.raises(ValueError):
        codec.encode(rows, (), codec.Provenance(gateway, 2, (1,)))


def test_a_gateway_body_over_the_limit_is_split_in_order_with_its_sequences() -> None:
    gateway = uuid.uuid4()
    rows = [_row(i, gateway=gateway) for i in range(100)]
    seqs = [1000 + 2 * i for i in range(100)]
    whole = codec.encode(rows, (), codec.Provenance(gateway, 1, tuple(seqs)))
    bodies = _gateway_bodies(rows, seqs, gateway, 1, len(whole) // 3)
    assert len(bodies) > 1
    messages = [codec.decode_message(b) for b in bodies]
    assert [r for m in messages for r in m.telemetry] == rows
    assert [s for m in messages for s in m.provenance.seqs] == seqs  # type: ignore[union-attr]
