"""Envelope v1: the JSON message a device sends, decoded once at the boundary into a frozen object.

Wire form (UTF-8 JSON object; field order free; unknown fields are ignored so that v1 can grow)::

    {"v": 1, "device": "boiler-7", "ts": 1764061200000, "seq": 42, "type": "telemetry",
     "metrics": {"temp_c": 21.5, "on": true}, "tags": {"zone": "north"}}

- ``v``       major version, required; only 1 is understood.
- ``device``  optional; when present it must equal the device the message arrived for (topic or
              credential).
- ``ts``      optional Unix time in ms; the receiver's clock is used when absent.
- ``seq``     optional device sequence number, 0 <= seq < 2**63.
- ``type``    telemetry | event | heartbeat | twin_reported | command_ack; optional when the topic
              names it, and then it must agree with the topic.
- ``metrics`` name -> number or bool; required and non-empty for telemetry.
- ``tags``    name -> short string.
- ``body``    JSON object: the reported state (twin_reported, required), the ack (command_ack,
              required: ``{"id": ..., "status": ...}``), free detail for events.

Anything else is refused with an ``EnvelopeError`` whose code says why; callers quarantine the
raw bytes with that code.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias, cast

from pulse.protocol.errors import Code, EnvelopeError
from pulse.protocol.topics import TopicKind, valid_device_id

VERSION = 1

MetricValue: TypeAlias = float | int | bool
JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
MIN_TIMESTAMP_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: nothing real is older
MAX_SEQ = 2**63 - 1
MAX_INT = 2**53  # exact in float64 and in JSON readers everywhere
MAX_BODY_INT = 2**63 - 1  # integers inside a body: what a sync batch (msgpack) and PostgreSQL carry


class MessageType(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    HEARTBEAT = "heartbeat"
    TWIN_REPORTED = "twin_reported"
    COMMAND_ACK = "command_ack"


TOPIC_TYPE: dict[TopicKind, MessageType] = {
    TopicKind.TELEMETRY: MessageType.TELEMETRY,
    TopicKind.HEARTBEAT: MessageType.HEARTBEAT,
    TopicKind.EVENT: MessageType.EVENT,
    TopicKind.COMMAND_ACK: MessageType.COMMAND_ACK,
    TopicKind.TWIN_REPORTED: MessageType.TWIN_REPORTED,
}
"""The message type an envelope published on each uplink topic kind must have (every broker: the
gateway's and the cloud's). ``twin/get`` is a request, not an envelope: it has no entry."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a single device message may contain. Gateways and the cloud may configure their own."""

    max_bytes: int = 16 * 1024
    max_metrics: int = 64
    max_name_len: int = 64
    max_tags: int = 16
    max_tag_value_len: int = 128
    max_abs_value: float = 1e15
    max_body_depth: int = 8
    max_past_ms: int = 366 * 24 * 3600 * 1000
    max_future_ms: int = 24 * 3600 * 1000


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Envelope:
    device_id: str
    ts_ms: int
    type: MessageType
    metrics: Mapping[str, MetricValue] = field(default_factory=dict)
    seq: int | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    body: JsonObject | None = None
    version: int = VERSION

    def to_json(self) -> bytes:
        doc: dict[str, object] = {"v": self.version, "device": self.device_id, "ts": self.ts_ms, "type": self.type.value}
        if self.seq is not None:
            doc["seq"] = self.seq
        if self.metrics:
            doc["metrics"] = dict(self.metrics)
        if self.tags:
            doc["tags"] = dict(self.tags)
        if self.body is not None:
            doc["body"] = self.body
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def parse(
    raw: bytes,
    *,
    now_ms: int,
    device_id: str | None = None,
    expected_type: MessageType | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Envelope:
    """Decode and validate one device message.

    ``device_id`` is who sent it (from the topic or the credential); ``expected_type`` is what the
    topic says it is. Raises ``EnvelopeError`` and nothing else."""
    if len(raw) > limits.max_bytes:
        raise EnvelopeError(Code.ENVELOPE_TOO_LARGE, f"messages are at most {limits.max_bytes} bytes", size=len(raw))
    try:
        # Strict UTF-8 (json.loads would also guess UTF-16/32). NaN and Infinity literals parse to
        # floats here and are refused below with the field they were in (bad_metric, bad_body).
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(Code.ENVELOPE_NOT_JSON, f"not valid UTF-8 JSON: {str(exc)[:120]}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError(Code.ENVELOPE_NOT_OBJECT, "a message is a JSON object")
    return _from_doc(doc, now_ms=now_ms, device_id=device_id, expected_type=expected_type, limits=limits)


def _from_doc(
    doc: dict[str, object],
    *,
    now_ms: int,
    device_id: str | None,
    expected_type: MessageType | None,
    limits: Limits,
) -> Envelope:
    version = doc.get("v")
    if version is None:
        raise EnvelopeError(Code.ENVELOPE_VERSION_MISSING, 'messages carry their version: "v": 1')
    if type(version) is not int or version != VERSION:
        raise EnvelopeError(
            Code.ENVELOPE_VERSION_UNSUPPORTED, f"this receiver understands envelope version {VERSION}", version=repr(version)[:32]
        )

    device = doc.get("device", device_id)
    if not isinstance(device, str) or not valid_device_id(device):
        raise EnvelopeError(Code.ENVELOPE_BAD_DEVICE, "device is 1-128 characters of letters, digits, '_', '-', '.', ':'")
    if device_id is not None and device != device_id:
        raise EnvelopeError(
            Code.ENVELOPE_DEVICE_MISMATCH, "a device may only send as itself", device_id=device_id, claimed=device[:128]
        )

    raw_type = doc.get("type")
    if raw_type is None:
        if expected_type is None:
            raise EnvelopeError(Code.ENVELOPE_BAD_TYPE, "type is required: " + ", ".join(MessageType))
        msg_type = expected_type
    else:
        try:
            msg_type = MessageType(raw_type) if isinstance(raw_type, str) else _bad_type(raw_type)
        except ValueError:
            msg_type = _bad_type(raw_type)
        if expected_type is not None and msg_type is not expected_type:
            raise EnvelopeError(
                Code.ENVELOPE_BAD_TYPE, f"type {msg_type} was sent on the {expected_type} topic", device_id=device
            )

    ts = doc.get("ts")
    if ts is None:
        ts_ms = now_ms
    else:
        if type(ts) is not int:
            raise EnvelopeError(Code.ENVELOPE_BAD_TIMESTAMP, "ts is an integer: Unix time in milliseconds", device_id=device)
        if ts < MIN_TIMESTAMP_MS or ts < now_ms - limits.max_past_ms or ts > now_ms + limits.max_future_ms:
            raise EnvelopeError(
                Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW,
                "ts is too far from the receiver's clock; check the device's clock (milliseconds, not seconds)",
                device_id=device,
                ts=ts,
                now=now_ms,
            )
        ts_ms = ts

    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= MAX_SEQ):
        raise EnvelopeError(Code.ENVELOPE_BAD_SEQUENCE, "seq is an integer from 0 to 2**63-1", device_id=device)

    metrics = _metrics(doc.get("metrics"), device, limits)
    if msg_type is MessageType.TELEMETRY and not metrics:
        raise EnvelopeError(Code.ENVELOPE_MISSING_METRICS, "telemetry carries at least one metric", device_id=device)

    tags = _tags(doc.get("tags"), device, limits)
    body = _body(doc.get("body"), msg_type, device, limits)
    return Envelope(device_id=device, ts_ms=ts_ms, type=msg_type, metrics=metrics, seq=seq, tags=tags, body=body)


def _bad_type(raw_type: object) -> MessageType:
    raise EnvelopeError(Code.ENVELOPE_BAD_TYPE, "type is one of: " + ", ".join(MessageType), type=repr(raw_type)[:32])


_GOOD_NAMES: dict[int, set[str]] = {}
"""Per ``max_name_len``, metric and tag names already found valid: a fleet sends the same few names
in every message, so each is checked once (up to ``_GOOD_NAMES_MAX`` names; later ones every time)."""
_GOOD_NAMES_MAX = 4096


def _good_names(limits: Limits) -> set[str]:
    known = _GOOD_NAMES.get(limits.max_name_len)
    return known if known is not None else _GOOD_NAMES.setdefault(limits.max_name_len, set())


def _check_name(name: object, what: str, device: str, limits: Limits, code: Code) -> str:
    if not isinstance(name, str) or len(name) > limits.max_name_len or not _NAME_RE.fullmatch(name):
        raise EnvelopeError(
            code,
            f"{what} names are 1-{limits.max_name_len} characters of letters, digits, '_', '.', '-' starting with a letter or '_'",
            device_id=device,
            name=repr(name)[:80],
        )
    return name


def _metrics(raw: object, device: str, limits: Limits) -> dict[str, MetricValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise EnvelopeError(Code.ENVELOPE_BAD_METRIC, "metrics is an object of name -> number or boolean", device_id=device)
    if len(raw) > limits.max_metrics:
        raise EnvelopeError(
            Code.ENVELOPE_TOO_MANY_METRICS, f"at most {limits.max_metrics} metrics per message", device_id=device, count=len(raw)
        )
    bound = limits.max_abs_value
    good = _good_names(limits)
    for name, value in raw.items():
        if name not in good:
            _check_name(name, "metric", device, limits, Code.ENVELOPE_BAD_METRIC)
            if len(good) < _GOOD_NAMES_MAX:
                good.add(name)
        kind = type(value)
        if kind is bool:
            continue
        if kind is int:
            if -bound <= value <= bound and -MAX_INT <= value <= MAX_INT:
                continue
        elif kind is float:
            if math.isfinite(value) and -bound <= value <= bound:
                continue
        raise EnvelopeError(
            Code.ENVELOPE_BAD_METRIC,
            f"metric values are finite numbers within ±{bound:g}, or booleans",
            device_id=device,
            metric=name,
            value=repr(value)[:40],
        )
    return cast(dict[str, MetricValue], raw)


def _tags(raw: object, device: str, limits: Limits) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > limits.max_tags:
        raise EnvelopeError(
            Code.ENVELOPE_BAD_TAG, f"tags is an object of at most {limits.max_tags} name -> string", device_id=device
        )
    for name, value in raw.items():
        _check_name(name, "tag", device, limits, Code.ENVELOPE_BAD_TAG)
        if not isinstance(value, str) or len(value) > limits.max_tag_value_len or "\x00" in value or not _utf8(value):
            raise EnvelopeError(
                Code.ENVELOPE_BAD_TAG,
                f"tag values are strings of at most {limits.max_tag_value_len} characters",
                device_id=device,
                tag=name,
            )
    return cast(dict[str, str], raw)


def _utf8(text: str) -> bool:
    """False for strings holding lone surrogates ("\\ud800" is valid JSON but not Unicode text)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def json_fits(value: object, limit: int) -> bool:
    """True when ``value`` nests no deeper than ``limit`` containers and every leaf can travel on:
    finite numbers, integers within ±(2**63-1), and strings (keys too) that are Unicode text."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth >= limit or not all(_utf8(k) for k in item):
                return False
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            if depth >= limit:
                return False
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, int):
            if not -MAX_BODY_INT <= item <= MAX_BODY_INT:
                return False
        elif isinstance(item, str) and not _utf8(item):
            return False
    return True


def _body(raw: object, msg_type: MessageType, device: str, limits: Limits) -> JsonObject | None:
    if raw is None:
        if msg_type is MessageType.TWIN_REPORTED:
            raise EnvelopeError(Code.ENVELOPE_BAD_BODY, "twin_reported carries the reported state in body", device_id=device)
        if msg_type is MessageType.COMMAND_ACK:
            raise EnvelopeError(Code.ENVELOPE_BAD_BODY, 'command_ack carries {"id": ..., "status": ...} in body', device_id=device)
        return None
    if not isinstance(raw, dict) or not json_fits(raw, limits.max_body_depth):
        raise EnvelopeError(
            Code.ENVELOPE_BAD_BODY,
            f"body is a JSON object nested at most {limits.max_body_depth} deep, with finite numbers"
            " (integers within ±(2**63-1)) and valid Unicode strings",
            device_id=device,
        )
    if msg_type is MessageType.COMMAND_ACK:
        cmd_id, status = raw.get("id"), raw.get("status")
        if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 64 or not isinstance(status, str):
            raise EnvelopeError(
                Code.ENVELOPE_BAD_BODY, 'command_ack body needs "id" (string) and "status" (string)', device_id=device
            )
    return cast(JsonObject, raw)


def parse_document(
    doc: object,
    *,
    size: int,
    now_ms: int,
    device_id: str | None = None,
    expected_type: MessageType | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Envelope:
    """``parse`` for a message that is already decoded (one element of a JSON array of envelopes).

    ``size`` is the message's encoded length in bytes, checked against ``limits.max_bytes``. The
    result, and every refusal, is the same as ``parse`` of the message's JSON text; it only saves
    decoding the same bytes twice. Raises ``EnvelopeError`` and nothing else."""
    if size > limits.max_bytes:
        raise EnvelopeError(Code.ENVELOPE_TOO_LARGE, f"messages are at most {limits.max_bytes} bytes", size=size)
    if not isinstance(doc, dict):
        raise EnvelopeError(Code.ENVELOPE_NOT_OBJECT, "a message is a JSON object")
    return _from_doc(doc, now_ms=now_ms, device_id=device_id, expected_type=expected_type, limits=limits)
