"""`pulse bench scale`: HTTP ingest with one and with two `pulse cloud serve` replicas on one
database, each against a raw COPY of the same rows in the same run.

- ``raw_copy_msgs_per_s``: the rows, prepared in advance, COPYed by one connection in batches of
  the writer's size (the database's ceiling for this shape of row).
- ``one_process_msgs_per_s``: envelopes POSTed to one replica (one process, ``--workers 1``).
- ``two_process_msgs_per_s``: the same, the client's request slots alternating between two
  replicas (two separate processes on two ports, sharing the database: shared rate-limit buckets,
  live relay, leadership all running).
- ``two_process_ratio`` = two / one; ``*_vs_raw`` = each against raw COPY.
- ``cpu_s_per_100k``: CPU seconds the replicas (all together), PostgreSQL (every backend) and the
  load-generating client spent per 100,000 messages in the best run of each side: where the work goes, so where the bottleneck
  moves as replicas are added. ``cpu_count`` is the machine's; client, replicas and database share it.

Each run is a fresh set of messages (``MESSAGES``, with ``PULSE_BENCH_*`` knobs as in ``pulse bench
ingest``); ``ROUNDS`` rounds alternate raw, one, two; the best of each counts (other work on the
machine only slows a run down.

With the stream (``stream``; skip it with PULSE_BENCH_STREAM=0): the same runs against replicas
started with PULSE_STREAM_URL on a nats-server this bench starts (or PULSE_BENCH_NATS_URL), with
``STREAM_PARTITIONS`` partitions. One process alone (it writes every partition), then two started
together (they share the partitions, ``partitions_held``), the client alternating between them.
``*_msgs_per_s`` there is end to end: from the first request until every accepted message is in
PostgreSQL (the partition writers drained the stream); ``*_acked_msgs_per_s`` until the last answer
(JetStream had them). ``cpu_s_per_100k`` adds the nats-server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from pulse.bench import ingest as base
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.settings import RoleNames
from pulse.cloud.stream.embedded import EmbeddedNats
from pulse.common.ports import free_port

ROUNDS = int(os.environ.get("PULSE_BENCH_ROUNDS", "2"))
STREAM = os.environ.get("PULSE_BENCH_STREAM", "1") != "0"
STREAM_PARTITIONS = int(os.environ.get("PULSE_BENCH_STREAM_PARTITIONS", "8"))
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, *, children_done: bool = False) -> float:
    """CPU seconds of a process (user + system), with its reaped children's when asked."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children_done else 0)
    return ticks / _TICK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _tree_cpu_s(pid: int) -> float:
    """A process and its descendants, living and reaped (postmaster: every backend)."""
    return _cpu_s(pid, children_done=True) + sum(_tree_cpu_s(child) for child in _children(pid))


