"""HTTP ingest for direct devices: ``POST /ingest/v1/telemetry``.

Body: one envelope (a JSON object) or a JSON array of envelopes. Each message is either accepted
(stored in telemetry) or rejected with its code and stored in quarantine with its raw bytes; the
answer comes only after both are committed, and lists every message's outcome in order.
Contract for device makers: docs/protocol.md, "HTTP ingest for direct devices"."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import orjson
from fastapi import APIRouter, Request, Response

from pulse.cloud import firmware, twins
from pulse.cloud.cluster.ratelimit import SharedRateLimiter
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import QuarantineRow, TelemetryRow, telemetry_row
from pulse.cloud.downlink import gateways_serving
from pulse.cloud.errors import ConflictError, InvalidError, RateLimitedError, TooLargeError
from pulse.cloud.firmware import FirmwareStore
from pulse.cloud.ingest.identity import DeviceIdentity, DeviceTokenCache
from pulse.cloud.ingest.models import DeviceCommand, DeviceTwin, IngestResult
from pulse.cloud.ingest.ratelimit import RateLimiter
from pulse.cloud.ingest.writer import RowWriter
from pulse.cloud.metrics import Metrics
from pulse.cloud.settings import IngestConfig
from pulse.cloud.subscriptions.store import Entitlements
from pulse.cloud.web import read_limited
from pulse.protocol import commands
from pulse.protocol.commands import CommandEvent, CommandState
from pulse.protocol.envelope import DEFAULT_LIMITS, Limits, MessageType, parse, parse_document
from pulse.protocol.errors import Code, EnvelopeError
from pulse.protocol.firmware import COMMAND_NAME as FIRMWARE_COMMAND
from pulse.protocol.firmware import DIRECT_PATH as DIRECT_FIRMWARE_PATH
from pulse.protocol.twin import DEFAULT_LIMITS as DEFAULT_TWIN_LIMITS
from pulse.protocol.twin import TwinLimits, document_message

log = logging.getLogger("pulse.cloud.ingest")
_DEVICE_STATE_TYPES = frozenset({MessageType.TWIN_REPORTED.value, MessageType.COMMAND_ACK.value})
_TYPE_TEXT = {t: t.value for t in MessageType}  # enum's .value costs ~0.1 us on Python 3.11, per message

SOURCE = "http"


def _stdlib_dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _dumps_bytes(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return _stdlib_dumps(value)


class Message(NamedTuple):
    """One message of a request body: its bytes as received (kept for quarantine), or, for an element
    of a JSON array, its decoded form (so it is not decoded twice) and the encoder that makes its
    bytes when they are needed: to measure a message that might be over the size limit, and to
    quarantine a refused one (``encoded``). Most elements are accepted and never encoded again."""

    raw: bytes | None
    implied: MessageType | None  # what the endpoint implies when the message names no type
    doc: object = None
    encode: Callable[[object], bytes] | None = None

    def encoded(self) -> bytes:
        """The message's bytes: as received, or the array element's compact JSON (made now)."""
        if self.raw is not None:
            return self.raw
        assert self.encode is not None
        return self.encode(self.doc)

    def encoded_size(self) -> int:
        return len(self.encoded())


def split_body(body: bytes) -> list[Message]:
    """The messages in a body. A body that is not JSON, or JSON that is neither an object nor an
    array, is one message (which ``parse`` then rejects with the precise code)."""
    dumps = _dumps_bytes
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses some JSON the standard library reads (integers over 64 bits, NaN, lone
        # surrogates): read it so, and let the envelope check refuse the offending field by name
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return [Message(body, None)]
        dumps = _stdlib_dumps  # keeps NaN as NaN in the quarantined bytes
    if isinstance(doc, list):
        # per element: _implied inline, and the tuple made directly (Message's own __new__ is a
        # Python function: twice the cost, for every element of every request)
        telemetry, new = MessageType.TELEMETRY, tuple.__new__
        return [
            new(Message, (None, telemetry if type(item) is dict and "type" not in item else None, item, dumps)) for item in doc
        ]
    return [Message(body, _implied(doc))]


def _implied(doc: object) -> MessageType | None:
    return MessageType.TELEMETRY if isinstance(doc, dict) and "type" not in doc else None


@dataclass(slots=True)
class Prepared:
    telemetry: list[TelemetryRow] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    results: list[dict[str, object]] = field(default_factory=list)


def prepare(
    identity: DeviceIdentity,
    messages: list[Message],
    *,
    now_ms: int,
    received_at: datetime,
    limits: Limits = DEFAULT_LIMITS,
    source: str = SOURCE,
) -> Prepared:
    """Decide every message's fate (pure): telemetry rows, quarantine rows, per-message results."""
    out = Prepared()
    telemetry, quarantine, results = out.telemetry, out.quarantine, out.results
    tenant, device_id = identity.tenant_id, identity.device_id
    fromtimestamp = datetime.fromtimestamp
    for index, msg in enumerate(messages):
        try:
            if msg.raw is None:
                env = parse_document(
                    msg.doc, size=msg.encoded_size, now_ms=now_ms, device_id=device_id, expected_type=msg.implied, limits=limits
                )
            else:
                env = parse(msg.raw, now_ms=now_ms, device_id=device_id, expected_type=msg.implied, limits=limits)
        except EnvelopeError as exc:
            quarantine.append(
                QuarantineRow(tenant, device_id, None, source, str(exc.code), exc.message, msg.encoded(), received_at)
            )
            results.append({"index": index, "status": "rejected", "code": str(exc.code), "message": exc.message})
            continue
        telemetry.append(
            telemetry_row(
                fromtimestamp(env.ts_ms / 1000, UTC),
                tenant,
                device_id,  # env.device_id: validation made sure
                _TYPE_TEXT[env.type],
                env.metrics,
                env.tags or None,
                env.body,
                env.seq,
                None,
                source,
                received_at,
            )
        )
        results.append({"index": index, "status": "accepted"})
    return out


