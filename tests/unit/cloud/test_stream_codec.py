"""Stream message bodies: rows survive the trip; bodies over the server's limit are split in order."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgpack
import pytest

from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.stream import codec
from pulse.cloud.stream.publisher import _bodies

T0 = datetime(2026, 12, 6, 5, 0, 0, 123456, tzinfo=UTC)
TENANT = uuid.uuid4()


def _row(i: int, *, gateway: uuid.UUID | None = None) -> TelemetryRow:
    return TelemetryRow(T0 + timedelta(milliseconds=i), TENANT, f"dev-{i % 3}", "telemetry", f'{{"t":{i}}}', None,
                        '{"x":1}' if i % 2 else None, i, gateway, "http", T0)


def test_rows_survive_the_round_trip() -> None:
    telemetry = [_row(i) for i in range(5)] + [_row(9, gateway=uuid.uuid4())]
    quarantine = [QuarantineRow(TENANT, None, None, "mqtt", "envelope.invalid", "bad", b"\x00\xff", T0)]
    assert codec.decode(codec.encode(telemetry, quarantine)) == (telemetry, quarantine)


@pytest.mark.parametrize("body", [b"", b"\x00garbage", msgpack.packb([99, [], []]), msgpack.packb([1, [[1, 2]], []])])
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
