"""Pulse's error taxonomy: stable codes every tier reports, and the protocol's exception tree.

A code is a dotted, lower-case string (``area.reason``) that never changes meaning once released.
Gateways store it in their quarantine, the cloud stores it in its quarantine and returns it in API
error bodies, and operators search for it in the docs (docs/protocol.md lists every code).

Exception tree (everything the protocol package raises)::

    ProtocolError                      code: Code, message, context
    ├── EnvelopeError                  a device message that cannot be accepted
    ├── TopicError                     a topic outside the topic map
    ├── BatchError                     a sync batch that cannot be decoded or encoded
    ├── TwinError                      a twin update or stored twin document that cannot be accepted
    ├── CommandError                   a command that cannot be made, or a transition it cannot take
    ├── RuleError                      a rule definition or persisted rule state that cannot be used
    ├── ConnectorError                 a polled device's definition, value or write that cannot be used
    ├── SubscriptionError              a subscription change, or a device over the subscriptions' limit
    ├── JobError                       a job definition or a job move that cannot be accepted
    └── FirmwareError                  a firmware manifest, download range or artifact check that fails

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

    # gateway identity: enrollment and mutual TLS
    IDENTITY_BAD_CSR = "identity.bad_csr"
    """The certificate request is not a valid PEM CSR with an EC P-256/P-384 or RSA 2048+ key."""
    IDENTITY_UNTRUSTED = "identity.untrusted"
    """The certificate was not issued by this cloud's CA or names no gateway: enroll the gateway."""
    IDENTITY_EXPIRED = "identity.expired"
    """The gateway certificate is outside its validity period: check the gateway's clock, re-enroll."""
    IDENTITY_REVOKED = "identity.revoked"
    """An operator revoked this gateway certificate: enroll again with a new token."""
    IDENTITY_NO_CERTIFICATE = "identity.no_certificate"
    """The gateway listener needs a client certificate."""
    ENROLL_TOKEN_INVALID = "enroll.token_invalid"
    """The enrollment token is unknown, used already, or expired: ask the operator for a new one."""
    SYNC_GATEWAY_MISMATCH = "sync.gateway_mismatch"
    """A batch names another gateway than the client certificate does."""
    SYNC_UNKNOWN_DEVICE = "sync.unknown_device"
    """A synced record names a device that is not registered to this gateway's tenant (quarantined)."""
    SYNC_OUT_OF_ORDER = "sync.out_of_order"
    """A batch sent after another still in flight arrived before that one was stored: send it again after it."""
    SYNC_STREAM_UNAVAILABLE = "sync.stream_unavailable"
    """(With the ingest stream) JetStream did not acknowledge a batch's records in time or cannot be reached;
    nothing was acknowledged, the gateway's mark did not move; resend after Retry-After (HTTP 503)."""

    # twin: device twin documents and updates
    TWIN_VERSION_CONFLICT = "twin.version_conflict"
    """The update expected another document version: read the twin again and retry."""
    TWIN_BAD_UPDATE = "twin.bad_update"
    """The update is not ``{"state": {"desired": {...}|null, "reported": {...}|null}, "version": n}``."""
    TWIN_BAD_KEY = "twin.bad_key"
    """A key is not 1-64 characters of letters, digits, '_' and '-'."""
    TWIN_BAD_VALUE = "twin.bad_value"
    """A value is not JSON (or is a number outside ±2**53, NaN or infinite)."""
    TWIN_TOO_DEEP = "twin.too_deep"
    """The update nests objects/arrays deeper than the limit (6 levels by default)."""
    TWIN_TOO_LARGE = "twin.too_large"
    """The resulting state (or the raw update) is larger than the limit (8 KB of state by default)."""
    TWIN_BAD_DOCUMENT = "twin.bad_document"
    """A stored or received twin document is malformed (shape, metadata not mirroring the state)."""

    # commands: operator -> device
    COMMAND_BAD = "command.bad"
    """A command's id, name, parameters or expiry break the command rules."""
    COMMAND_ILLEGAL_TRANSITION = "command.illegal_transition"
    """The event is not allowed in the command's current state (see the transition table)."""
    COMMAND_BAD_ACK = "command.bad_ack"
    """A device's answer is not ``{"id": ..., "status": "succeeded"|"failed", ...}``."""

    # rules: rule definitions (API, downlink to gateways) and persisted rule state
    RULE_NOT_OBJECT = "rule.not_object"  # a rule is a JSON object
    RULE_UNKNOWN_FIELD = "rule.unknown_field"  # a field this rule kind does not have (often a typo)
    RULE_BAD_ID = "rule.bad_id"  # id: 1-128 letters, digits, '_', '-', '.', ':'
    RULE_BAD_NAME = "rule.bad_name"  # name: a string of at most 200 characters
    RULE_BAD_VERSION = "rule.bad_version"  # version: an integer >= 1
    RULE_BAD_KIND = "rule.bad_kind"  # kind: threshold | heartbeat
    RULE_BAD_SEVERITY = "rule.bad_severity"  # severity: critical | major | minor | warning | info
    RULE_BAD_FLAG = "rule.bad_flag"  # enabled / auto_close: true or false
    RULE_BAD_METRIC = "rule.bad_metric"  # metric: a metric name as devices send it
    RULE_BAD_OPERATOR = "rule.bad_operator"  # operator: GT | GTE | LT | LTE | EQ | NEQ
    RULE_BAD_THRESHOLD = "rule.bad_threshold"  # threshold / clear_threshold missing, wrong kind or wrong side
    RULE_BAD_WINDOW = "rule.bad_window"  # window_s: seconds, 0 to 7 days
    RULE_BAD_SCOPE = "rule.bad_scope"  # scope: devices, tags, sites
    RULE_BAD_HEARTBEAT = "rule.bad_heartbeat"  # interval_s, stale_after, offline_after, alert_on, intervals
    RULE_BAD_FLAPPING = "rule.bad_flapping"  # flapping: {cycles, period_s} or null
    RULE_BAD_STATE = "rule.bad_state"  # persisted rule state that is not what this code wrote
    RULE_STATE_VERSION_UNSUPPORTED = "rule.state_version_unsupported"  # state written by a newer schema
    RULE_STATE_MISMATCH = "rule.state_mismatch"  # state passed with another rule or device
    RULE_BAD_ALERT_RECORD = "rule.bad_alert_record"  # an alert record synced by a gateway that is not what it wrote
    RULE_RESERVED_ID = "rule.reserved_id"  # rule ids starting with "pulse:", GATEWAY_OFFLINE and NO_HEARTBEAT are Pulse's own

    # notifications: outbound channels, the SSRF guard, on-call schedules and escalation policies
    NOTIFY_BAD_CONFIG = "notify.bad_config"
    """A channel's settings miss a field or hold a bad value; the message names the field."""
    NOTIFY_UNKNOWN_CHANNEL = "notify.unknown_channel"
    """The channel kind is not one Pulse sends to (slack, pagerduty, teams, webhook, email, snmp, mqtt)."""
    NOTIFY_BAD_URL = "notify.bad_url"
    """A URL (or a redirect's Location) is not an absolute http(s) URL with a host."""
    NOTIFY_SSRF_BLOCKED = "notify.ssrf_blocked"
    """The host is, or resolves to, a private, loopback, link-local, metadata or other non-public address."""
    NOTIFY_DNS_FAILED = "notify.dns_failed"
    """The receiver's host name did not resolve; retried, as DNS failures are often brief."""
    NOTIFY_TOO_MANY_REDIRECTS = "notify.too_many_redirects"
    """The receiver redirected more times than allowed (3): point the channel at the final URL."""
    NOTIFY_UNREACHABLE = "notify.unreachable"
    """The connection to the receiver failed (refused, reset, no route); retried."""
    NOTIFY_TIMEOUT = "notify.timeout"
    """The receiver did not answer in time; retried."""
    NOTIFY_RATE_LIMITED = "notify.rate_limited"
    """The receiver asked Pulse to slow down (HTTP 429); retried after its Retry-After."""
    NOTIFY_RECEIVER_ERROR = "notify.receiver_error"
    """The receiver failed on its side (HTTP 5xx, SMTP 4xx); retried."""
    NOTIFY_REJECTED = "notify.rejected"
    """The receiver refused the notification for good (HTTP 4xx, SMTP 5xx); the reason quotes it: fix the channel."""
    NOTIFY_AUTH_FAILED = "notify.auth_failed"
    """The receiver refused the channel's credentials (HTTP 401/403, SMTP 535): fix the key or password."""
    NOTIFY_BAD_SCHEDULE = "notify.bad_schedule"
    """An on-call schedule breaks the schedule rules (time zone, rotation, layers, overrides)."""
    NOTIFY_BAD_POLICY = "notify.bad_policy"
    """An escalation policy breaks the policy rules (1-5 levels, delays, targets)."""
    NOTIFY_BAD_ROUTE = "notify.bad_route"
    """A routing rule names a channel or escalation policy that is not in your tenant."""
    NOTIFY_NOT_RETRYABLE = "notify.not_retryable"
    """Only dead-lettered (or failed) deliveries can be retried by hand; this one is pending, sending or delivered."""
    NOTIFY_OUTCOME_UNKNOWN = "notify.outcome_unknown"
    """Pulse stopped (crash, restart) after starting a send and before recording its answer; the receiver may or
    may not have it. Channels without idempotency are not sent again (no duplicate page): retry by hand if needed."""

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
    AUTH_SESSION_REVOKED = "auth.session_revoked"
    """The access token was valid, but its account has since been disabled, removed or signed out everywhere."""
    AUTH_OIDC_FAILED = "auth.oidc_failed"
    """Console sign-in through the identity provider failed (its answer, the ID token, or the claims); the message says which."""

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

    # report: SLA reports and exports (cloud)
    REPORT_BAD_RANGE = "report.bad_range"
    """The period is reversed, empty, has no time zone, has not started, or is longer than a report covers."""
    REPORT_BAD_FORMAT = "report.bad_format"
    """The report or export format is not one the endpoint writes (the message lists those it does)."""

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
    INGEST_STREAM_UNAVAILABLE = "ingest.stream_unavailable"
    """The ingest stream (NATS JetStream) did not acknowledge in time or cannot be reached; nothing was accepted; retry later (HTTP 503)."""

    # gateway: the edge agent's own refusals (configuration, devices, local storage)
    GATEWAY_CONFIG_INVALID = "gateway.config_invalid"
    """The gateway's TOML file or a PULSE_GW_* variable has an unknown key or a value of the wrong kind."""
    GATEWAY_DEVICE_EXISTS = "gateway.device_exists"
    """`pulse gateway device add` for a device id that already has credentials."""
    GATEWAY_DEVICE_UNKNOWN = "gateway.device_unknown"
    """A device id with no credentials on this gateway."""
    GATEWAY_STORAGE_FAILED = "gateway.storage_failed"
    """The gateway could not write its SQLite file (disk full, permissions); nothing was acknowledged."""
    GATEWAY_NOT_ENROLLED = "gateway.not_enrolled"
    """The gateway has no certificate from the cloud yet: run `pulse gateway enroll --cloud URL --token T`."""
    GATEWAY_CLOUD_UNREACHABLE = "gateway.cloud_unreachable"
    """The cloud could not be reached (DNS, refused, unreachable, no connection in time): check the URL, the site's link and firewall."""
    GATEWAY_TLS_FAILED = "gateway.tls_failed"
    """The TLS handshake with the cloud failed (untrusted or mismatched certificate, wrong clock)."""
    GATEWAY_CLOUD_ERROR = "gateway.cloud_error"
    """The cloud answered with an error or something the gateway cannot read; the message quotes it."""
    GATEWAY_CLOUD_TIMEOUT = "gateway.cloud_timeout"
    """A request to the cloud got no answer in the time the link's measured rate and round trip allow
    (a read or write timeout, also inside an established TLS connection); the batch is halved and sent again."""
    GATEWAY_UPLINK_STALLED = "gateway.uplink_stalled"
    """The backlog did not move while the link was up; the uplink's watchdog restarted the uplink's state."""

    # identity hardening (issue 15): renewal, re-key, request limits, enrollment throttling
    IDENTITY_KEY_CHANGED = "identity.key_changed"
    """A renewal's CSR holds another key than the gateway's certificate: renewal keeps the key; a new
    key goes through ``POST /sync/v1/rekey`` (audited, revokes the old certificate)."""
    IDENTITY_SUPERSEDED = "identity.superseded"
    """A renewal replaced this certificate and its overlap has passed: use the newest certificate."""
    API_TOO_LARGE = "api.too_large"
    """The request body is over the endpoint's size limit (HTTP 413); nothing of it was used."""
    ENROLL_RATE_LIMITED = "enroll.rate_limited"
    """Too many enrollment requests from this address; retry after the Retry-After seconds (HTTP 429)."""
    GATEWAY_INSECURE_URL = "gateway.insecure_url"
    """`pulse gateway enroll` was given a plain http:// cloud URL: the CA it answers with becomes the
    gateway's trust anchor, so anyone on the path could substitute theirs; use https or --insecure."""
    # ack: acknowledging or resolving alerts from where people are paged (PagerDuty, Slack, email links)
    ACK_BAD_SIGNATURE = "ack.bad_signature"
    """The request's signature (PagerDuty, Slack, the email link's token) or Teams shared secret does not verify."""
    ACK_EXPIRED = "ack.expired"
    """The signed request or link is too old (Slack: over 5 minutes; email links: past their expiry)."""
    ACK_FORBIDDEN = "ack.forbidden"
    """The person is known but their role may not acknowledge or resolve alerts in this tenant (tenant-admin setting)."""
    ACK_UNKNOWN_ALERT = "ack.unknown_alert"
    """No alert of the channel's tenant matches (the incident, button or link names another tenant's alert or none)."""
    ACK_BAD_PAYLOAD = "ack.bad_payload"
    """The body is not the provider's documented shape (missing event type, incident, action or user)."""
    ACK_NOT_CONFIGURED = "ack.not_configured"
    """The channel is unknown, disabled, of another kind, or has no inbound secret configured."""
    # connectors: equipment the gateway polls (Modbus, SNMP); definitions, values, writes
    CONNECTOR_BAD_DEVICE = "connector.bad_device"
    """A connector device definition is not a table, lacks its id, or has an unknown kind or a bad field."""
    CONNECTOR_UNKNOWN_FIELD = "connector.unknown_field"
    """A device or point definition has a field that kind does not have (often a typo)."""
    CONNECTOR_UNKNOWN_PROFILE = "connector.unknown_profile"
    """``profile`` names no profile shipped with this gateway."""
    CONNECTOR_BAD_POINT = "connector.bad_point"
    """A register or OID point is invalid: metric name, address, OID, data type, order, scale, or a duplicate."""
    CONNECTOR_DUPLICATE = "connector.duplicate"
    """Two devices with one id, or two points with one metric in a device."""
    CONNECTOR_NOT_WRITABLE = "connector.not_writable"
    """A write to a metric that is not marked writable (or lives in a read-only table)."""
    CONNECTOR_BAD_VALUE = "connector.bad_value"
    """A value to write does not fit the point's data type after scale and offset."""
    CONNECTOR_WRONG_TYPE = "connector.wrong_type"
    """The device answered with a value of another type than the point expects (a string for a number)."""
    CONNECTOR_TIMEOUT = "connector.timeout"
    """The device did not answer within the device's timeout (after its retries)."""
    CONNECTOR_UNREACHABLE = "connector.unreachable"
    """The device's host or serial line could not be opened (refused, no route, no such port)."""
    CONNECTOR_DEVICE_EXCEPTION = "connector.device_exception"
    """The device answered with an error: a Modbus exception response or an SNMP error status."""
    CONNECTOR_WRITE_NOT_CONFIRMED = "connector.write_not_confirmed"
    """A write was accepted but reading the point back gave another value."""
    CONNECTOR_DEFINED_LOCALLY = "connector.defined_locally"
    """A device pushed from the cloud has the id of one defined in the gateway's own gateway.toml; the
    gateway keeps its file's definition (reported back in the gateway's connector status)."""
    CONNECTOR_DEVICE_ELSEWHERE = "connector.device_elsewhere"
    """The device id belongs to a device of this tenant served by another gateway (HTTP 409)."""
    CONNECTOR_VERSION_CONFLICT = "connector.version_conflict"
    """The connector set was changed since the version the change was based on (HTTP 409, with current_version)."""

    # subscription: what a tenant bought (kinds, lifecycle, device limits) and field activation codes (issue 20)
    SUBSCRIPTION_INVALID = "subscription.invalid"
    """A subscription's kind, dates, device limit or parent are not accepted; the message names the field."""
    SUBSCRIPTION_ILLEGAL_TRANSITION = "subscription.illegal_transition"
    """The change is not allowed in the subscription's state (EXPIRED is final; an ADDON follows its MAIN)."""
    SUBSCRIPTION_DEVICE_LIMIT = "subscription.device_limit"
    """Adding these devices would pass the device limit of the tenant's active subscriptions; nothing was added."""
    SUBSCRIPTION_SUSPENDED = "subscription.suspended"
    """The tenant's subscription is suspended: data is refused (gateways keep buffering it) until it is renewed."""
    SUBSCRIPTION_EXPIRED = "subscription.expired"
    """The tenant's subscriptions have expired: data is refused; stored data is retained."""
    ACTIVATION_CODE_INVALID = "activation.code_invalid"
    """The activation code is unknown, used already, or expired (the three are never told apart)."""
    ACTIVATION_RATE_LIMITED = "activation.rate_limited"
    """Too many activation attempts from this address or gateway; retry after the Retry-After seconds (HTTP 429)."""

    # users: tenant user administration (issue 20)
    USERS_LINK_INVALID = "users.link_invalid"
    """The invitation or password-reset link is unknown, used already, expired, or its account is disabled (HTTP 410)."""
    USERS_LAST_ADMIN = "users.last_admin"
    """The change would leave the tenant without an enabled tenant admin; nothing was changed."""
    USERS_RATE_LIMITED = "users.rate_limited"
    """Too many forgotten-password requests from this address; retry after the Retry-After seconds (HTTP 429)."""
    USERS_SELF = "users.self"
    """Nobody disables, removes or demotes their own account (ask another admin); nothing was changed."""

    # quarantine: re-submitting a quarantined message through ingest (issue 18, part B)
    QUARANTINE_NO_DEVICE = "quarantine.no_device"
    """The quarantined message names no device of the tenant that may send (unknown, disabled or decommissioned)."""
    QUARANTINE_STILL_REFUSED = "quarantine.still_refused"
    """Ingest refused the re-submitted message again (the answer carries ingest's code); it stays in quarantine."""
    ONCALL_MEMBER_UNREACHABLE = "oncall.member_unreachable"
    """An on-call member (layer or override) has no channel, or its channel is disabled: paging them would reach nobody."""
    ONCALL_UNKNOWN_USER = "oncall.unknown_user"
    """An on-call member names a user who is not a user of the tenant, or is disabled."""

    # jobs: one action over many devices, in stages (issue 22)
    JOB_INVALID = "job.invalid"
    """A job's target, action or rollout is not accepted; the message names the field."""
    JOB_ILLEGAL_STATE = "job.illegal_state"
    """The job cannot do that in its state (a finished job cannot be cancelled; only desired-state jobs roll back)."""
    JOB_NO_DEVICES = "job.no_devices"
    """The job's target query matched no device of the tenant when it started."""

    # firmware: artifacts, their download by gateways and devices, and their check on the device (issue 22)
    FIRMWARE_INVALID = "firmware.invalid"
    """An artifact's version, model, SHA-256, size or signature is malformed; the message names the field."""
    FIRMWARE_HASH_MISMATCH = "firmware.hash_mismatch"
    """The bytes do not have the SHA-256 the manifest names (upload, gateway cache or device): refused."""
    FIRMWARE_BAD_SIGNATURE = "firmware.bad_signature"
    """The manifest's signature does not verify with the tenant's firmware key: the device refuses it."""
    FIRMWARE_TOO_LARGE = "firmware.too_large"
    """The artifact is larger than the cloud's ``firmware_max_bytes``."""
    FIRMWARE_BAD_RANGE = "firmware.bad_range"
    """A ``Range`` header that is not one ``bytes=start-[end]`` inside the artifact (HTTP 416)."""
    FIRMWARE_DUPLICATE = "firmware.duplicate"
    """The tenant already has an artifact with this model and version (HTTP 409)."""
    FIRMWARE_URL_EXPIRED = "firmware.url_expired"
    """A gateway's local download URL whose token is wrong or past its expiry (HTTP 403)."""
    FIRMWARE_STORAGE_UNAVAILABLE = "firmware.storage_unavailable"
    """The artifacts' storage (the S3 bucket) refused or failed to keep an upload (HTTP 503, Retry-After)."""

    # storage: the cloud's database (refusals at migration, before anything is changed)
    STORAGE_TIMESCALEDB_UNAVAILABLE = "storage.timescaledb_unavailable"
    """PULSE_STORAGE_ENGINE=timescaledb, but the server has not installed or not preloaded TimescaleDB."""

    # mqtt: the MQTT broker shared by the gateway and the cloud's endpoint for direct devices (issue 23)
    MQTT_SESSION_STORE_FAILED = "mqtt.session_store_failed"
    """The file holding persistent MQTT sessions (subscriptions, queued QoS 1 messages) could not be read or written."""


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


class TwinError(ProtocolError):
    """A twin update that is refused (conflict, limits, shape), or a twin document that is malformed."""


class CommandError(ProtocolError):
    """A command that breaks the command rules, or an event its state machine does not allow."""


class RuleError(ProtocolError):
    """A rule definition refused at the boundary, or rule state that cannot be used."""


class ConnectorError(ProtocolError):
    """A connector device definition refused at the boundary, a value read that cannot be used, or a
    write that cannot be made or was not confirmed."""


class SubscriptionError(ProtocolError):
    """A subscription change the lifecycle refuses, or devices over the subscriptions' device limit."""


class JobError(ProtocolError):
    """A job's target, action or rollout refused at the boundary, or a move its state does not allow."""


class FirmwareError(ProtocolError):
    """A firmware manifest that is malformed, a range outside the artifact, or bytes that fail the check."""
