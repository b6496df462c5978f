"""The ingest stream's partitioning: stable, in range, per (tenant, device)."""

from __future__ import annotations

import uuid

import pytest

from pulse.protocol.stream import consumer_name, partition_of, partition_subject, subjects_wildcard

TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")


@pytest.mark.parametrize(
    ("device", "partitions", "expected"),
    [("dev-1", 8, partition_of(TENANT, "dev-1", 8)), ("dev-1", 1, 0)],
)
def test_a_device_always_lands_in_the_same_partition(device: str, partitions: int, expected: int) -> None:
    assert all(partition_of(TENANT, device, partitions) == expected for _ in range(3))


def test_the_partition_is_crc32_of_tenant_and_device_so_every_process_agrees() -> None:
    # fixed value: a change here would split a device's messages across partitions during an upgrade
    assert partition_of(TENANT, "dev-1", 1024) == 437  # zlib.crc32(b"00000000-0000-4000-8000-000000000001/dev-1") % 1024


def test_partitions_spread_devices_and_tenants_are_separate_keys() -> None:
    seen = {partition_of(TENANT, f"dev-{i}", 8) for i in range(200)}
    assert seen == set(range(8))
    other = uuid.UUID("00000000-0000-4000-8000-000000000002")
    assert any(partition_of(TENANT, f"d{i}", 64) != partition_of(other, f"d{i}", 64) for i in range(20))


def test_subjects_and_consumer_names() -> None:
    assert partition_subject("pulse.ingest", 3) == "pulse.ingest.3"
    assert subjects_wildcard("pulse.ingest") == "pulse.ingest.*"
    assert consumer_name(3) == "pulse-writer-3"
    with pytest.raises(ValueError):
        partition_of(TENANT, "d", 0)
