"""Fuzzing the two decoders that take bytes from outside: envelope.parse and batch.decode.

Every case must either decode or raise the taxonomy's error (EnvelopeError / BatchError); nothing
else may escape, and what decodes must be well-typed and re-encodable (so the decoder never accepts
what the encoder could not have written). Mutations go from blind (random bytes, bit flips) to
structure-aware (the CRC recomputed after damaging the payload; the msgpack body decoded, its
tree mutated, re-encoded and re-framed with a consistent header), so most cases get past the cheap
checks and reach the body decoder. Deterministic seeds: a failure names the case to replay.
"""

from __future__ import annotations

import json
import math
import random
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack
import pytest
import zstandard

from pulse.protocol import batch, envelope
from pulse.protocol.batch import HEADER, HEADER_SIZE, MAX_TS_MS, MAX_U64, Compression, Record, Stream
from pulse.protocol.envelope import MAX_INT, MAX_SEQ, MessageType
from pulse.protocol.errors import BatchError, EnvelopeError
from pulse.protocol.topics import valid_device_id

pytestmark = pytest.mark.unit

SameRecords = Callable[[Sequence[Record], Sequence[Record]], None]
NOW = 1_764_061_200_000
MEMORY_BOUND = 128 * 1024 * 1024  # bytes of peak RSS growth over a whole fuzz run

INTERESTING: list[object] = [
    0,
    1,
    -1,
    2,
    7,
    255,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.5,
    21.37,
    5e-324,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    "",
    "x",
    "boiler-7",
    "a/b",
    "+",
    "\x00",
    "é",
    b"bin",
    [],
    [0],
    [[0, []]],
    {},
    {"k": 1},
]


def interesting(rng: random.Random) -> object:
    value = rng.choice(INTERESTING)
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


# ------------------------------------------------------------------------------------------------
# byte-level mutations, shared by both decoders

MAGIC_BYTES = b'"{}[]:,0-e.\\Nn\x00\xff\x80\xc0\xc1\x90\x91\x93\x9d\xdc\xdd\xde\xca\xcb\xcc\xcd\xce\xcf\xd0\xd3'


def mutate_bytes(data: bytes, rng: random.Random, others: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(8)
        if op == 0 and buf:  # bit flip
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # byte replaced by a syntactically loaded one
            buf[rng.randrange(len(buf))] = rng.choice(MAGIC_BYTES)
        elif op == 2 and buf:  # truncation
            del buf[rng.randrange(len(buf)) :]
        elif op == 3:  # splice with another input
            other = rng.choice(others)
            cut, cut2 = rng.randrange(len(buf) + 1), rng.randrange(len(other) + 1)
            buf = buf[:cut] + other[cut2:]
        elif op == 4:  # insert random bytes
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif op == 5 and buf:  # duplicate a chunk
            i = rng.randrange(len(buf))
            j = min(len(buf), i + rng.randrange(1, 32))
            buf[j:j] = buf[i:j]
        elif op == 6 and buf:  # delete a chunk
            i = rng.randrange(len(buf))
            del buf[i : i + rng.randrange(1, 16)]
        elif op == 7 and len(buf) >= 4:  # overwrite 4 bytes with an interesting integer
            i = rng.randrange(len(buf) - 3)
            buf[i : i + 4] = struct.pack(">I", rng.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80, 48)))
    return bytes(buf)


# ------------------------------------------------------------------------------------------------
# tree mutations (JSON documents and msgpack bodies)


def _slots(node: object, path: tuple[object, ...] = ()) -> Iterator[tuple[object, ...]]:
    yield path
    if isinstance(node, list):
        for i, child in enumerate(node):
            yield from _slots(child, (*path, i))
    elif isinstance(node, dict):
        for key, child in node.items():
            yield from _slots(child, (*path, key))


def _get(root: object, path: tuple[object, ...]) -> Any:
    node: Any = root
    for key in path:
        node = node[key]
    return node


