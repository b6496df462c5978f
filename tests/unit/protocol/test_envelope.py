"""Envelope v1: what a device may send, and the code every refusal carries."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.protocol.envelope import DEFAULT_LIMITS, MAX_SEQ, Envelope, Limits, MessageType, parse, parse_document
from pulse.protocol.errors import Code, EnvelopeError, ProtocolError

pytestmark = pytest.mark.unit

NOW = 1_764_061_200_000  # 2025-11-25T09:00:00Z
DEVICE = "boiler-7"
_DROP = object()


def msg(**fields: object) -> bytes:
    """A valid telemetry message, with fields replaced (or dropped with ``_DROP``)."""
    doc: dict[str, object] = {
        "v": 1,
        "device": DEVICE,
        "ts": NOW - 1000,
        "seq": 42,
        "type": "telemetry",
        "metrics": {"temp_c": 21.5, "on": True},
    }
    for key, value in fields.items():
        if value is _DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def raw_with(fragment: str) -> bytes:
    """A message whose metrics object is written literally (for NaN, Infinity and 1e400)."""
    return f'{{"v":1,"device":"{DEVICE}","ts":{NOW},"type":"telemetry","metrics":{fragment}}}'.encode()


def nested(depth: int) -> dict[str, object]:
    """A body of ``depth`` nested objects."""
    body: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        body = {"k": body}
    return body


# ------------------------------------------------------------------------------------------------
# accepted


ACCEPTED: list[tuple[str, bytes, dict[str, object], Envelope]] = [
    (
        "full telemetry",
        msg(tags={"zone": "north"}),
        {},
        Envelope(DEVICE, NOW - 1000, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}, 42, {"zone": "north"}),
    ),
    (
        "minimal telemetry on its topic: device, type and time come from the receiver",
        b'{"v":1,"metrics":{"t":1}}',
        {"device_id": DEVICE, "expected_type": MessageType.TELEMETRY},
        Envelope(DEVICE, NOW, MessageType.TELEMETRY, {"t": 1}),
    ),
    (
        "type in the message agrees with the topic",
        msg(),
        {"device_id": DEVICE, "expected_type": MessageType.TELEMETRY},
        Envelope(DEVICE, NOW - 1000, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}, 42),
    ),
    (
        "event with free detail and no metrics",
        msg(type="event", metrics=_DROP, body={"door": "open", "by": ["a", 1, None, 2.5]}),
        {},
        Envelope(DEVICE, NOW - 1000, MessageType.EVENT, {}, 42, body={"door": "open", "by": ["a", 1, None, 2.5]}),
    ),
    (
        "heartbeat",
        b'{"v":1,"device":"boiler-7","type":"heartbeat"}',
        {},
        Envelope(DEVICE, NOW, MessageType.HEARTBEAT),
    ),
    (
        "twin_reported carries the reported state",
        msg(type="twin_reported", metrics=_DROP, body={"fw": "1.2.0", "setpoint": 21}),
        {},
        Envelope(DEVICE, NOW - 1000, MessageType.TWIN_REPORTED, {}, 42, body={"fw": "1.2.0", "setpoint": 21}),
    ),
    (
        "command_ack",
        msg(type="command_ack", metrics=_DROP, body={"id": "c-17", "status": "done", "detail": {"ms": 40}}),
        {},
        Envelope(
            DEVICE, NOW - 1000, MessageType.COMMAND_ACK, {}, 42, body={"id": "c-17", "status": "done", "detail": {"ms": 40}}
        ),
    ),
    (
        "unknown fields are ignored so v1 can grow",
        msg(firmware="2.0", extra={"x": [1, 2]}),
        {},
        Envelope(DEVICE, NOW - 1000, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}, 42),
    ),
    (
        "null ts and seq mean absent",
        msg(ts=None, seq=None),
        {},
        Envelope(DEVICE, NOW, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}),
    ),
    (
        "value limits are inclusive; seq spans 0 to 2**63-1",
        msg(seq=MAX_SEQ, metrics={"a": 10**15, "b": -(10**15), "c": -1e15, "d": -0.0, "e": 5e-324, "f": False}),
        {},
        Envelope(
            DEVICE,
            NOW - 1000,
            MessageType.TELEMETRY,
            {"a": 10**15, "b": -(10**15), "c": -1e15, "d": -0.0, "e": 5e-324, "f": False},
            MAX_SEQ,
        ),
    ),
    (
        "timestamp at the far edge of the past window",
        msg(ts=NOW - DEFAULT_LIMITS.max_past_ms, seq=0),
        {},
        Envelope(DEVICE, NOW - DEFAULT_LIMITS.max_past_ms, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}, 0),
    ),
    (
        "timestamp at the far edge of the future window",
        msg(ts=NOW + DEFAULT_LIMITS.max_future_ms),
        {},
        Envelope(DEVICE, NOW + DEFAULT_LIMITS.max_future_ms, MessageType.TELEMETRY, {"temp_c": 21.5, "on": True}, 42),
    ),
    (
        "names may use letters, digits, '_', '.', '-'; tag values any text",
        msg(metrics={"_a.b-c9": 1, "x" * 64: 2}, tags={"site.name": "Zürich – Halle 3", "t" * 64: "v" * 128}),
        {},
        Envelope(
            DEVICE,
            NOW - 1000,
            MessageType.TELEMETRY,
            {"_a.b-c9": 1, "x" * 64: 2},
            42,
            {"site.name": "Zürich – Halle 3", "t" * 64: "v" * 128},
        ),
    ),
    (
        "a body nested exactly as deep as allowed",
        msg(type="event", metrics=_DROP, body=nested(DEFAULT_LIMITS.max_body_depth)),
        {},
        Envelope(DEVICE, NOW - 1000, MessageType.EVENT, {}, 42, body=nested(DEFAULT_LIMITS.max_body_depth)),
    ),
]


@pytest.mark.parametrize(("raw", "kwargs", "expected"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_valid_messages_parse_into_envelopes(
    raw: bytes, kwargs: dict[str, object], expected: Envelope, same_value: Callable[[object, object], bool]
) -> None:
    env = parse(raw, now_ms=NOW, **kwargs)  # type: ignore[arg-type]
    assert env == expected
    assert same_value(dict(env.metrics), dict(expected.metrics)), "metric types and float bits survive"


def test_a_message_of_exactly_max_bytes_is_accepted() -> None:
    base = msg(pad="")
    raw = msg(pad="x" * (DEFAULT_LIMITS.max_bytes - len(base)))
    assert len(raw) == DEFAULT_LIMITS.max_bytes
    assert parse(raw, now_ms=NOW).device_id == DEVICE


# ------------------------------------------------------------------------------------------------
# refused


REFUSED: list[tuple[str, bytes, dict[str, object], Code]] = [
    # size and syntax
    ("one byte over the size limit", msg(pad="x" * DEFAULT_LIMITS.max_bytes), {}, Code.ENVELOPE_TOO_LARGE),
    ("empty", b"", {}, Code.ENVELOPE_NOT_JSON),
    ("truncated", msg()[:-1], {}, Code.ENVELOPE_NOT_JSON),
    ("not UTF-8", b'{"v":1,"device":"\xff"}', {}, Code.ENVELOPE_NOT_JSON),
    ("UTF-16 is not accepted", msg().decode().encode("utf-16"), {}, Code.ENVELOPE_NOT_JSON),
    ("UTF-8 with a byte order mark", b"\xef\xbb\xbf" + msg(), {}, Code.ENVELOPE_NOT_JSON),
    ("single quotes", b"{'v': 1}", {}, Code.ENVELOPE_NOT_JSON),
    ("trailing garbage", msg() + b"x", {}, Code.ENVELOPE_NOT_JSON),
    ("deep nesting", b"[" * 10_000 + b"]" * 10_000, {"limits": Limits(max_bytes=30_000)}, Code.ENVELOPE_NOT_JSON),
    ("array", b"[1,2]", {}, Code.ENVELOPE_NOT_OBJECT),
    ("number", b"1", {}, Code.ENVELOPE_NOT_OBJECT),
    ("string", b'"telemetry"', {}, Code.ENVELOPE_NOT_OBJECT),
    ("null", b"null", {}, Code.ENVELOPE_NOT_OBJECT),
    # version
    ("version missing", msg(v=_DROP), {}, Code.ENVELOPE_VERSION_MISSING),
    ("version null", msg(v=None), {}, Code.ENVELOPE_VERSION_MISSING),
    ("version 2", msg(v=2), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    ("version 0", msg(v=0), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    ('version "1"', msg(v="1"), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    ("version 1.0", msg(v=1.0), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    ("version true", msg(v=True), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    ("version [1]", msg(v=[1]), {}, Code.ENVELOPE_VERSION_UNSUPPORTED),
    # type
    ("type missing and no topic", msg(type=_DROP), {}, Code.ENVELOPE_BAD_TYPE),
    ("unknown type", msg(type="telemetry2"), {}, Code.ENVELOPE_BAD_TYPE),
    ("type in upper case", msg(type="TELEMETRY"), {}, Code.ENVELOPE_BAD_TYPE),
    ("type a number", msg(type=1), {}, Code.ENVELOPE_BAD_TYPE),
    ("type disagrees with the topic", msg(), {"expected_type": MessageType.EVENT}, Code.ENVELOPE_BAD_TYPE),
    # device
    ("device claims another id", msg(device="boiler-8"), {"device_id": DEVICE}, Code.ENVELOPE_DEVICE_MISMATCH),
    ("no device and none from the topic", msg(device=_DROP), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device empty", msg(device=""), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device with a slash", msg(device="a/b"), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device a wildcard", msg(device="+"), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device with #", msg(device="a#"), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device with NUL", msg(device="a\x00"), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device starting with $", msg(device="$SYS"), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device too long", msg(device="d" * 129), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device a number", msg(device=7), {}, Code.ENVELOPE_BAD_DEVICE),
    ("device null", msg(device=None), {}, Code.ENVELOPE_BAD_DEVICE),
    # timestamp
    ("ts a string", msg(ts=str(NOW)), {}, Code.ENVELOPE_BAD_TIMESTAMP),
    ("ts a float", msg(ts=float(NOW)), {}, Code.ENVELOPE_BAD_TIMESTAMP),
    ("ts a boolean", msg(ts=True), {}, Code.ENVELOPE_BAD_TIMESTAMP),
    ("ts in seconds instead of ms", msg(ts=NOW // 1000), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    ("ts in microseconds", msg(ts=NOW * 1000), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    ("ts zero", msg(ts=0), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    ("ts negative", msg(ts=-1), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    (
        "ts before 2000 even with a wide window",
        msg(ts=946_684_799_999),
        {"limits": Limits(max_past_ms=10**14)},
        Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW,
    ),
    ("ts 1 ms past the past window", msg(ts=NOW - DEFAULT_LIMITS.max_past_ms - 1), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    ("ts 1 ms past the future window", msg(ts=NOW + DEFAULT_LIMITS.max_future_ms + 1), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    ("ts a huge integer", msg(ts=10**40), {}, Code.ENVELOPE_TIMESTAMP_OUT_OF_WINDOW),
    # sequence
    ("seq negative", msg(seq=-1), {}, Code.ENVELOPE_BAD_SEQUENCE),
    ("seq 2**63", msg(seq=2**63), {}, Code.ENVELOPE_BAD_SEQUENCE),
    ("seq a string", msg(seq="1"), {}, Code.ENVELOPE_BAD_SEQUENCE),
    ("seq a float", msg(seq=1.0), {}, Code.ENVELOPE_BAD_SEQUENCE),
    ("seq a boolean", msg(seq=True), {}, Code.ENVELOPE_BAD_SEQUENCE),
    # metrics
    ("metrics an array", msg(metrics=[1, 2]), {}, Code.ENVELOPE_BAD_METRIC),
    ("metrics a string", msg(metrics="t=1"), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name empty", msg(metrics={"": 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name starting with a digit", msg(metrics={"1st": 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name with a space", msg(metrics={"temp c": 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name with a slash", msg(metrics={"temp/c": 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name not ASCII", msg(metrics={"températur": 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric name too long", msg(metrics={"x" * 65: 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric value a string", msg(metrics={"t": "21.5"}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric value null", msg(metrics={"t": None}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric value an array", msg(metrics={"t": [1]}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric value a nested object", msg(metrics={"t": {"v": 1}}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric int above the bound", msg(metrics={"t": 10**15 + 1}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric float below the bound", msg(metrics={"t": -1.0000001e15}), {}, Code.ENVELOPE_BAD_METRIC),
    (
        "metric int beyond float precision",
        msg(metrics={"t": 2**53 + 1}),
        {"limits": Limits(max_abs_value=1e300)},
        Code.ENVELOPE_BAD_METRIC,
    ),
    ("metric huge int", msg(metrics={"t": 10**300}), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric NaN literal", raw_with('{"t":NaN}'), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric Infinity literal", raw_with('{"t":Infinity}'), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric -Infinity literal", raw_with('{"t":-Infinity}'), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric 1e400 overflows to infinity", raw_with('{"t":1e400}'), {}, Code.ENVELOPE_BAD_METRIC),
    ("metric -1e400", raw_with('{"t":-1e400}'), {}, Code.ENVELOPE_BAD_METRIC),
    ("too many metrics", msg(metrics={f"m{i}": i for i in range(65)}), {}, Code.ENVELOPE_TOO_MANY_METRICS),
    ("telemetry without metrics", msg(metrics=_DROP), {}, Code.ENVELOPE_MISSING_METRICS),
    ("telemetry with empty metrics", msg(metrics={}), {}, Code.ENVELOPE_MISSING_METRICS),
    # tags
    ("tags an array", msg(tags=["a"]), {}, Code.ENVELOPE_BAD_TAG),
    ("tag value a number", msg(tags={"zone": 3}), {}, Code.ENVELOPE_BAD_TAG),
    ("tag value null", msg(tags={"zone": None}), {}, Code.ENVELOPE_BAD_TAG),
    ("tag value too long", msg(tags={"zone": "x" * 129}), {}, Code.ENVELOPE_BAD_TAG),
    ("tag value with NUL", msg(tags={"zone": "a\x00b"}), {}, Code.ENVELOPE_BAD_TAG),
    ("tag value a lone surrogate", msg(tags={"zone": "\ud800"}), {}, Code.ENVELOPE_BAD_TAG),
    ("tag name with a space", msg(tags={"the zone": "n"}), {}, Code.ENVELOPE_BAD_TAG),
    ("too many tags", msg(tags={f"t{i}": "x" for i in range(17)}), {}, Code.ENVELOPE_BAD_TAG),
    # body
    ("twin_reported without body", msg(type="twin_reported", metrics=_DROP), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack without body", msg(type="command_ack"), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack body without id", msg(type="command_ack", body={"status": "done"}), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack id a number", msg(type="command_ack", body={"id": 5, "status": "done"}), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack id empty", msg(type="command_ack", body={"id": "", "status": "done"}), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack id too long", msg(type="command_ack", body={"id": "c" * 65, "status": "done"}), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack without status", msg(type="command_ack", body={"id": "c1"}), {}, Code.ENVELOPE_BAD_BODY),
    ("command_ack status a number", msg(type="command_ack", body={"id": "c1", "status": 0}), {}, Code.ENVELOPE_BAD_BODY),
    ("body an array", msg(type="event", body=[1]), {}, Code.ENVELOPE_BAD_BODY),
    ("body a string", msg(type="twin_reported", body="on"), {}, Code.ENVELOPE_BAD_BODY),
    ("body nested too deep", msg(type="event", body=nested(DEFAULT_LIMITS.max_body_depth + 1)), {}, Code.ENVELOPE_BAD_BODY),
    ("body list nested too deep", msg(type="event", body={"a": [[[[[[[[1]]]]]]]]}), {}, Code.ENVELOPE_BAD_BODY),
    ("body with NaN", b'{"v":1,"device":"d","type":"event","body":{"x":NaN}}', {}, Code.ENVELOPE_BAD_BODY),
    ("body with 1e400", b'{"v":1,"device":"d","type":"event","body":{"x":[1e400]}}', {}, Code.ENVELOPE_BAD_BODY),
    ("body int beyond 64 bits", msg(type="event", body={"x": 2**63}), {}, Code.ENVELOPE_BAD_BODY),
    ("body string a lone surrogate", msg(type="event", body={"x": "\udc00"}), {}, Code.ENVELOPE_BAD_BODY),
    ("body key a lone surrogate", msg(type="event", body={"\ud83d": 1}), {}, Code.ENVELOPE_BAD_BODY),
]


@pytest.mark.parametrize(("raw", "kwargs", "code"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_messages_are_refused_with_their_code(raw: bytes, kwargs: dict[str, object], code: Code) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse(raw, now_ms=NOW, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert err.code is code, err
    assert isinstance(err, ProtocolError)
    row = err.as_dict()
    assert row["code"] == str(code) and isinstance(row["message"], str) and row["message"]
    json.dumps(row)  # a quarantine row / API error body is plain JSON


def test_every_envelope_code_has_a_refusal_case() -> None:
    covered = {c[3] for c in REFUSED}
    assert {c for c in Code if c.value.startswith("envelope.")} == covered


def test_refusals_name_the_device_and_the_metric() -> None:
    with pytest.raises(EnvelopeError) as info:
        parse(raw_with('{"ok":1,"t":NaN}'), now_ms=NOW)
    assert info.value.context["device_id"] == DEVICE
    assert info.value.context["metric"] == "t"


def test_limits_are_configurable() -> None:
    tight = Limits(max_bytes=64, max_metrics=1)
    with pytest.raises(EnvelopeError) as info:
        parse(msg(), now_ms=NOW, limits=tight)
    assert info.value.code is Code.ENVELOPE_TOO_LARGE
    with pytest.raises(EnvelopeError) as info:
        parse(b'{"v":1,"device":"d","metrics":{"a":1,"b":2}}', now_ms=NOW, limits=tight, expected_type=MessageType.TELEMETRY)
    assert info.value.code is Code.ENVELOPE_TOO_MANY_METRICS


# ------------------------------------------------------------------------------------------------
# properties

_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,40}", fullmatch=True)
_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
_values = st.one_of(
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False),
    st.sampled_from([-0.0, 0.0, 5e-324, 0.1, 21.37, -1e15]),
)
_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63) + 1, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text()
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(MessageType))
    metrics = draw(st.dictionaries(_names, _values, min_size=1 if kind is MessageType.TELEMETRY else 0, max_size=8))
    body: dict[str, object] | None
    if kind is MessageType.COMMAND_ACK:
        body = {"id": draw(_ids), "status": draw(st.sampled_from(["done", "failed", "rejected"]))}
    elif kind is MessageType.TWIN_REPORTED:
        body = draw(st.dictionaries(st.text(max_size=8), _json, max_size=4))
    else:
        body = draw(st.none() | st.dictionaries(st.text(max_size=8), _json, max_size=4))
    return Envelope(
        device_id=draw(_ids),
        ts_ms=NOW + draw(st.integers(-DEFAULT_LIMITS.max_past_ms, DEFAULT_LIMITS.max_future_ms)),
        type=kind,
        metrics=metrics,
        seq=draw(st.none() | st.integers(0, MAX_SEQ)),
        tags=draw(st.dictionaries(_names, st.text(max_size=20).filter(lambda s: "\x00" not in s), max_size=4)),
        body=body,  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(env=envelopes())
def test_to_json_then_parse_gives_back_the_same_envelope(env: Envelope, same_value: Callable[[object, object], bool]) -> None:
    back = parse(env.to_json(), now_ms=NOW, device_id=env.device_id, expected_type=env.type)
    assert back == env
    assert same_value(dict(back.metrics), dict(env.metrics))
    assert same_value(back.body, env.body)


# ------------------------------------------------------------------------------------------------
# parse_document: a decoded message (an element of an array) is measured only when it might be over
# the limit; the outcome is the same as measuring every one


def _stdlib(doc: object) -> bytes:
    """HTTP ingest's encoder for what only the standard library reads (ASCII escapes: the longest)."""
    return json.dumps(doc, separators=(",", ":")).encode()


