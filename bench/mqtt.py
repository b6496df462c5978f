"""`pulse bench mqtt [--devices N] [--seconds S]`: direct devices over MQTT into PostgreSQL, against
HTTP ingest of the same messages and against a bare amqtt broker, in one run.

Three paths, each measured with the same devices (a tenant with N devices and a token each, in a
PostgreSQL this run starts: embedded, fsync on, unless DATABASE_URL names one), each device
keeping ``--inflight`` QoS 1 messages (valid envelope v1 telemetry) outstanding:

1. ``mqtt_msgs_per_s``: ``pulse cloud mqtt`` in its own process (device-token auth, topic ACL,
   envelope checks, PUBACK only after the writer's group commit to PostgreSQL); the publishers are
   bench/mqtt_load.py in its own process. ``mqtt_p50_ms``/``mqtt_p99_ms``: PUBLISH to PUBACK, which
   for this endpoint is publish to commit.
2. ``http_ingest_msgs_per_s``: ``pulse cloud serve`` (one worker, as one `pulse cloud mqtt`
   process), the same envelopes POSTed one per request (what a direct device without MQTT sends),
   as many requests in flight as MQTT messages; ``http_p50_ms``/``http_p99_ms`` per request, also
   answered after the commit.
3. ``bare_amqtt_msgs_per_s``: a plain amqtt broker (anonymous, nothing stored): the ceiling of the
   broker code both the gateway and the endpoint build on.

``ratio`` = MQTT / HTTP ingest; ``ratio_to_bare`` = MQTT / bare amqtt. ``mqtt_rows_stored`` counts
the endpoint's rows in PostgreSQL afterwards (at least every acknowledged message: warm-up
included). The runs use plain TCP on loopback for all three, so TLS costs are left out of every
side alike. HTTP ingest runs before MQTT: `pulse cloud serve` also runs the rules on what is
committed (its rule outbox), and must not spend the HTTP run on the MQTT run's rows. The endpoint
itself evaluates no rules (the `serve` processes do, from the outbox), so its figure leaves that
work out where the HTTP figure includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

from pulse.bench.edge import BARE_BROKER, _measure
from pulse.bench.ingest import _create_db, _setup, _wait_healthy, stop_server
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.settings import RoleNames
from pulse.common.ports import free_port


def _env(dsn: str, prefix: str, data: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": dsn,
        "PULSE_DB_ROLE_PREFIX": prefix,
        "PULSE_MIGRATE_ON_START": "false",
        "PULSE_INGEST_RATE_PER_S": "1000000",
        "PULSE_INGEST_BURST": "1000000",
        "PULSE_WORKERS": "1",
        "PULSE_SYNC_PORT": str(free_port()),
        "PULSE_DATA_DIR": str(data),
    }


async def _post_loop(host: str, port: int, token: str, until_stopped: Callable[[], bool], sent: Callable[[float], None]) -> int:
    """One device's connection: POST one envelope, read the answer, again, over one HTTP/1.1
    keep-alive connection (what a small device does). Plain asyncio streams: an HTTP client library
    costs more CPU per request than the server's handling of it, and would be what this measures
    (one httpx client with 200 connections capped the figure at 55-180 requests/s while the server
    sat at 6 % of a core). Returns the connections that had to be opened again."""
    reconnects = 0
    seq = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while not until_stopped():
            seq += 1
            body = b'{"v":1,"seq":%d,"ts":%d,"metrics":{"temp_c":%d.5,"on":true}}' % (seq, int(time.time() * 1000), seq % 40)
            head = (
                f"POST /ingest/v1/telemetry HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            try:
                writer.write(head + body)
                status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
                length = next((int(v) for k, _, v in (h.partition(b":") for h in rest.split(b"\r\n")) if k.lower() == b"content-length"), 0)
                answer = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError):
                reconnects += 1  # a connection the server closed under load: counted, and the device connects again
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            if status_line.split()[1] != b"200":
                raise RuntimeError(f"ingest answered {status_line.decode()}: {answer[:300]!r}")
            sent(time.perf_counter() - t0)
    finally:
        writer.close()
    return reconnects


async def _http(url: str, devices: list[tuple[str, str]], inflight: int, seconds: float) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    counting = False
    stop = False

    def sent(latency: float) -> None:
        if counting:
            latencies.append(latency)

    tasks = [asyncio.create_task(_post_loop(host, int(port), t, lambda: stop, sent)) for _, t in devices for _ in range(inflight)]
    await asyncio.sleep(1.0)  # warm-up: token caches, connections
    counting, t0 = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.perf_counter() - t0
    stop = True
    errors = sum(await asyncio.gather(*tasks))
    answered = len(latencies)
    lat = sorted(latencies)
    return {
        "msgs_per_s": answered / elapsed,
        "errors": errors,
        "p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else float("nan"),
        "p99_ms": round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000, 2) if lat else float("nan"),
    }


async def _rows(dsn: str, tenant: uuid.UUID, source: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE tenant_id = $1 AND source = $2", tenant, source))
    finally:
        await conn.close()


def _bench(dsn: str, args: argparse.Namespace, database: str) -> dict[str, object]:
    # roles of its own on a fresh database; a database migrated before (DATABASE_URL) names its roles' prefix
    prefix = os.environ.get("PULSE_DB_ROLE_PREFIX") or "b" + uuid.uuid4().hex[:10]
    tenant, devices = asyncio.run(_setup(dsn, RoleNames.from_prefix(prefix)))
    devices = devices[: args.devices]
    load_args = argparse.Namespace(devices=len(devices), seconds=args.seconds, inflight=args.inflight, persistent=False, subscribe=False)
    with tempfile.TemporaryDirectory(prefix="pulse-bench-mqtt-") as tmp:
        root = Path(tmp)
        creds = root / "credentials.csv"
        creds.write_text("".join(f"{d},{t}\n" for d, t in devices))
        env = _env(dsn, prefix, root / "data")

        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE_BROKER, str(bare_port), "default"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare_run = _measure(bare, bare_port, load_args, None)

        port = free_port()
        server_log = root / "serve.log"
        with server_log.open("wb") as out:  # the child keeps its own descriptor
            server = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, server, server_log)
            http_run = asyncio.run(_http(url, devices, args.inflight, args.seconds))
        finally:
            stop_server(server)

        plain = free_port()
        log = root / "mqtt.log"
        with log.open("wb") as out:
            endpoint = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "cloud", "mqtt"],
                env={**env, "PULSE_MQTT_HOST": "127.0.0.1", "PULSE_MQTT_PLAIN_PORT": str(plain), "PULSE_MQTT_TLS_PORT": str(free_port())},
                stdout=out, stderr=subprocess.STDOUT,
            )
        try:
            mqtt_run = _measure(endpoint, plain, load_args, creds)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; the endpoint's log: {log.read_text()[-2000:]}") from exc
        mqtt_rows = asyncio.run(_rows(dsn, tenant, "mqtt"))
    mqtt, http, bare_rate = mqtt_run["msgs_per_s"], http_run["msgs_per_s"], bare_run["msgs_per_s"]
    return {
        "devices": len(devices),
        "inflight_per_device": args.inflight,
        "seconds": args.seconds,
        "database": database,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine slows every side
        "mqtt_msgs_per_s": round(mqtt),
        "mqtt_p50_ms": mqtt_run.get("p50_ms"),
        "mqtt_p99_ms": mqtt_run.get("p99_ms"),
        "mqtt_cpu_us_per_msg": round(mqtt_run["cpu_us_per_msg"]),
        "mqtt_rows_stored": mqtt_rows,
        "http_ingest_msgs_per_s": round(http),
        "http_p50_ms": http_run["p50_ms"],
        "http_p99_ms": http_run["p99_ms"],
        "http_transport_errors": http_run["errors"],
        "bare_amqtt_msgs_per_s": round(bare_rate),
        "bare_amqtt_p99_ms": bare_run.get("p99_ms"),
        "ratio": round(mqtt / http, 3) if http else None,
        "ratio_to_bare": round(mqtt / bare_rate, 3) if bare_rate else None,
    }


def run(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(prog="pulse bench mqtt")
    p.add_argument("--devices", type=int, default=50, help="direct devices (at most 50), default 50")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per path")
    p.add_argument("--inflight", type=int, default=4, help="QoS 1 messages (or HTTP requests) outstanding per device")
    args = p.parse_args(argv or [])
    if url := os.environ.get("DATABASE_URL"):
        return _bench(url, args, "DATABASE_URL")
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-pg-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg")
    try:
        admin = server.start()
        asyncio.run(_create_db(admin))
        return _bench(admin.rsplit("/", 1)[0] + "/pulse_bench", args, "embedded (fsync on)")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