class IngestService:
    def __init__(
        self,
        *,
        config: IngestConfig,
        tokens: DeviceTokenCache,
        writer: RowWriter,
        metrics: Metrics,
        limits: Limits = DEFAULT_LIMITS,
        db: Database | None = None,
        twin_limits: TwinLimits = DEFAULT_TWIN_LIMITS,
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.writer = writer
        self.metrics = metrics
        self.limits = limits
        self.limiter = RateLimiter(rate=config.rate_per_s, burst=config.burst)
        self.shared: SharedRateLimiter | None = None
        """The device buckets shared by every replica (set by the app); without it, ``limiter``."""
        self.shared_tenant: SharedRateLimiter | None = None
        """The tenants' shared buckets, when a tenant rate is configured."""
        self.db = db
        self.twin_limits = twin_limits
        self.firmware_files: FirmwareStore | None = None
        """Where firmware artifacts are, for direct devices' downloads (``GET /ingest/v1/firmware/{id}``)."""
        self.on_twin_change: Callable[[uuid.UUID, str, str, dict[str, object]], None] | None = None
        """Told (tenant, device, "twin", {"version"}) after a direct device's report changed its twin
        and was committed: the console's live view, as for gateway-synced reports."""
        self.entitlements: Entitlements | None = None
        """A tenant whose subscriptions are SUSPENDED or EXPIRED gets 403 with that code; nothing stored."""

    async def _apply_device_state(self, identity: DeviceIdentity, messages: list[Message], prepared: Prepared, source: str) -> None:
        """A direct device's ``twin_reported`` messages update its twin and its ``command_ack``
        messages answer its commands, in order, before the rows are written (so the answer says
        so). One the twin or command rules refuse is rejected and quarantined with its code
        instead of stored."""
        assert self.db is not None
        accepted = [int(r["index"]) for r in prepared.results if r["status"] == "accepted"]  # type: ignore[call-overload]
        said = [
            (index, row)
            for index, row in zip(accepted, prepared.telemetry, strict=True)
            if row.msg_type in (MessageType.TWIN_REPORTED.value, MessageType.COMMAND_ACK.value)
        ]
        if not said:
            return
        async with self.db.tenant(identity.tenant_id) as conn:
            applied = await twins.apply_device_messages(
                conn,
                identity.tenant_id,
                [
                    twins.DeviceMessage(row.device_id, row.msg_type, json.loads(row.body or "{}"), twins.to_ms(row.time))
                    for _, row in said
                ],
                actor=f"device:{identity.device_id}",
                limits=self.twin_limits,
            )
        told = applied.changes
        dropped: set[int] = set()
        for position, exc in applied.refused.items():
            index, row = said[position]
            dropped.add(id(row))
            prepared.quarantine.append(
                QuarantineRow(
                    identity.tenant_id,
                    identity.device_id,
                    None,
                    source,
                    str(exc.code),
                    exc.message,
                    messages[index].encoded(),
                    row.received_at,
                )
            )
            prepared.results[index] = {"index": index, "status": "rejected", "code": str(exc.code), "message": exc.message}
        keep = [row for row in prepared.telemetry if id(row) not in dropped]
        prepared.telemetry = keep
        if self.on_twin_change is not None:
            twin = [t for t in told if t[1] == "twin"][-1:]  # the console rereads the twin: the last version is enough
            for _, kind, detail in twin + [t for t in told if t[1] == "command"]:
                try:
                    self.on_twin_change(identity.tenant_id, identity.device_id, kind, detail)
                except Exception:  # a listener never fails an accepted report
                    log.exception("twin change listener failed; the report is stored")

    async def commands_for(self, identity: DeviceIdentity) -> list[bytes]:
        """A direct device's commands waiting for it, each as the message a gateway would publish
        on ``pulse/{device}/cmd/{id}``; handing them over makes them ``sent``. Commands past their
        deadline are expired instead, never handed over."""
        assert self.db is not None
        now = int(time.time() * 1000)
        out: list[bytes] = []
        async with self.db.tenant(identity.tenant_id) as conn:
            if await gateways_serving(conn, identity.device):
                raise ConflictError(
                    Code.API_CONFLICT,
                    f"{identity.device_id}'s commands go through its gateway (pulse/{identity.device_id}/cmd/+ over MQTT)",
                )
            for command_id in await twins.queued_commands(conn, identity.tenant_id, identity.device_id):
                cmd = await twins.command_event(conn, identity.tenant_id, identity.device_id, command_id, CommandEvent.DELIVER, now)
                if cmd is not None and cmd.state is CommandState.DELIVERED:
                    cmd = await twins.command_event(conn, identity.tenant_id, identity.device_id, command_id, CommandEvent.SEND, now)
                if cmd is not None and cmd.state is CommandState.SENT:
                    out.append(commands.command_message(cmd))
                if cmd is not None and self.on_twin_change is not None:
                    with contextlib.suppress(Exception):
                        self.on_twin_change(identity.tenant_id, identity.device_id, "command", {"id": cmd.id, "state": cmd.state.value})
        return out

    async def read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes

        def refuse(size: int | None) -> TooLargeError:
            extra = {} if size is None else {"size": size}
            return TooLargeError(Code.INGEST_TOO_LARGE, f"request bodies are at most {limit} bytes", **extra)

        return await read_limited(request, limit, refuse)

    async def store(
        self,
        identity: DeviceIdentity,
        messages: list[Message],
        *,
        quarantine: bool = True,
        source: str = SOURCE,
        received_at: datetime | None = None,
    ) -> Prepared:
        """Check, apply (twin, commands) and write messages as ``identity`` sent them now; the
        refused ones are quarantined unless ``quarantine`` is false (a re-submission of a message
        already in quarantine: it stays there, the caller reports the refusal). ``source``: the
        rows' source column (``http``, ``mqtt``); ``received_at``: when they arrived (default now;
        the MQTT spool passes the time a spooled message was acknowledged)."""
        received = received_at or datetime.now(UTC)
        prepared = prepare(identity, messages, now_ms=int(time.time() * 1000), received_at=received, limits=self.limits, source=source)
        if self.db is not None and any(row.msg_type in _DEVICE_STATE_TYPES for row in prepared.telemetry):
            await self._apply_device_state(identity, messages, prepared, source)
        await self.writer.write(prepared.telemetry, prepared.quarantine if quarantine else [])
        return prepared

    async def admit(self, identity: DeviceIdentity, count: int) -> None:
        """Spend ``count`` messages of the device's rate and, when one is set, of its tenant's:
        429 with Retry-After when either is spent. With ``shared`` the buckets are the cluster's
        (every replica counts against them); otherwise this process's own."""
        if self.shared is None:
            decision = self.limiter.take(identity.device, count, time.monotonic())
            allowed, retry = decision.allowed, decision.retry_after_s
        else:
            verdict = await self.shared.take(f"device:{identity.device}", count)
            allowed, retry = verdict.allowed, verdict.retry_after_s
        if not allowed:
            raise RateLimitedError(
                f"device {identity.device_id} is over its rate of {self.config.rate_per_s:g} messages/s; nothing was stored",
                retry_after_s=retry,
            )
        if self.shared_tenant is not None:
            verdict = await self.shared_tenant.take(f"tenant:{identity.tenant_id}", count)
            if not verdict.allowed:
                if self.shared is not None:
                    self.shared.refund(f"device:{identity.device}", count)
                raise RateLimitedError(
                    f"the tenant is over its rate of {self.shared_tenant.rate:g} messages/s; nothing was stored",
                    retry_after_s=verdict.retry_after_s,
                    limit="tenant",
                )

    async def handle(self, request: Request) -> Response:
        identity = await self.tokens.resolve(request.headers.get("authorization"))
        if self.entitlements is not None:
            await self.entitlements.check_data(identity.tenant_id)
        body = await self.read_body(request)
        messages = split_body(body)
        per_request = min(self.config.max_messages, int(self.config.burst))
        if not messages:
            raise InvalidError(Code.INGEST_EMPTY, "the body is an empty array; send at least one envelope")
        if len(messages) > per_request:
            raise TooLargeError(
                Code.INGEST_TOO_MANY_MESSAGES, f"at most {per_request} envelopes per request", count=len(messages)
            )
        await self.admit(identity, len(messages))
        prepared = await self.store(identity, messages)
        accepted, rejected = len(prepared.telemetry), len(prepared.quarantine)
        self.metrics.ingest_messages.labels("accepted").inc(accepted)
        self.metrics.ingest_messages.labels("rejected").inc(rejected)
        payload: dict[str, object] = {"accepted": accepted, "rejected": rejected, "results": prepared.results}
        status = 200
        if accepted == 0:
            status = 422
            first = prepared.results[0]
            payload = {"code": first["code"], "message": "no message was accepted; each was quarantined", **payload}
        return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["v"],
    "properties": {
        "v": {"type": "integer", "enum": [1]},
        "device": {"type": "string"},
        "ts": {"type": "integer", "description": "Unix time in milliseconds"},
        "seq": {"type": "integer"},
        "type": {"type": "string", "enum": [t.value for t in MessageType]},
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"type": "object"},
    },
}

