"""Twins and commands at the gateway, with a real broker, real paho-mqtt devices and a real mTLS
receiver standing in for the cloud: desired from the downlink published retained (and again after
a restart), the device's report clearing it, twin/get, commands sent when the device is there and
answered, a command past its deadline never sent, and every state synced up on Stream.TWIN in order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import pytest
from edge_sync_receiver import Receiver, wait_for

from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import Settings
from pulse.protocol import commands, twin
from pulse.protocol.batch import Stream
from pulse.protocol.sync import TwinDesired, command_to_payload
from pulse.protocol.twin import TwinDocument, TwinUpdate

pytestmark = pytest.mark.integration

DEV = "boiler-1"


def cloud_twin(version_bumps: int, desired: dict[str, Any]) -> TwinDocument:
    """A cloud document at version ``version_bumps`` whose last update set ``desired``."""
    doc = TwinDocument()
    for _ in range(version_bumps - 1):
        doc, _ = twin.apply_update(doc, TwinUpdate(reported={"boot": 1}), now_ms=1000)
    doc, _ = twin.apply_update(doc, TwinUpdate(desired=desired), now_ms=2000)
    return doc


def envelope(kind: str, body: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "type": kind, "ts": int(time.time() * 1000), "body": body}).encode()


def payloads(client: Any, topic: str) -> list[bytes]:
    return [bytes(m.payload) for m in list(client.messages) if m.topic == topic]


async def device(client_factory: Callable[..., Any], port: int, secret: str, *filters: str) -> Any:
    c = client_factory(port, DEV, secret)
    assert await asyncio.to_thread(c.connect)
    for f in filters:
        await asyncio.to_thread(c.subscribe, f)
    return c


async def test_desired_reaches_the_device_retained_its_report_clears_it_and_twin_get_answers(
    enrolled_settings: Settings, receiver: Receiver, run_gateway: Any, devices: DeviceRegistry, client_factory: Any
) -> None:
    secret = devices.add(DEV)
    gw = await run_gateway()
    desired_topic, doc_topic = f"pulse/{DEV}/twin/desired", f"pulse/{DEV}/twin/document"
    seq = receiver.add_downlink("twin_desired", TwinDesired(DEV, cloud_twin(3, {"interval_s": 5, "mode": "eco"})).to_payload())
    await wait_for(lambda: seq in receiver.downlink_acks, "the desired state acked")

    # a device that was asleep subscribes later and still gets the delta (retained)
    c = await device(client_factory, enrolled_settings.broker.port, secret, desired_topic, doc_topic)
    await wait_for(lambda: payloads(c, desired_topic), "the retained delta")
    delta = json.loads(payloads(c, desired_topic)[0])
    assert delta["state"] == {"interval_s": 5, "mode": "eco"} and delta["metadata"]["mode"] == {"timestamp": 2000}
    assert [m.retain for m in c.messages] == [True]

    # an older or repeated item changes nothing
    stale = receiver.add_downlink("twin_desired", TwinDesired(DEV, cloud_twin(2, {"interval_s": 99})).to_payload())
    await wait_for(lambda: stale in receiver.downlink_acks, "the stale item acked")
    assert (await gw.twins.document(DEV)).desired == {"interval_s": 5, "mode": "eco"}

    # the device applies part of it and reports: the delta shrinks; then all of it: cleared
    await asyncio.to_thread(c.publish, f"pulse/{DEV}/twin/reported", envelope("twin_reported", {"interval_s": 5, "fw": "1.2"}))
    await wait_for(lambda: len(payloads(c, desired_topic)) == 2, "the smaller delta")
    assert json.loads(payloads(c, desired_topic)[1])["state"] == {"mode": "eco"}
    await asyncio.to_thread(c.publish, f"pulse/{DEV}/twin/reported", envelope("twin_reported", {"mode": "eco"}))
    await wait_for(lambda: len(payloads(c, desired_topic)) == 3, "the delta cleared")
    assert payloads(c, desired_topic)[2] == b""
    assert (await gw.twins.document(DEV)).delta == {}

    await asyncio.to_thread(c.publish, f"pulse/{DEV}/twin/get", b"{}")
    await wait_for(lambda: payloads(c, doc_topic), "the document")
    document = json.loads(payloads(c, doc_topic)[0])
    assert document["state"]["desired"] == {"interval_s": 5, "mode": "eco"}
    assert document["state"]["reported"] == {"interval_s": 5, "fw": "1.2", "mode": "eco", "boot": 1}  # seeded from the cloud
    assert "delta" not in document["state"]

    # both reports synced to the cloud on the twin stream, in order
    await wait_for(lambda: len([r for s, r in receiver.rows if s is Stream.TWIN]) == 2, "the reports synced")
    assert [r.body for s, r in receiver.rows if s is Stream.TWIN] == [{"interval_s": 5, "fw": "1.2"}, {"mode": "eco"}]

    # a newer desired state after a restart: published again, retained, to a new subscriber
    await gw.stop()
    newer = receiver.add_downlink("twin_desired", TwinDesired(DEV, cloud_twin(5, {"interval_s": 7})).to_payload())
    gw = await run_gateway()
    await wait_for(lambda: newer in receiver.downlink_acks, "the newer desired state acked")
    c2 = await device(client_factory, enrolled_settings.broker.port, secret, desired_topic)
    await wait_for(lambda: payloads(c2, desired_topic), "the delta after the restart")
    assert json.loads(payloads(c2, desired_topic)[-1])["state"] == {"interval_s": 7}


async def test_commands_go_out_when_the_device_is_there_and_a_late_one_never_does(
    enrolled_settings: Settings, receiver: Receiver, run_gateway: Any, devices: DeviceRegistry, client_factory: Any
) -> None:
    secret = devices.add(DEV)
    gw = await run_gateway()
    now = int(time.time() * 1000)
    ping = commands.new_command(id="c-ping", device_id=DEV, name="ping", params={"n": 1}, now_ms=now, expires_at_ms=now + 600_000)
    late = commands.new_command(id="c-late", device_id=DEV, name="reboot", now_ms=now - 60_000, expires_at_ms=now - 1)
    receiver.add_downlink("command", command_to_payload(ping))
    last = receiver.add_downlink("command", command_to_payload(late))
    await wait_for(lambda: last in receiver.downlink_acks, "the commands acked")
    held = {c.id: c.state.value for c in await gw.twins.commands(DEV)}
    assert held == {"c-ping": "delivered", "c-late": "expired"}  # the device is not connected yet

    c = await device(client_factory, enrolled_settings.broker.port, secret, f"pulse/{DEV}/cmd/+")
    await wait_for(lambda: payloads(c, f"pulse/{DEV}/cmd/c-ping"), "the command at the device")
    assert json.loads(payloads(c, f"pulse/{DEV}/cmd/c-ping")[0]) == {"id": "c-ping", "name": "ping", "params": {"n": 1}, "expires": now + 600_000}
    answer = {"id": "c-ping", "status": "succeeded", "result": {"pong": True}}
    await asyncio.to_thread(c.publish, f"pulse/{DEV}/cmd/c-ping/ack", envelope("command_ack", answer))

    def twin_stream() -> list[tuple[str, Any]]:
        return [(r.type, r.body) for s, r in receiver.rows if s is Stream.TWIN]

    await wait_for(lambda: len(twin_stream()) == 3, "expired, sent and the answer synced")
    assert twin_stream() == [
        ("command_state", {"id": "c-late", "state": "expired"}),
        ("command_state", {"id": "c-ping", "state": "sent"}),
        ("command_ack", answer),
    ]
    done = {c.id: c for c in await gw.twins.commands(DEV)}
    assert done["c-ping"].state.value == "succeeded" and done["c-ping"].result == {"pong": True}
    assert payloads(c, f"pulse/{DEV}/cmd/c-late") == []
    assert gw.board is not None
    board = (await gw.board.sample())["twin"]
    assert (board["commands_sent"], board["answers"], board["commands_expired"], board["waiting_commands"]) == (1, 1, 1, 0)

    # the same command delivered again (at-least-once downlink) is not sent again
    again = receiver.add_downlink("command", command_to_payload(ping))
    await wait_for(lambda: again in receiver.downlink_acks, "the duplicate acked")
    await gw.stop()
    conn = sqlite3.connect(enrolled_settings.database)
    statuses = [r[0] for r in conn.execute("SELECT status FROM downlink WHERE kind = 'command' ORDER BY seq")]
    conn.close()
    assert statuses == ["applied (delivered)", "applied (expired)", "applied"]
    assert len(payloads(c, f"pulse/{DEV}/cmd/c-ping")) == 1


async def test_a_held_command_survives_a_restart_and_an_unrecorded_state_is_recorded_at_start(
    enrolled_settings: Settings, receiver: Receiver, run_gateway: Any, devices: DeviceRegistry, client_factory: Any
) -> None:
    secret = devices.add(DEV)
    gw = await run_gateway()
    now = int(time.time() * 1000)
    cmd = commands.new_command(id="c-1", device_id=DEV, name="ping", now_ms=now, expires_at_ms=now + 600_000)
    seq = receiver.add_downlink("command", command_to_payload(cmd))
    await wait_for(lambda: seq in receiver.downlink_acks, "the command acked")
    await gw.stop()

    gw = await run_gateway()  # the device was never there: the command waits in gateway.db
    assert [(x.id, x.state.value) for x in await gw.twins.commands(DEV)] == [("c-1", "delivered")]
    c = await device(client_factory, enrolled_settings.broker.port, secret, f"pulse/{DEV}/cmd/+")
    await wait_for(lambda: payloads(c, f"pulse/{DEV}/cmd/c-1"), "the command after the restart")
    await wait_for(lambda: [r.body for s, r in receiver.rows if s is Stream.TWIN] == [{"id": "c-1", "state": "sent"}], "sent synced")
    await gw.stop()

    # as if the gateway had crashed between publishing and recording "sent" for the cloud
    conn = sqlite3.connect(enrolled_settings.database)
    conn.execute("UPDATE commands SET synced = 'delivered' WHERE id = 'c-1'")
    conn.commit()
    conn.close()
    await run_gateway()
    await wait_for(lambda: len([r for s, r in receiver.rows if s is Stream.TWIN]) == 2, "the state recorded again at start")
    assert [r.body for s, r in receiver.rows if s is Stream.TWIN][-1] == {"id": "c-1", "state": "sent"}


async def test_a_command_held_until_after_its_deadline_is_expired_when_the_device_shows_up_not_sent(
    enrolled_settings: Settings, receiver: Receiver, run_gateway: Any, devices: DeviceRegistry, client_factory: Any
) -> None:
    secret = devices.add(DEV)
    gw = await run_gateway()
    now = int(time.time() * 1000)
    cmd = commands.new_command(id="c-soon", device_id=DEV, name="ping", now_ms=now, expires_at_ms=now + 1000)
    seq = receiver.add_downlink("command", command_to_payload(cmd))
    await wait_for(lambda: seq in receiver.downlink_acks, "the command acked")
    assert [x.state.value for x in await gw.twins.commands(DEV)] == ["delivered"]  # in time, but no device
    await wait_for(lambda: int(time.time() * 1000) > cmd.expires_at_ms, "the deadline passing")
    c = await device(client_factory, enrolled_settings.broker.port, secret, f"pulse/{DEV}/cmd/+")
    await wait_for(lambda: [r.body for s, r in receiver.rows if s is Stream.TWIN] == [{"id": "c-soon", "state": "expired"}],
                   "expired synced")
    assert [x.state.value for x in await gw.twins.commands(DEV)] == ["expired"]
    assert payloads(c, f"pulse/{DEV}/cmd/c-soon") == []


async def test_a_command_for_a_device_away_goes_through_its_persistent_session_and_arrives_when_it_returns(
    enrolled_settings: Settings, receiver: Receiver, run_gateway: Any, devices: DeviceRegistry, client_factory: Any
) -> None:
    secret = devices.add(DEV)
    gw = await run_gateway()
    port = enrolled_settings.broker.port
    first = client_factory(port, DEV, secret, clean_session=False)
    assert await asyncio.to_thread(first.connect)
    await asyncio.to_thread(first.subscribe, f"pulse/{DEV}/cmd/+")
    await asyncio.to_thread(first.close)  # away, with its session and subscription kept by the gateway

    now = int(time.time() * 1000)
    cmd = commands.new_command(id="c-away", device_id=DEV, name="reboot", now_ms=now, expires_at_ms=now + 3_600_000)
    seq = receiver.add_downlink("command", command_to_payload(cmd))
    await wait_for(lambda: seq in receiver.downlink_acks, "the command acked")
    # handed to the device's session at once ("sent"), not held at the gateway until it is back
    await wait_for(lambda: [r.body for s, r in receiver.rows if s is Stream.TWIN] == [{"id": "c-away", "state": "sent"}],
                   "sent synced")
    assert gw.sessions.snapshot()["queued_now"] == 1

    back = client_factory(port, DEV, secret, clean_session=False)
    assert await asyncio.to_thread(back.connect)  # no SUBSCRIBE: the session has it
    await wait_for(lambda: payloads(back, f"pulse/{DEV}/cmd/c-away"), "the queued command")
    assert json.loads(payloads(back, f"pulse/{DEV}/cmd/c-away")[0]) == json.loads(commands.command_message(cmd))
    await wait_for(lambda: gw.sessions.snapshot()["queued_now"] == 0, "the queue emptied by the PUBACK")
