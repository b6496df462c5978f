"""Connectivity events (protocol/connectivity.py): what the gateway writes parses as an envelope v1
event, and the cloud reads the kind and the device status back from a stored record."""

from __future__ import annotations

import pytest

from pulse.protocol import envelope
from pulse.protocol.connectivity import TAG, Connectivity, event_message, kind_of, status_of
from pulse.protocol.envelope import Limits, MessageType

NOW = 1_764_061_200_000


@pytest.mark.parametrize(
    ("kind", "will", "metrics", "body", "status"),
    [
        (Connectivity.CONNECTED, False, {"connected": True}, None, "online"),
        (Connectivity.DISCONNECTED, False, {"connected": False}, None, "offline"),
        (Connectivity.LOST, True, {"connected": False}, {"will": True}, "offline"),
        (Connectivity.LOST, False, {"connected": False}, {"will": False}, "offline"),
    ],
)
def test_event_message_is_an_envelope_event_that_reads_back(kind, will, metrics, body, status) -> None:
    env = envelope.parse(event_message(kind, now_ms=NOW, will=will), now_ms=NOW, device_id="boiler-1",
                         expected_type=MessageType.EVENT, limits=Limits())
    assert (env.type, env.ts_ms, dict(env.metrics), dict(env.tags), env.body) == (
        MessageType.EVENT, NOW, metrics, {TAG: kind.value}, body)
    assert kind_of("event", env.tags) is kind
    assert status_of(kind) == status


@pytest.mark.parametrize(
    ("record_type", "tags"),
    [("event", None), ("event", {}), ("event", {"zone": "north"}), ("event", {TAG: "rebooted"}),
     ("telemetry", {TAG: "connected"})],
)
def test_other_records_are_not_connectivity_events(record_type, tags) -> None:
    assert kind_of(record_type, tags) is None
