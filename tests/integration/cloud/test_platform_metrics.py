"""Pulse watching itself: the platform sampler stores its figures in system_metrics on a clock the
test passes in, /metrics carries the same figures under Prometheus' conventions (parsed with
prometheus_client's own parser), and the platform health rules open alerts in the platform tenant
when the pipeline degrades (here: dead letters growing while nobody delivers them)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulse.cloud.platform.health import PLATFORM_TENANT, HealthThresholds
from pulse.cloud.platform.sampler import Sampler

Cloud = Any  # the `cloud` fixture (conftest.py)

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class Ticks:
    """The clocks a sampler is given: wall time and a monotonic reading, moved by the test."""

    def __init__(self) -> None:
        self.at = T0
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.at += dt.timedelta(seconds=seconds)
        self.mono += seconds


def sampler_of(cloud: Cloud, ticks: Ticks, thresholds: HealthThresholds | None = None) -> Sampler:
    app = cloud.app
    return Sampler(
        app.state.pulse.db,
        app.state.metrics,
        writer_depth=lambda: app.state.writer.queued_rows,
        clock=lambda: ticks.at,
        monotonic=lambda: ticks.mono,
        offline_after_s=300,
        source="test",
        rules=app.state.rules,
        thresholds=thresholds,
    )


async def ingest(cloud: Cloud, token: str, device_id: str, n: int) -> None:
    for i in range(n):
        body = {"v": 1, "seq": i + 1, "metrics": {"t": i}}
        r = await cloud.client.post("/ingest/v1/telemetry", json=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 202), r.text


async def add_gateway(cloud: Cloud, tenant_id: uuid.UUID, name: str, *, backlog: dict[str, int], oldest: dt.datetime) -> uuid.UUID:
    async with cloud.app.state.pulse.db.tenant(tenant_id) as conn:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "INSERT INTO gateways (tenant_id, name, status, last_seen_at, backlog, oldest_unsynced_at)"
            " VALUES ($1, $2, 'active', $3, $4::jsonb, $5) RETURNING id",
            tenant_id,
            name,
            T0,
            json.dumps(backlog),
            oldest,
        )


async def test_samples_store_rates_queues_and_gateway_backlog_on_the_passed_clock(cloud: Cloud) -> None:
    ticks = Ticks()
    tenant_id, headers = await cloud.tenant_user()
    _, device_id, token = await cloud.device_with_token(headers)
    gw = await add_gateway(cloud, tenant_id, "north", backlog={"telemetry": 120, "events": 3}, oldest=T0 - dt.timedelta(minutes=20))
    sampler = sampler_of(cloud, ticks)
    await sampler.sample_once()  # the baseline: queues and gauges, no rates yet
    await ingest(cloud, token, device_id, 10)
    await cloud.app.state.writer.stop()  # drain: every row committed before the second sample
    ticks.advance(5)
    points = await sampler.sample_once()
    by = {(p.name, json.dumps(dict(p.labels), sort_keys=True)): p.value for p in points}
    assert by[("ingest_rows_per_second", "{}")] == pytest.approx(10 / 5)
    assert ("ingest_latency_p95_seconds", "{}") in by
    assert by[("http_requests_per_second", '{"group": "ingest"}')] == pytest.approx(10 / 5)
    assert by[("http_errors_per_second", '{"group": "ingest"}')] == 0
    assert ("http_latency_p95_seconds", '{"group": "ingest"}') in by
    gw_labels = json.dumps({"gateway": str(gw), "name": "north"}, sort_keys=True)
    assert by[("gateway_backlog_records", gw_labels)] == 123
    assert by[("gateway_backlog_age_seconds", gw_labels)] == pytest.approx(20 * 60 + 5)
    assert by[("gateways_connected", "{}")] >= 1
    assert by[("db_pool_max", '{"pool": "app"}')] == cloud.settings.db_pool_size
    assert ("evaluation_lag_seconds", "{}") in by and ("notify_dead_letters", "{}") in by

    # stored with the passed clock's time, readable by the operator role only
    async with cloud.app.state.pulse.db.operator(actor="test", action="test.read") as conn:
        stored = await conn.fetch("SELECT time, name, value FROM system_metrics WHERE source = 'test' ORDER BY time")
    assert {r["time"] for r in stored} == {T0, T0 + dt.timedelta(seconds=5)}
    assert {r["name"] for r in stored} >= {"ingest_rows_per_second", "writer_queue_rows", "gateway_backlog_age_seconds"}
    async with cloud.app.state.pulse.db.app_pool.acquire() as conn:
        with pytest.raises(Exception, match="permission denied"):
            await conn.fetch("SELECT * FROM system_metrics")


EXPECTED = {  # family name (as the parser names it) -> type
    "pulse_ingest_messages": "counter",
    "pulse_writer_rows": "counter",
    "pulse_writer_queue_rows": "gauge",
    "pulse_writer_flush_seconds": "histogram",
    "pulse_ingest_latency_seconds": "histogram",
    "pulse_http_requests": "counter",
    "pulse_http_request_duration_seconds": "histogram",
    "pulse_db_pool_connections": "gauge",
    "pulse_notify_queue_deliveries": "gauge",
    "pulse_notify_dead_letters": "gauge",
    "pulse_notify_failed_attempts_5m": "gauge",
    "pulse_rules_evaluation_lag_seconds": "gauge",
    "pulse_gateways_connected": "gauge",
    "pulse_gateway_backlog_records": "gauge",
    "pulse_gateway_backlog_age_seconds": "gauge",
    "pulse_devices": "gauge",
    "pulse_alerts_open": "gauge",
    "pulse_sampler_samples": "counter",
    "pulse_sampler_duration_seconds": "histogram",
}


async def test_metrics_exposition_parses_with_prometheus_names_and_types(cloud: Cloud) -> None:
    ticks = Ticks()
    tenant_id, headers = await cloud.tenant_user()
    await add_gateway(cloud, tenant_id, "south", backlog={"telemetry": 7}, oldest=T0 - dt.timedelta(seconds=30))
    r = await cloud.client.get("/api/v1/devices", headers={**headers, "X-Request-ID": "probe-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "probe-1"  # the id its log records carry
    r = await cloud.client.get("/api/v1/devices", headers={**headers, "X-Request-ID": "no spaces or\ttabs"})
    assert r.headers["x-request-id"] != "no spaces or\ttabs" and len(r.headers["x-request-id"]) == 32  # replaced by a new one
    assert (await cloud.client.get("/api/v1/nowhere-" + uuid.uuid4().hex, headers=headers)).status_code == 404
    await sampler_of(cloud, ticks).sample_once()
    r = await cloud.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {name: families[name].type for name in EXPECTED if name in families} == EXPECTED
    for name, family in families.items():
        assert name.startswith("pulse_"), name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
    groups = {s.labels["group"] for s in families["pulse_http_requests"].samples if s.name.endswith("_total")}
    assert "api:devices" in groups and "other" in groups  # an unknown path is "other", never its own label
    assert not any("nowhere" in g for g in groups)
    backlog = [s for s in families["pulse_gateway_backlog_age_seconds"].samples if s.labels["name"] == "south"]
    assert [s.value for s in backlog] == [30.0]


async def test_dead_letters_growing_open_a_platform_alert_that_notifies_operators(cloud: Cloud) -> None:
    """The notification workers are stopped (so the outbox row the alert queues stays there to be
    seen); deliveries of a tenant die; the next samples see dead letters grow and the platform rule
    opens one alert, queued for the platform tenant's routes like any tenant's alert; it closes once
    the window passes without new dead letters."""
    await cloud.app.state.notify_workers.stop()  # the app starts them; their fan-out would take the outbox row
    ticks = Ticks()
    tenant_id, _ = await cloud.tenant_user()
    sampler = sampler_of(cloud, ticks, HealthThresholds(dead_letter_window_s=600))
    await sampler.install_rules()
    await sampler.sample_once()
    async with cloud.app.state.pulse.db.tenant(tenant_id) as conn:
        channel = await conn.fetchval(
            "INSERT INTO notify_channels (tenant_id, name, kind, config) VALUES ($1, 'hook', 'webhook', '{}') RETURNING id", tenant_id
        )
        await conn.executemany(
            "INSERT INTO notify_deliveries (tenant_id, channel_id, kind, event, dedup, notification, status, attempts)"
            " VALUES ($1, $2, 'webhook', 'test', $3, '{}'::jsonb, 'dead', 5)",
            [(tenant_id, channel, f"test:{uuid.uuid4()}") for _ in range(3)],
        )
    ticks.advance(5)
    await sampler.sample_once()
    async with cloud.app.state.pulse.db.tenant(PLATFORM_TENANT) as conn:
        alerts = await conn.fetch(
            "SELECT id, device_id, rule_id, severity, state, explanation FROM alerts WHERE rule_id = 'platform.dead_letters'"
        )
        assert [(a["device_id"], a["rule_id"], a["severity"], a["state"]) for a in alerts] == [
            ("platform:notify", "platform.dead_letters", "major", "open")
        ]
        assert "dead_letters_growth" in json.dumps(json.loads(alerts[0]["explanation"]))
        queued = await conn.fetchval(
            "SELECT count(*) FROM notify_outbox o JOIN alert_events e ON e.id = o.event_id WHERE e.alert_id = $1", alerts[0]["id"]
        )
        assert queued == 1  # the fan-out worker routes it to the platform tenant's channels
    # the tenant does not see the platform's alert; operators do
    async with cloud.app.state.pulse.db.tenant(tenant_id) as conn:
        assert await conn.fetchval("SELECT count(*) FROM alerts") == 0
    # still growing within the window: the same alert, no second one
    ticks.advance(5)
    await sampler.sample_once()
    # the window passes without new dead letters: it closes
    ticks.advance(601)
    await sampler.sample_once()
    async with cloud.app.state.pulse.db.tenant(PLATFORM_TENANT) as conn:
        states = await conn.fetch("SELECT state FROM alerts WHERE rule_id = 'platform.dead_letters'")
    assert [s["state"] for s in states] == ["closed"]


# --- the operator API over it -------------------------------------------------------------------

OPERATOR_PATHS = (
    "/api/v1/operator/system/metrics?name=ingest_rows_per_second",
    "/api/v1/operator/system/topology",
    "/api/v1/operator/system",
    "/api/v1/operator/alerts/heatmap",
    "/api/v1/operator/health/sparklines",
    "/api/v1/operator/audit",
)


async def test_tenant_accounts_get_403_and_operators_only_see_the_audit_log_as_admins(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user("tenant-admin")
    _, customer = await cloud.tenant_user("customer")
    ops = await cloud.user("operator", tenant=None)
    ops_admin = await cloud.user("operator-admin", tenant=None)
    for path in OPERATOR_PATHS:
        for headers in (admin, customer):
            r = await cloud.client.get(path, headers=headers)
            assert r.status_code == 403 and r.json()["code"] == "auth.forbidden", (path, r.text)
        assert (await cloud.client.get(path)).status_code == 401
        r = await cloud.client.get(path, headers=ops_admin)
        assert r.status_code == 200, (path, r.text)
        r = await cloud.client.get(path, headers=ops)
        assert r.status_code == (403 if path.endswith("/audit") else 200), (path, r.text)


async def test_series_topology_heatmap_and_sparklines_answer_from_the_stored_samples(start_cloud: Any, cloud_settings: Any) -> None:
    ticks = Ticks()
    ticks.at = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
    settings = cloud_settings.model_copy(update={"health_writer_queue_rows": 10})
    async with start_cloud(settings) as cloud:
        cloud.app.state.pulse.clock = lambda: ticks.at
        tenant_id, headers = await cloud.tenant_user()
        other_id, _ = await cloud.tenant_user()
        ops = await cloud.user("operator-admin", tenant=None)
        gw_age = dt.timedelta(minutes=40)
        await add_gateway(cloud, tenant_id, "east", backlog={"telemetry": 5}, oldest=ticks.at - gw_age)
        sampler = sampler_of(cloud, ticks)
        for _ in range(3):
            await sampler.sample_once()
            ticks.advance(60)
        r = await cloud.client.get(
            "/api/v1/operator/system/metrics", params={"name": ["writer_queue_rows", "gateway_backlog_age_seconds"], "range": "1h"}, headers=ops
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["bucket_s"] == 60
        series = {(s["name"], s["labels"].get("name", "")): s["points"] for s in body["series"]}
        assert len(series[("writer_queue_rows", "")]) == 3
        ages = [v for _, v in series[("gateway_backlog_age_seconds", "east")]]
        assert ages == sorted(ages) and ages[0] == pytest.approx(gw_age.total_seconds())
        # the strip: the gateway stage is critical by its backlog age, named with the figure
        r = await cloud.client.get("/api/v1/operator/system/topology", headers=ops)
        stages = {s["id"]: s for s in r.json()["stages"]}
        assert [s["id"] for s in r.json()["stages"]] == ["gateways", "ingest", "writer", "rules", "notify"]
        assert stages["gateways"]["status"] == "critical" and "oldest backlog" in stages["gateways"]["figure"]
        assert stages["rules"]["status"] == "ok"
        # alerts of two tenants, at known hours: the heatmap counts both, the sparklines keep them apart
        for tid, hours in ((tenant_id, [9, 9, 11]), (other_id, [11])):
            async with cloud.app.state.pulse.db.tenant(tid) as conn:
                for i, h in enumerate(hours):
                    await conn.execute(
                        "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, explanation, opened_at)"
                        " VALUES ($1, $2, 'hot', 'major', '{}'::jsonb, $3)",
                        tid,
                        f"d{i}",
                        dt.datetime(2026, 7, 1, h, 5, tzinfo=dt.UTC),
                    )
        r = await cloud.client.get("/api/v1/operator/alerts/heatmap", params={"days": 2}, headers=ops)
        heat = {(c["day"], c["hour"]): c["alerts"] for c in r.json()["cells"]}
        assert r.json()["days"] == ["2026-06-30", "2026-07-01"]
        assert heat[("2026-07-01", 9)] == 2 and heat[("2026-07-01", 11)] == 2
        r = await cloud.client.get("/api/v1/operator/health/sparklines", params={"hours": 6}, headers=ops)
        lines = {t["tenant_id"]: t for t in r.json()["tenants"]}
        assert sum(lines[str(tenant_id)]["alerts"]) == 3 and sum(lines[str(other_id)]["alerts"]) == 1
        assert len(lines[str(tenant_id)]["alerts"]) == 6
        # capacity: the storage engine and its partitions, the workers
        r = await cloud.client.get("/api/v1/operator/system", headers=ops)
        assert r.status_code == 200, r.text
        system = r.json()
        assert system["database_bytes"] > 0 and system["storage_engine"] in ("native", "timescaledb")
        assert {w["name"] for w in system["workers"]} >= {"platform sampler", "storage maintenance", "rules sweep"}
        # every one of those reads is in the operator audit log, newest first, with actor and action
        r = await cloud.client.get("/api/v1/operator/audit", params={"action": "system."}, headers=ops)
        actions = [e["action"] for e in r.json()["items"]]
        assert actions[:2] == ["system.read", "system.topology"] and "system.metrics" in actions
        r = await cloud.client.get("/api/v1/operator/audit", params={"limit": 2}, headers=ops)
        assert len(r.json()["items"]) == 2 and r.json()["next_cursor"]
        r2 = await cloud.client.get("/api/v1/operator/audit", params={"limit": 2, "cursor": r.json()["next_cursor"]}, headers=ops)
        assert not {e["id"] for e in r.json()["items"]} & {e["id"] for e in r2.json()["items"]}


async def test_on_timescaledb_compressed_chunks_count_on_the_system_page(cloud: Cloud) -> None:
    """A compressed chunk is left empty (its rows live in the compressed chunk): the system page
    must still show its rows and bytes, and the oldest data from it. TimescaleDB mode only
    (PULSE_TEST_DATABASE_URL), skipped with the reason on native partitioning."""
    import asyncpg

    tenant_id, _ = await cloud.tenant_user()
    old, recent = dt.datetime(2026, 2, 3, tzinfo=dt.UTC), dt.datetime(2026, 2, 20, tzinfo=dt.UTC)
    conn = await asyncpg.connect(cloud.settings.database_url)
    try:
        if await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.telemetry'::regclass"):
            pytest.skip("telemetry is natively partitioned here: compression is TimescaleDB's (PULSE_TEST_DATABASE_URL)")
        await conn.executemany(
            "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, source, received_at)"
            " VALUES ($1, $2, 'd', 'telemetry', $3::jsonb, 'test', $1)",
            [(day + dt.timedelta(minutes=i), tenant_id, json.dumps({"v": i})) for day in (old, recent) for i in range(500)],
        )
        compressed = await conn.fetch(
            "SELECT compress_chunk(c) FROM show_chunks('telemetry', older_than => $1::timestamptz, newer_than => $2::timestamptz) c",
            old + dt.timedelta(days=1), old,
        )
        assert len(compressed) == 1
        await conn.execute("ANALYZE telemetry")  # the emptied chunk now says 0 rows
    finally:
        await conn.close()

    ops = await cloud.user("operator", tenant=None)
    r = await cloud.client.get("/api/v1/operator/system", headers=ops)
    assert r.status_code == 200, r.text
    system = r.json()
    assert system["storage_engine"] == "timescaledb"
    by_start = {dt.datetime.fromisoformat(p["range_start"]): p for p in system["partitions"]}
    assert by_start[old]["rows_estimate"] == 500 and by_start[recent]["rows_estimate"] == 500
    assert by_start[old]["bytes"] > 0
    assert dict((dt.date.fromisoformat(d), n) for d, n in system["telemetry_rows_per_day"])[old.date()] == 500
    assert dt.datetime.fromisoformat(system["oldest_data"]) <= old