def mutate_tree(root: Any, rng: random.Random) -> Any:
    """Apply one structural mutation somewhere in ``root`` (mutated in place; returns the new root)."""
    slots = list(_slots(root))
    path = rng.choice(slots)
    node = _get(root, path)
    choice = rng.randrange(10)
    new: Any
    if isinstance(node, list) and node and choice < 5:
        i = rng.randrange(len(node))
        op = rng.randrange(6)
        if op == 0:
            del node[i]
        elif op == 1:
            node.insert(i, node[i] if rng.random() < 0.5 else interesting(rng))
        elif op == 2:
            j = rng.randrange(len(node))
            node[i], node[j] = node[j], node[i]
        elif op == 3:
            del node[i:]
        elif op == 4:
            node.reverse()
        else:
            node.append(interesting(rng))
        return root
    if isinstance(node, dict) and node and choice < 5:
        key = rng.choice(list(node))
        op = rng.randrange(3)
        if op == 0:
            del node[key]
        elif op == 1:
            node[rng.choice(("v", "type", "id", "status", "zone", "x", "metrics", "tags", "body"))] = interesting(rng)
        else:
            node[key + "_" if isinstance(key, str) else key] = node.pop(key)
        return root
    if isinstance(node, bool):
        new = rng.choice((not node, int(node), None, interesting(rng)))
    elif isinstance(node, int):
        new = rng.choice((node + 1, node - 1, -node, node * 1000, float(node), str(node), 0, interesting(rng)))
    elif isinstance(node, float):
        new = rng.choice((-node, node * 1e10, math.nan, math.inf, int(node) if math.isfinite(node) else 0, interesting(rng)))
    elif isinstance(node, str):
        new = rng.choice((node + "x", "", node * 40, node.upper(), node.encode(), "a/b", interesting(rng)))
    else:
        new = interesting(rng)
    if not path:
        return new
    _get(root, path[:-1])[path[-1]] = new
    return root


# ------------------------------------------------------------------------------------------------
# envelope fuzzing


def envelope_seeds() -> list[bytes]:
    docs: list[dict[str, object]] = [
        {"v": 1, "device": "boiler-7", "ts": NOW, "seq": 42, "type": "telemetry", "metrics": {"temp_c": 21.5, "on": True}},
        {"v": 1, "device": "boiler-7", "type": "telemetry", "metrics": {"rpm": 1450}, "tags": {"zone": "north"}},
        {"v": 1, "device": "boiler-7", "type": "event", "body": {"door": "open", "n": [1, 2.5, None, "x"]}},
        {"v": 1, "device": "boiler-7", "type": "heartbeat", "ts": NOW - 5},
        {"v": 1, "device": "boiler-7", "type": "twin_reported", "body": {"fw": "1.2", "cfg": {"a": {"b": [1]}}}},
        {"v": 1, "device": "boiler-7", "type": "command_ack", "body": {"id": "c-1", "status": "done"}},
    ]
    return [json.dumps(d).encode() for d in docs] + [b'{"v":1,"device":"boiler-7","type":"telemetry","metrics":{"t":NaN}}']


def check_envelope(env: envelope.Envelope) -> None:
    """What an accepted envelope promises: typed fields within their limits, and it re-serialises."""
    assert type(env) is envelope.Envelope
    assert type(env.device_id) is str and valid_device_id(env.device_id)
    assert type(env.ts_ms) is int and type(env.type) is MessageType
    assert env.seq is None or (type(env.seq) is int and 0 <= env.seq <= MAX_SEQ)
    assert len(env.metrics) <= envelope.DEFAULT_LIMITS.max_metrics
    for name, value in env.metrics.items():
        assert type(name) is str
        assert type(value) in (bool, int, float)
        assert type(value) is bool or (math.isfinite(value) and abs(value) <= envelope.DEFAULT_LIMITS.max_abs_value)
    assert all(type(k) is str and type(v) is str for k, v in env.tags.items())
    assert env.body is None or type(env.body) is dict
    again = envelope.parse(env.to_json(), now_ms=NOW, device_id=env.device_id, expected_type=env.type)
    assert again == env


def envelope_cases(rng: random.Random, count: int) -> Iterator[bytes]:
    seeds = envelope_seeds()
    docs = [json.loads(s) for s in seeds[:-1]]
    for i in range(count):
        kind = i % 4
        if kind == 0:
            yield rng.randbytes(rng.randrange(0, 64))
        elif kind == 1:
            yield mutate_bytes(rng.choice(seeds), rng, seeds)
        else:
            doc = json.loads(json.dumps(rng.choice(docs)))
            for _ in range(rng.choice((1, 1, 2, 3))):
                doc = mutate_tree(doc, rng)
            yield json.dumps(doc, default=lambda b: b.decode("latin-1")).encode()  # bytes from INTERESTING


def test_envelope_parse_only_ever_decodes_or_refuses_with_a_code(peak_memory: Any) -> None:
    rng = random.Random(20261125)
    outcomes = {"accepted": 0, "refused": 0}
    codes: set[str] = set()
    contexts = [
        {},
        {"device_id": "boiler-7"},
        {"device_id": "boiler-7", "expected_type": MessageType.TELEMETRY},
        {"expected_type": MessageType.EVENT},
    ]
    for i, raw in enumerate(envelope_cases(rng, 60_000)):
        kwargs: dict[str, Any] = contexts[i % len(contexts)]
        try:
            env = envelope.parse(raw, now_ms=NOW, **kwargs)
        except EnvelopeError as exc:
            outcomes["refused"] += 1
            codes.add(str(exc.code))
            json.dumps(exc.as_dict())
            continue
        except Exception as exc:  # noqa: BLE001 - the failure this test exists to catch, named with its case
            pytest.fail(f"case {i}: {type(exc).__name__}: {exc} escaped envelope.parse for {raw[:200]!r}")
        outcomes["accepted"] += 1
        try:
            check_envelope(env)
        except Exception as exc:  # noqa: BLE001 - report the case that broke the promise
            pytest.fail(f"case {i}: accepted envelope breaks its promise ({exc!r}): {raw[:200]!r}")
    # the corpus reaches deep: both outcomes, and most of the refusal codes
    assert outcomes["accepted"] > 2000 and outcomes["refused"] > 20_000, outcomes
    assert len(codes) >= 14, sorted(codes)
    assert peak_memory.growth() < MEMORY_BOUND


