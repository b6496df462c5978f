"""The gateway part of `pulse up`: a gateway configuration in the data directory, the demo
fleet's devices added once (secrets kept in ``fleet-credentials.json``, mode 0600), and
`pulse gateway run` as a child process. Ports: the defaults when free, otherwise free ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from pulse.common.logs import log_tail
from pulse.common.ports import pick_port


@dataclass
class GatewayProcess:
    config: Path
    mqtt_port: int
    status_url: str
    credentials: Path
    process: subprocess.Popen[bytes]
    log: Path

    def status(self) -> dict[str, object] | None:
        try:
            r = httpx.get(self.status_url + "/status", timeout=2)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


CONNECTOR_IDS = ["demo-ups", "demo-meter"]
"""The polled devices of the demo: a UPS (SNMP) and a power meter (Modbus TCP), from `pulse sim equipment`."""


def connector_devices(*, modbus_port: int, snmp_port: int) -> str:
    """gateway.toml tables polling `pulse sim equipment` on loopback."""
    return (
        f'\n[[connectors.devices]]\nid = "{CONNECTOR_IDS[0]}"\nkind = "snmp"\nhost = "127.0.0.1"\nport = {snmp_port}\n'
        'profile = "ups-mib"\ninterval_s = 10\n'
        f'\n[[connectors.devices]]\nid = "{CONNECTOR_IDS[1]}"\nkind = "modbus"\nhost = "127.0.0.1"\nport = {modbus_port}\n'
        'profile = "power-meter"\ninterval_s = 5\n'
        'points = [{ metric = "setpoint_w", address = 100, scale = 10, writable = true }]\n'
    )


def write_config(directory: Path, *, gateway_id: str, mqtt_port: int, status_port: int, connectors: str = "",
                 firmware_port: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "gateway.toml"
    config.write_text(
        "# Written by `pulse up` for the demo gateway; see docs/gateway.md for every option.\n"
        f'[gateway]\nid = "{gateway_id}"\ndata_dir = "{directory}"\n\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {mqtt_port}\n\n'
        f'[status]\nhost = "127.0.0.1"\nport = {status_port}\n\n'
        f'[firmware]\nhost = "127.0.0.1"\nport = {firmware_port}\n' + connectors
    )
    return config


def ensure_devices(config: Path, device_ids: list[str], credentials: Path) -> dict[str, str]:
    """Add the demo devices once; later starts reuse them and their secrets."""
    from pulse.edge.auth import DeviceRegistry
    from pulse.edge.config import load
    from pulse.edge.errors import DeviceError

    known: dict[str, str] = json.loads(credentials.read_text()) if credentials.exists() else {}
    missing = [d for d in device_ids if d not in known]
    if missing:
        registry = DeviceRegistry(load(config, {}).database)
        try:
            for device_id in missing:
                try:
                    known[device_id] = registry.add(device_id)
                except DeviceError:  # an id left from an interrupted start: give it a new secret
                    registry.remove(device_id)
                    known[device_id] = registry.add(device_id)
        finally:
            registry.close()
        fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(known, f, indent=1)
    return known


def enrolled(config: Path) -> bool:
    from pulse.edge.config import load
    from pulse.edge.link import load_enrollment

    return load_enrollment(load(config, {}).state_dir) is not None


def enroll(config: Path, cloud_url: str, token: str) -> None:
    """`pulse gateway enroll`, exactly as an installer runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "pulse.cli.main", "gateway", "enroll", "--cloud", cloud_url, "--token", token, "--config", str(config)]
        # the demo's cloud is on this machine's loopback, over plain HTTP
        + (["--insecure"] if cloud_url.startswith("http://") else []),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gateway enrollment failed: {(result.stdout + result.stderr).strip()[-800:]}")


def start_gateway(
    root: Path,
    device_ids: list[str],
    *,
    gateway_id: str = "demo-gateway",
    enroll_token: Callable[[], tuple[str, str]] | None = None,
    connectors: str = "",
) -> GatewayProcess:
    """``enroll_token``: when the gateway is not enrolled yet, gives (cloud URL, one-time token).
    ``connectors``: ``[[connectors.devices]]`` tables for the gateway.toml (``connector_devices``)."""
    directory = root / "gateway"
    credentials = root / "fleet-credentials.json"
    log = root / "gateway.log"
    for attempt in range(2):
        # a port found free can be taken by another program before the gateway binds it: once, on
        # new ports (a port in use is the gateway's own clear error in its log, "cannot listen on")
        mqtt_port = pick_port(int(os.environ.get("PULSE_DEMO_MQTT_PORT", "1883")) if attempt == 0 else 0)
        status_port = pick_port(int(os.environ.get("PULSE_DEMO_STATUS_PORT", "8081")) if attempt == 0 else 0)
        firmware_port = pick_port(int(os.environ.get("PULSE_DEMO_FIRMWARE_PORT", "8478")) if attempt == 0 else 0)
        config = write_config(directory, gateway_id=gateway_id, mqtt_port=mqtt_port, status_port=status_port, connectors=connectors,
                              firmware_port=firmware_port)
        ensure_devices(config, device_ids, credentials)
        if enroll_token is not None and not enrolled(config):
            enroll(config, *enroll_token())
        start_at = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(config)],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        handle = GatewayProcess(config, mqtt_port, f"http://127.0.0.1:{status_port}", credentials, proc, log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = log_tail(log, start_at)
                if attempt == 0 and ("cannot listen on" in said or "already in use" in said.lower()):
                    break
                raise RuntimeError(f"the gateway exited at start: {said or '(nothing in its log)'} (log {log})")
            if handle.status() is not None:
                return handle
            time.sleep(0.2)
        else:
            handle.stop()
            raise RuntimeError(f"the gateway did not answer on {handle.status_url} within 60 s; see {log}")
    raise AssertionError("unreachable: the second start returns or raises")
