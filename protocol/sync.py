"""Sync bookkeeping shared by the gateway's uplink and the cloud's receiver: pure decisions only.

Delivery contract (DESIGN.md): the cloud commits a batch's rows and the gateway's high-water
sequence for that stream in one transaction, then acks the batch's last sequence. A batch at or
below the mark is acked and not written again; a batch that overlaps the mark is written from the
mark on. The edge deletes only what was acked. Gaps above the mark are legal: the gateway's byte
quota may have dropped old telemetry, and it reports how much separately.

Also here: reconnect backoff (exponential with full jitter), the order in which the gateway drains
its streams, and the clock rule for gateways whose clock is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pulse.protocol import commands, twin
from pulse.protocol.batch import VERSION_1, VERSIONS, Header, Record, Stream
from pulse.protocol.commands import Command, CommandEvent, CommandState
from pulse.protocol.envelope import MessageType
from pulse.protocol.errors import CommandError, TwinError
from pulse.protocol.rules import Device
from pulse.protocol.topics import valid_command_id, valid_device_id
from pulse.protocol.twin import TwinDocument

# The gateway sends these first: alerts and events matter more than telemetry, and twin reported
# updates keep their own order within their stream.
DRAIN_ORDER: tuple[Stream, ...] = (Stream.ALERTS, Stream.EVENTS, Stream.TWIN, Stream.TELEMETRY)


class Verdict(StrEnum):
    WRITE = "write"  # every record is new
    PARTIAL = "partial"  # some records are at or below the mark: write the rest
    REPLAY = "replay"  # everything was written before: ack, write nothing


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    new_records: Sequence[Record]
    new_high_water: int
    ack_seq: int


def classify(header: Header, high_water: int) -> Verdict:
    """Decide from the header alone (before decompressing) whether anything in a batch is new."""
    if header.last_seq <= high_water:
        return Verdict.REPLAY
    if header.first_seq <= high_water:
        return Verdict.PARTIAL
    return Verdict.WRITE


def in_order(after: int | None, high_water: int) -> bool:
    """May a batch sent after one ending at ``after`` (None: after nothing in flight) be stored now?
    Only when that batch is stored: storing it first would make the earlier one a replay."""
    return after is None or high_water >= after


def admit(header: Header, records: Sequence[Record], high_water: int) -> Admission:
    """Which records of a decoded batch to write, the mark to commit with them, and what to ack."""
    verdict = classify(header, high_water)
    if verdict is Verdict.REPLAY:
        return Admission(verdict, (), high_water, header.last_seq)
    new = records if verdict is Verdict.WRITE else [r for r in records if r.seq > high_water]
    return Admission(verdict, new, header.last_seq, header.last_seq)


# ---------------------------------------------------------------------------------------------
# reconnect backoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: sleep uniform(0, min(cap, base * 2**attempt)).

    ``jitter`` is a number in [0, 1) supplied by the caller (random.random()), so this stays pure."""

    base_s: float = 0.5
    cap_s: float = 60.0

    def delay(self, attempt: int, jitter: float) -> float:
        ceiling: float = min(self.cap_s, self.base_s * float(2 ** min(attempt, 32)))
        return ceiling * min(max(jitter, 0.0), 1.0)


# ---------------------------------------------------------------------------------------------
# clocks

CLOCK_TOLERANCE_MS = 120_000


@dataclass(frozen=True, slots=True)
class ClockCheck:
    offset_ms: int  # cloud clock minus gateway clock
    corrected: bool


def check_clock(gateway_time_ms: int, cloud_now_ms: int, tolerance_ms: int = CLOCK_TOLERANCE_MS) -> ClockCheck:
    """The clock rule: when the gateway's clock (sent in every batch header) differs from the
    cloud's by more than ``tolerance_ms``, the cloud shifts the batch's timestamps by the difference
    and flags the gateway; within tolerance, timestamps are kept as sent. Transit time is ignored:
    it is seconds at worst, far inside the tolerance."""
    offset = cloud_now_ms - gateway_time_ms
    return ClockCheck(offset, abs(offset) > tolerance_ms)


def corrected_ts(ts_ms: int, check: ClockCheck) -> int:
    return ts_ms + check.offset_ms if check.corrected else ts_ms


# ---------------------------------------------------------------------------------------------
# which stream next


def next_stream(backlog: Mapping[Stream, int]) -> Stream | None:
    """The stream the gateway drains next: the first in ``DRAIN_ORDER`` with a backlog."""
    for stream in DRAIN_ORDER:
        if backlog.get(stream, 0) > 0:
            return stream
    return None


# ---------------------------------------------------------------------------------------------
# the HTTP exchange between gateway and cloud (docs/protocol.md section 6)