# ------------------------------------------------------------------------------------------------
# batch fuzzing

SEED_RECORDS: list[list[Record]] = [
    [
        Record(101, "boiler-7", NOW, "telemetry", {"temp_c": 21.5, "on": True}, 17),
        Record(102, "pump-2", NOW + 4_000, "telemetry", {"rpm": 1450, "temp_c": 40.25}, None, {"zone": "north"}),
        Record(104, "boiler-7", NOW + 10_000, "event", {}, 18, None, {"door": "open", "n": [1, None]}),
    ],
    [
        Record(s, f"d{s % 4}", NOW + s * 10_000, "telemetry", {"v": s * 0.1, "raw": math.pi * s, "n": s % 3 == 0}, s)
        for s in range(1, 30)
    ],
    [Record(7, "gw-self", NOW, "twin_reported", {}, None, {"fw": "1"}, {"reported": {"fw": "1.2", "cfg": [1, 2]}})],
    [
        Record(1, "a", 5, "telemetry", {"x": 1}, 0),
        Record(2, "a", 6, "telemetry", {"x": 1.5}, None),
        Record(3, "b", 7, "telemetry", {"x": True}, 2**63 - 1),
    ],
]


def frame(payload: bytes, compression: Compression, body_len: int, *, gateway: bytes = b"gw-1", **fields: int) -> bytes:
    """A batch around ``payload`` with consistent lengths and a correct CRC."""
    values = {"first": 101, "last": 104, "count": 3, "stream": int(Stream.TELEMETRY), "gw_time": NOW}
    values.update(fields)
    head = HEADER.pack(
        batch.MAGIC,
        batch.VERSION_1,
        compression,
        values["stream"],
        len(gateway),
        values["first"],
        values["last"],
        values["gw_time"],
        values["count"],
        body_len,
        len(payload),
        0,
    )
    crc = zlib.crc32(gateway + payload, zlib.crc32(head[:44]))
    return head[:44] + struct.pack(">I", crc) + gateway + payload


def fix_crc(data: bytes) -> bytes:
    if len(data) < HEADER_SIZE:
        return data
    crc = zlib.crc32(data[HEADER_SIZE:], zlib.crc32(data[:44]))
    return data[:44] + struct.pack(">I", crc) + data[HEADER_SIZE:]


def _header_for(body: Any, rng: random.Random, base: batch.Header) -> dict[str, int]:
    """Mostly a header that agrees with the (mutated) body's sequence column, so the decoder has to
    look deeper than the header to refuse it; sometimes the original header."""
    fields = {"first": base.first_seq, "last": base.last_seq, "count": base.record_count}
    if rng.random() < 0.8 and isinstance(body, list) and len(body) > 5:
        deltas = body[5]
        if isinstance(deltas, list) and deltas and all(type(d) is int for d in deltas):
            last = base.first_seq + sum(deltas)
            if 0 <= last <= MAX_U64 and last >= base.first_seq and len(deltas) <= 50_000:
                fields.update(last=last, count=len(deltas))
    return fields


def check_batch(result: batch.Batch, data: bytes, same_records: SameRecords) -> None:
    """What a decoded batch promises, and that the encoder writes it back to the same records."""
    h = result.header
    recs = result.records
    assert len(recs) == h.record_count and recs[0].seq == h.first_seq and recs[-1].seq == h.last_seq
    prev = -1
    for r in recs:
        assert type(r) is Record
        assert type(r.seq) is int and r.seq > prev
        prev = r.seq
        assert type(r.device_id) is str and valid_device_id(r.device_id)
        assert type(r.ts_ms) is int and 0 <= r.ts_ms <= MAX_TS_MS
        assert type(r.type) is str
        assert type(r.metrics) is dict
        for name, value in r.metrics.items():
            assert type(name) is str and type(value) in (bool, int, float)
            if type(value) is int:
                assert -MAX_INT <= value <= MAX_INT
            if type(value) is float:
                assert math.isfinite(value)
        assert r.device_seq is None or (type(r.device_seq) is int and 0 <= r.device_seq <= MAX_SEQ)
        assert r.tags is None or (
            type(r.tags) is dict and r.tags and all(type(k) is str and type(v) is str for k, v in r.tags.items())
        )
        assert r.body is None or type(r.body) is dict
    again = batch.encode(
        recs, gateway_id=h.gateway_id, stream=h.stream, gateway_time_ms=h.gateway_time_ms, compression=h.compression
    )
    same_records(batch.decode(again).records, recs)


