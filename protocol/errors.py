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

    # auth: users, sessions and device credentials (cloud)
    AUTH_MISSING = "auth.missing"
    """No credentials were sent: an Authorization: Bearer header is required."""
    AUTH_INVALID = "auth.invalid"
    """The token is malformed, wrongly signed, revoked or unknown."""
    AUTH_EXPIRED = "auth.expired"
    """The token was valid but has expired: log in or refresh again."""
    AUTH_BAD_LOGIN = "auth.bad_login"
    """Email or password is wrong (the two are never told apart)."""
    AUTH_FORBIDDEN = "auth.forbidden"
    """Authenticated, but the account's roles do not allow this action."""
    AUTH_REFRESH_INVALID = "auth.refresh_invalid"
    """The refresh token is unknown, expired, or was already used (reuse revokes its whole family)."""
    AUTH_DEVICE_DISABLED = "auth.device_disabled"
    """The device credential is valid but the device is disabled or decommissioned."""

    # api: the cloud's customer and operator APIs
    API_NOT_FOUND = "api.not_found"
    """No such object in your tenant (objects of other tenants also answer this)."""
    API_INVALID = "api.invalid"
    """The request body, query or path is invalid; the message names the field."""
    API_CONFLICT = "api.conflict"
    """The change conflicts with existing data (a duplicate name or device id)."""
    API_IMPORT_REJECTED = "api.import_rejected"
    """A bulk import had errors; nothing was imported; the per-row report says what to fix."""
    API_INTERNAL = "api.internal"
    """An unexpected server error; the server log has details."""

    # ingest: HTTP ingest for direct devices (cloud)
    INGEST_TOO_LARGE = "ingest.too_large"
    """The request body exceeds the configured limit (HTTP 413)."""
    INGEST_TOO_MANY_MESSAGES = "ingest.too_many_messages"
    """More envelopes in one request than the configured limit."""
    INGEST_EMPTY = "ingest.empty"
    """The body is an empty JSON array."""
    INGEST_RATE_LIMITED = "ingest.rate_limited"
    """The device sent faster than its rate limit; retry after the Retry-After seconds (HTTP 429)."""
    INGEST_OVERLOADED = "ingest.overloaded"
    """The writer queue is full or storage is unavailable; nothing was stored; retry later (HTTP 503)."""


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