ENROLL_PATH = "/enroll/v1"
BATCHES_PATH = "/sync/v1/batches"
DOWNLINK_PATH = "/sync/v1/downlink"
DOWNLINK_ACK_PATH = "/sync/v1/downlink/ack"
RENEW_PATH = "/sync/v1/renew"
REKEY_PATH = "/sync/v1/rekey"
REPORT_PATH = "/sync/v1/report"
BATCH_CONTENT_TYPE = "application/x-pulse-batch"
AFTER_HEADER = "x-pulse-after"
"""On a batch sent while an earlier batch of its stream is still in flight: that batch's last
sequence. The cloud stores the batch only once its high-water mark has reached it."""
MAX_DOWNLINK_WAIT_S = 300
"""Longest downlink long-poll: 300 s lets a metered gateway poll a few hundred times a day."""


class DownlinkKind(StrEnum):
    CREDENTIAL = "credential"  # a device's MQTT credential for this gateway's broker: set or revoke
    TWIN_DESIRED = "twin_desired"  # a device's twin changed on the cloud side (issue: twin)
    COMMAND = "command"  # a command for a device (issue: twin and commands)
    RULES = "rules"  # the tenant's rule set, versioned (issue: rules)
    CONNECTORS = "connectors"  # the polled devices (Modbus, SNMP) the cloud manages for this gateway, versioned


