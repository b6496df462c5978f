"""`pulse cloud mqtt` as a real process killed with SIGKILL under a numbered QoS 1 stream from a
paho-mqtt device over TLS: every message it acknowledged is in PostgreSQL, once; a restarted
endpoint serves the device again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt

from pulse.cloud.settings import Settings
from pulse.common.ports import free_port


def _endpoint(settings: Settings, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PULSE_")},
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": settings.database_url,
        "PULSE_DB_ROLE_PREFIX": settings.db_role_prefix,
        "PULSE_DATA_DIR": str(data),
        "PULSE_MQTT_HOST": "127.0.0.1",
        "PULSE_MQTT_TLS_PORT": str(port),
        "PULSE_WRITER_FLUSH_MS": "5",
    }
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "pulse.cli.main", "cloud", "mqtt"], env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(f"the endpoint exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("the endpoint did not listen")


class Stream:
    """A device publishing seq 0, 1, 2, ... at QoS 1; ``acked_seqs()`` are those whose PUBACK came.

    paho calls ``on_publish`` holding a lock of its own that ``publish`` also takes: the callback
    only notes the message id (no lock of ours is held while publishing)."""

    def __init__(self, port: int, ca: Path, device_id: str, token: str) -> None:
        self.device_id = device_id
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.c.username_pw_set(device_id, token)
        self.c.tls_set(ca_certs=str(ca))
        self.c.max_inflight_messages_set(20)
        self.port = port
        self.by_mid: dict[int, int] = {}
        self.acked: set[int] = set()  # message ids
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.c.on_connect = lambda *args: self.connected.set()
        self.c.on_publish = self._on_publish

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self.cond:
            self.acked.add(mid)
            self.cond.notify_all()

    def start(self, count: int) -> None:
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(10)
        for seq in range(count):
            payload = json.dumps({"v": 1, "ts": int(time.time() * 1000), "seq": seq, "metrics": {"n": seq}})
            info = self.c.publish(f"pulse/{self.device_id}/telemetry", payload, qos=1)
            self.by_mid[info.mid] = seq

    def wait_acked(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.acked) >= n, 30), f"only {len(self.acked)} acknowledged"

    def acked_seqs(self) -> set[int]:
        with self.cond:
            return {self.by_mid[mid] for mid in self.acked}

    def stop(self) -> None:
        self.c.loop_stop()
        self.c._reset_sockets()


async def test_every_message_acknowledged_before_a_kill_9_is_stored_once(
    cloud_settings: Settings, start_cloud: Callable[..., Any], tmp_path: Path
) -> None:
    settings = cloud_settings.model_copy(update={"data_dir": tmp_path})
    async with start_cloud(settings) as api:  # also makes the CA the endpoint's certificate comes from
        _, headers = await api.tenant_user()
        _, device_id, token = await api.device_with_token(headers)
    port, log = free_port(), tmp_path / "mqtt.log"
    proc = await asyncio.to_thread(_endpoint, settings, tmp_path, port, log)
    stream = Stream(port, settings.sync.ca_dir / "ca.crt", device_id, token)
    try:
        await asyncio.to_thread(stream.start, 3000)
        await asyncio.to_thread(stream.wait_acked, 200)
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await asyncio.to_thread(stream.stop)
    acked = stream.acked_seqs()
    conn = await asyncpg.connect(settings.database_url)
    try:
        seqs = [r["seq"] for r in await conn.fetch("SELECT seq FROM telemetry WHERE device_id = $1 AND msg_type = 'telemetry'", device_id)]
    finally:
        await conn.close()
    assert len(seqs) == len(set(seqs)), "a message was stored twice"
    assert acked <= set(seqs), f"acknowledged and lost: {sorted(acked - set(seqs))[:10]}"
    assert len(acked) < 3000  # the kill came mid-stream

    again = await asyncio.to_thread(_endpoint, settings, tmp_path, port, log)
    try:
        device = Stream(port, settings.sync.ca_dir / "ca.crt", device_id, token)
        await asyncio.to_thread(device.start, 1)
        await asyncio.to_thread(device.wait_acked, 1)
        await asyncio.to_thread(device.stop)
    finally:
        again.send_signal(signal.SIGTERM)
        await asyncio.to_thread(again.wait, 30)
    assert again.returncode == 0, log.read_text()[-2000:]
