"""Writes to polled devices: what the twin sends a polled device becomes a register or OID write.

The gateway's twin feature (edge/twin.py) talks to devices through a publisher: it publishes a
device's desired delta on ``twin/desired`` and its commands on ``cmd/{id}``. ``ConnectorPublisher``
stands in front of the broker: for a polled device it answers as the device would, and for every
other device it passes through.

- desired delta: each key that names a writable point is written and read back
  (``Poller.write``); the values read back are reported (``twin_reported``), so the twin's delta
  clears exactly for what the device confirmed. A write that fails is logged and stays in the
  delta (it is tried again when the delta is next published: at the next desired change or start).
- command ``write`` with ``params`` ``{metric: value, ...}``: written and read back in order; the
  answer (``command_ack``) is ``succeeded`` with the values read back as ``result``, or ``failed``
  with the first error's code and sentence. Any other command name fails.

Answers and reports enter the buffer through the same intake path as a device's MQTT messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from pulse.edge.connectors.poller import BufferSink, Poller
from pulse.protocol import topics
from pulse.protocol.envelope import Envelope, JsonObject, MessageType
from pulse.protocol.errors import ConnectorError, TopicError
from pulse.protocol.topics import TopicKind

log = logging.getLogger("pulse.edge.connectors")

WRITE_COMMAND = "write"


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, retain: bool, expires_ms: int | None = None) -> None: ...

    def subscribed(self, device_id: str, topic: str) -> bool: ...


class ConnectorPublisher:
    def __init__(self, inner: Publisher, poller: Poller, sink: BufferSink, *, wall_ms: Any = None) -> None:
        self.inner = inner
        self.poller = poller
        self.sink = sink
        self.wall_ms = wall_ms or poller.wall_ms
        self._tasks: set[asyncio.Task[None]] = set()

    def subscribed(self, device_id: str, topic: str) -> bool:
        return device_id in self.poller.devices or self.inner.subscribed(device_id, topic)

    async def publish(self, topic: str, payload: bytes, *, retain: bool, expires_ms: int | None = None) -> None:
        try:
            parsed = topics.parse(topic)
        except TopicError:
            parsed = None
        if parsed is None or parsed.device_id not in self.poller.devices:
            await self.inner.publish(topic, payload, retain=retain, expires_ms=expires_ms)
            return
        if parsed.kind is TopicKind.TWIN_DESIRED and payload:
            state = json.loads(payload).get("state", {})
            self._spawn(self._desired(parsed.device_id, state))
        elif parsed.kind is TopicKind.COMMAND:
            self._spawn(self._command(parsed.device_id, json.loads(payload)))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _desired(self, device_id: str, state: dict[str, Any]) -> None:
        writable = {p.metric for p in self.poller.devices[device_id].points if p.writable}
        reported: JsonObject = {}
        for key, value in state.items():
            if key not in writable or isinstance(value, dict | list | str) or value is None:
                continue
            try:
                reported[key] = await self.poller.write(device_id, key, value)
            except ConnectorError as exc:
                log.warning("connector %s: desired %s = %r not written: %s", device_id, key, value, exc.message)
                self.poller.states[device_id].last_error = exc
        if reported:
            env = Envelope(device_id, self.wall_ms(), MessageType.TWIN_REPORTED, body=reported)
            await self.sink.message(env, TopicKind.TWIN_REPORTED)

    async def _command(self, device_id: str, cmd: dict[str, Any]) -> None:
        command_id, name, params = cmd.get("id"), cmd.get("name"), cmd.get("params") or {}
        body: JsonObject
        if name != WRITE_COMMAND or not isinstance(params, dict) or not params:
            body = {"id": command_id, "status": "failed", "error": f"a polled device takes only the {WRITE_COMMAND} command, with params {{metric: value}}"}
        else:
            result: JsonObject = {}
            body = {"id": command_id, "status": "succeeded", "result": result}
            for metric, value in params.items():
                try:
                    result[metric] = await self.poller.write(device_id, metric, value)
                except ConnectorError as exc:
                    self.poller.states[device_id].last_error = exc
                    body = {"id": command_id, "status": "failed", "error": f"{exc.code}: {exc.message}"}
                    break
        env = Envelope(device_id, self.wall_ms(), MessageType.COMMAND_ACK, body=body)
        await self.sink.message(env, TopicKind.COMMAND_ACK, str(command_id))
