"""`pulse bench notify`: from a threshold crossing to the webhook at a receiver on loopback.

``pulse cloud serve`` runs in its own processes (2 by default, each with the notification workers at
their default settings, sharing the queue) with a webhook channel and a catch-all route pointing at
an HTTP receiver in this process (127.0.0.1, allowed by PULSE_NOTIFY_ALLOW_NETWORKS).

- ``p50_ms`` / ``p99_ms``: a device POSTs a reading above the threshold to HTTP ingest; measured from
  the start of that request until the receiver has the webhook for the opened alert. This includes
  ingest, the rule and the alert commit (``pulse bench alert`` measures those alone), so it bounds
  "alert opened -> webhook received" from above. Between samples the reading clears and the close
  notification is awaited too.
- ``deliveries_per_s``: the notification path alone: ``BURST`` alerts (``PULSE_BENCH_BURST``, 500)
  open in one transaction, as the rule runner commits them (``burst_commit_s`` is that commit);
  counted from the commit until the receiver has every webhook (fan-out, queue, send, record).
  ``duplicates``: webhooks received twice for one (alert, event) over the whole run (should be 0:
  both server processes run the workers on one queue).
- Baseline in the same run, to the same receiver: ``baseline_p50_ms`` / ``baseline_p99_ms``, one bare
  httpx POST of the same size; ``baseline_posts_per_s``, as many bare POSTs with ``concurrency`` in
  flight (the workers' default). ``ratio_p99`` = p99 / baseline p99; ``ratio_throughput`` =
  deliveries_per_s / baseline_posts_per_s.

PostgreSQL is embedded (fsync on) unless DATABASE_URL names one. ``PULSE_BENCH_SAMPLES`` (100).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn

from pulse.bench.ingest import _create_db, _server, _setup, _wait_healthy, stop_server
from pulse.cloud.alerts.store import apply_record
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.notify import store
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import RoleNames
from pulse.common import aio
from pulse.common.ports import free_port
from pulse.protocol.alerts import AlertRecord
from pulse.protocol.rules import Severity, parse_rule, rule_to_dict

SAMPLES = int(os.environ.get("PULSE_BENCH_SAMPLES", "100"))
BURST = int(os.environ.get("PULSE_BENCH_BURST", "500"))
RULE = {"id": "bench-hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28, "flapping": None}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Inbox:
    """The receiver: the time each (device, event) webhook arrived, and a wake-up for waiters."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str, str], float] = {}
        self.count = 0
        self.changed = asyncio.Event()
        self.body_bytes = 0
        self.duplicates = 0

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        at = time.perf_counter()
        if scope["path"] == "/hook":
            doc = json.loads(body)
            key = (doc["device"], doc["alert_id"], doc["event"])
            self.duplicates += key in self.seen
            self.seen.setdefault(key, at)
            self.body_bytes = len(body)
        self.count += 1
        self.changed.set()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait(self, check: Any, limit_s: float = 30.0) -> float:
        deadline = time.perf_counter() + limit_s
        while True:
            value = check()
            if value:
                return float(value)
            if time.perf_counter() > deadline:
                raise RuntimeError("the webhook did not arrive in 30 s")
            self.changed.clear()
            try:
                await aio.wait_for(self.changed.wait(), timeout=0.5)
            except TimeoutError:
                pass

    def arrived(self, device: str, event: str, after: float) -> float | None:
        times = [t for (d, _, e), t in self.seen.items() if d == device and e == event and t >= after]
        return min(times) if times else None


