"""`pulse up`: run Pulse on one machine: the database (embedded unless ``DATABASE_URL`` is set),
the cloud, a gateway and a simulated fleet publishing to it. It says what it started, prints a
live one-line summary, and runs until Ctrl-C (or ``--exit-after``), then stops what it started in
reverse order. A second start reuses the data directory.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

import httpx

from pulse.cli.inbox import Inbox
from pulse.cloud.db.embedded import EmbeddedPostgres, EmbeddedPostgresError
from pulse.cloud.demo import CloudProcess
from pulse.common.ports import pick_port
from pulse.edge.demo import GatewayProcess


def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("PULSE_DATA_DIR") or ".pulse").resolve()


def _secret(root: Path, name: str, nbytes: int) -> str:
    """A generated secret kept in the data directory (mode 0600): made on the first start, the
    same on every later one. ``db-password``: the embedded database's; ``inbox-secret``: the demo
    webhook channel's signing secret."""
    path = root / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def _port(env: str, default: int) -> int:
    """The port in ``env`` (or the default) when it is free; otherwise (or for 0) a free one."""
    return pick_port(int(os.environ.get(env, str(default))))


class _OpenAlerts:
    """Counts the demo tenant's open alerts through the public API, for the summary line."""

    def __init__(self, cloud: CloudProcess) -> None:
        self.cloud = cloud
        self.headers: dict[str, str] = {}

    def __call__(self) -> str:
        try:
            with httpx.Client(base_url=self.cloud.url, timeout=5) as client:
                for _ in range(2):
                    if not self.headers:
                        r = client.post("/auth/login", json={"email": self.cloud.email, "password": self.cloud.password})
                        r.raise_for_status()
                        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
                    r = client.get("/api/v1/alerts", params={"state": "open", "limit": 500}, headers=self.headers)
                    if r.status_code == 401:
                        self.headers = {}
                        continue
                    r.raise_for_status()
                    body = r.json()
                    return f"{len(body['items'])}{'+' if body['next_cursor'] else ''}"
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        return "?"


def _summaries(
    stop: threading.Event, exit_after: float | None, gateway: GatewayProcess, open_alerts: _OpenAlerts, inbox: Inbox
) -> None:
    """One line every few seconds: what a person watching the demo wants to know."""
    deadline = None if exit_after is None else time.monotonic() + exit_after
    interactive = sys.stdout.isatty()
    while not stop.is_set():
        wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
        if stop.wait(wait) or (deadline is not None and time.monotonic() >= deadline):
            break
        s = gateway.status() or {}
        broker, messages, buffer, uplink = s.get("broker", {}), s.get("messages", {}), s.get("buffer", {}), s.get("uplink", {})
        line = (
            f"devices online {broker.get('connected_devices', '?')}, "  # type: ignore[union-attr]
            f"{messages.get('per_s', '?')} msgs/s, "  # type: ignore[union-attr]
            f"buffered {buffer.get('depth', '?')}, "  # type: ignore[union-attr]
            f"quarantined {s.get('quarantine', {}).get('count', '?')}, "  # type: ignore[union-attr]
            f"uplink {uplink.get('state', '?')} ({uplink.get('batches_acked', 0)} batches synced), "  # type: ignore[union-attr]
            f"open alerts {open_alerts()}, inbox {len(inbox.messages())}"
        )
        print(("\r" + line + "   ") if interactive else line, end="" if interactive else "\n", flush=True)
    if interactive:
        print(flush=True)


