"""Durability: a QoS 1 message the gateway acknowledged survives SIGKILL of the gateway, exactly once;
and QoS 1 messages queued for a device's persistent session survive SIGKILL and arrive once.

A publisher process streams numbered QoS 1 messages while the test kills `pulse gateway run` with
SIGKILL at random moments (at least 10 times) and starts it again on the same file. Afterwards
every number the publisher saw acknowledged is in the buffer, and no number is there twice
(paho resends unacknowledged messages after reconnecting; the buffer drops those it already has).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from pulse.cloud.db.embedded import free_port
from pulse.edge.auth import DeviceRegistry

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

KILLS = 10


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"gateway not listening on {port}")


def test_acknowledged_messages_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "chaos"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {port}\nconnectivity_events = false\n[status]\nport = 0\n'
    )
    registry = DeviceRegistry(tmp_path / "gateway.db")
    secret = registry.add("crash-1")
    registry.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_GW_")}
    log = tmp_path / "gateway.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(config)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        _wait_listening(port, proc, log)
        return proc

    seed = int(os.environ.get("PULSE_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    acked_file = tmp_path / "acked.txt"
    gateway = start()
    publisher = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("publisher.py")), str(port), "crash-1", secret, str(acked_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            gateway.send_signal(signal.SIGKILL)
            gateway.wait()
            gateway = start()
        time.sleep(1.0)
        assert publisher.stdin is not None
        publisher.stdin.write("stop\n")
        publisher.stdin.flush()
        out, _ = publisher.communicate(timeout=90)
        assert out.startswith("done") and out.strip().endswith("unacknowledged 0"), out
    finally:
        if publisher.poll() is None:
            publisher.kill()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)

    acked = [int(line) for line in acked_file.read_text().split()]
    last = int(out.split()[1])
    conn = sqlite3.connect(tmp_path / "gateway.db")
    stored = [row[0] for row in conn.execute("SELECT device_seq FROM records WHERE device_id = 'crash-1' ORDER BY seq")]
    dropped_duplicates = conn.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = 'duplicates'").fetchone()[0]
    conn.close()

    context = f"seed {seed}: {len(acked)} acknowledged, {len(stored)} stored, {dropped_duplicates} retransmissions dropped"
    print(context)
    assert len(acked) == last, context  # the publisher finished with everything acknowledged
    assert len(acked) > 500, context  # the stream really ran across the kills
    twice = [n for n, count in collections.Counter(stored).items() if count > 1]
    assert twice == [], context
    assert set(acked) - set(stored) == set(), context
    assert set(stored) <= set(range(1, last + 1)), context


class _Subscriber:
    """A device with a persistent session (clean session 0), paho-mqtt on its own loop thread."""

    def __init__(self, port: int, device_id: str, secret: str) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(device_id, secret)
        self.port = port
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.payloads: list[bytes] = []
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *args: self.subscribed.set()
        self.c.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.session_present = flags.session_present
        self.connected.set()

    def connect(self) -> None:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(15), "no CONNACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _queued(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM mqtt_queue WHERE client_id = 'sub-1'").fetchone()[0])
    finally:
        conn.close()


def _until(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_messages_queued_for_a_persistent_session_survive_sigkill_and_arrive_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "chaos"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n'
        "allow_anonymous = true\n[status]\nport = 0\n"
    )
    registry = DeviceRegistry(tmp_path / "gateway.db")
    secret = registry.add("sub-1")
    registry.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_GW_")}
    log = tmp_path / "gateway.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(config)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        _wait_listening(port, proc, log)
        return proc

    sent = [json.dumps({"v": 1, "seq": n, "metrics": {"n": n}}).encode() for n in range(1, 31)]
    gateway = start()
    clients: list[Any] = []
    try:
        away = _Subscriber(port, "sub-1", secret)
        clients.append(away)
        away.connect()
        away.c.subscribe("pulse/sub-1/telemetry", qos=1)
        assert away.subscribed.wait(15), "no SUBACK"
        away.close()  # away: the gateway keeps its session and queues for it

        site = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="site-pub", protocol=mqtt.MQTTv311)
        clients.append(site)
        site.connect("127.0.0.1", port, keepalive=30)
        site.loop_start()
        for payload in sent:
            info = site.publish("pulse/sub-1/telemetry", payload, qos=1)
            info.wait_for_publish(15)
            assert info.is_published()
        site.disconnect()
        site.loop_stop()
        _until("30 messages in the session queue", lambda: _queued(tmp_path / "gateway.db") == 30)

        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        gateway = start()

        back = _Subscriber(port, "sub-1", secret)
        clients.append(back)
        back.connect()
        assert back.session_present is True
        _until("the 30 queued messages", lambda: len(back.payloads) >= 30)
        _until("every PUBACK (an empty queue)", lambda: _queued(tmp_path / "gateway.db") == 0)
        back.close()
        assert back.payloads == sent  # each once, in order
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.loop_stop()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