ENCODERS = [pytest.param(orjson.dumps, id="orjson"), pytest.param(_stdlib, id="stdlib")]


def _largest(limits: Limits, tag_char: str | None) -> dict[str, object]:
    """An accepted message with only the fields whose size validation bounds, each at its largest
    (tags with ``tag_char`` repeated, or none)."""
    doc: dict[str, object] = {
        "v": 1,
        "device": "d" * 128,
        "ts": NOW + limits.max_future_ms,
        "seq": MAX_SEQ,
        "type": "telemetry",
        "metrics": {f"m{i:0{limits.max_name_len - 1}d}": -1.2345678901234567e-308 for i in range(limits.max_metrics)},
    }
    if tag_char is not None:
        doc["tags"] = {f"t{i:0{limits.max_name_len - 1}d}": tag_char * limits.max_tag_value_len for i in range(limits.max_tags)}
    return doc


@pytest.mark.parametrize("encode", ENCODERS)
@pytest.mark.parametrize("tag_char", [None, "\x01", "\U0001f600"], ids=["no tags", "control character tags", "astral plane tags"])
def test_a_decoded_message_at_the_largest_bounded_size_is_refused_one_byte_over_the_limit(
    encode: Callable[[object], bytes], tag_char: str | None
) -> None:
    """Would fail if the bound that lets a message skip its measurement were below the largest size
    validation lets through: at a limit one byte under its size, such a message would be accepted."""
    doc = _largest(DEFAULT_LIMITS, tag_char)
    size = len(encode(doc))
    for max_bytes in (size, size - 1):
        limits = dataclasses.replace(DEFAULT_LIMITS, max_bytes=max_bytes)
        try:
            env = parse_document(doc, size=lambda: len(encode(doc)), now_ms=NOW, device_id="d" * 128, limits=limits)
        except EnvelopeError as exc:
            assert (max_bytes, exc.code) == (size - 1, Code.ENVELOPE_TOO_LARGE)
        else:
            assert (max_bytes, env.seq) == (size, MAX_SEQ)


