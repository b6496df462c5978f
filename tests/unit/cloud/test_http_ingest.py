"""The pure part of HTTP ingest: splitting a body into messages and deciding each one's fate."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from pulse.cloud.ingest.http import prepare, split_body
from pulse.cloud.ingest.identity import DeviceIdentity
from pulse.protocol.envelope import DEFAULT_LIMITS, Limits, MessageType

pytestmark = pytest.mark.unit

NOW_MS = 1_764_061_200_000
IDENT = DeviceIdentity(uuid.uuid4(), uuid.uuid4(), "boiler-7", "active", uuid.uuid4())
AT = datetime.fromtimestamp(NOW_MS / 1000, UTC)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"v":1,"metrics":{"a":1}}', [(b'{"v":1,"metrics":{"a":1}}', MessageType.TELEMETRY)]),
        (b'{"v":1,"type":"event"}', [(b'{"v":1,"type":"event"}', None)]),
        (b"not json", [(b"not json", None)]),
        (b"42", [(b"42", None)]),
        (b"[]", []),
        (
            b'[{"v":1},{"v":1,"type":"heartbeat"},7]',
            [(b'{"v":1}', MessageType.TELEMETRY), (b'{"v":1,"type":"heartbeat"}', None), (b"7", None)],
        ),
    ],
)
def test_split_body(body: bytes, expected: list[tuple[bytes, MessageType | None]]) -> None:
    assert [(m.encoded(), m.implied) for m in split_body(body)] == expected


def test_prepare_turns_good_messages_into_rows_and_bad_ones_into_quarantine() -> None:
    messages = split_body(
        json.dumps(
            [
                {"v": 1, "ts": NOW_MS - 1000, "seq": 3, "metrics": {"t": 1.5}, "tags": {"z": "n"}},
                {"v": 1, "metrics": {}},
                {"v": 1, "type": "event", "body": {"k": "v"}},
            ]
        ).encode()
    )
    out = prepare(IDENT, messages, now_ms=NOW_MS, received_at=AT)
    assert [r["status"] for r in out.results] == ["accepted", "rejected", "accepted"]
    assert out.results[1]["code"] == "envelope.missing_metrics"
    first = out.telemetry[0]
    assert first[:4] == (datetime.fromtimestamp((NOW_MS - 1000) / 1000, UTC), IDENT.tenant_id, "boiler-7", "telemetry")
    assert json.loads(first[4]) == {"t": 1.5} and json.loads(first[5] or "") == {"z": "n"} and first[7] == 3
    event = out.telemetry[1]
    assert event[3] == "event" and json.loads(event[6] or "") == {"k": "v"} and event[0] == AT  # no ts: receiver's clock
    (q,) = out.quarantine
    assert q[0] == IDENT.tenant_id and q[4] == "envelope.missing_metrics" and json.loads(q[6]) == {"v": 1, "metrics": {}}


def test_json_that_only_the_standard_library_reads_is_refused_per_field_not_as_a_whole() -> None:
    body = b'[{"v":1,"metrics":{"a":NaN}},{"v":1,"metrics":{"b":123456789012345678901234567890}},{"v":1,"metrics":{"c":1}}]'
    messages = split_body(body)
    assert messages[0].encoded() == b'{"v":1,"metrics":{"a":NaN}}'
    out = prepare(IDENT, messages, now_ms=NOW_MS, received_at=AT)
    assert [r.get("code") for r in out.results] == ["envelope.bad_metric", "envelope.bad_metric", None]


def test_an_oversize_array_element_is_refused_like_an_oversize_message() -> None:
    big = {"v": 1, "metrics": {"a": 1}, "tags": {f"t{i}": "x" * 120 for i in range(16)}, "body": {"pad": "y" * 20000}}
    out = prepare(IDENT, split_body(json.dumps([big, {"v": 1, "metrics": {"a": 1}}]).encode()), now_ms=NOW_MS, received_at=AT)
    assert [r.get("code") for r in out.results] == ["envelope.too_large", None]


@pytest.mark.parametrize(
    ("element", "limits"),
    [
        ('{"v":1,"metrics":{"a":1},"pad":[' + ",".join(["1e15"] * 1000) + "]}", DEFAULT_LIMITS),
        ('{"v":1,"metrics":{' + ",".join(f'"m{i}":1e15' for i in range(64)) + "}}", Limits(max_bytes=1000)),
    ],
    ids=["unknown field", "metrics only"],
)
def test_an_element_is_measured_as_encoded_again_so_a_body_under_the_limit_proves_nothing(element: str, limits: Limits) -> None:
    """An element's size is that of its compact JSON, as it is quarantined: "1e15" is 4 bytes in the
    body and 18 encoded again ("1000000000000000.0"), so an element of a body under the limit can
    be over it; it is refused as too large and quarantined with those bytes."""
    body = f'[{element},{{"v":1,"metrics":{{"a":1}}}}]'.encode()
    assert len(body) < limits.max_bytes < len(orjson.dumps(orjson.loads(element)))
    out = prepare(IDENT, split_body(body), now_ms=NOW_MS, received_at=AT, limits=limits)
    assert [r.get("code") for r in out.results] == ["envelope.too_large", None]
    assert out.quarantine[0].raw == orjson.dumps(orjson.loads(element))


def test_every_refused_element_is_quarantined_with_its_bytes_and_the_accepted_ones_keep_their_order() -> None:
    body = b'[{"v":1,"metrics":{"a":1}},{"v":2},{"v":1,"metrics":{"a":2}},7,{"v":1,"metrics":{"a":"x"}}]'
    out = prepare(IDENT, split_body(body), now_ms=NOW_MS, received_at=AT)
    assert [(r["index"], r["status"], r.get("code")) for r in out.results] == [
        (0, "accepted", None),
        (1, "rejected", "envelope.version_unsupported"),
        (2, "accepted", None),
        (3, "rejected", "envelope.not_object"),
        (4, "rejected", "envelope.bad_metric"),
    ]
    assert [q.raw for q in out.quarantine] == [b'{"v":2}', b"7", b'{"v":1,"metrics":{"a":"x"}}']
    assert [json.loads(r.metrics) for r in out.telemetry] == [{"a": 1}, {"a": 2}]