def run(args: argparse.Namespace) -> int:
    root = data_dir(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    pg: EmbeddedPostgres | None = None
    dsn = ""
    if url := os.environ.get("DATABASE_URL"):
        dsn = url
        print(f"database   : using DATABASE_URL ({url.split('@')[-1]})", flush=True)
    else:
        pg = EmbeddedPostgres(root / "postgres", port=int(os.environ.get("PULSE_PG_PORT", "55432")), password=_secret(root, "db-password", 24))
        fresh = not pg.initialised()
        print(f"database   : {'initialising' if fresh else 'starting'} embedded PostgreSQL in {pg.cluster_dir} ...", flush=True)
        try:
            dsn = pg.start()
        except EmbeddedPostgresError as exc:
            print(f"pulse up: {exc}", flush=True)
            return 1
        print(f"database   : running on 127.0.0.1:{pg.port} (password in {root / 'db-password'})", flush=True)
    from pulse.cloud.demo import start_cloud

    try:
        cloud = start_cloud(root, dsn)
    except RuntimeError as exc:
        print(f"pulse up: {exc}", flush=True)
        if pg is not None:
            pg.stop()
        return 1
    print(f"cloud      : {cloud.url}  (API docs {cloud.url}/docs, log {cloud.log})", flush=True)
    print(f"console    : {cloud.url}/app", flush=True)
    print(f"login      : {cloud.email} / {cloud.password}", flush=True)
    print(f"users      : invite people at {cloud.url}/app/users (no mail relay here: the one-time link is shown there to pass on)", flush=True)
    from pulse.edge.demo import CONNECTOR_IDS, connector_devices, start_gateway
    from pulse.firmware_sim.demo import device_ids, start_equipment, start_fleet

    gateway = fleet = equipment = None
    inbox = Inbox(root / "inbox.jsonl", _secret(root, "inbox-secret", 32))
    try:
        from pulse.cloud.demo import DEFAULT_RULES, connect_inbox, install_rules, provision_gateway

        inbox_port = _port("PULSE_DEMO_INBOX_PORT", 8099)
        inbox.serve("127.0.0.1", inbox_port)
        inbox_url = f"http://127.0.0.1:{inbox_port}"
        created = install_rules(cloud, interval_s=args.interval)
        connect_inbox(cloud, url=f"{inbox_url}/hook", secret=_secret(root, "inbox-secret", 32))
        print(
            f"alerts     : {len(DEFAULT_RULES)} default rules ({created} new); notifications go to the webhook inbox {inbox_url}/",
            flush=True,
        )

        ids = device_ids(args.devices)
        modbus_port, snmp_port = _port("PULSE_DEMO_MODBUS_PORT", 5020), _port("PULSE_DEMO_SNMP_PORT", 1161)
        equipment = start_equipment(root, modbus_port=modbus_port, snmp_port=snmp_port)
        gateway = start_gateway(
            root,
            ids,
            enroll_token=lambda: (cloud.url, provision_gateway(cloud, "demo-gateway", ids + CONNECTOR_IDS)),
            connectors=connector_devices(modbus_port=modbus_port, snmp_port=snmp_port),
        )
        print(f"gateway    : MQTT on 127.0.0.1:{gateway.mqtt_port}, status page {gateway.status_url}  (config {gateway.config}, log {gateway.log})", flush=True)
        fleet = start_fleet(
            root,
            mqtt_port=gateway.mqtt_port,
            credentials=gateway.credentials,
            count=args.devices,
            interval_s=args.interval,
            faults=args.fault,
            control_port=_port("PULSE_DEMO_SIM_PORT", 8098),
        )
        print(f"fleet      : {args.devices} simulated devices, one reading every {args.interval:g} s each  (log {fleet.log})", flush=True)
        print(f"equipment  : {CONNECTOR_IDS[0]} (UPS, SNMP :{snmp_port}) and {CONNECTOR_IDS[1]} (power meter, Modbus TCP :{modbus_port}), "
              f"polled by the gateway  (log {equipment.log})", flush=True)
        print(f"faults     : pulse sim fault dev-0000 spike factor=5 --control {fleet.control_url}", flush=True)
        print("Pulse is up. Press Ctrl-C to stop.", flush=True)
        _summaries(stop, args.exit_after, gateway, _OpenAlerts(cloud), inbox)
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"pulse up: {exc}", flush=True)
        return 1
    finally:
        for name, part in (("fleet", fleet), ("gateway", gateway), ("equipment", equipment)):
            if part is not None:
                print(f"{name:<11}: stopping ...", flush=True)
                part.stop()
        inbox.stop()
        print("cloud      : stopping ...", flush=True)
        cloud.stop()
        if pg is not None:
            print("database   : stopping ...", flush=True)
            pg.stop()
        print("Pulse stopped.", flush=True)
    return 0
