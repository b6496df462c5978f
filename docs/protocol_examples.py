"""Writes the generated parts of docs/protocol.md from the real codecs, so the page cannot go stale.

    .venv/bin/python docs/protocol_examples.py           rewrite the generated blocks in place
    .venv/bin/python docs/protocol_examples.py --check   exit 1 (and say which block) if stale

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``;
everything outside the markers is written by hand. tests/unit/protocol/test_protocol_doc.py runs
the check, so a change to a codec that is not reflected in the page fails the suite.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack

from pulse.protocol import batch, envelope
from pulse.protocol.batch import HEADER, HEADER_SIZE, Compression, Record, Stream
from pulse.protocol.envelope import DEFAULT_LIMITS, MessageType
from pulse.protocol.errors import EnvelopeError

DOC = Path(__file__).with_name("protocol.md")
NOW = 1_764_061_200_000  # 2025-11-25T09:00:00Z, the receiver's clock in every example

# ------------------------------------------------------------------------------------------------
# envelope


def envelope_limits() -> str:
    lim = DEFAULT_LIMITS
    rows = [
        ("message size", f"{lim.max_bytes} bytes", "`envelope.too_large`"),
        ("metrics per message", str(lim.max_metrics), "`envelope.too_many_metrics`"),
        ("metric and tag name length", f"1-{lim.max_name_len} characters", "`envelope.bad_metric` / `envelope.bad_tag`"),
        ("metric value", f"finite, within ±{lim.max_abs_value:g} (integers also within ±2^53)", "`envelope.bad_metric`"),
        ("tags per message", str(lim.max_tags), "`envelope.bad_tag`"),
        ("tag value length", f"{lim.max_tag_value_len} characters", "`envelope.bad_tag`"),
        ("body nesting", f"{lim.max_body_depth} levels of objects/arrays", "`envelope.bad_body`"),
        (
            "`ts` in the past",
            f"{lim.max_past_ms // 86_400_000} days before the receiver's clock, and not before 2000-01-01",
            "`envelope.timestamp_out_of_window`",
        ),
        (
            "`ts` in the future",
            f"{lim.max_future_ms // 3_600_000} hours after the receiver's clock",
            "`envelope.timestamp_out_of_window`",
        ),
        ("`seq`", "0 to 2^63-1", "`envelope.bad_sequence`"),
    ]
    out = ["| limit | default | refused with |", "| --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


ACCEPTED: list[tuple[str, str, dict[str, object]]] = [
    (
        "telemetry with everything",
        '{"v":1,"device":"boiler-7","ts":1764061195000,"seq":42,"type":"telemetry","metrics":{"temp_c":21.5,"on":true},"tags":{"zone":"north"}}',
        {},
    ),
    (
        "the shortest telemetry, on `pulse/boiler-7/telemetry`",
        '{"v":1,"metrics":{"temp_c":21.5}}',
        {"device_id": "boiler-7", "expected_type": MessageType.TELEMETRY},
    ),
    ("a command acknowledgement", '{"v":1,"device":"boiler-7","type":"command_ack","body":{"id":"c-17","status":"done"}}', {}),
]

REFUSED: list[tuple[str, dict[str, object]]] = [
    ('{"v":2,"device":"boiler-7","type":"heartbeat"}', {}),
    ('{"device":"boiler-7","type":"heartbeat"}', {}),
    ('{"v":1,"device":"boiler-8","metrics":{"t":1}}', {"device_id": "boiler-7", "expected_type": MessageType.TELEMETRY}),
    ('{"v":1,"device":"boiler-7","ts":1764061195,"metrics":{"t":1},"type":"telemetry"}', {}),
    ('{"v":1,"device":"boiler-7","type":"telemetry","metrics":{"temp_c":NaN}}', {}),
    ('{"v":1,"device":"boiler-7","type":"telemetry","metrics":{"temp_c":"21.5"}}', {}),
    ('{"v":1,"device":"boiler-7","type":"telemetry"}', {}),
    ('{"v":1,"device":"boiler-7","type":"twin_reported"}', {}),
    ('{"v":1,"device":"boiler/7","type":"heartbeat"}', {}),
    ("[1,2,3]", {}),
]


def _context(kwargs: dict[str, object]) -> str:
    parts = []
    if "device_id" in kwargs:
        parts.append(f"device `{kwargs['device_id']}`")
    if "expected_type" in kwargs:
        parts.append(f"topic type `{kwargs['expected_type']}`")
    return ", ".join(parts) or "no topic context"


def envelope_accepted() -> str:
    out = []
    for title, raw, kwargs in ACCEPTED:
        env = envelope.parse(raw.encode(), now_ms=NOW, **kwargs)  # type: ignore[arg-type]
        parsed = {
            "device_id": env.device_id,
            "ts_ms": env.ts_ms,
            "type": str(env.type),
            "seq": env.seq,
            "metrics": dict(env.metrics),
            "tags": dict(env.tags),
            "body": env.body,
        }
        out += [
            f"{title} ({_context(kwargs)}):",
            "",
            "```json",
            raw,
            "```",
            "",
            "parses to",
            "",
            "```json",
            json.dumps(parsed),
            "```",
            "",
        ]
    return "\n".join(out).rstrip()


def envelope_refused() -> str:
    out = ["| message | received as | code | message to the sender | context |", "| --- | --- | --- | --- | --- |"]
    for raw, kwargs in REFUSED:
        try:
            envelope.parse(raw.encode(), now_ms=NOW, **kwargs)  # type: ignore[arg-type]
        except EnvelopeError as exc:
            context = ", ".join(f"{k}={v!r}" for k, v in exc.context.items())
            out.append(f"| `{raw}` | {_context(kwargs)} | `{exc.code}` | {exc.message} | {context} |")
        else:
            raise AssertionError(f"example {raw} was meant to be refused")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# sync batch

T0 = NOW
EXAMPLE_RECORDS = [
    Record(101, "boiler-7", T0, "telemetry", {"temp_c": 21.5, "on": True}, 17),
    Record(102, "pump-2", T0 + 4_000, "telemetry", {"rpm": 1450, "temp_c": 40.25}, None, {"zone": "north"}),
    Record(103, "boiler-7", T0 + 10_020, "telemetry", {"temp_c": 21.6, "on": True}, 18),
]
EXAMPLE_GATEWAY = "gw-site-3"
EXAMPLE_CLOCK = T0 + 15_000


def example_batch(compression: Compression = Compression.NONE) -> bytes:
    return batch.encode(
        EXAMPLE_RECORDS,
        gateway_id=EXAMPLE_GATEWAY,
        stream=Stream.TELEMETRY,
        gateway_time_ms=EXAMPLE_CLOCK,
        compression=compression,
    )


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _dump(data: bytes, start: int = 0) -> str:
    return "\n".join(f"{start + i:04x}  {_hex(data[i : i + 16])}" for i in range(0, len(data), 16))


COLUMNS = [
    ("devices", "device ids, in order of first appearance (dictionary)"),
    ("names", "metric names (dictionary)"),
    ("types", "record types (dictionary)"),
    (
        "groups",
        "[device, [name, kind, name, kind, ...]]: which device and which metrics, in order, with kind 0 bool, 1 int, 2 float",
    ),
    ("tags", "distinct tag sets (dictionary); {} means no tags"),
    ("seq deltas", "record sequence numbers: first is 0 (the header's first), then the gap to the previous"),
    ("record groups", "per record: index into groups"),
    ("record types", "per record: index into types"),
    ("record tags", "per record: index into tags"),
    ("timestamps", "per device (order of devices in record groups): timestamps as delta-of-delta"),
    ("device seqs", "per device: the device's own seq as a delta from its previous present one; nil when absent"),
    (
        "series",
        "per (device, metric, kind): [device, name, kind, scale, values]; values as deltas of integers (floats x 10^scale, scale -1 = raw floats)",
    ),
    ("bodies", "[record index, JSON object] for records that carry a body"),
]

_HEADER_FIELDS = [
    ("magic", None),
    ("format version", None),
    ("compression", "0 none, 1 zstd"),
    ("stream", "1 telemetry, 2 events, 3 alerts, 4 twin"),
    ("gateway id length L", None),
    ("first sequence", None),
    ("last sequence", None),
    ("gateway clock, Unix ms", None),
    ("record count", None),
    ("body length before compression", None),
    ("payload length as sent", None),
    ("CRC-32 of bytes 0-43 + gateway id + payload", None),
]


def batch_input() -> str:
    return "\n".join(
        [
            "```python",
            *(repr(r) for r in EXAMPLE_RECORDS),
            "```",
            "",
            f"encoded by gateway `{EXAMPLE_GATEWAY}` on the telemetry stream with its clock at {EXAMPLE_CLOCK}:",
        ]
    )


def batch_example() -> str:
    data = example_batch()
    fields = HEADER.unpack_from(data)
    gw_len = fields[4]
    payload = data[HEADER_SIZE + gw_len :]
    body = msgpack.unpackb(payload, raw=False)

    out = [
        f"The whole batch is {len(data)} bytes: the 48-byte header, the {gw_len}-byte gateway id, a {len(payload)}-byte payload.",
        "",
    ]
    out += ["| offset | bytes (hex) | field | value |", "| --- | --- | --- | --- |"]
    offset = 0
    sizes = [4, 1, 1, 1, 1, 8, 8, 8, 4, 4, 4, 4]
    for (name, note), size, value in zip(_HEADER_FIELDS, sizes, fields, strict=True):
        shown = f"`{value.decode()}`" if isinstance(value, bytes) else str(value)
        if name == "stream":
            shown = f"{value} ({Stream(value).name.lower()})"
        elif name == "compression":
            shown = f"{value} ({Compression(value).name.lower()})"
        elif name.startswith("CRC"):
            shown = f"0x{value:08x}"
        elif note:
            shown = f"{shown} ({note})"
        out.append(f"| {offset} | `{_hex(data[offset : offset + size])}` | {name} | {shown} |")
        offset += size
    out.append(f"| 48 | `{_hex(data[48 : 48 + gw_len])}` | gateway id | `{EXAMPLE_GATEWAY}` |")
    out += ["", f"Payload (offset {HEADER_SIZE + gw_len}), the msgpack body, one column per row:", ""]
    out += ["| # | bytes (hex) | column | decoded | what it holds |", "| --- | --- | --- | --- | --- |"]
    pieces = [msgpack.packb(col, use_bin_type=True) for col in body]
    array_header = payload[: len(payload) - sum(map(len, pieces))]
    assert array_header + b"".join(pieces) == payload, "msgpack is concatenative: header + columns = payload"
    out.append(f"| | `{_hex(array_header)}` | array of {len(body)} columns | | |")
    for i, ((name, meaning), piece, col) in enumerate(zip(COLUMNS, pieces, body, strict=True)):
        out.append(f"| {i} | `{_hex(piece)}` | {name} | `{json.dumps(col)}` | {meaning} |")

    out += ["", "How the columns come from the records:", ""]
    out += _walkthrough(body)
    decoded = batch.decode(data)
    out += ["", "`batch.decode` gives back the records exactly:", "", "```python"]
    out += [repr(r) for r in decoded.records]
    out += ["```"]
    return "\n".join(out)


def _deltas(values: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *values], values, strict=False)]


def _walkthrough(body: list[object]) -> list[str]:
    devices, names, _, groups, _, seq_deltas, rec_group, *_ = body
    assert isinstance(devices, list) and isinstance(names, list) and isinstance(groups, list) and isinstance(rec_group, list)
    by_device: dict[str, list[Record]] = {}
    for r in EXAMPLE_RECORDS:
        by_device.setdefault(r.device_id, []).append(r)
    lines = [
        f"- Sequence numbers {[r.seq for r in EXAMPLE_RECORDS]} are written as deltas from the header's first"
        f" ({EXAMPLE_RECORDS[0].seq}): {seq_deltas}. A run without gaps costs one byte a record."
    ]
    for dev, recs in by_device.items():
        stamps = [r.ts_ms for r in recs]
        deltas = _deltas(stamps)
        lines.append(f"- `{dev}` timestamps {stamps} -> deltas from 0 {deltas} -> deltas again {_deltas(deltas)}.")
    lines.append(
        "  The delta is taken twice, each time starting from 0: the first entry is the device's first timestamp, the"
        " second its first interval minus that timestamp (a large negative number, once per device and batch), and"
        " from the third on each entry is the change in interval: 0 for a steady cadence, a few ms of jitter in one byte."
    )
    for dev, recs in by_device.items():
        for name in recs[0].metrics:
            values = [r.metrics[name] for r in recs if name in r.metrics]
            if all(type(v) is bool for v in values):
                lines.append(f"- `{dev}`/`{name}` booleans {values} travel as {[int(v) for v in values]}.")
            elif all(type(v) is int for v in values):
                lines.append(f"- `{dev}`/`{name}` integers {values} travel as deltas {_deltas(values)} (kind 1, scale 0).")
            else:
                scale = batch._float_scale(values)
                ints = [round(v * 10**scale) for v in values]
                lines.append(
                    f"- `{dev}`/`{name}` floats {values}: the smallest power of ten that gives them back exactly is"
                    f" 10^{scale}, so they travel as the integers {ints}, written as deltas {_deltas(ints)} (kind 2, scale {scale})."
                )
    shared = [g for g in range(len(groups)) if rec_group.count(g) > 1]
    for g in shared:
        dev, layout = groups[g]
        metric_list = ", ".join(
            f"{names[layout[i]]} ({['bool', 'int', 'float'][layout[i + 1]]})" for i in range(0, len(layout), 2)
        )
        users = [i for i, x in enumerate(rec_group) if x == g]
        lines.append(
            f"- Records {users} both use group {g}: `{devices[dev]}` with {metric_list}. Their device and metric names"
            " are written once, in the group, and each record costs one index."
        )
    return lines


def batch_sizes() -> str:
    env_bytes = sum(
        len(
            envelope.Envelope(
                r.device_id, r.ts_ms, MessageType.TELEMETRY, r.metrics, seq=r.device_seq, tags=r.tags or {}
            ).to_json()
        )
        for r in EXAMPLE_RECORDS
    )
    return (
        f"The same 3 records sent as JSON envelopes take {env_bytes} bytes; the batch above is {len(example_batch())} bytes before"
        " compression, most of it the 48-byte header, the gateway id and the dictionaries, which a real batch of 1,000 records"
        " pays once (`pulse bench codec` measures about 1.1 bytes per point for those, against about 41 for JSON envelopes)."
    )


# ------------------------------------------------------------------------------------------------

BLOCKS: dict[str, Callable[[], str]] = {
    "envelope-limits": envelope_limits,
    "envelope-accepted": envelope_accepted,
    "envelope-refused": envelope_refused,
    "batch-input": batch_input,
    "batch-example": batch_example,
    "batch-sizes": batch_sizes,
}

_BLOCK_RE = re.compile(r"(<!-- generated:(?P<name>[a-z-]+) -->)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)


def render(text: str) -> str:
    """The page with every generated block rewritten from the code."""
    seen: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise KeyError(f"docs/protocol.md has a generated block {name!r} that protocol_examples.py does not know")
        seen.add(name)
        return match[1] + "\n" + BLOCKS[name]() + "\n" + match[4]

    out = _BLOCK_RE.sub(replace, text)
    if missing := set(BLOCKS) - seen:
        raise KeyError(f"docs/protocol.md lacks the generated blocks {sorted(missing)}")
    return out


def stale_blocks(text: str) -> list[str]:
    fresh = {m["name"]: m["body"] for m in _BLOCK_RE.finditer(render(text))}
    return [m["name"] for m in _BLOCK_RE.finditer(text) if fresh[m["name"]] != m["body"]]


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    if "--check" in argv:
        stale = stale_blocks(text)
        if stale:
            print(f"docs/protocol.md is stale in {stale}; run: .venv/bin/python docs/protocol_examples.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(render(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
