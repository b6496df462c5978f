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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias, cast

from pulse.protocol.errors import Code, EnvelopeError
from pulse.protocol.topics import MAX_DEVICE_ID_LEN, TopicKind, valid_device_id

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

# Enum lookups cost ~0.1-0.3 us each on Python 3.11 and the checks below run for every message: the
# members and the value -> member table are read once.
_TELEMETRY = MessageType.TELEMETRY
_TWIN_REPORTED = MessageType.TWIN_REPORTED
_COMMAND_ACK = MessageType.COMMAND_ACK
_TYPES: dict[str, MessageType] = {t.value: t for t in MessageType}


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


_NO_ENTRIES: Mapping[str, Any] = MappingProxyType({})


class Envelope(NamedTuple):
    """One decoded message. A NamedTuple rather than a frozen dataclass: as typed and as immutable,
    and built about four times faster (a frozen dataclass sets each field through
    ``object.__setattr__``), which counts in ingest, where every message becomes one."""

    device_id: str
    ts_ms: int
    type: MessageType
    metrics: Mapping[str, MetricValue] = _NO_ENTRIES
    seq: int | None = None
    tags: Mapping[str, str] = _NO_ENTRIES
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
    _check_size(len(raw), limits)
    try:
        # Strict UTF-8 (json.loads would also guess UTF-16/32). NaN and Infinity literals parse to
        # floats here and are refused below with the field they were in (bad_metric, bad_body).
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(Code.ENVELOPE_NOT_JSON, f"not valid UTF-8 JSON: {str(exc)[:120]}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError(Code.ENVELOPE_NOT_OBJECT, "a message is a JSON object")
    return _from_doc(doc, now_ms, device_id, expected_type, limits)


def _from_doc(  # positional: it runs for every message, and keywords cost
    doc: dict[str, object],
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
    if type(device) is not str or device not in _GOOD_DEVICES:
        if not isinstance(device, str) or not valid_device_id(device):
            raise EnvelopeError(Code.ENVELOPE_BAD_DEVICE, "device is 1-128 characters of letters, digits, '_', '-', '.', ':'")
        if len(_GOOD_DEVICES) < _GOOD_NAMES_MAX:
            _GOOD_DEVICES.add(device)
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
        known = _TYPES.get(raw_type) if isinstance(raw_type, str) else None
        msg_type = known if known is not None else _bad_type(raw_type)
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
    if msg_type is _TELEMETRY and not metrics:
        raise EnvelopeError(Code.ENVELOPE_MISSING_METRICS, "telemetry carries at least one metric", device_id=device)

    raw_tags = doc.get("tags")
    tags = {} if raw_tags is None else _tags(raw_tags, device, limits)
    raw_body = doc.get("body")
    if raw_body is None and msg_type is not _TWIN_REPORTED and msg_type is not _COMMAND_ACK:
        body = None  # what _body answers, without the call
    else:
        body = _body(raw_body, msg_type, device, limits)
    return Envelope(device, ts_ms, msg_type, metrics, seq, tags, body)


def _bad_type(raw_type: object) -> MessageType:
    raise EnvelopeError(Code.ENVELOPE_BAD_TYPE, "type is one of: " + ", ".join(MessageType), type=repr(raw_type)[:32])


_GOOD_NAMES: dict[int, set[str]] = {}
"""Per ``max_name_len``, metric and tag names already found valid: a fleet sends the same few names
in every message, so each is checked once (up to ``_GOOD_NAMES_MAX`` names; later ones every time)."""
_GOOD_NAMES_MAX = 4096


_GOOD_DEVICES: set[str] = set()
"""Device ids already found valid (the same few arrive in every message; as bounded as the names)."""


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
        if kind is float:
            if -bound <= value <= bound and math.isfinite(value):
                continue
        elif kind is bool:
            continue
        elif kind is int:
            if -bound <= value <= bound and -MAX_INT <= value <= MAX_INT:
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
        if msg_type is _TWIN_REPORTED:
            raise EnvelopeError(Code.ENVELOPE_BAD_BODY, "twin_reported carries the reported state in body", device_id=device)
        if msg_type is _COMMAND_ACK:
            raise EnvelopeError(Code.ENVELOPE_BAD_BODY, 'command_ack carries {"id": ..., "status": ...} in body', device_id=device)
        return None
    if not isinstance(raw, dict) or not json_fits(raw, limits.max_body_depth):
        raise EnvelopeError(
            Code.ENVELOPE_BAD_BODY,
            f"body is a JSON object nested at most {limits.max_body_depth} deep, with finite numbers"
            " (integers within ±(2**63-1)) and valid Unicode strings",
            device_id=device,
        )
    if msg_type is _COMMAND_ACK:
        cmd_id, status = raw.get("id"), raw.get("status")
        if not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 64 or not isinstance(status, str):
            raise EnvelopeError(
                Code.ENVELOPE_BAD_BODY, 'command_ack body needs "id" (string) and "status" (string)', device_id=device
            )
    return cast(JsonObject, raw)


def parse_document(
    doc: object,
    *,
    size: int | Callable[[], int],
    now_ms: int,
    device_id: str | None = None,
    expected_type: MessageType | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Envelope:
    """``parse`` for a message that is already decoded (one element of a JSON array of envelopes).

    ``size`` is the message's encoded length in bytes, checked against ``limits.max_bytes``, or a
    function that measures it (by encoding the message). A function is called only when the message
    might be over the limit: when it is refused, when it has fields whose size nothing bounds
    (``body``, unknown ones), or when the bound on what validation accepted (``_surely_fits``) is
    over the limit. The result, and every refusal, is the same as ``parse`` of the message's JSON
    text: a message over the limit is refused as too large whatever else is wrong with it. It only
    saves decoding the same bytes twice, and (with a function) encoding them again. Raises
    ``EnvelopeError`` and nothing else."""
    if callable(size):
        if type(doc) is dict and doc.keys() <= _BOUNDED_KEYS:
            # validation first: what it accepts has a bounded size, which usually proves the message
            # fits without encoding it; a refusal still yields to "too large" when the message is
            try:
                env = _from_doc(doc, now_ms, device_id, expected_type, limits)
            except EnvelopeError:
                _check_size(size(), limits)
                raise
            if not _surely_fits(env, limits):
                _check_size(size(), limits)
            return env
        size = size()
    _check_size(size, limits)
    if not isinstance(doc, dict):
        raise EnvelopeError(Code.ENVELOPE_NOT_OBJECT, "a message is a JSON object")
    return _from_doc(doc, now_ms, device_id, expected_type, limits)


def _check_size(size: int, limits: Limits) -> None:
    if size > limits.max_bytes:
        raise EnvelopeError(Code.ENVELOPE_TOO_LARGE, f"messages are at most {limits.max_bytes} bytes", size=size)


_BOUNDED_KEYS = frozenset({"v", "device", "ts", "seq", "type", "metrics", "tags"})
"""The fields whose encoded size validation bounds (``body`` and unknown fields are not bounded)."""
_NUMBER_CHARS = 24
"""The longest JSON text of a number ``metrics`` accepts, in orjson's and in the standard library's
encoding: a float's shortest round-trip form, e.g. "-2.2250738585072014e-308" (integers there are
within ±2**53: 17 characters)."""
_INT_CHARS = 19
"""``ts`` and ``seq``: integers from 0 to 10**19 - 1 (``seq`` by validation, ``ts`` checked below)."""
_INT_LIMIT = 10**_INT_CHARS
_CHAR_BYTES = 12
"""The most bytes one character of a string takes in JSON: the standard library writes a character
beyond the Basic Multilingual Plane as two ``\\uXXXX`` escapes (orjson: 4 bytes of UTF-8, 6 for an
escaped control character)."""
_FIXED_BYTES = (
    2  # {}
    + sum(len(key) + 4 for key in _BOUNDED_KEYS)  # "key": and a comma, each
    + 1  # "v": 1
    + (MAX_DEVICE_ID_LEN + 2)  # letters, digits and _.:- only (no escapes), quoted
    + 2 * _INT_CHARS  # ts, seq
    + (max(len(t) for t in MessageType) + 2)  # type, quoted
    + 4  # metrics: {} (or null)
    + 4  # tags: {} (or null)
)
"""The bound on a message with every field of ``_BOUNDED_KEYS`` at its largest, except the entries
of ``metrics`` and ``tags`` (a field that is null, 4 bytes, is within each field's bound)."""


def _surely_fits(env: Envelope, limits: Limits) -> bool:
    """True when the compact JSON encoding of a message that ``_from_doc`` accepted as ``env``, and
    whose fields are all in ``_BOUNDED_KEYS``, is certainly at most ``limits.max_bytes`` bytes (with
    orjson, or with the standard library's ASCII escapes). Names were checked (ASCII letters, digits,
    ``_.-``: no escapes; at most ``max_name_len``), so a metric is at most ``"name":number,`` and a
    tag ``"name":"value",`` with each character of the value at most ``_CHAR_BYTES``. False when it
    cannot tell."""
    if env.ts_ms >= _INT_LIMIT:  # ts is positive (validated); without one, ts_ms is the clock's
        return False
    bound: int = _FIXED_BYTES + limits.max_metrics * (limits.max_name_len + 4 + _NUMBER_CHARS)
    if env.tags:
        for name, value in env.tags.items():
            bound += len(name) + 6 + _CHAR_BYTES * len(value)
    return bound <= limits.max_bytes