def _bench(dsn: str, postmaster: int | None) -> dict[str, object]:
    prefix = os.environ.get("PULSE_DB_ROLE_PREFIX", "pulse")
    roles = RoleNames.from_prefix(prefix)
    tenant, devices = asyncio.run(base._setup(dsn, roles))
    start_ms = int(time.time() * 1000) - 6 * 3_600_000
    logs = [Path(tempfile.mkstemp(prefix=f"pulse-bench-scale-{i}-", suffix=".log")[1]) for i in range(2)]
    ports = [free_port(), free_port()]
    procs = [base._server(dsn, prefix, port, log, workers=1) for port, log in zip(ports, logs, strict=True)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    runs: dict[str, list[float]] = {"raw": [], "one": [], "two": []}
    cpu: dict[str, list[tuple[float, float, float]]] = {"one": [], "two": []}  # (replicas, database, client) per run
    accepted = warm_ups = 0
    try:
        for url, proc, log in zip(urls, procs, logs, strict=True):
            base._wait_healthy(url, proc, log)
        slot = 0
        for r in range(ROUNDS):
            runs["raw"].append(asyncio.run(base._raw_copy(dsn, roles, tenant, devices, start_ms + slot * 60_000)))
            slot += 1
            for name, targets in (("one", urls[:1]), ("two", urls)):
                before = (sum(_cpu_s(p.pid) for p in procs), _tree_cpu_s(postmaster) if postmaster else 0.0, time.process_time())
                rate, n = asyncio.run(base._ingest(targets, devices, start_ms + slot * 60_000, warm_up=r == 0))
                after = (sum(_cpu_s(p.pid) for p in procs), _tree_cpu_s(postmaster) if postmaster else 0.0, time.process_time())
                warm_ups += len(targets) * len(devices) if r == 0 else 0
                slot += 1
                runs[name].append(rate)
                cpu[name].append(tuple((a - b) / n * 100_000 for a, b in zip(after, before, strict=True)))
                accepted += n
    finally:
        for proc in procs:
            base.stop_server(proc)
        for log in logs:
            log.unlink(missing_ok=True)
    stored = asyncio.run(base._count(dsn, tenant, "http")) - warm_ups
    stream: dict[str, object] | str = "skipped (PULSE_BENCH_STREAM=0)"
    if STREAM:
        stream = _stream_side(dsn, prefix, roles, tenant, devices, start_ms + slot * 60_000, postmaster, runs["raw"])
    raw, one, two = max(runs["raw"]), max(runs["one"]), max(runs["two"])
    best_one = cpu["one"][runs["one"].index(one)]
    best_two = cpu["two"][runs["two"].index(two)]
    return {
        "messages_per_run": base.MESSAGES,
        "rounds": ROUNDS,
        "accepted": accepted,
        "stored": stored,
        "devices": base.DEVICES,
        "envelopes_per_request": base.BATCH,
        "requests_in_flight": base.CONCURRENCY,
        "cpu_count": os.cpu_count(),
        "database": "embedded (fsync on)" if postmaster else "DATABASE_URL",
        "raw_copy_runs": [round(x) for x in runs["raw"]],
        "one_process_runs": [round(x) for x in runs["one"]],
        "two_process_runs": [round(x) for x in runs["two"]],
        "raw_copy_msgs_per_s": round(raw),
        "one_process_msgs_per_s": round(one),
        "two_process_msgs_per_s": round(two),
        "one_process_vs_raw": round(one / raw, 3),
        "two_process_vs_raw": round(two / raw, 3),
        "two_process_ratio": round(two / one, 3),
        "cpu_s_per_100k": {
            side: {"replicas": round(best[0], 2), "database": round(best[1], 2) if postmaster else None, "client": round(best[2], 2)}
            for side, best in (("one_process", best_one), ("two_process", best_two))
        },
        "stream": stream,
    }


async def _stored_after(dsn: str, tenant: uuid.UUID, devices: list[str], first_ms: int, target: int, started: float) -> float:
    """Seconds from ``started`` until the run's ``target`` rows (times from ``first_ms`` on, within a
    minute: ``base._ingest``'s envelopes) are in PostgreSQL: the stream drained."""
    lo = datetime.fromtimestamp(first_ms / 1000, UTC)
    hi = lo + timedelta(minutes=1)
    conn = await asyncpg.connect(dsn)
    try:
        while True:
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                n = int(await conn.fetchval(
                    "SELECT count(*) FROM telemetry WHERE tenant_id = $1 AND device_id = ANY($2) AND time >= $3 AND time < $4",
                    tenant, devices, lo, hi,
                ))
            if n >= target:
                return time.perf_counter() - started
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"the stream did not drain: {n} of {target} rows after 600 s")
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def _held(url: str) -> int:
    with httpx.Client() as client:
        jobs = client.get(url + "/health").json().get("cluster_jobs", [])
    return sum(1 for j in jobs if j.startswith("stream-"))


