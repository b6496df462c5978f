"""Connectivity events: a device's MQTT connection coming and going, as device events.

A gateway turns three facts of its broker into an envelope v1 ``event`` for the device, appended to
the EVENTS stream like any device event (so it reaches the cloud in order with the device's other
events, each with the gateway's timestamp):

- ``connected``     the device's CONNECT was accepted;
- ``disconnected``  the device sent DISCONNECT (a clean end: no Will);
- ``lost``          the connection ended any other way: silent past 1.5 x its keep-alive, closed
                    without DISCONNECT, or ended by the gateway (a revoked credential). Its Will,
                    if it had one, was published (``body.will`` says whether).

Wire form (what the gateway buffers; the envelope's ``tags`` carry the kind)::

    {"v": 1, "type": "event", "ts": 1764061200000,
     "metrics": {"connected": false}, "tags": {"pulse.connectivity": "lost"}, "body": {"will": true}}

The cloud reads the kind back with ``kind_of(type, tags)`` and sets the device's state from it at
once (``status_of``): ``online`` on connected, ``offline`` on disconnected and lost, without
waiting for a heartbeat rule's window to run out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Literal

TAG = "pulse.connectivity"
"""The tag that marks an event as a connectivity event; its value is the ``Connectivity`` kind."""


class Connectivity(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    LOST = "lost"


def event_message(kind: Connectivity, *, now_ms: int, will: bool = False) -> bytes:
    """The envelope v1 event for ``kind`` at ``now_ms`` (no ``device``: the record carries it)."""
    doc: dict[str, object] = {
        "v": 1,
        "type": "event",
        "ts": now_ms,
        "metrics": {"connected": kind is Connectivity.CONNECTED},
        "tags": {TAG: kind.value},
    }
    if kind is Connectivity.LOST:
        doc["body"] = {"will": will}
    return json.dumps(doc, separators=(",", ":")).encode()


def kind_of(record_type: str, tags: Mapping[str, str] | None) -> Connectivity | None:
    """The connectivity kind of a stored event, None for any other record."""
    if record_type != "event" or not tags:
        return None
    value = tags.get(TAG)
    try:
        return Connectivity(value) if value is not None else None
    except ValueError:
        return None


def status_of(kind: Connectivity) -> Literal["online", "offline"]:
    return "online" if kind is Connectivity.CONNECTED else "offline"
