"""Pulse's error taxonomy: stable codes every tier reports, and the protocol's exception tree.

A code is a dotted, lower-case string (``area.reason``) that never changes meaning once released.
Gateways store it in their quarantine, the cloud stores it in its quarantine and returns it in API
error bodies, and operators search for it in the docs (docs/protocol.md lists every code).

Exception tree (everything the protocol package raises)::

    ProtocolError                      code: Code, message, context
    ├── EnvelopeError                  a device message that cannot be accepted
    ├── TopicError                     a topic outside the topic map
    └── BatchError                     a sync batch that cannot be decoded or encoded

Other packages derive their own trees from ``PulseError`` and reuse ``Code`` for what reaches users.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable error codes. Add new ones at the end of their area; never reuse a retired name."""

    # envelope: device -> edge/cloud messages
    ENVELOPE_TOO_LARGE = "envelope.too_large"
    ENVELOPE_NOT_JSON = "envelope.not_json"
    ENVELOPE_NOT_OBJECT = "envelope.not_object"
    ENVELOPE_VERSION_MISSING = "envelope.version_missing"
    ENVELOPE_VERSION_UNSUPPORTED = "envelope.version_unsupported"
    ENVELOPE_BAD_TYPE = "envelope.bad_type"
    ENVELOPE_BAD_DEVICE = "envelope.bad_device"
    ENVELOPE_DEVICE_MISMATCH = "envelope.device_mismatch"
    ENVELOPE_BAD_TIMESTAMP = "envelope.bad_timestamp"
    ENVELOPE_TIMESTAMP_OUT_OF_WINDOW = "envelope.timestamp_out_of_window"
    ENVELOPE_BAD_SEQUENCE = "envelope.bad_sequence"
    ENVELOPE_BAD_METRIC = "envelope.bad_metric"
    ENVELOPE_TOO_MANY_METRICS = "envelope.too_many_metrics"
    ENVELOPE_BAD_TAG = "envelope.bad_tag"
    ENVELOPE_BAD_BODY = "envelope.bad_body"
    ENVELOPE_MISSING_METRICS = "envelope.missing_metrics"

    # topics
    TOPIC_BAD_DEVICE_ID = "topic.bad_device_id"
    TOPIC_UNKNOWN = "topic.unknown"
    TOPIC_NOT_OWN_SUBTREE = "topic.not_own_subtree"
    TOPIC_DOWNLINK_ONLY = "topic.downlink_only"
    """A device published on a topic only the gateway or cloud publishes (twin/desired, cmd/{id})."""

    # sync batches: edge -> cloud
    BATCH_TOO_SHORT = "batch.too_short"
    BATCH_BAD_MAGIC = "batch.bad_magic"
    BATCH_VERSION_UNSUPPORTED = "batch.version_unsupported"
    BATCH_TOO_LARGE = "batch.too_large"
    BATCH_TOO_MANY_RECORDS = "batch.too_many_records"
    BATCH_CHECKSUM_MISMATCH = "batch.checksum_mismatch"
    BATCH_DECOMPRESS_FAILED = "batch.decompress_failed"
    BATCH_LENGTH_MISMATCH = "batch.length_mismatch"
    BATCH_MALFORMED = "batch.malformed"
    BATCH_BAD_SEQUENCE = "batch.bad_sequence"
    BATCH_UNENCODABLE = "batch.unencodable"

    # gateway: the edge agent's own refusals (configuration, devices, local storage)
    GATEWAY_CONFIG_INVALID = "gateway.config_invalid"
    """The gateway's TOML file or a PULSE_GW_* variable has an unknown key or a value of the wrong kind."""
    GATEWAY_DEVICE_EXISTS = "gateway.device_exists"
    """`pulse gateway device add` for a device id that already has credentials."""
    GATEWAY_DEVICE_UNKNOWN = "gateway.device_unknown"
    """A device id with no credentials on this gateway."""
    GATEWAY_STORAGE_FAILED = "gateway.storage_failed"
    """The gateway could not write its SQLite file (disk full, permissions); nothing was acknowledged."""


class PulseError(Exception):
    """Root of every Pulse error that carries a stable code and a sentence a person can act on."""

    def __init__(self, code: Code, message: str, **context: object) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.context = context

    def as_dict(self) -> dict[str, object]:
        """The shape used in API error bodies and quarantine rows."""
        return {"code": str(self.code), "message": self.message, **{k: _plain(v) for k, v in self.context.items()}}


def _plain(value: object) -> object:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


class ProtocolError(PulseError):
    """Anything the pure protocol code refuses."""


class EnvelopeError(ProtocolError):
    """A device message that cannot be accepted; it belongs in quarantine with its raw bytes."""


class TopicError(ProtocolError):
    """A topic outside the topic map, or a device reaching outside its own subtree."""


class BatchError(ProtocolError):
    """A sync batch that cannot be decoded (or, on the edge, encoded)."""
