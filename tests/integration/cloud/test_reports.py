"""SLA reports, the report history, streamed exports and the daily scheduled report: figures from
known state history and alerts, coded refusals, and no tenant ever sees another's."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid

import asyncpg
import httpx
import pytest

from pulse.cloud.notify import store as notify_store
from pulse.cloud.reports import worker as report_worker

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
DAY = {"from": "2026-03-01T00:00:00Z", "to": "2026-03-02T00:00:00Z"}


def h(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


async def seed(dsn: str, tenant: uuid.UUID, *, prefix: str = "") -> None:
    """d1: online from the day before, offline 06:00-12:00 (75 %); d2 online all day (100 %);
    alerts: d1 three (two closed after 10 and 30 minutes), d2 one; one alert of the day before."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO device_state_history (tenant_id, device_id, status, at) VALUES ($1, $2, $3, $4)",
            [(tenant, f"{prefix}d1", "online", h(-20)), (tenant, f"{prefix}d1", "offline", h(6)), (tenant, f"{prefix}d1", "online", h(12)),
             (tenant, f"{prefix}d2", "online", h(-1))],
        )
        rows = [
            (f"{prefix}d1", "hot", "critical", h(1), h(1) + dt.timedelta(minutes=10)),
            (f"{prefix}d1", "hot", "major", h(2), h(2) + dt.timedelta(minutes=30)),
            (f"{prefix}d1", "NO_HEARTBEAT", "major", h(6), None),
            (f"{prefix}d2", "cold", "minor", h(3), None),
            (f"{prefix}d2", "cold", "minor", h(-5), h(-4)),  # opened and closed the day before
        ]
        for device, rule, severity, opened, closed in rows:
            await conn.execute(
                "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, state, explanation, opened_at, closed_at)"
                " VALUES ($1, $2, $3, $4, $5, '{}', $6, $7)",
                tenant, device, rule, severity, "closed" if closed else "open", opened, closed,
            )
    finally:
        await conn.close()


async def test_the_sla_report_gives_online_percent_mttr_and_top_alerting_in_three_formats(cloud_settings, start_cloud) -> None:
    async with start_cloud(cloud_settings) as cloud:
        cloud.app.state.pulse.clock = lambda: dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
        a, headers_a = await cloud.tenant_user()
        b, headers_b = await cloud.tenant_user()
        await seed(cloud.settings.database_url, a)
        await seed(cloud.settings.database_url, b, prefix="other-")

        r = await cloud.client.get("/api/v1/reports/sla", params=DAY, headers=headers_a)
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["from"] == "2026-03-01T00:00:00Z" and s["devices"] == 2
        assert s["online_pct"] == 87.5
        assert [(x["device_id"], x["online_pct"]) for x in s["availability"]] == [("d1", 75.0), ("d2", 100.0)]
        assert s["mttr_s"] == 1200.0 and s["alerts_opened"] == 4 and s["alerts_closed"] == 2
        assert s["alerts_by_severity"] == {"critical": 1, "major": 2, "minor": 1}
        assert s["top_devices"] == [{"name": "d1", "alerts": 3}, {"name": "d2", "alerts": 1}]
        assert s["top_rules"][0] == {"name": "hot", "alerts": 2}

        r = await cloud.client.get("/api/v1/reports/sla", params={**DAY, "format": "csv"}, headers=headers_a)
        assert r.headers["content-type"].startswith("text/csv")
        table = list(csv.reader(io.StringIO(r.text)))
        assert ["summary", "online_pct", "87.5"] in table and ["top_device", "d1", "3"] in table
        assert not any("other-" in cell for row in table for cell in row)
        r = await cloud.client.get("/api/v1/reports/sla", params={**DAY, "format": "html"}, headers=headers_a)
        assert r.headers["content-type"].startswith("text/html") and "87.50 %" in r.text and "20 min 00 s" in r.text

        # the history: three runs by this person; the other tenant sees none of them
        r = await cloud.client.get("/api/v1/reports/runs", params={"limit": 2}, headers=headers_a)
        page = r.json()
        assert len(page["items"]) == 2 and page["next_cursor"]
        r2 = await cloud.client.get("/api/v1/reports/runs", params={"limit": 2, "cursor": page["next_cursor"]}, headers=headers_a)
        runs = page["items"] + r2.json()["items"]
        assert sorted(x["params"]["format"] for x in runs) == ["csv", "html", "json"]
        assert {x["status"] for x in runs} == {"done"}
        one = runs[0]["id"]
        r = await cloud.client.get(f"/api/v1/reports/runs/{one}", headers=headers_a)
        assert r.json()["result"]["online_pct"] == 87.5
        r = await cloud.client.get(f"/api/v1/reports/runs/{one}/report.html", headers=headers_a)
        assert r.status_code == 200 and "87.50 %" in r.text
        for path in (f"/api/v1/reports/runs/{one}", f"/api/v1/reports/runs/{one}/report.html"):
            r = await cloud.client.get(path, headers=headers_b)
            assert r.status_code == 404 and r.json()["code"] == "api.not_found"
        assert (await cloud.client.get("/api/v1/reports/runs", headers=headers_b)).json()["items"] == []
        r = await cloud.client.get("/api/v1/reports/sla", params=DAY, headers=headers_b)
        assert [x["device_id"] for x in r.json()["availability"]] == ["other-d1", "other-d2"]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "report.bad_range"),
        ({"from": "2024-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "report.bad_range"),
        ({"from": "2026-04-01T00:00:00Z", "to": "2026-04-02T00:00:00Z"}, "report.bad_range"),  # not started (clock: 03-05)
        ({"from": "2026-03-01T00:00:00", "to": "2026-03-02T00:00:00"}, "report.bad_range"),  # no time zone
        ({**DAY, "format": "xml"}, "report.bad_format"),
        ({"from": "yesterday", "to": "2026-03-02T00:00:00Z"}, "api.invalid"),
    ],
)
async def test_bad_periods_and_formats_are_refused_with_a_code(cloud, params, code) -> None:
    cloud.app.state.pulse.clock = lambda: dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    _, headers = await cloud.tenant_user()
    for path in ("/api/v1/reports/sla", "/api/v1/exports/alerts"):
        if path.endswith("alerts") and params.get("format") == "xml":
            params = {**params, "format": "pdf"}
        r = await cloud.client.get(path, params=params, headers=headers)
        assert r.status_code == 422 and r.json()["code"] == code, (path, r.text)
    r = await cloud.client.get("/api/v1/exports/devices", params={"format": "xlsx"}, headers=headers)
    assert r.status_code == 422 and r.json()["code"] == "report.bad_format"