def _stream_side(
    dsn: str, prefix: str, roles: RoleNames, tenant: uuid.UUID, devices: list[tuple[str, str]], start_ms: int, postmaster: int | None,
    raws: list[float],
) -> dict[str, object]:
    """The one- and two-process runs again, with the stream between ingest and the writers."""
    store = Path(tempfile.mkdtemp(prefix="pulse-bench-nats-"))
    nats = EmbeddedNats(store)
    url = os.environ.get("PULSE_BENCH_NATS_URL") or nats.start()
    env = {"PULSE_STREAM_URL": url, "PULSE_STREAM_PARTITIONS": str(STREAM_PARTITIONS), "PULSE_CLUSTER_POLL_S": "0.2"}
    runs: dict[str, list[float]] = {"one": [], "two": [], "one_acked": [], "two_acked": []}
    cpu: dict[str, list[tuple[float, float, float, float]]] = {"one": [], "two": []}
    held: list[int] = []
    slot = 0
    try:
        for name, count in (("one", 1), ("two", 2)):
            logs = [Path(tempfile.mkstemp(prefix=f"pulse-bench-stream-{name}-{i}-", suffix=".log")[1]) for i in range(count)]
            ports = [free_port() for _ in range(count)]
            procs = [base._server(dsn, prefix, port, log, workers=1, extra=env) for port, log in zip(ports, logs, strict=True)]
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            try:
                for u, proc, log in zip(urls, procs, logs, strict=True):
                    base._wait_healthy(u, proc, log)
                deadline = time.monotonic() + 60
                while sum(_held(u) for u in urls) < STREAM_PARTITIONS:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the replicas did not take every stream partition in 60 s")
                    time.sleep(0.2)
                if count == 2:
                    held = [_held(u) for u in urls]
                for r in range(ROUNDS):
                    before = (sum(_cpu_s(p.pid) for p in procs), _tree_cpu_s(postmaster) if postmaster else 0.0, time.process_time(),
                              _cpu_s(nats.pid) if nats.pid else 0.0)
                    started = time.perf_counter()
                    run_ms = start_ms + slot * 60_000
                    acked_rate, n = asyncio.run(base._ingest(urls, devices, run_ms, warm_up=r == 0))
                    elapsed = asyncio.run(_stored_after(dsn, tenant, [d for d, _ in devices], run_ms + 3_600_000, n, started))
                    after = (sum(_cpu_s(p.pid) for p in procs), _tree_cpu_s(postmaster) if postmaster else 0.0, time.process_time(),
                             _cpu_s(nats.pid) if nats.pid else 0.0)
                    slot += 1
                    runs[name].append(n / elapsed)
                    runs[f"{name}_acked"].append(acked_rate)
                    cpu[name].append(tuple((a - b) / n * 100_000 for a, b in zip(after, before, strict=True)))
            finally:
                for proc in procs:
                    base.stop_server(proc)
                for log in logs:
                    log.unlink(missing_ok=True)
    finally:
        nats.stop()
        shutil.rmtree(store, ignore_errors=True)
    raw, one, two = max(raws), max(runs["one"]), max(runs["two"])
    best = {side: cpu[side][runs[side].index(max(runs[side]))] for side in ("one", "two")}
    return {
        "partitions": STREAM_PARTITIONS,
        "nats": "embedded nats-server (file store)" if not os.environ.get("PULSE_BENCH_NATS_URL") else "PULSE_BENCH_NATS_URL",
        "partitions_held": held,
        "rate_limited_resends": base.REFUSED["rate_limited"],
        "one_process_runs": [round(x) for x in runs["one"]],
        "two_process_runs": [round(x) for x in runs["two"]],
        "one_process_msgs_per_s": round(one),
        "two_process_msgs_per_s": round(two),
        "one_process_acked_msgs_per_s": round(max(runs["one_acked"])),
        "two_process_acked_msgs_per_s": round(max(runs["two_acked"])),
        "one_process_vs_raw": round(one / raw, 3),
        "two_process_vs_raw": round(two / raw, 3),
        "two_process_ratio": round(two / one, 3),
        "cpu_s_per_100k": {
            f"{side}_process": {"replicas": round(b[0], 2), "database": round(b[1], 2) if postmaster else None, "client": round(b[2], 2),
                                "nats": round(b[3], 2)}
            for side, b in best.items()
        },
    }


def run() -> dict[str, object]:
    if url := os.environ.get("DATABASE_URL"):
        return _bench(url, None)
    root = Path(tempfile.mkdtemp(prefix="pulse-bench-pg-"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg")
    try:
        admin = server.start()
        asyncio.run(base._create_db(admin))
        postmaster = int((server.cluster_dir / "postmaster.pid").read_text().split()[0])
        return _bench(admin.rsplit("/", 1)[0] + "/pulse_bench", postmaster)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
