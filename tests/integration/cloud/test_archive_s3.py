"""The archive on S3-compatible storage: moto's server as a real process on loopback receives the
uploads (PULSE_ARCHIVE_S3_*), and the archive is read back from the bucket for long ranges."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import boto3
import pytest
from archive_data import at, put_rows, read
from pydantic import SecretStr

from pulse.cloud.archive import layout
from pulse.cloud.archive.archiver import archiver_for
from pulse.cloud.archive.query import history
from pulse.cloud.archive.store import S3Store

pytestmark = pytest.mark.integration

KEYS = {"aws_access_key_id": "pulse-test", "aws_secret_access_key": "pulse-test-secret"}


async def test_the_archive_goes_to_an_s3_bucket_per_tenant_prefix_and_reads_back_from_it(cloud, s3_endpoint: str, tmp_path: Path) -> None:
    a, _ = await cloud.tenant_user()
    b, _ = await cloud.tenant_user()
    await put_rows(cloud.settings.database_url, [
        *[(at("2026-06-01", h), a, "chiller", {"temp": float(h)}, h) for h in range(24)],
        (at("2026-06-01", 5), b, "chiller", {"temp": -40.0}, 1),
    ])
    settings = cloud.settings.model_copy(update={
        "data_dir": tmp_path / "data", "archive_s3_bucket": "pulse-archive", "archive_s3_endpoint": s3_endpoint,
        "archive_s3_prefix": "site-1", "archive_s3_access_key": KEYS["aws_access_key_id"],
        "archive_s3_secret_key": SecretStr(KEYS["aws_secret_access_key"]),
    })
    archiver = archiver_for(cloud.app.state.pulse.db, settings)
    assert isinstance(archiver.store, S3Store)

    done = await archiver.run_once(at("2026-06-03", 12))

    assert sorted(done.archived) == sorted([(a, dt.date(2026, 6, 1)), (b, dt.date(2026, 6, 1))])
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **KEYS)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="pulse-archive")["Contents"])
    assert keys == sorted(f"site-1/{layout.key(t, layer, dt.date(2026, 6, 1))}" for t in (a, b) for layer in layout.LAYERS)
    got = await history(cloud.app.state.pulse.db, archiver.store, a, "chiller", "temp", at("2026-06-01"), at("2026-06-02"), "day")
    assert [(p.min, p.max, p.count) for p in got.buckets] == [(0.0, 23.0, 24)]
    # what was downloaded sits in the cache under the tenant's own prefix, and holds its rows only
    cached = tmp_path / "data" / "archive-cache" / layout.key(a, "gold-daily", dt.date(2026, 6, 1))
    assert read(cached, "SELECT DISTINCT tenant_id FROM f") == [(a,)]
    other = await history(cloud.app.state.pulse.db, archiver.store, b, "chiller", "temp", at("2026-06-01"), at("2026-06-02"), "hour")
    assert [(p.start.hour, p.avg) for p in other.buckets] == [(5, -40.0)]
