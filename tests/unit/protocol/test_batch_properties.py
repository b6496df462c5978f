"""Property tests for the sync batch codec: any records come back exactly as they were sent."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pulse.protocol import envelope
from pulse.protocol.batch import MAX_TS_MS, MAX_U64, Compression, Record, Stream, decode, encode, read_header
from pulse.protocol.envelope import MAX_INT, MAX_SEQ, EnvelopeError
from pulse.protocol.errors import BatchError, Code

pytestmark = pytest.mark.unit

SameRecords = Callable[[Sequence[Record], Sequence[Record]], None]
NOW = 1_764_061_200_000

device_ids = st.one_of(
    st.sampled_from(["boiler-7", "pump-2", "meter:1", "A", "0.9"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}", fullmatch=True),
)
metric_names = st.one_of(st.sampled_from(["temp_c", "rh", "on", "rpm", "v"]), st.text(max_size=12))
short_decimals = st.builds(lambda i, s: i / 10**s, st.integers(-(10**9), 10**9), st.integers(0, 6))
metric_values = st.one_of(
    st.booleans(),
    st.integers(-MAX_INT, MAX_INT),
    st.sampled_from([0, 1, -1, MAX_INT, -MAX_INT]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 0.3, 1e-7, 21.37]),
    short_decimals,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
bodies = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
tags = st.dictionaries(st.text(max_size=8), st.text(max_size=12), min_size=1, max_size=3)
types = st.one_of(st.sampled_from([t.value for t in envelope.MessageType]), st.text(max_size=10))


@st.composite
def record_lists(draw: st.DrawFn, max_records: int = 25) -> list[Record]:
    """Records as a gateway buffers them: increasing sequence numbers with gaps, several devices
    interleaved, metric kinds that change between records, optional device seqs, tags and bodies."""
    n = draw(st.integers(1, max_records))
    pool = draw(st.lists(device_ids, min_size=1, max_size=8, unique=True))
    names = draw(st.lists(metric_names, min_size=1, max_size=6, unique=True))
    gaps = draw(st.lists(st.one_of(st.just(1), st.integers(1, 1000), st.integers(1, 2**40)), min_size=n, max_size=n))
    first = draw(st.one_of(st.integers(0, 1000), st.integers(0, MAX_U64 - sum(gaps))))
    steady = draw(st.booleans())
    records = []
    seq = first
    for i in range(n):
        if i:
            seq += gaps[i]
        device = draw(st.sampled_from(pool))
        ts = NOW + i * 10_000 if steady else draw(st.integers(0, MAX_TS_MS))
        metrics = {name: draw(metric_values) for name in draw(st.lists(st.sampled_from(names), max_size=len(names), unique=True))}
        records.append(
            Record(
                seq=seq,
                device_id=device,
                ts_ms=ts,
                type=draw(types),
                metrics=metrics,
                device_seq=draw(st.none() | st.integers(0, MAX_SEQ)),
                tags=draw(st.none() | tags),
                body=draw(st.none() | bodies),
            )
        )
    return records


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    records=record_lists(),
    compression=st.sampled_from(Compression),
    stream=st.sampled_from(Stream),
    gw_time=st.integers(0, MAX_U64),
)
def test_any_records_round_trip_exactly(
    records: list[Record], compression: Compression, stream: Stream, gw_time: int, same_records: SameRecords
) -> None:
    data = encode(records, gateway_id="gw-1", stream=stream, gateway_time_ms=gw_time, compression=compression)
    header = read_header(data)
    assert (header.first_seq, header.last_seq, header.record_count) == (records[0].seq, records[-1].seq, len(records))
    assert (header.stream, header.gateway_time_ms, header.compression) == (stream, gw_time, compression)
    same_records(decode(data).records, records)


@settings(max_examples=30, deadline=None)
@given(n_devices=st.integers(50, 300), per_device=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_many_devices_with_steady_cadence_round_trip(
    n_devices: int, per_device: int, seed: int, same_records: SameRecords
) -> None:
    rng = random.Random(seed)
    records = []
    seq = 1
    for step in range(per_device):
        for d in range(n_devices):
            value = round(rng.gauss(20, 5), rng.randrange(4)) if d % 3 else rng.randrange(100)
            records.append(Record(seq, f"dev-{d}", NOW + step * 10_000 + d, "telemetry", {"t": value, "ok": d % 2 == 0}, step))
            seq += rng.choice([1, 1, 1, 2, 50])
    same_records(decode(encode(records, gateway_id="gw-1", stream=Stream.TELEMETRY, gateway_time_ms=NOW)).records, records)


# Anything at all in the record fields: the encoder either refuses with the taxonomy's code or
# produces a batch that decodes to the same records. It never produces a batch a receiver refuses.
wild = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.dictionaries(
        st.one_of(st.text(max_size=3), st.integers()), st.one_of(st.text(max_size=3), st.integers(), st.floats()), max_size=2
    ),
)


@st.composite
def wild_records(draw: st.DrawFn) -> list[Record]:
    records = draw(record_lists(max_records=5))
    out = []
    for rec in records:
        fields = rec._asdict()
        for name in draw(st.lists(st.sampled_from(Record._fields), max_size=2, unique=True)):
            fields[name] = draw(wild)
        out.append(Record(**fields))
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=wild_records())
def test_the_encoder_refuses_or_round_trips_never_anything_else(records: list[Record], same_records: SameRecords) -> None:
    try:
        data = encode(records, gateway_id="gw-1", stream=Stream.TELEMETRY, gateway_time_ms=NOW)
    except BatchError as exc:
        assert exc.code is Code.BATCH_UNENCODABLE
        return
    same_records(decode(data).records, [r._replace(tags=r.tags or None) for r in records])  # {} travels as None


# Whatever the envelope parser accepts, a gateway can buffer and ship in a batch.
doc_values = st.one_of(
    json_values,
    st.sampled_from([float("nan"), float("inf"), 2**64, -(2**70), "\ud800", {"x": "\udfff"}, [[[[[[[[[[1]]]]]]]]]]]),
)


@st.composite
def device_messages(draw: st.DrawFn) -> bytes:
    doc: dict[str, object] = {
        "v": 1,
        "device": "boiler-7",
        "ts": NOW - draw(st.integers(0, 10**9)),
        "seq": draw(st.integers(0, MAX_SEQ)),
        "type": draw(st.sampled_from(envelope.MessageType)).value,
        "metrics": draw(st.dictionaries(st.sampled_from(["temp_c", "on", "rpm"]), metric_values, min_size=1)),
    }
    if draw(st.booleans()):
        doc["tags"] = draw(st.dictionaries(st.sampled_from(["zone", "site"]), st.text(max_size=10) | doc_values, min_size=1))
    if draw(st.booleans()):
        doc["body"] = draw(st.dictionaries(st.text(max_size=5), doc_values, max_size=3))
    for key in draw(st.lists(st.sampled_from(list(doc)), max_size=2)):
        doc[key] = draw(doc_values)
    return json.dumps(doc).encode()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=device_messages())
def test_every_accepted_envelope_can_be_shipped_in_a_batch(raw: bytes, same_records: SameRecords) -> None:
    try:
        env = envelope.parse(raw, now_ms=NOW)
    except EnvelopeError:
        assume(False)
        return
    rec = Record(1, env.device_id, env.ts_ms, env.type.value, dict(env.metrics), env.seq, dict(env.tags) or None, env.body)
    data = encode([rec], gateway_id="gw-1", stream=Stream.TELEMETRY, gateway_time_ms=NOW)
    same_records(decode(data).records, [rec])
