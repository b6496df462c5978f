"""The pieces replicas share through PostgreSQL, each against the real server: the bus (LISTEN/NOTIFY,
packing, reconnection after a restart), the database's own invalidations, shared rate-limit buckets
with leases, advisory-lock leadership, and live rows too large for a notification."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from cloud_harness import Cloud, app_role_dsn

from pulse.cloud.cluster.bus import MAX_PAYLOAD, Bus, cancel
from pulse.cloud.cluster.leader import Leadership
from pulse.cloud.cluster.ratelimit import SharedRateLimiter, database_bucket
from pulse.cloud.db.embedded import EmbeddedPostgres
from pulse.cloud.db.migrate import migrate
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.errors import StorageUnavailableError
from pulse.cloud.live import LiveHub, LivePoint, LiveRelay
from pulse.cloud.settings import RoleNames, Settings

pytestmark = pytest.mark.integration


async def _until(check: Callable[[], bool], what: str, limit_s: float = 20) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(*buses: Bus) -> AsyncIterator[None]:
    for bus in buses:
        bus.start()
    try:
        for bus in buses:
            await bus.wait_connected()
        yield
    finally:
        for bus in buses:
            await bus.stop()


async def test_a_message_reaches_the_other_process_and_not_the_sender(cloud_settings: Settings) -> None:
    a, b = Bus(app_role_dsn(cloud_settings), node="a"), Bus(app_role_dsn(cloud_settings), node="b")
    got_a: list[Any] = []
    got_b: list[tuple[str, Any]] = []
    a.on("pulse_test", lambda sender, m: got_a.append(m))
    b.on("pulse_test", lambda sender, m: got_b.append((sender, m)))
    async with running(a, b):
        big = "x" * 3000  # three of these need two notifications
        for i in range(3):
            assert a.post("pulse_test", {"i": i, "pad": big})
        assert not a.post("pulse_test", {"pad": "y" * MAX_PAYLOAD})  # alone over the limit: refused, never truncated
        await _until(lambda: len(got_b) == 3, "the three messages")
    assert [(s, m["i"]) for s, m in got_b] == [("a", 0), ("a", 1), ("a", 2)]
    assert got_a == []


async def test_the_database_tells_every_process_when_a_credential_changes(cloud: Cloud, cloud_settings: Settings) -> None:
    bus = Bus(app_role_dsn(cloud_settings), node="elsewhere")
    seen: list[dict[str, Any]] = []
    bus.on("pulse_invalidate", lambda sender, m: seen.append({**m, "from": sender}))
    _, admin = await cloud.tenant_user()
    dev, _, _ = await cloud.device_with_token(admin)
    credential = (await cloud.client.get(f"/api/v1/devices/{dev}/credentials", headers=admin)).json()[0]["id"]
    async with running(bus):
        r = await cloud.client.delete(f"/api/v1/devices/{dev}/credentials/{credential}", headers=admin)
        assert r.status_code == 204, r.text
        await _until(lambda: any(m["k"] == "credential" for m in seen), "the credential's invalidation")
    assert {"k": "credential", "id": credential, "from": "db"} in seen


async def test_the_listener_reconnects_after_a_database_restart_and_resets(own_postgres: EmbeddedPostgres) -> None:
    a, b = Bus(own_postgres.dsn, node="a", reconnect_s=0.2, ping_s=0.2), Bus(own_postgres.dsn, node="b", reconnect_s=0.2, ping_s=0.2)
    got: list[Any] = []
    resets: list[float] = []
    b.on("pulse_test", lambda sender, m: got.append(m["n"]))
    b.on_reset(lambda: resets.append(time.monotonic()))
    async with running(a, b):
        assert len(resets) == 1  # the first connection: nothing cached yet, flushing is harmless
        a.post("pulse_test", {"n": 1})
        await _until(lambda: got == [1], "the first message")
        await asyncio.to_thread(own_postgres.stop)
        await _until(lambda: not b.connected.is_set(), "the listener to notice")
        assert len(resets) == 2  # lost: caches flush at once
        await asyncio.to_thread(own_postgres.start)
        await _until(lambda: b.connected.is_set() and len(resets) == 3, "the listener to come back")

        async def delivered() -> bool:
            a.post("pulse_test", {"n": 2})
            await asyncio.sleep(0.2)
            return 2 in got

        deadline = time.monotonic() + 20
        while not await delivered():
            assert time.monotonic() < deadline, "no message after the restart"


async def test_shared_buckets_never_admit_more_than_the_limit_and_lease_ahead(cloud_settings: Settings, cloud: Cloud) -> None:
    db = cloud.app.state.pulse.db
    take, give = database_bucket(db)
    key = f"device:{uuid.uuid4()}"
    one, two = (SharedRateLimiter(take, give, rate=0.001, burst=100, lease=10, lease_s=60) for _ in range(2))
    verdicts = [await (one if i % 2 else two).take(key, 1) for i in range(130)]
    admitted = sum(v.allowed for v in verdicts)
    assert 100 - 10 <= admitted <= 100  # never more; early refusals bounded by the other's lease
    assert one.round_trips + two.round_trips < 130  # most messages spent leased tokens
    refused = [v for v in verdicts if not v.allowed]
    assert refused and all(v.retry_after_s >= 1 for v in refused)
    # what a process holds unspent goes back to the bucket, where the other can take it
    held = 100 - admitted
    await one.give_back(everything=True)
    await two.give_back(everything=True)
    back = sum([(await one.take(key, 1)).allowed for _ in range(held)])
    assert back == held


async def test_a_job_runs_on_one_holder_and_moves_when_it_stops(cloud_settings: Settings) -> None:
    dsn = app_role_dsn(cloud_settings)
    runs: dict[str, int] = {"a": 0, "b": 0}

    def job(name: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            while True:
                runs[name] += 1
                await asyncio.sleep(0.05)

        return run

    name = "test-" + uuid.uuid4().hex[:8]
    a, b = Leadership(dsn, node="a", poll_s=0.1, lease_s=2), Leadership(dsn, node="b", poll_s=0.1, lease_s=2)
    a.add(name, job("a"))  # type: ignore[arg-type]
    b.add(name, job("b"))  # type: ignore[arg-type]
    a.start()
    await _until(lambda: a.held == [name], "a to take the job")
    b.start()
    try:
        await _until(lambda: runs["a"] >= 5, "the job to run on a")
        assert b.held == [] and runs["b"] == 0
        await a.stop()
        await _until(lambda: b.held == [name] and runs["b"] > 0, "b to take the job over")
    finally:
        await a.stop()
        await b.stop()


async def test_a_row_too_large_to_notify_reaches_the_other_process_by_pointer(cloud: Cloud, cloud_settings: Settings) -> None:
    tenant, admin = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(admin)
    hub = LiveHub()
    bus = Bus(app_role_dsn(cloud_settings), node="console-replica")
    relay = LiveRelay(hub, bus, cloud.app.state.replica.fetch_metrics, announce_s=0.2)
    sub = hub.subscribe(tenant, device_id)
    metrics = {f"metric_{i:03d}_" + "x" * 40: float(i) for i in range(150)}  # larger than any notification
    writer = cloud.app.state.writer
    async with running(bus):
        task = asyncio.create_task(relay.run())
        try:

            async def got_point() -> list[LivePoint]:
                now = dt.datetime.now(dt.UTC)
                row = TelemetryRow(now, tenant, device_id, "telemetry", json.dumps(metrics), None, None, None, None, "http", now)
                await writer.write([row], [])
                with contextlib.suppress(TimeoutError):
                    points, _ = await asyncio.wait_for(sub.next_batch(), 0.5)
                    return points
                return []

            deadline = time.monotonic() + 20
            while not (points := await got_point()):
                assert time.monotonic() < deadline, "the large row never arrived"
        finally:
            await cancel(task)
    assert len(json.dumps(metrics)) > MAX_PAYLOAD
    assert points[0].metrics == metrics


async def test_shared_buckets_are_not_reachable_as_tables_by_the_app_role(cloud_settings: Settings) -> None:
    conn = await asyncpg.connect(app_role_dsn(cloud_settings))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM cluster_rate_buckets")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM cluster_leases")
    finally:
        await conn.close()


async def test_a_tenant_rate_counts_all_its_devices_together(cloud_settings: Settings, start_cloud: Any) -> None:
    settings = cloud_settings.model_copy(update={"ingest_tenant_rate_per_s": 0.001, "ingest_tenant_burst": 5, "rate_limit_lease": 0})
    async with start_cloud(settings) as c:
        _, admin = await c.tenant_user()
        _, other_admin = await c.tenant_user()
        tokens = [(await c.device_with_token(admin))[2] for _ in range(2)]
        answers = []
        for i in range(8):
            r = await c.client.post("/ingest/v1/telemetry", json={"v": 1, "metrics": {"i": i}}, headers={"Authorization": f"Bearer {tokens[i % 2]}"})
            answers.append((r.status_code, r.json().get("limit")))
        assert answers == [(200, None)] * 5 + [(429, "tenant")] * 3
        # another tenant has its own budget
        _, _, token = await c.device_with_token(other_admin)
        r = await c.client.post("/ingest/v1/telemetry", json={"v": 1, "metrics": {"i": 0}}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text


async def test_a_lease_the_database_cannot_give_is_a_503_not_a_crash(own_postgres: EmbeddedPostgres) -> None:
    roles = RoleNames.from_prefix("lease" + uuid.uuid4().hex[:6])
    await migrate(own_postgres.dsn, roles)
    db = Database(own_postgres.dsn, roles)
    await db.open()
    try:
        take, give = database_bucket(db, retry_after_s=3)
        limiter = SharedRateLimiter(take, give, rate=1, burst=10, lease=2)
        assert (await limiter.take("device:x", 1)).allowed
        await asyncio.to_thread(own_postgres.stop)
        with pytest.raises(StorageUnavailableError) as refused:
            await limiter.take("device:x", 5)
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "3"}
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(db.close(), 5)


async def test_a_twin_changed_through_one_replica_reaches_a_console_on_another(cloud: Cloud, cloud_settings: Settings) -> None:
    tenant, admin = await cloud.tenant_user()
    dev, device_id, _ = await cloud.device_with_token(admin)
    hub = LiveHub()
    bus = Bus(app_role_dsn(cloud_settings), node="console-replica")
    relay = LiveRelay(hub, bus, cloud.app.state.replica.fetch_metrics, announce_s=0.2)
    sub = hub.subscribe(tenant, device_id)
    async with running(bus):
        task = asyncio.create_task(relay.run())
        try:
            await _until(lambda: cloud.app.state.replica.relay.wanted.wants_points((tenant, device_id)), "the console's interest to arrive")
            r = await cloud.client.patch(f"/api/v1/devices/{device_id}/twin", json={"state": {"desired": {"led": True}}}, headers=admin)
            assert r.status_code == 200, r.text
            points, _ = await asyncio.wait_for(sub.next_batch(), 20)
        finally:
            await cancel(task)
    assert [(p.msg_type, p.detail) for p in points] == [("twin", {"version": r.json()["version"]})]


async def test_a_holder_that_loses_the_database_stops_its_job_and_takes_it_again_after(own_postgres: EmbeddedPostgres) -> None:
    roles = RoleNames.from_prefix("lead" + uuid.uuid4().hex[:6])
    await migrate(own_postgres.dsn, roles)
    running_now: list[bool] = [False]

    async def job() -> None:
        running_now[0] = True
        try:
            await asyncio.Event().wait()
        finally:
            running_now[0] = False

    leader = Leadership(own_postgres.dsn, node="only", poll_s=0.1, lease_s=1)
    leader.add("sweep", job)
    leader.start()
    try:
        await _until(lambda: running_now[0], "the job to start")
        await asyncio.to_thread(own_postgres.stop)
        await _until(lambda: not running_now[0] and leader.held == [], "the job to stop with the database gone")
        await asyncio.to_thread(own_postgres.start)
        await _until(lambda: running_now[0] and leader.held == ["sweep"], "the job to run again", limit_s=30)
    finally:
        await leader.stop()
    assert not running_now[0]


async def test_jobs_of_a_group_are_taken_one_per_round_so_replicas_starting_together_share_them(cloud_settings: Settings) -> None:
    dsn = app_role_dsn(cloud_settings)
    tag = uuid.uuid4().hex[:8]

    async def idle() -> None:
        await asyncio.Event().wait()

    async def shared_idle(release: asyncio.Event) -> None:
        await release.wait()

    leader = Leadership(dsn, node="a")
    grouped = [f"test-{tag}-part-{p}" for p in range(3)]
    for name in grouped:
        leader.share(f"parts-{tag}", name, shared_idle)
    leader.add(f"test-{tag}-alone", idle)
    conn = await asyncpg.connect(dsn)
    try:
        await leader._join(conn)
        await leader._round(conn)  # one round: the ungrouped job and one of the group
        assert sorted(leader.held) == sorted([f"test-{tag}-alone", grouped[0]])
        await leader._round(conn)
        await leader._round(conn)
        assert sorted(leader.held) == sorted([f"test-{tag}-alone", *grouped])
        assert leader.members == {f"parts-{tag}": 1}
    finally:
        await leader.stop()
        await conn.close()  # the session ends: its advisory locks go with it


async def test_a_process_joining_later_takes_its_fair_share_and_no_job_ever_runs_twice(cloud_settings: Settings) -> None:
    """a holds the four jobs of a shared group; b joins: a releases two (each at a clean point,
    unlocked only once it returned), b takes them; when b leaves, a takes them back."""
    dsn = app_role_dsn(cloud_settings)
    tag = uuid.uuid4().hex[:8]
    group, names = f"parts-{tag}", [f"test-{tag}-part-{p}" for p in range(4)]
    running: dict[str, str] = {}  # job -> the process running it now
    overlaps: list[str] = []
    clean_stops: list[tuple[str, str]] = []

    def job(node: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        def for_name(name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
            async def run(release: asyncio.Event) -> None:
                if name in running:
                    overlaps.append(f"{name} on {running[name]} and {node}")
                running[name] = node
                try:
                    await release.wait()
                    await asyncio.sleep(0.05)  # finishing the batch in hand
                    clean_stops.append((node, name))
                finally:
                    running.pop(name, None)

            return run

        return for_name  # type: ignore[return-value]

    a, b = Leadership(dsn, node="a"), Leadership(dsn, node="b")
    for name in names:
        a.share(group, name, job("a")(name))  # type: ignore[operator]
        b.share(group, name, job("b")(name))  # type: ignore[operator]
    conn_a, conn_b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)

    async def rounds(*leaders: tuple[Leadership, asyncpg.Connection], until: Callable[[], bool]) -> None:
        for _ in range(40):
            for leader, conn in leaders:
                await leader._round(conn)
            if until():
                return
            await asyncio.sleep(0.03)
        raise AssertionError(f"did not settle: a {a.held}, b {b.held}")

    try:
        await a._join(conn_a)
        await rounds((a, conn_a), until=lambda: len(a.held) == 4)
        await b._join(conn_b)  # b is alive in the group from now on
        await rounds((b, conn_b), (a, conn_a), until=lambda: len(a.held) == 2 and len(b.held) == 2)
        for _ in range(3):  # and it stays so
            await a._round(conn_a)
            await b._round(conn_b)
        assert len(a.held) == 2 and len(b.held) == 2 and set(a.held) | set(b.held) == set(names)
        assert a.members == b.members == {group: 2}
        assert a.released == 2 and sorted(n for node, n in clean_stops if node == "a") == sorted(b.held)
        assert {running[n] for n in a.held} == {"a"} and {running[n] for n in b.held} == {"b"}
        b_held = b.held
        await b.stop()  # stopping releases at a clean point too
        await conn_b.close()
        assert sorted(n for node, n in clean_stops if node == "b") == sorted(b_held)
        await rounds((a, conn_a), until=lambda: len(a.held) == 4)
        assert a.members == {group: 1}
    finally:
        await a.stop()
        await b.stop()
        await conn_a.close()
        await conn_b.close()
    assert overlaps == []
    assert running == {}


async def test_a_released_job_that_does_not_stop_is_cancelled_before_it_is_unlocked(cloud_settings: Settings) -> None:
    dsn = app_role_dsn(cloud_settings)
    tag = uuid.uuid4().hex[:8]
    group, names = f"stuck-{tag}", [f"test-{tag}-stuck-{p}" for p in range(2)]
    running: set[str] = set()
    overlaps: list[str] = []

    def stubborn(name: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def run(release: asyncio.Event) -> None:  # ignores its release (a writer stuck in a statement)
            if name in running:
                overlaps.append(name)
            running.add(name)
            try:
                await asyncio.Event().wait()
            finally:
                running.discard(name)

        return run

    a, b = Leadership(dsn, node="a", release_s=0.2), Leadership(dsn, node="b", release_s=0.2)
    for name in names:
        a.share(group, name, stubborn(name))
        b.share(group, name, stubborn(name))
    conn_a, conn_b = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await a._join(conn_a)
        for _ in range(2):
            await a._round(conn_a)
        assert a.held == names
        await b._join(conn_b)
        await a._round(conn_a)  # asks one job to stop; it does not
        await b._round(conn_b)
        assert b.held == [] and len(running) == 2  # still locked by a while it runs there
        await asyncio.sleep(0.3)
        await a._round(conn_a)  # past release_s: cancelled, then unlocked
        await b._round(conn_b)
        assert len(a.held) == 1 and len(b.held) == 1 and a.released == 1
    finally:
        await a.stop()
        await b.stop()
        await conn_a.close()
        await conn_b.close()
    assert overlaps == []
