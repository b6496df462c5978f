"""Ingest's side of the stream: publish a request's rows, return once JetStream has them.

Has the telemetry writer's ``write(telemetry, quarantine)`` so HTTP ingest and the MQTT endpoint use
either. The rows of one request become one message per partition they fall in (a device's request:
one message), published to ``<prefix>.<partition_of(tenant, device)>``; ``write`` returns after
JetStream's acknowledgement of each. No acknowledgement within ``publish_timeout_s``, no connection,
no stream, a full stream: ``StreamUnavailableError`` (503 ``ingest.stream_unavailable`` with
Retry-After), and the caller does not acknowledge the device. A request answered 503 may still
have reached the stream (the acknowledgement was lost, not the message): the device resends, as it
does today when a database commit's answer is lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

from pulse.cloud.db.rows import QuarantineRow, TelemetryRow
from pulse.cloud.errors import StreamUnavailableError
from pulse.cloud.settings import StreamConfig
from pulse.cloud.stream import codec
from pulse.cloud.stream.client import NATS_ERRORS, StreamClient, StreamDown
from pulse.protocol.stream import partition_of, partition_subject

log = logging.getLogger("pulse.cloud.stream")


class StreamPublisher:
    def __init__(self, client: StreamClient, config: StreamConfig) -> None:
        self.client = client
        self.config = config
        self._inflight_rows = 0
        self.published = 0
        """messages JetStream acknowledged (for tests and /metrics)"""

    @property
    def queued_rows(self) -> int:
        """Rows waiting for JetStream's acknowledgement."""
        return self._inflight_rows

    @property
    def pending_rows(self) -> int:
        return self._inflight_rows

    def _refuse(self, why: str) -> StreamUnavailableError:
        return StreamUnavailableError(
            f"the ingest stream {why}; nothing from this request was accepted; retry after the Retry-After seconds",
            retry_after_s=self.config.retry_after_s,
        )

    async def write(self, telemetry: Sequence[TelemetryRow], quarantine: Sequence[QuarantineRow] = ()) -> None:
        if not telemetry and not quarantine:
            return
        n = self.config.partitions
        parts: dict[int, tuple[list[TelemetryRow], list[QuarantineRow]]] = defaultdict(lambda: ([], []))
        for row in telemetry:
            parts[partition_of(row.tenant_id, row.device_id, n)][0].append(row)
        for q in quarantine:
            parts[partition_of(q.tenant_id, q.device_id or "", n)][1].append(q)
        bodies = {p: functools.partial(_bodies, t, q) for p, (t, q) in parts.items()}
        await self._publish(bodies, len(telemetry) + len(quarantine), self._refuse)

    async def write_gateway(
        self,
        telemetry: Sequence[TelemetryRow],
        seqs: Sequence[int],
        *,
        gateway_id: uuid.UUID,
        sync_stream: int,
        refuse: Callable[[str], StreamUnavailableError],
    ) -> None:
        """A gateway batch's admitted rows (``seqs``: each row's record sequence, ascending), with
        their provenance (stream message format 2), as ``write`` does: one message per partition
        (or several, published one after the other), returning once JetStream acknowledged all;
        otherwise ``refuse(why)`` is raised. Some of the messages may have reached the stream
        then; the partition writer skips them when the gateway sends the records again."""
        if not telemetry:
            return
        n = self.config.partitions
        parts: dict[int, tuple[list[TelemetryRow], list[int]]] = defaultdict(lambda: ([], []))
        for row, seq in zip(telemetry, seqs, strict=True):
            part = parts[partition_of(row.tenant_id, row.device_id, n)]
            part[0].append(row)
            part[1].append(seq)
        bodies = {p: functools.partial(_gateway_bodies, t, s, gateway_id, sync_stream) for p, (t, s) in parts.items()}
        await self._publish(bodies, len(telemetry), refuse)

    async def _publish(
        self, parts: Mapping[int, Callable[[int], list[bytes]]], rows: int, refuse: Callable[[str], StreamUnavailableError]
    ) -> None:
        """Publish each partition's bodies to its subject, in order within a partition."""
        self._inflight_rows += rows
        try:
            try:
                js = self.client.jetstream()
                await self.client.ensure_stream()
            except StreamDown as exc:
                raise refuse("cannot be reached") from exc
            except NATS_ERRORS as exc:
                raise refuse(f"is unavailable ({type(exc).__name__})") from exc

            limit = self.client.max_payload - 4096  # headroom for the message's headers

            async def publish(partition: int, bodies: Callable[[int], list[bytes]]) -> None:
                subject = partition_subject(self.config.subject, partition)
                # one message, or (over the server's max_payload) several, published one after the other: in order
                for body in bodies(limit):
                    await js.publish(subject, body, timeout=self.config.publish_timeout_s, stream=self.config.name)

            try:
                if len(parts) == 1:
                    [(partition, bodies)] = parts.items()
                    await publish(partition, bodies)
                else:
                    await asyncio.gather(*(publish(p, b) for p, b in parts.items()))
            except NATS_ERRORS as exc:
                log.warning("ingest stream publish failed: %s: %s", type(exc).__name__, exc)
                self.client.forget_stream()
                raise refuse(f"did not acknowledge ({type(exc).__name__})") from exc
            self.published += len(parts)
        finally:
            self._inflight_rows -= rows


def _bodies(telemetry: list[TelemetryRow], quarantine: list[QuarantineRow], limit: int) -> list[bytes]:
    """The rows as one message body, or halves of them (recursively) while a body is over ``limit``."""
    body = codec.encode(telemetry, quarantine)
    rows = len(telemetry) + len(quarantine)
    if len(body) <= limit or rows <= 1:
        return [body]  # a single row over the limit: JetStream refuses it (503); ingest limits keep that from happening
    if telemetry and quarantine:
        return _bodies(telemetry, [], limit) + _bodies([], quarantine, limit)
    half = (len(telemetry) or len(quarantine)) // 2
    if telemetry:
        return _bodies(telemetry[:half], [], limit) + _bodies(telemetry[half:], [], limit)
    return _bodies([], quarantine[:half], limit) + _bodies([], quarantine[half:], limit)


def _gateway_bodies(telemetry: list[TelemetryRow], seqs: list[int], gateway_id: uuid.UUID, sync_stream: int, limit: int) -> list[bytes]:
    """A gateway's rows with their provenance as one body, or halves of them (recursively, in order) while over ``limit``."""
    body = codec.encode(telemetry, (), codec.Provenance(gateway_id, sync_stream, tuple(seqs)))
    if len(body) <= limit or len(telemetry) <= 1:
        return [body]
    half = len(telemetry) // 2
    return (_gateway_bodies(telemetry[:half], seqs[:half], gateway_id, sync_stream, limit)
            + _gateway_bodies(telemetry[half:], seqs[half:], gateway_id, sync_stream, limit))
