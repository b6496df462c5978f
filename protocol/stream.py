"""The optional ingest stream's layout (NATS JetStream, docs/protocol.md "Ingest stream").

Ingest publishes each accepted request's rows as one stream message on the subject of its
partition; one writer per partition stores them in stream order. The partition of a message is a
pure function of (tenant, device): every message of a device goes to one partition, so a device's
messages stay in the order ingest accepted them, and two tenants' devices of the same id are two
keys. The hash is CRC-32 of ``"<tenant uuid>/<device id>"`` (stable across processes, machines and
Python versions, unlike ``hash()``), modulo the number of partitions.
"""

from __future__ import annotations

import uuid
import zlib

STREAM_FORMAT = 1
"""Version of the stream message body of ingest's rows (cloud/stream/codec.py)."""

STREAM_FORMAT_GATEWAY = 2
"""Version of a stream message body that also carries gateway provenance: the gateway, its sync
stream and each row's record sequence (gateway sync through the stream). A writer reads both
versions and refuses others; ingest's messages stay at ``STREAM_FORMAT``, so a writer of the
previous release keeps reading them during a rolling upgrade."""


def partition_of(tenant_id: uuid.UUID, device_id: str, partitions: int) -> int:
    """The partition, in ``range(partitions)``, that carries every message of this device."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    return zlib.crc32(f"{tenant_id}/{device_id}".encode()) % partitions


def partition_subject(prefix: str, partition: int) -> str:
    """``pulse.ingest`` and 3 -> ``pulse.ingest.3``."""
    return f"{prefix}.{partition}"


def subjects_wildcard(prefix: str) -> str:
    """Every partition's subject: what the stream captures."""
    return f"{prefix}.*"


def consumer_name(partition: int) -> str:
    """The durable pull consumer of one partition (one per stream, whichever replica runs it)."""
    return f"pulse-writer-{partition}"
