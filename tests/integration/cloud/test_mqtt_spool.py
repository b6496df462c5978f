"""The MQTT endpoint while PostgreSQL is away: a QoS 1 message is acknowledged from the local spool,
and its row reaches PostgreSQL exactly once when the server is back (a real embedded server,
stopped and started)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import paho.mqtt.client as mqtt
from cloud_harness import running_cloud

from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.mqtt.endpoint import MqttEndpoint
from pulse.cloud.settings import Settings
from pulse.common.ports import free_port


class _Device:
    """One paho-mqtt connection over TLS, kept across the database's outage."""

    def __init__(self, port: int, ca: Path, device_id: str, token: str) -> None:
        self.device_id = device_id
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.c.username_pw_set(device_id, token)
        self.c.tls_set(ca_certs=str(ca))
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()

    def publish(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            info = self.c.publish(f"pulse/{self.device_id}/telemetry", payload, qos=1)
            info.wait_for_publish(20)
            assert info.is_published(), "no PUBACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()
        self.c._reset_sockets()


async def _count(dsn: str, device_id: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r["seq"] for r in await conn.fetch("SELECT seq FROM telemetry WHERE device_id = $1 AND msg_type = 'telemetry' ORDER BY seq", device_id)]
    finally:
        await conn.close()


async def _admin(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_message_acknowledged_while_postgres_is_down_arrives_once_when_it_is_back(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    await _admin(own_postgres.dsn, "CREATE DATABASE spool")
    dsn = urlunsplit(urlsplit(own_postgres.dsn)._replace(path="/spool"))
    settings = Settings(mode="development", database_url=dsn, db_role_prefix="s" + uuid.uuid4().hex[:10],
                        jwt_secret="test-secret-" + uuid.uuid4().hex, data_dir=tmp_path, mqtt_host="127.0.0.1",
                        mqtt_tls_port=free_port(), mqtt_spool_retry_s=0.1, writer_flush_ms=5,
                        device_token_cache_s=0)  # every publish asks the database, which is away: the CONNECT's identity holds
    async with running_cloud(settings) as api:  # migrates; a tenant, a device and its token
        _, headers = await api.tenant_user()
        _, device_id, token = await api.device_with_token(headers)
    endpoint = MqttEndpoint(settings)
    await endpoint.start()
    ca = settings.sync.ca_dir / "ca.crt"
    envelopes = [json.dumps({"v": 1, "ts": int(time.time() * 1000), "seq": seq, "metrics": {"n": seq}}).encode() for seq in range(6)]
    device = await asyncio.to_thread(_Device, settings.mqtt_tls_port, ca, device_id, token)
    try:
        await asyncio.to_thread(device.publish, envelopes[:2])
        assert await _count(dsn, device_id) == [0, 1]
        await asyncio.to_thread(own_postgres.stop)
        # PUBACKs while the database is away: each message is in the spool first
        await asyncio.to_thread(device.publish, envelopes[2:5])
        assert endpoint.spool.count == 3
        await asyncio.to_thread(own_postgres.start)
        for _ in range(400):  # the drain retries every 0.1 s; wait for it to empty the spool
            if endpoint.spool.count == 0:
                break
            await asyncio.sleep(0.05)
        assert endpoint.spool.count == 0, "the spool did not drain"
        await asyncio.to_thread(device.publish, envelopes[5:])
        assert await _count(dsn, device_id) == [0, 1, 2, 3, 4, 5]  # every one, once, in order
    finally:
        await asyncio.to_thread(device.close)
        await endpoint.stop()