def batch_cases(rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    seeds = [
        batch.encode(records, gateway_id="gw-1", stream=Stream.TELEMETRY, gateway_time_ms=NOW, compression=c)
        for records in SEED_RECORDS
        for c in Compression
    ]
    plain = [s for s in seeds if batch.read_header(s).compression is Compression.NONE]
    headers = [batch.read_header(s) for s in plain]
    bodies = [s[HEADER_SIZE + 4 :] for s in plain]
    zc = zstandard.ZstdCompressor(level=1)
    for i in range(count):
        kind = i % 20
        if kind == 0:  # random bytes, half of them with a valid magic and version
            junk = rng.randbytes(rng.randrange(0, 120))
            yield "random", (batch.MAGIC + b"\x01" + junk) if rng.random() < 0.5 else junk
        elif kind in (1, 2):  # blind mutation: the CRC catches nearly all of it
            yield "bytes", mutate_bytes(rng.choice(seeds), rng, seeds)
        elif kind in (3, 4, 5):  # mutation with the CRC recomputed: header fields and payload bytes
            yield "bytes+crc", fix_crc(mutate_bytes(rng.choice(seeds), rng, seeds))
        elif kind in (6, 7, 8):  # msgpack body bytes mutated, then framed consistently
            j = rng.randrange(len(plain))
            raw = mutate_bytes(bodies[j], rng, bodies)
            h = headers[j]
            fields = {"first": h.first_seq, "last": h.last_seq, "count": h.record_count}
            if rng.random() < 0.3:
                yield "body-bytes+zstd", frame(zc.compress(raw), Compression.ZSTD, len(raw), **fields)
            else:
                yield "body-bytes", frame(raw, Compression.NONE, len(raw), **fields)
        else:  # the decoded msgpack tree mutated, re-encoded, framed with a header that agrees
            j = rng.randrange(len(plain))
            body = msgpack.unpackb(bodies[j], raw=False, strict_map_key=False)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                body = mutate_tree(body, rng)
            try:
                raw = msgpack.packb(body, use_bin_type=True)
            except (OverflowError, ValueError, TypeError):  # e.g. an int pushed beyond 64 bits
                continue
            fields = _header_for(body, rng, headers[j])
            if rng.random() < 0.15:
                yield "tree+zstd", frame(zc.compress(raw), Compression.ZSTD, len(raw), **fields)
            else:
                yield "tree", frame(raw, Compression.NONE, len(raw), **fields)


def test_batch_decode_only_ever_decodes_or_refuses_with_a_code(peak_memory: Any, same_records: SameRecords) -> None:
    rng = random.Random(48)
    per_kind: dict[str, list[int]] = {}
    codes: set[str] = set()
    for i, (kind, data) in enumerate(batch_cases(rng, 60_000)):
        tally = per_kind.setdefault(kind, [0, 0])
        try:
            result = batch.decode(data)
        except BatchError as exc:
            tally[1] += 1
            codes.add(str(exc.code))
            # decode() keeps a catch-all as a safety net; every refusal here should have a named
            # reason instead of the net's bare exception name
            cause = exc.__cause__
            if cause is not None and exc.message == f"batch body is malformed: {type(cause).__name__}":
                pytest.fail(f"case {i} ({kind}): refused only by the safety net, {cause!r}: {data!r}")
            continue
        except Exception as exc:  # noqa: BLE001 - the failure this test exists to catch, named with its case
            pytest.fail(f"case {i} ({kind}): {type(exc).__name__}: {exc} escaped batch.decode for {data[:120]!r}")
        tally[0] += 1
        try:
            check_batch(result, data, same_records)
        except Exception as exc:  # noqa: BLE001 - report the case that broke the promise
            pytest.fail(f"case {i} ({kind}): decoded batch breaks its promise ({exc!r}): {data!r}")
    # the structure-aware cases get past the header and the CRC: both outcomes occur
    assert per_kind["tree"][0] > 1000 and per_kind["tree"][1] > 10_000, per_kind
    assert per_kind["body-bytes"][0] > 100 and per_kind["body-bytes"][1] > 3000, per_kind
    assert {"batch.checksum_mismatch", "batch.malformed", "batch.bad_sequence", "batch.length_mismatch"} <= codes, codes
    assert peak_memory.growth() < MEMORY_BOUND