def test_a_decoded_message_is_measured_only_when_it_might_be_over_the_limit() -> None:
    measured: list[bytes] = []

    def outcome(doc: object, limits: Limits = DEFAULT_LIMITS) -> str:
        def size() -> int:
            measured.append(orjson.dumps(doc))
            return len(measured[-1])

        measured.clear()
        try:
            parse_document(doc, size=size, now_ms=NOW, device_id=DEVICE, expected_type=MessageType.TELEMETRY, limits=limits)
        except EnvelopeError as exc:
            return f"{exc.code} measured {len(measured)}"
        return f"accepted measured {len(measured)}"

    plain = {"v": 1, "ts": NOW, "seq": 7, "metrics": {"t": 21.5, "on": True}, "tags": {"zone": "north"}}
    assert outcome(plain) == "accepted measured 0"
    assert outcome({**plain, "body": {"k": 1}}) == "accepted measured 1"  # a body's size is not bounded
    assert outcome({**plain, "note": "x"}) == "accepted measured 1"  # nor an unknown field's
    assert outcome({**plain, "v": 2}) == "envelope.version_unsupported measured 1"  # a refusal yields to too_large
    assert outcome(plain, Limits(max_bytes=2000)) == "accepted measured 1"  # the bound (64 metrics) is over 2000
    assert outcome([plain]) == "envelope.not_object measured 1"
    many = {"v": 1, "metrics": {f"m{i}": 1e15 for i in range(1000)}}  # 9 bytes each in JSON, 26 encoded
    assert outcome(many) == "envelope.too_large measured 1"
    assert outcome({"v": 1, "metrics": dict(list(many["metrics"].items())[:100])}) == "envelope.too_many_metrics measured 1"  # type: ignore[attr-defined]


@settings(max_examples=200, deadline=None)
@given(env=envelopes(), slack=st.integers(-40, 40), encode=st.sampled_from([orjson.dumps, _stdlib]))
def test_measuring_on_demand_decides_like_measuring_every_message(
    env: Envelope, slack: int, encode: Callable[[object], bytes]
) -> None:
    doc = json.loads(env.to_json())
    if not doc.get("body"):
        doc.pop("body", None)
    size = len(encode(doc))
    limits = dataclasses.replace(DEFAULT_LIMITS, max_bytes=max(1, size + slack), max_metrics=8, max_name_len=21)

    def decide(measure: int | Callable[[], int]) -> object:
        try:
            return parse_document(doc, size=measure, now_ms=NOW, device_id=env.device_id, expected_type=env.type, limits=limits)
        except EnvelopeError as exc:
            return exc.code

    assert decide(lambda: len(encode(doc))) == decide(size)
