"""The twin and command contracts between the cloud and a gateway: downlink payloads and Stream.TWIN records."""

from __future__ import annotations

import json

import pytest

from pulse.protocol import commands, sync, twin
from pulse.protocol.commands import CommandEvent, CommandState
from pulse.protocol.twin import TwinDocument, TwinUpdate, apply_update

pytestmark = pytest.mark.unit


def _doc() -> TwinDocument:
    doc, _ = apply_update(TwinDocument(), TwinUpdate(desired={"cfg": {"interval_s": 5}}), now_ms=1000)
    doc, _ = apply_update(doc, TwinUpdate(reported={"fw": "1.2"}), now_ms=2000)
    return doc


def test_twin_desired_payload_round_trips_and_is_the_stored_document() -> None:
    item = sync.TwinDesired("boiler-7", _doc())
    payload = item.to_payload()
    assert payload["device_id"] == "boiler-7"
    assert payload["document"] == json.loads(twin.to_json(_doc()))
    assert sync.TwinDesired.from_payload(json.loads(json.dumps(payload))) == item


@pytest.mark.parametrize(
    "payload",
    [
        {"device_id": "a/b", "document": {"version": 1}},
        {"device_id": "d1"},
        {"device_id": "d1", "document": {"version": -1}},
        {"device_id": "d1", "document": {"version": 1, "state": {"desired": {"a": 1}}, "metadata": {"desired": {}}}},
    ],
)
def test_malformed_twin_desired_payloads_are_refused(payload: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="twin_desired"):
        sync.TwinDesired.from_payload(payload)


def test_gateway_takes_the_clouds_desired_and_keeps_its_own_reported() -> None:
    local, _ = apply_update(TwinDocument(), TwinUpdate(reported={"interval_s": 10, "fw": "1.3"}), now_ms=500)
    cloud = _doc()
    new = twin.take_desired(local, cloud)
    assert new.desired == {"cfg": {"interval_s": 5}} and new.desired_meta == {"cfg": {"interval_s": 1000}}
    assert new.reported == {"interval_s": 10, "fw": "1.3"} and new.reported_meta == local.reported_meta
    assert new.version == local.version + 1
    seeded = twin.take_desired(TwinDocument(), cloud, seed_reported=True)
    assert seeded.reported == {"fw": "1.2"} and seeded.reported_meta == {"fw": 2000}


def test_command_payload_is_the_stored_command() -> None:
    cmd = commands.new_command(id="c-1", device_id="d1", name="ping", params={"n": 1}, now_ms=1000, expires_at_ms=5000)
    payload = sync.command_to_payload(cmd)
    assert payload == json.loads(commands.to_json(cmd))
    assert sync.command_from_payload(payload) == cmd
    with pytest.raises(ValueError, match="command"):
        sync.command_from_payload({**payload, "expires": 500})


@pytest.mark.parametrize(("state", "event"), [("sent", CommandEvent.SEND), ("expired", CommandEvent.EXPIRE)])
def test_command_state_records_name_the_event_the_cloud_applies(state: str, event: CommandEvent) -> None:
    report = sync.CommandStateReport.from_body({"id": "c-1", "state": state})
    assert report.event is event and report.state is CommandState(state)
    assert report.to_body() == {"id": "c-1", "state": state}


@pytest.mark.parametrize(
    "body", [None, {"id": "c-1", "state": "succeeded"}, {"id": "c/1", "state": "sent"}, {"state": "sent"}, {"id": "c-1"}]
)
def test_malformed_command_state_records_are_refused(body: dict[str, object] | None) -> None:
    with pytest.raises(ValueError, match="command_state"):
        sync.CommandStateReport.from_body(body)


def test_stream_twin_carries_reports_acks_and_command_states() -> None:
    assert sync.TWIN_RECORD_TYPES == {"twin_reported", "command_ack", "command_state"}