@dataclass(frozen=True, slots=True)
class BatchAck:
    """The cloud's answer to one batch: everything up to ``ack_seq`` of ``stream`` is stored.

    ``batch_versions``: the batch formats the cloud reads. A gateway sends the newest format it
    shares with the cloud (``choose_batch_version``); an ack without the field comes from a cloud
    that reads only version 1."""

    stream: Stream
    ack_seq: int
    verdict: Verdict
    written: int
    quarantined: int
    clock_offset_ms: int
    clock_corrected: bool
    batch_versions: tuple[int, ...] = VERSIONS

    def to_json(self) -> dict[str, object]:
        return {
            "stream": int(self.stream),
            "ack_seq": self.ack_seq,
            "verdict": self.verdict.value,
            "written": self.written,
            "quarantined": self.quarantined,
            "clock_offset_ms": self.clock_offset_ms,
            "clock_corrected": self.clock_corrected,
            "batch_versions": list(self.batch_versions),
        }

    @classmethod
    def from_json(cls, doc: object) -> BatchAck:
        if not isinstance(doc, dict):
            raise ValueError("a batch ack is a JSON object")
        versions = doc.get("batch_versions", [VERSION_1])
        if not isinstance(versions, list):
            raise ValueError("a batch ack's batch_versions is a list of integers")
        try:
            return cls(
                Stream(int(doc["stream"])),
                _nonneg(doc["ack_seq"]),
                Verdict(doc["verdict"]),
                _nonneg(doc.get("written", 0)),
                _nonneg(doc.get("quarantined", 0)),
                int(doc.get("clock_offset_ms", 0)),
                bool(doc.get("clock_corrected", False)),
                tuple(v for v in versions if type(v) is int),  # versions this gateway never heard of are kept, not used
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a batch ack lacks or mistypes {exc}") from exc


def choose_batch_version(offered: Sequence[int]) -> int:
    """The batch format a gateway sends: the newest both sides read (version 1 when none is shared,
    as every cloud reads it)."""
    return max(set(offered) & set(VERSIONS), default=VERSION_1)


@dataclass(frozen=True, slots=True)
class DownlinkItem:
    """One thing the cloud holds for a gateway. Items stay until the gateway acks their ``seq``."""

    seq: int
    kind: DownlinkKind
    payload: Mapping[str, object]

    def to_json(self) -> dict[str, object]:
        return {"seq": self.seq, "kind": self.kind.value, "payload": dict(self.payload)}

    @classmethod
    def from_json(cls, doc: object) -> DownlinkItem:
        if not isinstance(doc, dict) or not isinstance(doc.get("payload"), dict):
            raise ValueError("a downlink item is an object with seq, kind and an object payload")
        return cls(_nonneg(doc.get("seq")), DownlinkKind(str(doc.get("kind"))), doc["payload"])


@dataclass(frozen=True, slots=True)
class CredentialChange:
    """Payload of a ``credential`` downlink item: the gateway's broker accepts (or stops accepting)
    the device token ``pdt_{credential_id}_{secret}`` as the MQTT password of ``device_id``. Only
    the SHA-256 of the secret travels; the secret was shown once to the operator."""

    device_id: str
    credential_id: str  # 32 lower-case hex digits
    action: str  # "set" | "revoke"
    secret_sha256: str | None  # 64 lower-case hex digits; None when revoking

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> CredentialChange:
        device, cred, action, digest = (payload.get(k) for k in ("device_id", "credential_id", "action", "secret_sha256"))
        if not isinstance(device, str) or not valid_device_id(device):
            raise ValueError("credential change: bad device_id")
        if not isinstance(cred, str) or len(cred) != 32 or not _is_hex(cred):
            raise ValueError("credential change: credential_id is 32 hex digits")
        if action == "set":
            if not isinstance(digest, str) or len(digest) != 64 or not _is_hex(digest):
                raise ValueError("credential change: secret_sha256 is 64 hex digits")
            return cls(device, cred, action, digest)
        if action == "revoke":
            return cls(device, cred, action, None)
        raise ValueError("credential change: action is set or revoke")

    def to_payload(self) -> dict[str, object]:
        return {"device_id": self.device_id, "credential_id": self.credential_id, "action": self.action, "secret_sha256": self.secret_sha256}


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _nonneg(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


# ---------------------------------------------------------------------------------------------
# twin and commands over the downlink and Stream.TWIN (docs/protocol.md section 6)

COMMAND_STATE_TYPE = "command_state"
"""Record type of a gateway-made Stream.TWIN record: a command the gateway sent or found expired."""
TWIN_RECORD_TYPES = frozenset({MessageType.TWIN_REPORTED.value, MessageType.COMMAND_ACK.value, COMMAND_STATE_TYPE})
"""What travels on Stream.TWIN, in the order it happened at the gateway: the devices' own
``twin_reported`` and ``command_ack`` envelopes, and the gateway's ``command_state`` records."""


@dataclass(frozen=True, slots=True)
class TwinDesired:
    """Payload of a ``twin_desired`` downlink item: the cloud's whole twin of one device, stored
    form (``twin.to_json``) plus the device id::

        {"device_id": "boiler-7", "document": {"version": 12, "state": {...}, "metadata": {...}}}

    The gateway takes the desired section (with its metadata) when ``document.version`` is above
    the cloud version it last took for that device, so duplicated or reordered items are harmless."""

    device_id: str
    document: TwinDocument

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> TwinDesired:
        device, document = payload.get("device_id"), payload.get("document")
        if not isinstance(device, str) or not valid_device_id(device):
            raise ValueError("twin_desired: bad device_id")
        if not isinstance(document, dict):
            raise ValueError("twin_desired: document is the twin's stored form (an object)")
        try:
            doc = twin.from_json(json.dumps(document))
        except TwinError as exc:
            raise ValueError(f"twin_desired: {exc.code}: {exc.message}") from exc
        return cls(device, doc)

    def to_payload(self) -> dict[str, object]:
        return {"device_id": self.device_id, "document": json.loads(twin.to_json(self.document))}


def command_from_payload(payload: Mapping[str, object]) -> Command:
    """Payload of a ``command`` downlink item: the command's stored form (``commands.to_json``)."""
    try:
        return commands.from_json(json.dumps(dict(payload)))
    except (CommandError, TypeError, ValueError) as exc:
        raise ValueError(f"command: {getattr(exc, 'message', exc)}") from exc


def command_to_payload(cmd: Command) -> dict[str, object]:
    doc: dict[str, object] = json.loads(commands.to_json(cmd))
    return doc


@dataclass(frozen=True, slots=True)
class CommandStateReport:
    """Body of a ``command_state`` record on Stream.TWIN: the gateway published a command to its
    device (``sent``) or found it past its deadline and never sent it (``expired``). The record's
    timestamp is when; the cloud applies ``send``/``expire`` at that time (a command the cloud still
    holds as queued is delivered first)::

        {"id": "c-17", "state": "sent"}"""

    command_id: str
    state: CommandState

    @classmethod
    def from_body(cls, body: Mapping[str, object] | None) -> CommandStateReport:
        if body is None:
            raise ValueError("command_state: a body is required")
        cmd_id, state = body.get("id"), body.get("state")
        if not isinstance(cmd_id, str) or not valid_command_id(cmd_id):
            raise ValueError("command_state: bad command id")
        if state not in (CommandState.SENT.value, CommandState.EXPIRED.value):
            raise ValueError("command_state: state is sent or expired")
        return cls(cmd_id, CommandState(state))

    def to_body(self) -> dict[str, object]:
        return {"id": self.command_id, "state": self.state.value}

    @property
    def event(self) -> CommandEvent:
        return CommandEvent.SEND if self.state is CommandState.SENT else CommandEvent.EXPIRE


def rule_devices_to_payload(devices: Sequence[Device]) -> dict[str, object]:
    """The ``devices`` of a ``rules`` downlink item: what a gateway needs of each device it serves to
    decide which rules apply to it (its tags and site, as ``pulse.protocol.rules.Device``), so local
    evaluation scopes rules as the cloud does."""
    return {d.device_id: {"tags": dict(d.tags), "site": d.site} for d in devices}


def rule_devices_from_payload(doc: object) -> dict[str, Device]:
    """The inverse of ``rule_devices_to_payload``; raises ``ValueError`` for anything else."""
    if not isinstance(doc, dict):
        raise ValueError("rules item: devices is an object of device id -> {tags, site}")
    out: dict[str, Device] = {}
    for device_id, facts in doc.items():
        if not isinstance(device_id, str) or not valid_device_id(device_id) or not isinstance(facts, dict):
            raise ValueError(f"rules item: bad device entry {device_id!r}")
        tags, site = facts.get("tags") or {}, facts.get("site")
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise ValueError(f"rules item: tags of {device_id} are an object of strings")
        if site is not None and not isinstance(site, str):
            raise ValueError(f"rules item: site of {device_id} is a string or null")
        out[device_id] = Device(device_id, tags, site)
    return out
