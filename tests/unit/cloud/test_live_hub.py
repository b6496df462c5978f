"""The live hub: committed rows reach only the subscribers of their (tenant, device); a slow
subscriber loses its oldest points and is told how many."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.live import LiveHub

pytestmark = pytest.mark.unit

A, B = uuid.uuid4(), uuid.uuid4()
T = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def row(tenant: uuid.UUID, device_id: str, value: float, msg_type: str = "telemetry") -> TelemetryRow:
    return TelemetryRow(T, tenant, device_id, msg_type, f'{{"temp": {value}}}', None, None, None, None, "http", T)


async def test_rows_reach_only_subscribers_of_their_tenant_and_device() -> None:
    hub = LiveHub()
    a_sub = hub.subscribe(A, "pump-1")
    b_sub = hub.subscribe(B, "pump-1")  # the same device id in another tenant
    hub.publish([row(A, "pump-1", 1), row(B, "pump-1", 2), row(A, "pump-2", 3)])
    points, dropped = await a_sub.next_batch()
    assert [(p.time_ms, p.metrics) for p in points] == [(int(T.timestamp() * 1000), {"temp": 1})] and dropped == 0
    points, _ = await b_sub.next_batch()
    assert [p.metrics for p in points] == [{"temp": 2}]


async def test_a_slow_subscriber_keeps_the_newest_points_and_learns_how_many_it_lost() -> None:
    hub = LiveHub(queue_points=3)
    sub = hub.subscribe(A, "d")
    hub.publish([row(A, "d", v) for v in range(5)])
    points, dropped = await sub.next_batch()
    assert [p.metrics["temp"] for p in points] == [2, 3, 4] and dropped == 2
    hub.publish([row(A, "d", 9)])
    points, dropped = await sub.next_batch()
    assert [p.metrics["temp"] for p in points] == [9] and dropped == 0


def test_unsubscribed_keys_are_forgotten_and_publish_without_subscribers_decodes_nothing() -> None:
    hub = LiveHub()
    sub = hub.subscribe(A, "d")
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless
    assert hub.subscribers == 0
    hub.publish([TelemetryRow(T, A, "d", "telemetry", "not json", None, None, None, None, "http", T)])  # not decoded: nobody listens


async def test_subscribers_and_feeds_get_the_rows_parsed_metrics_without_parsing_the_text() -> None:
    hub = LiveHub()
    sub = hub.subscribe(A, "d")
    feed = hub.subscribe_feed(A)
    values = {"temp": 5.0}
    # the JSON text is what the table stores; a listener reads the mapping the row carries
    earlier = TelemetryRow(T, A, "d", "telemetry", "not read", None, None, None, None, "http", T, {"temp": 4.0})
    newest = TelemetryRow(T.replace(second=1), A, "d", "telemetry", "not read either", None, None, None, None, "http", T, values)
    hub.publish([earlier, newest])
    points, _ = await sub.next_batch()
    assert [p.metrics for p in points] == [{"temp": 4.0}, values]
    events, _ = await feed.next_batch()
    assert events == [
        {"t": int(newest.time.timestamp() * 1000), "tenant_id": str(A), "device_id": "d", "readings": 2, "metrics": values}
    ]
