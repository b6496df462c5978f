"""Where each file of the archive lives: one tenant's one day per file, under the tenant's prefix.

    tenants/<tenant uuid>/bronze/<yyyy>/<yyyy-mm-dd>.parquet        rows as stored
    tenants/<tenant uuid>/silver/<yyyy>/<yyyy-mm-dd>.parquet        one typed row per metric value, de-duplicated
    tenants/<tenant uuid>/gold-hourly/<yyyy>/<yyyy-mm-dd>.parquet   per device, metric and hour
    tenants/<tenant uuid>/gold-daily/<yyyy>/<yyyy-mm-dd>.parquet    per device, metric and day

Names are deterministic: writing a day again replaces its files (never a second copy). The tenant
part comes from a ``uuid.UUID`` (never from text a caller typed), so no key of one tenant can name a
file of another."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

Layer = Literal["bronze", "silver", "gold-hourly", "gold-daily"]
LAYERS: tuple[Layer, ...] = ("bronze", "silver", "gold-hourly", "gold-daily")


def tenant_prefix(tenant: uuid.UUID) -> str:
    if not isinstance(tenant, uuid.UUID):  # a str could be anything, "../" included
        raise TypeError("archive keys are built from a tenant's uuid.UUID")
    return f"tenants/{tenant}/"


def key(tenant: uuid.UUID, layer: Layer, day: dt.date) -> str:
    if layer not in LAYERS:
        raise ValueError(f"no archive layer {layer!r}")
    return f"{tenant_prefix(tenant)}{layer}/{day:%Y}/{day.isoformat()}.parquet"


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC day."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)
