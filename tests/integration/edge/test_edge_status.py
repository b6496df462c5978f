"""The installer's view: status JSON, HTML page, Prometheus metrics, and the `pulse gateway` commands."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from pulse.cli.main import main

pytestmark = pytest.mark.integration


def config_file(settings, tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\nid = "{settings.gateway.id}"\ndata_dir = "{settings.gateway.data_dir}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {settings.broker.port}\n[status]\nport = {settings.status.port}\n'
    )
    return path


async def test_status_page_json_and_metrics_show_devices_buffer_and_quarantine(gateway, devices, client_factory):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await asyncio.to_thread(c.connect)
    await asyncio.to_thread(c.publish, "pulse/boiler-1/telemetry", b'{"v":1,"seq":1,"metrics":{"t":1}}')
    await asyncio.to_thread(c.publish, "pulse/boiler-1/event", b'{"v":1,"seq":2}')
    await asyncio.to_thread(c.publish, "pulse/boiler-1/telemetry", b"not json")
    await gateway.board.sample()

    async with httpx.AsyncClient(base_url=gateway.settings.status_url) as http:
        doc = (await http.get("/status")).raise_for_status().json()
        page = (await http.get("/")).raise_for_status().text
        metrics = (await http.get("/metrics")).raise_for_status().text

    assert doc["gateway"]["id"] == "test-gw"
    assert doc["broker"]["connected_devices"] == 1
    assert doc["buffer"]["depth"] == 2
    assert {s["stream"]: s["depth"] for s in doc["buffer"]["streams"]} == {"telemetry": 1, "events": 1, "alerts": 0, "twin": 0}
    assert doc["buffer"]["oldest_unsynced_age_s"] is not None
    assert doc["messages"]["stored"] == 2 and doc["messages"]["quarantined"] == 1
    assert doc["quarantine"]["count"] == 1
    assert doc["quarantine"]["last_reasons"][-1]["code"] == "envelope.not_json"
    assert doc["uplink"]["state"] == "not enrolled"
    assert "envelope.not_json" in page and "test-gw" in page
    assert "pulse_gateway_connected_devices 1.0" in metrics
    assert 'pulse_gateway_buffer_records{stream="telemetry"} 1.0' in metrics
    assert "pulse_gateway_quarantine_records 1.0" in metrics


async def test_gateway_status_command_prints_the_running_gateway(gateway, devices, tmp_path, capsys):
    path = config_file(gateway.settings, tmp_path)
    assert await asyncio.to_thread(main, ["gateway", "status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "test-gw" in out and "0 connected" in out and "uplink       not enrolled" in out
    assert "sessions     0 persistent, 0 messages queued" in out
    assert await asyncio.to_thread(main, ["gateway", "status", "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["buffer"]["depth"] == 0


def test_gateway_status_command_when_not_running_reads_the_file(settings, devices, tmp_path, capsys):
    devices.add("boiler-1")
    assert main(["gateway", "status", "--config", str(config_file(settings, tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "gateway not answering" in out and "1 devices registered" in out


def test_device_commands_add_list_remove(settings, tmp_path, capsys):
    path = str(config_file(settings, tmp_path))
    assert main(["gateway", "device", "add", "boiler-1", "--config", path, "--note", "cellar"]) == 0
    secret = capsys.readouterr().out.splitlines()[1]
    assert len(secret) >= 43
    assert main(["gateway", "device", "add", "boiler-1", "--config", path]) == 2
    assert "gateway.device_exists" in capsys.readouterr().err
    assert main(["gateway", "device", "list", "--config", path, "--json"]) == 0
    assert [d["device_id"] for d in json.loads(capsys.readouterr().out)] == ["boiler-1"]
    assert main(["gateway", "device", "remove", "boiler-1", "--config", path]) == 0
    assert main(["gateway", "device", "remove", "boiler-1", "--config", path]) == 2
    assert "gateway.device_unknown" in capsys.readouterr().err
    assert main(["gateway", "device", "add", "bad/id", "--config", path]) == 2
    assert "topic.bad_device_id" in capsys.readouterr().err
