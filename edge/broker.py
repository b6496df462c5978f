"""The gateway's broker: the shared one (pulse.broker.server: durable-before-PUBACK intake, topic
ACL, keep-alive and Will, persistent sessions) with the gateway's intake (the SQLite buffer) and
listeners (plain TCP, TLS, WebSocket from ``[broker]`` settings).

Connections: ``username`` is the device id and ``password`` its secret (auth.py). Clients without
a username are refused unless ``broker.allow_anonymous`` is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amqtt.session import ApplicationMessage, Session

from pulse.broker.acl import may_publish
from pulse.broker.server import AUTH_PLUGIN, DeviceBroker
from pulse.broker.sessions import SessionStore
from pulse.edge.auth import Authenticator
from pulse.edge.buffer import Buffer, Outcome
from pulse.edge.config import BrokerSettings
from pulse.edge.errors import StorageError
from pulse.edge.ingest import Forward, Quarantine, classify
from pulse.protocol.envelope import Limits

log = logging.getLogger("pulse.edge.broker")




@dataclass
class IntakeCounters:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    denied: int = 0
    forwarded: int = 0
    storage_errors: int = 0
    cleared_retained: int = 0
    by_qos: list[int] = field(default_factory=lambda: [0, 0, 0])


class Intake:
    """Classify a device's PUBLISH and hand it to the buffer. Shared by every session's handler."""

    def __init__(self, buffer: Buffer, limits: Limits) -> None:
        self.buffer = buffer
        self.limits = limits
        self.counters = IntakeCounters()
        self.on_twin_get: Callable[[str], None] | None = None
        """Called with the device id when a device publishes on ``twin/get`` (edge/twin.py answers)."""

    def identity(self, session: Session | None) -> str | None:
        return session.username if session is not None else None

    async def accept(self, session: Session | None, message: ApplicationMessage, *, wait: bool) -> bool:
        """Store (or quarantine) one message; True when it should be forwarded to subscribers.

        With ``wait`` it returns only after the group commit; raises ``StorageError`` when that failed."""
        c = self.counters
        c.received += 1
        c.by_qos[message.qos or 0] += 1
        raw = bytes(message.data)
        if not raw and message.retain and may_publish(self.identity(session), message.topic):
            # MQTT-3.3.1-10/11: an empty retained PUBLISH clears the topic's retained message and is
            # delivered as it is; it is not a device message, so nothing is buffered.
            c.cleared_retained += 1
            return True
        decision = classify(self.identity(session), message.topic, raw, now_ms=int(time.time() * 1000), limits=self.limits)
        if isinstance(decision, Forward):
            c.forwarded += 1
            if self.on_twin_get is not None and message.topic.endswith("/twin/get"):
                self.on_twin_get(decision.device_id)
            return True
        if isinstance(decision, Quarantine):
            if decision.denied:
                c.denied += 1
                log.info("refused publish from %s on %s: %s", decision.device_id, decision.topic, decision.code)
            else:
                c.quarantined += 1
        if not wait:
            try:
                self.buffer.submit(decision, wait=False)
            except StorageError:  # the gateway is stopping; QoS 0 promises nothing
                c.storage_errors += 1
                return False
            if isinstance(decision, Quarantine):
                return False
            c.stored += 1
            return True
        try:
            outcome = await self.buffer.put(decision)
        except StorageError:
            c.storage_errors += 1
            raise
        if outcome is Outcome.DUPLICATE:
            c.duplicates += 1
            return False
        if outcome is Outcome.STORED:
            c.stored += 1
            return True
        return False


def broker_config(settings: BrokerSettings, authenticator: Authenticator) -> dict[str, Any]:
    """The amqtt configuration: our listeners, our auth and topic plugins, nothing else."""
    listeners: dict[str, Any] = {
        "default": {"type": "tcp", "bind": f"{settings.host}:{settings.port}", "max_connections": settings.max_connections}
    }
    if settings.tls_port is not None:
        tls: dict[str, Any] = {
            "type": "tcp",
            "bind": f"{settings.tls_host or settings.host}:{settings.tls_port}",
            "max_connections": settings.max_connections,
            "ssl": True,
            "certfile": str(settings.tls_certfile),
            "keyfile": str(settings.tls_keyfile),
        }
        if settings.tls_cafile is not None:
            tls["cafile"] = str(settings.tls_cafile)
        listeners["tls"] = tls
    if settings.ws_port is not None:
        listeners["ws"] = {
            "type": "ws",
            "bind": f"{settings.ws_host or settings.host}:{settings.ws_port}",
            "max_connections": settings.max_connections,
        }
    return {
        "listeners": listeners,
        "plugins": {AUTH_PLUGIN: {"authenticator": authenticator}},
    }


async def start(settings: BrokerSettings, intake: Intake, authenticator: Authenticator, store: SessionStore | None = None) -> DeviceBroker:
    broker = DeviceBroker(broker_config(settings, authenticator), intake, store)
    await broker.start()
    return broker


async def stop(broker: DeviceBroker) -> None:
    await broker.shutdown()
