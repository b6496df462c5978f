"""The MQTT topic map: every topic Pulse uses, built and parsed in one place.

Uplink (device publishes)::

    pulse/{device}/telemetry
    pulse/{device}/event
    pulse/{device}/heartbeat
    pulse/{device}/twin/reported
    pulse/{device}/twin/get              ask for the full twin document
    pulse/{device}/cmd/{id}/ack

Downlink (gateway publishes, device subscribes)::

    pulse/{device}/twin/desired          retained delta
    pulse/{device}/twin/document         answer to twin/get
    pulse/{device}/cmd/{id}

A device id is 1-128 characters of ``A-Z a-z 0-9 _ - . :`` starting with a letter or digit, so it
can never contain the wildcards ``+``/``#``, a level separator ``/``, NUL, or start with ``$``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pulse.protocol.errors import Code, TopicError

PREFIX = "pulse"
MAX_DEVICE_ID_LEN = 128
MAX_COMMAND_ID_LEN = 64
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")


class TopicKind(StrEnum):
    TELEMETRY = "telemetry"
    EVENT = "event"
    HEARTBEAT = "heartbeat"
    TWIN_REPORTED = "twin/reported"
    TWIN_GET = "twin/get"
    TWIN_DESIRED = "twin/desired"
    TWIN_DOCUMENT = "twin/document"
    COMMAND = "cmd"
    COMMAND_ACK = "cmd/ack"


UPLINK_KINDS = frozenset(
    {
        TopicKind.TELEMETRY,
        TopicKind.EVENT,
        TopicKind.HEARTBEAT,
        TopicKind.TWIN_REPORTED,
        TopicKind.TWIN_GET,
        TopicKind.COMMAND_ACK,
    }
)
_FIXED = {k.value: k for k in TopicKind if k not in (TopicKind.COMMAND, TopicKind.COMMAND_ACK)}


@dataclass(frozen=True, slots=True)
class Topic:
    device_id: str
    kind: TopicKind
    command_id: str | None = None

    def __str__(self) -> str:
        return build(self.device_id, self.kind, self.command_id)

    @property
    def is_uplink(self) -> bool:
        return self.kind in UPLINK_KINDS


def valid_device_id(device_id: str) -> bool:
    return 0 < len(device_id) <= MAX_DEVICE_ID_LEN and _ID_RE.fullmatch(device_id) is not None


def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not valid_device_id(device_id):
        raise TopicError(
            Code.TOPIC_BAD_DEVICE_ID,
            "device ids are 1-128 characters of letters, digits, '_', '-', '.', ':' starting with a letter or digit",
            device_id=device_id if isinstance(device_id, str) else repr(device_id),
        )
    return device_id


def valid_command_id(command_id: str) -> bool:
    return 0 < len(command_id) <= MAX_COMMAND_ID_LEN and _ID_RE.fullmatch(command_id) is not None


def _check_command_id(command_id: str | None) -> str:
    if command_id is None or not valid_command_id(command_id):
        raise TopicError(Code.TOPIC_UNKNOWN, "command ids are 1-64 characters of letters, digits, '_', '-', '.', ':'")
    return command_id


def build(device_id: str, kind: TopicKind, command_id: str | None = None) -> str:
    """The topic string for a device and kind; refuses ids that could escape the device subtree."""
    check_device_id(device_id)
    if kind is TopicKind.COMMAND:
        return f"{PREFIX}/{device_id}/cmd/{_check_command_id(command_id)}"
    if kind is TopicKind.COMMAND_ACK:
        return f"{PREFIX}/{device_id}/cmd/{_check_command_id(command_id)}/ack"
    return f"{PREFIX}/{device_id}/{kind.value}"


def parse(topic: str) -> Topic:
    """Parse a concrete topic (no wildcards) into a ``Topic``; anything else raises ``TopicError``."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != PREFIX:
        raise TopicError(Code.TOPIC_UNKNOWN, "topics start with 'pulse/{device}/'", topic=topic[:256])
    device_id = check_device_id(parts[1])
    rest = parts[2:]
    if rest[0] == "cmd":
        if len(rest) == 2:
            return Topic(device_id, TopicKind.COMMAND, _check_command_id(rest[1]))
        if len(rest) == 3 and rest[2] == "ack":
            return Topic(device_id, TopicKind.COMMAND_ACK, _check_command_id(rest[1]))
        raise TopicError(Code.TOPIC_UNKNOWN, "command topics are cmd/{id} and cmd/{id}/ack", topic=topic[:256])
    kind = _FIXED.get("/".join(rest))
    if kind is None:
        raise TopicError(Code.TOPIC_UNKNOWN, "not a Pulse topic", topic=topic[:256])
    return Topic(device_id, kind)


def device_subtree(device_id: str) -> str:
    """The subscription filter covering everything a device may touch: ``pulse/{device}/#``."""
    return f"{PREFIX}/{check_device_id(device_id)}/#"


def device_may_publish(device_id: str, topic: str) -> bool:
    """ACL: a device may publish only uplink topics under its own id."""
    try:
        parsed = parse(topic)
    except TopicError:
        return False
    return parsed.device_id == device_id and parsed.is_uplink


def device_may_subscribe(device_id: str, topic_filter: str) -> bool:
    """ACL: a device may subscribe only to filters inside ``pulse/{device}/``.

    Wildcards are allowed below the device level (``pulse/d1/#``, ``pulse/d1/cmd/+``) but never at
    or above it (``pulse/+/telemetry``, ``#``)."""
    if not valid_device_id(device_id):
        return False
    parts = topic_filter.split("/")
    if len(parts) < 3 or parts[0] != PREFIX or parts[1] != device_id:
        return False
    rest = parts[2:]
    for i, level in enumerate(rest):
        if level == "#":
            return i == len(rest) - 1
        if level != "+" and ("+" in level or "#" in level or "\x00" in level):
            return False
    return True
