"""The pure intake decision: ACL, type from the topic, stream per type, quarantine codes, fingerprints."""

from __future__ import annotations

import pytest

from pulse.broker.acl import may_publish, may_subscribe
from pulse.edge.ingest import Forward, Quarantine, Store, classify, fingerprint
from pulse.protocol.batch import Stream
from pulse.protocol.envelope import Limits

pytestmark = pytest.mark.unit

NOW = 1_764_061_200_000
LIMITS = Limits(max_bytes=1024)


@pytest.mark.parametrize(
    ("topic", "payload", "stream", "type_"),
    [
        ("pulse/d1/telemetry", b'{"v":1,"seq":1,"metrics":{"t":1}}', Stream.TELEMETRY, "telemetry"),
        ("pulse/d1/heartbeat", b'{"v":1}', Stream.TELEMETRY, "heartbeat"),
        ("pulse/d1/event", b'{"v":1,"body":{"door":"open"}}', Stream.EVENTS, "event"),
        ("pulse/d1/cmd/c-7/ack", b'{"v":1,"body":{"id":"c-7","status":"done"}}', Stream.TWIN, "command_ack"),
        ("pulse/d1/twin/reported", b'{"v":1,"body":{"fw":"1.2"}}', Stream.TWIN, "twin_reported"),
    ],
)
def test_valid_message_goes_to_the_stream_of_its_type(topic, payload, stream, type_):
    decision = classify("d1", topic, payload, now_ms=NOW, limits=LIMITS)
    assert isinstance(decision, Store)
    assert (decision.stream, decision.type, decision.device_id, decision.raw) == (stream, type_, "d1", payload)
    assert decision.ts_ms == NOW  # no ts: the gateway's clock


@pytest.mark.parametrize(
    ("identity", "topic", "payload", "code", "denied"),
    [
        ("d1", "pulse/d2/telemetry", b'{"v":1,"metrics":{"t":1}}', "topic.not_own_subtree", True),
        ("d1", "pulse/d1/twin/desired", b'{"v":1}', "topic.downlink_only", True),
        ("d1", "pulse/d1/cmd/x", b'{"v":1}', "topic.downlink_only", True),
        ("d1", "other/topic", b"{}", "topic.unknown", True),
        ("d1", "pulse/d1/nonsense", b"{}", "topic.unknown", True),
        (None, "pulse/d1/twin/desired", b"{}", "topic.downlink_only", True),
        ("d1", "pulse/d1/telemetry", b"garbage", "envelope.not_json", False),
        ("d1", "pulse/d1/telemetry", b'{"v":1,"metrics":{"t":NaN}}', "envelope.bad_metric", False),
        ("d1", "pulse/d1/telemetry", b'{"v":1,"metrics":{"t":1},"pad":"' + b"x" * 2000 + b'"}', "envelope.too_large", False),
        ("d1", "pulse/d1/telemetry", b'{"v":3,"metrics":{"t":1}}', "envelope.version_unsupported", False),
        ("d1", "pulse/d1/telemetry", b'{"v":1}', "envelope.missing_metrics", False),
        ("d1", "pulse/d1/event", b'{"v":1,"type":"telemetry","metrics":{"t":1}}', "envelope.bad_type", False),
        ("d1", "pulse/d1/telemetry", b'{"v":1,"device":"d2","metrics":{"t":1}}', "envelope.device_mismatch", False),
    ],
)
def test_refused_message_is_quarantined_with_its_code(identity, topic, payload, code, denied):
    decision = classify(identity, topic, payload, now_ms=NOW, limits=LIMITS)
    assert isinstance(decision, Quarantine)
    assert (decision.code, decision.denied, decision.raw) == (code, denied, payload)
    assert decision.message


def test_twin_get_is_forwarded_not_buffered():
    assert classify("d1", "pulse/d1/twin/get", b"", now_ms=NOW, limits=LIMITS) == Forward("d1")


def test_anonymous_client_publishes_as_the_device_named_in_the_topic():
    decision = classify(None, "pulse/legacy/telemetry", b'{"v":1,"metrics":{"t":1}}', now_ms=NOW, limits=LIMITS)
    assert isinstance(decision, Store) and decision.device_id == "legacy"


def test_fingerprint_only_for_messages_with_a_seq_and_it_follows_the_bytes():
    with_seq = classify("d1", "pulse/d1/telemetry", b'{"v":1,"seq":5,"metrics":{"t":1}}', now_ms=NOW, limits=LIMITS)
    without = classify("d1", "pulse/d1/telemetry", b'{"v":1,"metrics":{"t":1}}', now_ms=NOW, limits=LIMITS)
    assert isinstance(with_seq, Store) and isinstance(without, Store)
    assert with_seq.fp == fingerprint(b'{"v":1,"seq":5,"metrics":{"t":1}}') and without.fp is None
    assert fingerprint(b'{"v":1,"seq":5,"metrics":{"t":2}}') != with_seq.fp


@pytest.mark.parametrize(
    ("identity", "topic_filter", "allowed"),
    [
        ("d1", "pulse/d1/#", True),
        ("d1", "pulse/d1/cmd/+", True),
        ("d1", "pulse/d2/#", False),
        ("d1", "pulse/+/telemetry", False),
        ("d1", "#", False),
        (None, "pulse/#", True),
        (None, "other/#", False),
    ],
)
def test_subscribe_acl(identity, topic_filter, allowed):
    assert may_subscribe(identity, topic_filter) is allowed


def test_publish_acl_uses_the_protocol_predicate():
    assert may_publish("d1", "pulse/d1/telemetry")
    assert not may_publish("d1", "pulse/d2/telemetry")
    assert not may_publish("d1", "pulse/d1/twin/desired")