async def test_exports_stream_the_tenants_devices_and_alerts_only(cloud, serve) -> None:
    cloud.app.state.pulse.clock = lambda: dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    a, headers_a = await cloud.tenant_user()
    b, headers_b = await cloud.tenant_user()
    await seed(cloud.settings.database_url, b, prefix="other-")
    conn = await asyncpg.connect(cloud.settings.database_url)
    try:
        await conn.executemany(
            "INSERT INTO devices (tenant_id, device_id, name) VALUES ($1, $2, $3)", [(a, f"dev-{i:05d}", f"Device, \"{i}\"") for i in range(2500)]
        )
        await conn.executemany(
            "INSERT INTO alerts (tenant_id, device_id, rule_id, severity, explanation, opened_at, state, closed_at)"
            " VALUES ($1, $2, 'r', 'minor', '{}', $3, 'closed', $3)",
            [(a, f"dev-{i:05d}", h(i / 200)) for i in range(3000)],
        )
    finally:
        await conn.close()

    # over a real HTTP server: the body arrives in pieces as the cursor yields them
    async with serve(cloud.app, lifespan=False) as url, httpx.AsyncClient(base_url=url) as http:
        async with http.stream("GET", "/api/v1/exports/devices", headers=headers_a) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            chunks = [c async for c in r.aiter_raw()]
    assert len(chunks) >= 5, "the export came in one piece: not streamed"
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == 2500 and rows[7]["device_id"] == "dev-00007" and rows[7]["name"] == 'Device, "7"'
    run = r.headers["x-report-run"]

    r = await cloud.client.get("/api/v1/exports/devices", params={"format": "json"}, headers=headers_a)
    assert len(r.json()) == 2500
    r = await cloud.client.get("/api/v1/exports/alerts", params={**DAY, "format": "jsonl"}, headers=headers_a)
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert len(lines) == 3000 and {x["rule_id"] for x in lines} == {"r"}
    # the history recorded the export with its row count
    r = await cloud.client.get(f"/api/v1/reports/runs/{run}", headers=headers_a)
    assert r.json()["status"] == "done" and r.json()["result"] == {"rows": 2500}
    # the other tenant's exports hold only its own rows; it cannot see this export's run
    r = await cloud.client.get("/api/v1/exports/devices", params={"format": "jsonl"}, headers=headers_b)
    assert r.text == ""
    r = await cloud.client.get("/api/v1/exports/alerts", params={**DAY, "format": "json"}, headers=headers_b)
    assert sorted(x["device_id"] for x in r.json()) == ["other-d1", "other-d1", "other-d1", "other-d2"]
    assert (await cloud.client.get(f"/api/v1/reports/runs/{run}", headers=headers_b)).status_code == 404


