"""What the gateway does with one PUBLISH from a device: a pure decision, no I/O.

``classify(identity, topic, raw, now_ms=..., limits=...)`` returns one of

- ``Store``       a valid message: append it to the buffer stream for its type (and forward it to
                  local subscribers);
- ``Quarantine``  refused: the topic is not the device's to publish on (``denied``), or the payload
                  is not a valid envelope; kept with its code and raw bytes, never forwarded;
- ``Forward``     valid, but nothing to buffer (``twin/get``: a request the twin feature answers,
                  edge/twin.py).

The device id always comes from the topic; an authenticated device may only publish under its own
id (``pulse.protocol.topics.device_may_publish``). The message type comes from the topic kind.

Deduplication key: a message that carries ``seq`` gets a 64-bit fingerprint of its raw bytes. A
retransmission (same device, same bytes, hence same seq) has the same fingerprint; a device that
rebooted and restarted its seq at 0 sends different bytes (another ts or values) and does not.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from pulse.broker.acl import denial, may_publish
from pulse.protocol import connectivity, envelope, topics
from pulse.protocol.batch import Stream
from pulse.protocol.envelope import Limits, MessageType
from pulse.protocol.errors import Code, EnvelopeError

KIND_TYPE = envelope.TOPIC_TYPE

TYPE_STREAM: dict[MessageType, Stream] = {
    MessageType.TELEMETRY: Stream.TELEMETRY,
    MessageType.HEARTBEAT: Stream.TELEMETRY,
    MessageType.EVENT: Stream.EVENTS,
    MessageType.COMMAND_ACK: Stream.TWIN,
    MessageType.TWIN_REPORTED: Stream.TWIN,
}
"""Telemetry and heartbeats may be dropped under the byte quota; events, acks and twin reports never.
Command answers travel with twin reports (and the gateway's ``command_state`` records) on Stream.TWIN,
so the cloud sees a command's states in the order they happened."""


class Store(NamedTuple):
    """A record for a buffer stream. A NamedTuple: one is built per message (4x cheaper than a frozen dataclass)."""

    stream: Stream
    device_id: str
    ts_ms: int
    type: str
    device_seq: int | None
    raw: bytes
    fp: int | None
    """Fingerprint for deduplication; None when the message has no seq (then it cannot be deduplicated)."""
    envelope: envelope.Envelope | None = None
    """The message as ingest parsed it (a device's message); the listeners after the commit (local
    rules, twins) read it instead of parsing ``raw`` again. None for the gateway's own records."""


@dataclass(frozen=True, slots=True)
class Quarantine:
    device_id: str | None
    topic: str
    code: Code
    message: str
    raw: bytes
    denied: bool = False
    """True when the publisher was not allowed to publish on the topic (ACL)."""


@dataclass(frozen=True, slots=True)
class Forward:
    device_id: str


Decision = Store | Quarantine | Forward


def fingerprint(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


@functools.lru_cache(maxsize=16384)
def _topic(topic: str) -> topics.Topic:
    return topics.parse(topic)


def classify(identity: str | None, topic: str, raw: bytes, *, now_ms: int, limits: Limits) -> Decision:
    if not may_publish(identity, topic):
        code, message = denial(identity, topic)
        return Quarantine(identity, topic[:512], code, message, raw, denied=True)
    parsed = _topic(topic)
    msg_type = KIND_TYPE.get(parsed.kind)
    if msg_type is None:
        return Forward(parsed.device_id)
    try:
        env = envelope.parse(raw, now_ms=now_ms, device_id=parsed.device_id, expected_type=msg_type, limits=limits)
    except EnvelopeError as exc:
        return Quarantine(parsed.device_id, topic, exc.code, exc.message, raw)
    fp = fingerprint(raw) if env.seq is not None else None
    return Store(TYPE_STREAM[env.type], env.device_id, env.ts_ms, env.type.value, env.seq, raw, fp, env)


def connectivity_record(device_id: str, kind: connectivity.Connectivity, *, now_ms: int, will: bool) -> Store:
    """The EVENTS record for a device's connection coming or going (protocol/connectivity.py)."""
    raw = connectivity.event_message(kind, now_ms=now_ms, will=will)
    return Store(Stream.EVENTS, device_id, now_ms, MessageType.EVENT.value, None, raw, None)