router = APIRouter(tags=["ingest"])


@router.post(
    "/ingest/v1/telemetry",
    summary="Send device messages (one envelope or an array)",
    description="Authorization: Bearer <device token>. Answers after every message is stored or quarantined.",
    responses={200: {"model": IngestResult}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"oneOf": [ENVELOPE_SCHEMA, {"type": "array", "items": ENVELOPE_SCHEMA}]}}
            },
        }
    },
)
async def ingest_telemetry(request: Request) -> Response:
    service: IngestService = request.app.state.pulse.ingest
    try:
        response = await service.handle(request)
    except Exception as exc:
        service.metrics.ingest_requests.labels(str(getattr(exc, "status", 500))).inc()
        raise
    service.metrics.ingest_requests.labels(str(response.status_code)).inc()
    return response


@router.get(
    "/ingest/v1/twin",
    summary="A direct device reads its own twin (the document a gateway would publish on twin/document)",
    description="Authorization: Bearer <device token>. The device applies state.delta, then reports with a twin_reported message.",
    responses={200: {"model": DeviceTwin}},
)
async def device_twin(request: Request) -> Response:
    service: IngestService = request.app.state.pulse.ingest
    identity = await service.tokens.resolve(request.headers.get("authorization"))
    if service.db is None:
        raise InvalidError(Code.API_INVALID, "this server does not serve twins")
    async with service.db.tenant(identity.tenant_id) as conn:
        doc = await twins.load(conn, identity.tenant_id, identity.device_id)
    return Response(document_message(doc, now_ms=int(time.time() * 1000)), media_type="application/json")