async def test_the_daily_report_is_made_once_per_tenant_and_day_and_queued_to_its_channels(cloud) -> None:
    a, headers_a = await cloud.tenant_user()
    b, _ = await cloud.tenant_user()
    await seed(cloud.settings.database_url, a)
    db = cloud.app.state.pulse.db
    async with db.tenant(a) as conn:
        channel = await notify_store.create_channel(conn, name="ops", kind="webhook", config={"url": "https://example.com/hook"})
    now = dt.datetime(2026, 3, 2, 0, 5, tzinfo=dt.UTC)

    made = dict(await report_worker.run_once(db, now, console_url="https://pulse.example.com"))
    assert a in made and b in made
    assert await report_worker.run_once(db, now + dt.timedelta(hours=5)) == []  # same day: nothing more

    async with db.tenant(a) as conn:
        queued = await conn.fetch("SELECT notification FROM notify_deliveries WHERE channel_id = $1 AND event = 'notice'", channel["id"])
    assert len(queued) == 1
    text = json.loads(queued[0]["notification"])["explanation"]
    assert "SLA report for 2026-03-01: 87.50 % online, 4 alerts opened" in text
    assert f"https://pulse.example.com/app/reports?run={made[a]}" in text
    r = await cloud.client.get(f"/api/v1/reports/runs/{made[a]}", headers=headers_a)
    assert r.json()["requested_by"] == "schedule" and r.json()["params"]["day"] == "2026-03-01" and r.json()["result"]["online_pct"] == 87.5
    # the next day brings the next report
    following = dict(await report_worker.run_once(db, now + dt.timedelta(days=1)))
    assert following.keys() == made.keys() and following[a] != made[a]


async def test_the_telemetry_export_gives_one_row_per_metric_in_four_formats_and_only_the_tenants_own(cloud, tmp_path) -> None:
    import duckdb

    cloud.app.state.pulse.clock = lambda: dt.datetime(2026, 3, 5, tzinfo=dt.UTC)
    a, headers_a = await cloud.tenant_user()
    b, headers_b = await cloud.tenant_user()
    conn = await asyncpg.connect(cloud.settings.database_url)
    try:
        rows = [(h(i / 60), a, f"m-{i % 3}", json.dumps({"temp": 20 + i / 10, "door": i % 2 == 0, "mode": "eco"})) for i in range(300)]
        rows += [(h(1), b, "m-0", json.dumps({"temp": 99.0}))]  # the other tenant's, same device id
        rows += [(h(-2), a, "m-0", json.dumps({"temp": -1.0}))]  # before the period
        await conn.executemany(
            "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, source, received_at)"
            " VALUES ($1, $2, $3, 'telemetry', $4::jsonb, 'http', now())",
            rows,
        )
    finally:
        await conn.close()
    base = "/api/v1/exports/telemetry"

    r = await cloud.client.get(base, params=DAY, headers=headers_a)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    got = list(csv.DictReader(io.StringIO(r.text)))
    assert len(got) == 900 and list(got[0]) == ["time", "device_id", "metric", "value"]
    assert [(x["device_id"], x["metric"], x["value"]) for x in got[:3]] == [("m-0", "door", "true"), ("m-0", "mode", "eco"), ("m-0", "temp", "20.0")]

    r = await cloud.client.get(base, params={**DAY, "format": "json", "device": ["m-1", "m-2"], "metric": "temp"}, headers=headers_a)
    values = r.json()
    assert len(values) == 200 and {x["device_id"] for x in values} == {"m-1", "m-2"} and {x["metric"] for x in values} == {"temp"}
    assert values[0]["value"] == pytest.approx(20.1)  # typed: a number, not text
    r = await cloud.client.get(base, params={**DAY, "format": "jsonl", "metric": "door"}, headers=headers_a)
    assert [json.loads(x)["value"] for x in r.text.splitlines()[:2]] == [True, False]

    r = await cloud.client.get(base, params={**DAY, "format": "parquet"}, headers=headers_a)
    assert r.status_code == 200 and r.content[:4] == b"PAR1"
    path = tmp_path / "t.parquet"
    path.write_bytes(r.content)
    con = duckdb.connect()
    try:
        typed = con.execute(f"SELECT metric, count(*), count(value), count(flag), count(text), max(value) FROM '{path}' GROUP BY metric ORDER BY metric").fetchall()
        first = con.execute(f"SELECT time, device_id FROM '{path}' LIMIT 1").fetchone()
    finally:
        con.close()
    assert typed == [("door", 300, 0, 300, 0, None), ("mode", 300, 0, 0, 300, None), ("temp", 300, 300, 0, 0, pytest.approx(49.9))]
    assert first is not None and first[0] == T0 and first[1] == "m-0"
    run = r.headers["x-report-run"]
    assert (await cloud.client.get(f"/api/v1/reports/runs/{run}", headers=headers_a)).json()["result"] == {"rows": 900}

    # the other tenant gets its one reading, never this tenant's (same device id)
    r = await cloud.client.get(base, params={**DAY, "format": "json"}, headers=headers_b)
    assert [(x["device_id"], x["value"]) for x in r.json()] == [("m-0", 99.0)]
    # coded refusals
    for params, code in (
        ({**DAY, "format": "xlsx"}, "report.bad_format"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "report.bad_range"),
        ({**DAY, "device": [f"d{i}" for i in range(1001)]}, "api.invalid"),
    ):
        r = await cloud.client.get(base, params=params, headers=headers_a)
        assert r.status_code == 422 and r.json()["code"] == code, r.text



async def test_on_timescaledb_the_telemetry_export_reads_compressed_chunks_and_only_the_tenants_own(cloud) -> None:
    """Older days sit in compressed chunks on TimescaleDB (after 7 days): exporting them gives the
    same rows as before compression. Runs where the suite's server has TimescaleDB
    (PULSE_TEST_DATABASE_URL), skipped with the reason on native partitioning."""
    a, headers_a = await cloud.tenant_user()
    b, headers_b = await cloud.tenant_user()
    day = dt.datetime(2026, 2, 10, tzinfo=dt.UTC)
    conn = await asyncpg.connect(cloud.settings.database_url)
    try:
        if await conn.fetchval("SELECT relkind = 'p' FROM pg_class WHERE oid = 'public.telemetry'::regclass"):
            pytest.skip("telemetry is natively partitioned here: compression is TimescaleDB's (PULSE_TEST_DATABASE_URL)")
        rows = [(day + dt.timedelta(hours=i), a, f"m-{i % 2}", json.dumps({"temp": float(i), "door": i % 2 == 0})) for i in range(24)]
        rows += [(day + dt.timedelta(hours=3), b, "m-0", json.dumps({"temp": 99.0}))]
        await conn.executemany(
            "INSERT INTO telemetry (time, tenant_id, device_id, msg_type, metrics, source, received_at)"
            " VALUES ($1, $2, $3, 'telemetry', $4::jsonb, 'http', now())",
            rows,
        )
        compressed = await conn.fetch(
            "SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('telemetry', older_than => $1::timestamptz,"
            " newer_than => $2::timestamptz) c", day + dt.timedelta(days=1), day - dt.timedelta(days=1),
        )
        assert compressed, "no chunk holds the day: the test proves nothing"
        assert await conn.fetchval(
            "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks WHERE hypertable_name = 'telemetry'"
            " AND range_start <= $1 AND range_end > $1", day + dt.timedelta(hours=12),
        )
    finally:
        await conn.close()
    params = {"from": "2026-02-10T00:00:00Z", "to": "2026-02-11T00:00:00Z"}

    r = await cloud.client.get("/api/v1/exports/telemetry", params={**params, "format": "json"}, headers=headers_a)
    assert r.status_code == 200, r.text
    got = r.json()
    assert len(got) == 48 and {x["device_id"] for x in got} == {"m-0", "m-1"}
    assert sorted(x["value"] for x in got if x["metric"] == "temp") == [float(i) for i in range(24)]
    r = await cloud.client.get("/api/v1/exports/telemetry", params={**params, "format": "parquet"}, headers=headers_a)
    assert r.status_code == 200 and r.content[:4] == b"PAR1" and r.headers["x-report-run"]
    r = await cloud.client.get("/api/v1/exports/telemetry", params={**params, "format": "json"}, headers=headers_b)
    assert [(x["device_id"], x["metric"], x["value"]) for x in r.json()] == [("m-0", "temp", 99.0)]
