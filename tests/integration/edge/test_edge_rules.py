"""The gateway's local rule runner: a real broker, a real device publishing over MQTT, rules from
the SQLite rule set; alerts land in SQLite, on the ALERTS buffer stream and on the status page."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from pulse.edge.rules import rules_version, store_rules
from pulse.protocol.batch import Stream
from pulse.protocol.errors import RuleError

pytestmark = pytest.mark.integration

HOT = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30}


async def wait_for(fn: Any, what: str, limit_s: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not (value := await fn()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


def env(seq: int, temp: float) -> str:
    return json.dumps({"v": 1, "ts": int(time.time() * 1000), "seq": seq, "metrics": {"temp_c": temp}})


async def test_a_published_reading_over_the_threshold_raises_a_local_alert_that_is_buffered_for_sync(
    settings: Any, devices: Any, start_gateway: Any, client_factory: Any
) -> None:
    store_rules(settings.database, [HOT])
    secret = devices.add("boiler-1", None)
    gw = await start_gateway()
    client = client_factory(settings.broker.port, "boiler-1", secret)
    assert await asyncio.to_thread(client.connect)
    await asyncio.to_thread(client.publish, "pulse/boiler-1/telemetry", env(1, 25))
    await asyncio.to_thread(client.publish, "pulse/boiler-1/telemetry", env(2, 33))
    (alert,) = await wait_for(lambda: gw.rules.alerts(open_only=True), "the local alert")
    assert (alert.rule_id, alert.device_id, alert.state) == ("hot", "boiler-1", "open") and "above 30" in alert.text
    (record,) = await wait_for(lambda: gw.buffer.read(Stream.ALERTS, 0, 10), "the ALERTS record")
    assert record.type == "alert" and record.body["action"] == "open" and record.body["rule_id"] == "hot"

    await asyncio.to_thread(client.publish, "pulse/boiler-1/telemetry", env(3, 20))
    await wait_for(lambda: _closed(gw), "the close")
    records = await wait_for(lambda: _two(gw), "the close record")
    assert [r.body["action"] for r in records] == ["open", "close"]
    await gw.board.sample()
    async with httpx.AsyncClient() as http:
        page = (await http.get(f"http://127.0.0.1:{settings.status.port}/status")).json()
    assert page["alerts"]["rules"] == 1


async def _two(gw: Any) -> list[Any]:
    records = await gw.buffer.read(Stream.ALERTS, 0, 10)
    return records if len(records) == 2 else []


async def _closed(gw: Any) -> bool:
    return [a.state for a in await gw.rules.alerts()] == ["closed"]


async def test_a_heartbeat_rule_raises_an_offline_alert_from_the_sweep_and_state_survives_a_restart(
    settings: Any, devices: Any, start_gateway: Any, client_factory: Any
) -> None:
    store_rules(settings.database, [{"id": "alive", "kind": "heartbeat", "severity": "critical", "interval_s": 60}])
    secret = devices.add("meter-1", None)
    gw = await start_gateway()
    client = client_factory(settings.broker.port, "meter-1", secret)
    assert await asyncio.to_thread(client.connect)
    await asyncio.to_thread(client.publish, "pulse/meter-1/heartbeat", json.dumps({"v": 1, "ts": int(time.time() * 1000), "metrics": {}}))
    await wait_for(lambda: _has_state(gw), "the heartbeat state")
    await gw.stop()
    gw2 = await start_gateway()  # a new process' worth of runner: state comes from SQLite
    await gw2.rules.sweep_once(int(time.time() * 1000) + 200_000)
    (alert,) = await gw2.rules.alerts(open_only=True)
    assert alert.rule_id == "alive" and "offline" in alert.text


async def test_the_periodic_reload_of_the_rule_set_keeps_what_was_heard_since_the_last_checkpoint(
    settings: Any, devices: Any, start_gateway: Any, client_factory: Any
) -> None:
    """The sweeper reads the rule set again every round. It once read the rule states back from the
    last checkpoint too, so a device reporting every second looked silent since then and a spurious
    OFFLINE alert opened (and closed at its next message)."""
    store_rules(settings.database, [{"id": "alive", "kind": "heartbeat", "severity": "major", "interval_s": 1, "offline_after": 2}])
    secret = devices.add("meter-1", None)
    gw = await start_gateway()
    client = client_factory(settings.broker.port, "meter-1", secret)
    assert await asyncio.to_thread(client.connect)
    beat = json.dumps({"v": 1, "metrics": {}})
    await asyncio.to_thread(client.publish, "pulse/meter-1/heartbeat", beat)
    await wait_for(lambda: _has_state(gw), "the heartbeat state")
    await gw.rules.sweep_once(int(time.time() * 1000))  # a checkpoint
    for _ in range(6):  # three seconds of messages, each evaluated in memory only
        await asyncio.sleep(0.5)
        await asyncio.to_thread(client.publish, "pulse/meter-1/heartbeat", beat)
    await wait_for(lambda: _evaluated(gw, 7), "the seven heartbeats evaluated")
    await gw.rules.reload()  # what the sweeper does every round
    await gw.rules.sweep_once(int(time.time() * 1000))
    assert await gw.rules.alerts() == []


async def _evaluated(gw: Any, n: int) -> bool:
    return bool(gw.rules.evaluated >= n)


async def _has_state(gw: Any) -> bool:
    return bool(gw.rules._states)


def test_a_refused_rule_set_changes_nothing(settings: Any) -> None:
    store_rules(settings.database, [HOT])
    with pytest.raises(RuleError) as info:
        store_rules(settings.database, [HOT, {**HOT, "id": "x", "operator": "ABOUT"}])
    assert info.value.code == "rule.bad_operator"


async def test_the_downlink_can_set_a_versioned_rule_set_and_a_registered_silent_device_goes_offline(
    settings: Any, devices: Any, start_gateway: Any
) -> None:
    devices.add("never-heard", None)
    gw = await start_gateway()
    rules = await gw.rules.set_rules([{"id": "alive", "kind": "heartbeat", "severity": "critical", "interval_s": 60}], set_version=7)
    assert [r.id for r in rules] == ["alive"] and rules_version(settings.database) == 7
    now = int(time.time() * 1000)
    await gw.rules.sweep_once(now)  # monitoring starts
    assert await gw.rules.alerts() == []
    await gw.rules.sweep_once(now + 181_000)  # 3 intervals of silence
    (alert,) = await gw.rules.alerts(open_only=True)
    assert (alert.device_id, alert.rule_id) == ("never-heard", "alive")