@router.get(
    "/ingest/v1/commands",
    summary="A direct device takes the commands waiting for it (each becomes sent)",
    description="Authorization: Bearer <device token>. Answers a JSON array of command messages "
    '({"id", "name", "params", "expires"}), oldest first; the device answers each with a command_ack message. '
    "409 api.conflict for a device behind a gateway: its commands come over MQTT.",
    responses={200: {"model": list[DeviceCommand]}},
)
async def device_commands(request: Request) -> Response:
    service: IngestService = request.app.state.pulse.ingest
    identity = await service.tokens.resolve(request.headers.get("authorization"))
    if service.db is None:
        raise InvalidError(Code.API_INVALID, "this server does not serve commands")
    messages = [_with_download_url(m) for m in await service.commands_for(identity)]
    return Response(b"[" + b",".join(messages) + b"]", media_type="application/json")


def _with_download_url(message: bytes) -> bytes:
    """A direct device's ``firmware.update`` gets ``url``: the cloud's download for it (relative to
    the cloud's base URL; the device sends its token)."""
    doc = orjson.loads(message)
    params = doc.get("params") if isinstance(doc, dict) else None
    if doc.get("name") != FIRMWARE_COMMAND or not isinstance(params, dict) or not isinstance(params.get("artifact"), str):
        return message
    params["url"] = DIRECT_FIRMWARE_PATH.format(artifact=params["artifact"])
    return orjson.dumps(doc)


@router.get(
    "/ingest/v1/firmware/{artifact}",
    summary="A direct device downloads a firmware artifact of its tenant (Range supported)",
    description="Authorization: Bearer <device token>. 206 with Content-Range for a Range request; 416 firmware.bad_range.",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "the artifact's bytes"}},
)
async def device_firmware(artifact: str, request: Request) -> Response:
    service: IngestService = request.app.state.pulse.ingest
    identity = await service.tokens.resolve(request.headers.get("authorization"))
    if service.db is None:
        raise InvalidError(Code.API_INVALID, "this server does not serve firmware")
    return await firmware.download(service.firmware_files, service.db, identity.tenant_id, artifact, request.headers.get("range"),
                                   requester=f"device:{identity.device_id}")
