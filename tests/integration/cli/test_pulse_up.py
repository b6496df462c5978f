"""`pulse up` (the README's first command) brings up database, cloud, gateway and fleet, and Ctrl-C
stops all of it cleanly; a second start reuses the data directory."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _start(data: Path, *extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # free ports: 8080 and the others may be taken on this machine
    env.update(PULSE_PORT="0", PULSE_DEMO_MQTT_PORT="0", PULSE_DEMO_STATUS_PORT="0", PULSE_PG_PORT="0", PULSE_DEMO_INBOX_PORT="0", PULSE_DEMO_SIM_PORT="0",
               PULSE_MQTT_TLS_PORT="0")
    return subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "up", "--data-dir", str(data), "--devices", "5", "--interval", "0.5", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _read_until(proc: subprocess.Popen[str], pattern: str, lines: list[str], timeout: float = 120) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(pattern, line):
            return m
    raise AssertionError(f"never saw {pattern!r}; output:\n{''.join(lines)}")


def test_pulse_up_runs_the_whole_stack_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # as root, the embedded PostgreSQL runs as `postgres` and must reach it
    data = tmp_path / "pulse"
    for start in range(2):
        # the first start injects a fault: dev-0000 (an environment sensor) reads 10x its temperature
        proc = _start(data, "--fault", "dev-0000:spike:metric=temperature_c") if start == 0 else _start(data)
        lines: list[str] = []
        try:
            cloud = _read_until(proc, r"cloud\s+: (http://\S+)", lines).group(1)
            email, password = _read_until(proc, r"login\s+: (\S+) / (\S+)", lines).groups()
            mqtt_port = int(_read_until(proc, r"mqtt\s+: direct devices on 127.0.0.1:(\d+) over TLS", lines).group(1))
            with socket.create_connection(("127.0.0.1", mqtt_port), timeout=5):
                pass  # `pulse cloud mqtt` runs beside the cloud
            inbox = _read_until(proc, r"webhook inbox (http://\S+)/", lines).group(1)
            status = _read_until(proc, r"status page (http://\S+)", lines).group(1)
            _read_until(proc, r"Pulse is up", lines)
            assert httpx.get(cloud + "/health", timeout=5).status_code == 200
            # every simulated device connects, and their readings reach the gateway's buffer
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                snapshot = httpx.get(status + "/status", timeout=5).json()
                if snapshot["broker"]["connected_devices"] == 5 and snapshot["messages"]["stored"] >= 10:
                    break
                time.sleep(0.5)
            assert snapshot["broker"]["connected_devices"] == 5, snapshot
            assert snapshot["messages"]["stored"] >= 10, snapshot
            assert snapshot["quarantine"]["count"] == 0, snapshot
            # ... and the cloud: the gateway enrolled itself and syncs (the first device's newest values)
            token = httpx.post(cloud + "/auth/login", json={"email": email, "password": password}, timeout=10).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            device = httpx.get(cloud + "/api/v1/devices", params={"q": "dev-0000"}, headers=headers, timeout=10).json()["items"][0]
            deadline = time.monotonic() + 60
            latest: dict[str, object] = {}
            while time.monotonic() < deadline:
                latest = httpx.get(f"{cloud}/api/v1/devices/{device['id']}/telemetry/latest", headers=headers, timeout=10).json()
                if latest.get("metrics"):
                    break
                time.sleep(0.5)
            assert latest.get("metrics"), latest
            # the demo gateway polls a simulated UPS (SNMP) and power meter (Modbus TCP)
            deadline = time.monotonic() + 60
            polled: dict[str, str] = {}
            while time.monotonic() < deadline:
                polled = {r["id"]: r["state"] for r in httpx.get(status + "/status", timeout=5).json()["connectors"]}
                if polled == {"demo-ups": "ok", "demo-meter": "ok"}:
                    break
                time.sleep(0.5)
            assert polled == {"demo-ups": "ok", "demo-meter": "ok"}, polled
            if start == 0:
                # ... the fault opens the default overheating rule's alert, whose notification
                # reaches the local webhook inbox, signed
                deadline = time.monotonic() + 90
                received: list[dict[str, object]] = []
                while time.monotonic() < deadline:
                    received = httpx.get(inbox + "/messages", timeout=5).json()
                    if any(m["body"]["device"] == "dev-0000" and m["body"]["event"] == "opened" for m in received):
                        break
                    time.sleep(1)
                opened = [m["body"] for m in received if m["body"]["device"] == "dev-0000" and m["body"]["event"] == "opened"]
                assert opened, received
                assert opened[0]["severity"] == "critical" and opened[0]["metric"] == "temperature_c"
                alerts = httpx.get(cloud + "/api/v1/alerts", params={"state": "open"}, headers=headers, timeout=10).json()["items"]
                assert any(a["rule_id"] == "env-overheat" for a in alerts), alerts
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, "".join(lines) + out
        assert "Pulse stopped." in out
        if start == 1:
            assert "starting embedded PostgreSQL" in "".join(lines)  # reused, not initialised again
