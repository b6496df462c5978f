"""Archive keys: one tenant's one day per file, under the tenant's prefix; nothing but a tenant's
UUID makes a prefix, and no key reaches outside the store's root. SLA periods refused with reasons."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest

from pulse.cloud.archive import layout
from pulse.cloud.archive.store import LocalStore
from pulse.cloud.reports.sla import check_period

pytestmark = pytest.mark.unit

TENANT = uuid.UUID("6f1c2b1e-0000-4000-8000-000000000001")
NOW = dt.datetime(2026, 3, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("layer", "day", "key"),
    [
        ("bronze", dt.date(2026, 1, 2), f"tenants/{TENANT}/bronze/2026/2026-01-02.parquet"),
        ("silver", dt.date(2025, 12, 31), f"tenants/{TENANT}/silver/2025/2025-12-31.parquet"),
        ("gold-hourly", dt.date(2026, 2, 28), f"tenants/{TENANT}/gold-hourly/2026/2026-02-28.parquet"),
        ("gold-daily", dt.date(2026, 2, 28), f"tenants/{TENANT}/gold-daily/2026/2026-02-28.parquet"),
    ],
)
def test_every_layer_keeps_one_tenant_day_per_key(layer: layout.Layer, day: dt.date, key: str) -> None:
    assert layout.key(TENANT, layer, day) == key


def test_a_prefix_is_made_only_from_a_tenant_uuid() -> None:
    with pytest.raises(TypeError):
        layout.tenant_prefix("../" + str(TENANT))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no archive layer"):
        layout.key(TENANT, "raw", dt.date(2026, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/x.parquet", "tenants//x", "tenants/./x", "tenants/a/../../b"])
def test_the_local_store_refuses_keys_outside_its_root(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="not an archive key"):
        LocalStore(tmp_path).path(key)


def test_a_day_is_its_utc_bounds() -> None:
    assert layout.day_bounds(dt.date(2026, 3, 1)) == (dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 2, tzinfo=dt.UTC))


@pytest.mark.parametrize(
    ("start", "end", "why"),
    [
        (NOW - dt.timedelta(days=1), NOW, None),
        (NOW, NOW - dt.timedelta(days=1), "before"),
        (NOW - dt.timedelta(days=1), NOW - dt.timedelta(days=1), "before"),
        (NOW - dt.timedelta(days=400), NOW, "at most 366 days"),
        (NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=2), "not started"),
        (dt.datetime(2026, 3, 1), dt.datetime(2026, 3, 2), "time zone"),
    ],
)
def test_report_periods(start: dt.datetime, end: dt.datetime, why: str | None) -> None:
    got = check_period(start, end, NOW)
    assert (got is None) if why is None else (got is not None and why in got)