async def _prepare(dsn: str, tenant: uuid.UUID, hook: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
            channel = await store.create_channel(conn, name="bench inbox", kind="webhook", config={"url": hook})
            await store.create_route(conn, name="everything", channels=[channel["id"]])
            await conn.execute(
                "INSERT INTO rules (tenant_id, id, version, kind, enabled, definition) VALUES ($1, $2, 1, 'threshold', true, $3::jsonb)",
                tenant,
                RULE["id"],
                json.dumps(rule_to_dict(parse_rule(RULE, tenant=str(tenant)))),
            )
    finally:
        await conn.close()


def _env(value: float, seq: int) -> dict[str, object]:
    return {"v": 1, "ts": int(time.time() * 1000), "seq": seq, "metrics": {"temp_c": value}}


async def _measure(url: str, dsn: str, tenant: uuid.UUID, devices: list[tuple[str, str]], inbox: Inbox, hook: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def post(device: tuple[str, str], value: float, seq: int) -> float:
            started = time.perf_counter()
            r = await client.post("/ingest/v1/telemetry", json=_env(value, seq), headers={"Authorization": f"Bearer {device[1]}"})
            r.raise_for_status()
            return started

        seq = 0
        latencies: list[float] = []
        for i in range(SAMPLES + 5):  # the first 5 warm up connections and caches; not counted
            device = devices[i % len(devices)]
            started = await post(device, 35, seq := seq + 1)
            got = await inbox.wait(lambda d=device[0], s=started: inbox.arrived(d, "opened", s))
            if i >= 5:
                latencies.append((got - started) * 1000)
            cleared = await post(device, 20, seq := seq + 1)
            await inbox.wait(lambda d=device[0], s=cleared: inbox.arrived(d, "closed", s))

        # throughput of the notification path alone: BURST alerts open in one transaction (as the
        # rule runner commits them), counted from the commit to the last webhook received
        conn = await asyncpg.connect(dsn)
        try:
            before = inbox.count
            started = time.perf_counter()
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                now_ms = int(time.time() * 1000)
                for i in range(BURST):
                    rec = AlertRecord("open", RULE["id"], f"burst-{i:05d}", Severity.MAJOR, now_ms, 1, {"text": "burst", "metric": "temp_c", "last": 35})
                    await apply_record(conn, rec)
            committed = time.perf_counter()
            await inbox.wait(lambda: inbox.count - before >= BURST, limit_s=300)
            deliveries = inbox.count - before
            rate = deliveries / (time.perf_counter() - committed)
            commit_s = committed - started
        finally:
            await conn.close()

    # baseline: bare POSTs of the same size to the same receiver
    body = b"x" * max(inbox.body_bytes, 1)
    async with httpx.AsyncClient(timeout=30) as bare:
        base: list[float] = []
        for _ in range(SAMPLES + 5):
            t = time.perf_counter()
            (await bare.post(hook.replace("/hook", "/bare"), content=body)).raise_for_status()
            base.append((time.perf_counter() - t) * 1000)
        base = base[5:]
        concurrency = NotifySettings().concurrency
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                (await bare.post(hook.replace("/hook", "/bare"), content=body)).raise_for_status()

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(deliveries)))
        base_rate = deliveries / (time.perf_counter() - t)
    p99, b99 = _pct(latencies, 0.99), _pct(base, 0.99)
    return {
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": p99,
        "deliveries_per_s": round(rate, 1),
        "deliveries": deliveries,
        "burst_commit_s": round(commit_s, 2),
        "duplicates": inbox.duplicates,
        "baseline_p50_ms": _pct(base, 0.5),
        "baseline_p99_ms": b99,
        "baseline_posts_per_s": round(base_rate, 1),
        "ratio_p99": round(p99 / max(b99, 0.01), 1),
        "ratio_throughput": round(rate / base_rate, 3),
    }


async def _run_cloud(dsn: str) -> dict[str, float]:
    prefix = os.environ.get("PULSE_DB_ROLE_PREFIX", "pulse")
    tenant, devices = await _setup(dsn, RoleNames.from_prefix(prefix))
    inbox = Inbox()
    hook_port = free_port()
    receiver = uvicorn.Server(uvicorn.Config(inbox.app, host="127.0.0.1", port=hook_port, log_level="warning", lifespan="off", interface="asgi3"))
    serving = asyncio.create_task(receiver.serve())
    while not receiver.started:
        await asyncio.sleep(0.01)
    hook = f"http://127.0.0.1:{hook_port}/hook"
    await _prepare(dsn, tenant, hook)
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="pulse-bench-notify-", suffix=".log")[1])
    saved = os.environ.get("PULSE_NOTIFY_ALLOW_NETWORKS")
    os.environ["PULSE_NOTIFY_ALLOW_NETWORKS"] = "127.0.0.0/8"
    try:
        proc = _server(dsn, prefix, port, log)
    finally:
        if saved is None:
            os.environ.pop("PULSE_NOTIFY_ALLOW_NETWORKS", None)
        else:
            os.environ["PULSE_NOTIFY_ALLOW_NETWORKS"] = saved
    try:
        url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(_wait_healthy, url, proc, log)
        return await _measure(url, dsn, tenant, devices, inbox, hook)
    finally:
        await asyncio.to_thread(stop_server, proc)
        await asyncio.to_thread(log.unlink, missing_ok=True)
        receiver.should_exit = True
        await serving


def run() -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-notify-"))
    os.chmod(root, 0o755)
    figures: dict[str, object] = {"samples": SAMPLES, "devices": 50, "cpu_count": os.cpu_count()}
    try:
        if url := os.environ.get("DATABASE_URL"):
            figures |= asyncio.run(_run_cloud(url))
            figures["database"] = "DATABASE_URL"
        else:
            server = EmbeddedPostgres(root / "pg")
            try:
                admin = server.start()
                asyncio.run(_create_db(admin))
                figures |= asyncio.run(_run_cloud(admin.rsplit("/", 1)[0] + "/pulse_bench"))
                figures["database"] = "embedded (fsync on)"
            finally:
                server.stop()
        figures["goal"] = "p99 <= 2000 ms with the default worker settings"
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures
