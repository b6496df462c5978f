"""DuckDB work on one tenant's files: a day's rows (CSV from PostgreSQL's COPY) into the four
Parquet layers, and reads of gold rollups back. Synchronous (DuckDB is); callers run it in a thread.

Every statement that reads Parquet also filters on the tenant: the files are chosen by the tenant's
key prefix (layout.py) and the rows by ``tenant_id`` (each file carries the column), so a file that
somehow held another tenant's rows would still show nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from pulse.cloud.archive.layout import Layer

# The columns PostgreSQL's COPY writes (archiver.COPY_SQL), in order, as DuckDB reads them.
CSV_COLUMNS = {
    "time_us": "BIGINT",
    "device_id": "VARCHAR",
    "msg_type": "VARCHAR",
    "metrics": "VARCHAR",
    "tags": "VARCHAR",
    "body": "VARCHAR",
    "seq": "BIGINT",
    "gateway_id": "VARCHAR",
    "source": "VARCHAR",
    "received_us": "BIGINT",
}


def connect(memory_limit: str = "128MB", temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """DuckDB with a memory ceiling (it spills sorts and aggregates to ``temp_dir`` past it), so a
    large day costs disk, not the process's memory."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")  # every COPY says its own ORDER BY
    if temp_dir is not None:
        con.execute(f"SET temp_directory = '{_lit(str(temp_dir))}'")
    return con


def _lit(text: str) -> str:
    return text.replace("'", "''")


@dataclass(frozen=True, slots=True)
class DayFiles:
    rows: int  # bronze rows
    points: int  # silver rows
    files: dict[Layer, Path]


def write_day(csv_path: Path, out_dir: Path, tenant: uuid.UUID) -> DayFiles:
    """Bronze, silver and gold Parquet files of one tenant's day, from the day's COPY output."""
    con = connect(temp_dir=out_dir / "spill")
    try:
        columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in CSV_COLUMNS.items()) + "}"
        t = str(tenant)
        con.execute(
            f"""CREATE VIEW bronze AS
            SELECT make_timestamp(time_us)::TIMESTAMPTZ AS time, '{t}'::UUID AS tenant_id, device_id, msg_type,
                   metrics::JSON AS metrics, tags::JSON AS tags, body::JSON AS body, seq,
                   gateway_id::UUID AS gateway_id, source, make_timestamp(received_us)::TIMESTAMPTZ AS received_at
            FROM read_csv('{_lit(str(csv_path))}', header = false, columns = {columns}, allow_quoted_nulls = false,
                          quote = '"', escape = '"', delim = ',')"""
        )
        files: dict[Layer, Path] = {}
        files["bronze"] = out_dir / "bronze.parquet"
        _copy(con, "SELECT * FROM bronze ORDER BY device_id, time", files["bronze"])
        con.execute(
            f"""CREATE VIEW silver AS
            SELECT * FROM (
                SELECT b.tenant_id, b.time, b.device_id, j.key AS metric,
                       CASE json_type(j.value) WHEN 'BOOLEAN' THEN CASE WHEN j.value::VARCHAR = 'true' THEN 1.0 ELSE 0.0 END
                            ELSE j.value::DOUBLE END AS value,
                       CASE json_type(j.value) WHEN 'BOOLEAN' THEN 'boolean' ELSE 'number' END AS kind,
                       b.seq, b.gateway_id, b.source, b.received_at
                FROM read_parquet('{_lit(str(files["bronze"]))}') b, json_each(b.metrics) j
                WHERE b.msg_type = 'telemetry' AND json_type(j.value) IN ('BIGINT', 'UBIGINT', 'DOUBLE', 'BOOLEAN')
            )
            QUALIFY row_number() OVER (PARTITION BY device_id, metric, time ORDER BY received_at, seq NULLS LAST) = 1"""
        )
        files["silver"] = out_dir / "silver.parquet"
        _copy(con, "SELECT * FROM silver ORDER BY device_id, metric, time", files["silver"])
        silver = f"read_parquet('{_lit(str(files['silver']))}')"
        for layer, grain in (("gold-hourly", "hour"), ("gold-daily", "day")):
            path = out_dir / f"{layer}.parquet"
            _copy(
                con,
                f"""SELECT tenant_id, device_id, metric, date_trunc('{grain}', time) AS bucket,
                           min(value) AS min, max(value) AS max, avg(value) AS avg, count(*) AS count,
                           arg_max(value, time) AS last, max(time) AS last_time
                    FROM {silver} GROUP BY tenant_id, device_id, metric, bucket ORDER BY device_id, metric, bucket""",
                path,
            )
            files[layer] = path  # type: ignore[index]
        rows = _count(con, f"read_parquet('{_lit(str(files['bronze']))}')")
        points = _count(con, silver)
        return DayFiles(rows=rows, points=points, files=files)
    finally:
        con.close()


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    con.execute(f"COPY ({query}) TO '{_lit(str(path))}' (FORMAT parquet, COMPRESSION zstd)")


def _count(con: duckdb.DuckDBPyConnection, source: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {source}").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True, slots=True)
class Bucket:
    start: dt.datetime
    avg: float
    min: float
    max: float
    count: int
    last: float


def read_rollups(
    paths: Sequence[Path], tenant: uuid.UUID, device_id: str, metric: str, start: dt.datetime, end: dt.datetime
) -> list[Bucket]:
    """Gold buckets of one device's metric in [start, end), from the tenant's gold files."""
    if not paths:
        return []
    con = connect()
    try:
        rows = con.execute(
            "SELECT bucket, avg, min, max, count, last FROM read_parquet(?) "
            "WHERE tenant_id = ? AND device_id = ? AND metric = ? AND bucket >= ? AND bucket < ? ORDER BY bucket",
            [[str(p) for p in paths], tenant, device_id, metric, start, end],
        ).fetchall()
    finally:
        con.close()
    return [Bucket(start=r[0], avg=r[1], min=r[2], max=r[3], count=r[4], last=r[5]) for r in rows]


def readings_to_parquet(csv_path: Path, out: Path, temp_dir: Path) -> int:
    """The telemetry export's rows (time in µs, device, metric, JSON type, value as text; CSV from
    PostgreSQL's COPY, in order) as one Parquet file with typed columns; returns the row count."""
    con = connect(temp_dir=temp_dir)
    try:
        if csv_path.stat().st_size == 0:
            con.execute("CREATE TABLE r (time TIMESTAMPTZ, device_id VARCHAR, metric VARCHAR, value DOUBLE, flag BOOLEAN, text VARCHAR)")
            _copy(con, "SELECT * FROM r", out)
            return 0
        source = (f"read_csv('{_lit(str(csv_path))}', header = false, auto_detect = false,"
                  " columns = {'time_us': 'BIGINT', 'device_id': 'VARCHAR', 'metric': 'VARCHAR', 'kind': 'VARCHAR', 'raw': 'VARCHAR'})")
        query = (f"SELECT make_timestamp(time_us) AT TIME ZONE 'UTC' AS time, device_id, metric,"
                 f" CASE WHEN kind = 'number' THEN TRY_CAST(raw AS DOUBLE) END AS value,"
                 f" CASE WHEN kind = 'boolean' THEN raw = 'true' END AS flag,"
                 f" CASE WHEN kind = 'string' THEN raw END AS text FROM {source}")
        _copy(con, query, out)
        return _count(con, source)
    finally:
        con.close()
