"""The cloud part of `pulse up`: migrate, bootstrap a demo tenant and its admin once, run
`pulse cloud serve` as a child process, and say where to log in.

Development mode only: the JWT secret and the admin's password are generated on first start and
kept in the data directory (``cloud.env``, mode 0600)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from pulse.cloud.errors import ConflictError
from pulse.common.logs import log_tail
from pulse.common.ports import pick_port

DEMO_TENANT = "demo"
DEMO_EMAIL = "admin@demo.pulse"
INBOX_CHANNEL = "Demo webhook inbox"
INBOX_ROUTE = "Everything to the demo inbox"

DEFAULT_RULES: list[dict[str, object]] = [
    # what a first-time operator would set up for the simulated fleet's profiles (firmware-sim)
    {"id": "env-overheat", "name": "Room overheating", "severity": "critical",
     "metric": "temperature_c", "operator": "GT", "threshold": 40, "clear_threshold": 35},
    {"id": "env-warm", "name": "Room warm for 5 minutes", "severity": "warning",
     "metric": "temperature_c", "operator": "GT", "threshold": 28, "clear_threshold": 27, "window_s": 300},
    {"id": "ups-on-battery", "name": "UPS running on battery", "severity": "major",
     "metric": "on_battery", "operator": "EQ", "threshold": True, "window_s": 30},
    {"id": "ups-battery-low", "name": "UPS battery low", "severity": "critical",
     "metric": "battery_pct", "operator": "LT", "threshold": 20, "clear_threshold": 30},
    {"id": "door-tamper", "name": "Door contact tampered with", "severity": "major",
     "metric": "tamper", "operator": "EQ", "threshold": True, "auto_close": False},
    {"id": "device-offline", "name": "Device stopped reporting", "kind": "heartbeat", "severity": "major",
     "interval_s": 10, "stale_after": 3, "offline_after": 6, "alert_on": "offline"},
]  # fmt: skip
"""Installed once by ``pulse up`` (a rule an operator deleted or changed is left as it is)."""


@dataclass
class CloudProcess:
    url: str
    email: str
    password: str
    process: subprocess.Popen[bytes]
    log: Path
    mqtt: subprocess.Popen[bytes] | None = None
    """`pulse cloud mqtt`, the endpoint for direct devices (TLS on ``mqtt_port``; log ``mqtt.log``)."""
    mqtt_port: int = 0

    def stop(self) -> None:
        for process in (self.mqtt, self.process):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _state(root: Path) -> dict[str, str]:
    path = root / "cloud.env"
    state = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line) if path.exists() else {}
    fresh = {
        "PULSE_JWT_SECRET": secrets.token_urlsafe(48),
        "ADMIN_PASSWORD": secrets.token_urlsafe(12),
        "PULSE_DB_ROLE_PASSWORD": secrets.token_urlsafe(24),  # the app's database roles log in with it
    }
    if not fresh.keys() <= state.keys():
        state = {**fresh, **state}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in state.items()))
    return state


async def _bootstrap(settings: object, password: str) -> None:
    from pulse.cloud.auth.accounts import create_tenant, create_user
    from pulse.cloud.db.migrate import migrate
    from pulse.cloud.db.pool import Database
    from pulse.cloud.settings import Settings

    assert isinstance(settings, Settings)
    role_password = settings.db_role_password.get_secret_value() if settings.db_role_password else None
    await migrate(settings.database_url, settings.roles, role_password=role_password, engine=settings.storage_engine)
    db = Database(settings.database_url, settings.roles, password=role_password)
    await db.open()
    try:
        try:
            await create_tenant(db, slug=DEMO_TENANT, name="Demo", actor="pulse-up")
        except ConflictError:
            return  # bootstrapped on an earlier start
        await create_user(db, email=DEMO_EMAIL, password=password, roles=["tenant-admin"], tenant=DEMO_TENANT, actor="pulse-up")
    finally:
        await db.close()


def start_cloud(root: Path, database_url: str) -> CloudProcess:
    from pulse.cloud.settings import Settings

    state = _state(root)
    port = pick_port(int(os.environ.get("PULSE_PORT", "8080")))
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": database_url,
        "PULSE_JWT_SECRET": state["PULSE_JWT_SECRET"],
        "PULSE_DB_ROLE_PASSWORD": state["PULSE_DB_ROLE_PASSWORD"],
        "PULSE_PORT": str(port),
        "PULSE_DATA_DIR": str(root),  # the gateway CA lives in root/ca
        "PULSE_SYNC_PORT": str(pick_port(int(os.environ.get("PULSE_SYNC_PORT", "8443")))),
        # the demo's webhook inbox listens on loopback, which the SSRF guard refuses in production
        "PULSE_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
        "PULSE_NOTIFY_CONSOLE_URL": f"http://127.0.0.1:{port}",  # links in notifications open this console
    }
    settings = Settings(
        mode="development",
        database_url=database_url,
        jwt_secret=state["PULSE_JWT_SECRET"],
        db_role_password=state["PULSE_DB_ROLE_PASSWORD"],
    )
    asyncio.run(_bootstrap(settings, state["ADMIN_PASSWORD"]))
    log = root / "cloud.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "cloud", "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    handle = CloudProcess(url, DEMO_EMAIL, state["ADMIN_PASSWORD"], proc, log)
    deadline = time.monotonic() + 60
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the cloud exited at start: {log_tail(log) or '(nothing in its log)'} (log {log})")
            try:
                if client.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            handle.stop()
            raise RuntimeError(f"the cloud did not become healthy within 60 s; see {log}")
    _start_mqtt(handle, env, root)
    return handle


def _start_mqtt(handle: CloudProcess, env: dict[str, str], root: Path) -> None:
    """`pulse cloud mqtt` beside the cloud (after it: the cloud made the CA and migrated), on
    loopback TLS; the server certificate is issued by the cloud CA (root/ca/ca.crt)."""
    port = pick_port(int(os.environ.get("PULSE_MQTT_TLS_PORT", "8883")))
    log = root / "mqtt.log"
    handle.mqtt_port = port
    handle.mqtt = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "cloud", "mqtt"], env={**env, "PULSE_MQTT_TLS_PORT": str(port)},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if handle.mqtt.poll() is not None:
            handle.stop()
            raise RuntimeError(f"the MQTT endpoint exited at start: {log_tail(log) or '(nothing in its log)'} (log {log})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    handle.stop()
    raise RuntimeError(f"the MQTT endpoint did not listen within 60 s; see {log}")


def provision_gateway(cloud: CloudProcess, name: str, device_ids: list[str]) -> str:
    """Through the public API, as an operator would: register the fleet's devices (once) and the
    gateway, and return a fresh one-time enrollment token for it."""
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        headers = _login(client, cloud)
        for device_id in device_ids:
            r = client.post("/api/v1/devices", json={"device_id": device_id, "status": "active"}, headers=headers)
            if r.status_code not in (201, 409):
                r.raise_for_status()
        gateways = client.get("/api/v1/gateways", headers=headers)
        gateways.raise_for_status()
        existing = next((g for g in gateways.json() if g["name"] == name and g["status"] != "revoked"), None)
        if existing is None:
            created = client.post("/api/v1/gateways", json={"name": name}, headers=headers)
            created.raise_for_status()
            return str(created.json()["enrollment"]["token"])
        token = client.post(f"/api/v1/gateways/{existing['id']}/enrollment-token", headers=headers)
        token.raise_for_status()
        return str(token.json()["token"])


def _login(client: httpx.Client, cloud: CloudProcess) -> dict[str, str]:
    login = client.post("/auth/login", json={"email": cloud.email, "password": cloud.password})
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def install_rules(cloud: CloudProcess, *, interval_s: float) -> int:
    """The default rules, through the public API; those that exist already are left alone.
    Returns how many were created."""
    created = 0
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        headers = _login(client, cloud)
        for rule in DEFAULT_RULES:
            body = {**rule, "interval_s": max(1, round(interval_s))} if rule.get("kind") == "heartbeat" else rule
            r = client.post("/api/v1/rules", json=body, headers=headers)
            if r.status_code == 201:
                created += 1
            elif r.status_code != 409:
                r.raise_for_status()
    return created


def connect_inbox(cloud: CloudProcess, *, url: str, secret: str) -> None:
    """A signed webhook channel to the local inbox and a route sending it every alert of the tenant
    (warning and above), through the public API. On a later start the channel is pointed at the
    inbox's address again (its port may have changed)."""
    channel = {"name": INBOX_CHANNEL, "kind": "webhook", "enabled": True, "config": {"url": url, "secret": secret}}
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        headers = _login(client, cloud)
        listed = client.get("/api/v1/notify/channels", params={"limit": 500}, headers=headers)
        listed.raise_for_status()
        existing = next((c for c in listed.json()["items"] if c["name"] == INBOX_CHANNEL), None)
        if existing is None:
            r = client.post("/api/v1/notify/channels", json=channel, headers=headers)
        else:
            r = client.put(f"/api/v1/notify/channels/{existing['id']}", json=channel, headers=headers)
        r.raise_for_status()
        channel_id = r.json()["id"]
        routes = client.get("/api/v1/notify/routes", params={"limit": 500}, headers=headers)
        routes.raise_for_status()
        if not any(route["name"] == INBOX_ROUTE for route in routes.json()["items"]):
            route = {"name": INBOX_ROUTE, "enabled": True, "min_severity": "warning", "channels": [channel_id]}
            client.post("/api/v1/notify/routes", json=route, headers=headers).raise_for_status()
