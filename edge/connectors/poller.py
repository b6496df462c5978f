"""The polling loop: one task per device on its own schedule, readings handed to the gateway's intake.

Each device polls on a grid of its interval (``next_due``); a poll that overruns skips the slots it
missed. A request that times out is tried ``retries`` more times; a poll fails when the device did
not answer (timeout, unreachable) or no point gave a value. After ``DOWN_AFTER`` failed polls in a
row the device is ``down`` and polled with back-off (``backoff_s``) until it answers again. A
device waits only for its own line: Modbus requests borrow a connection from their host's or
serial line's pool (``modbus.Line``), SNMP requests a slot of their host's semaphore, so a device
that stopped answering delays nobody else's polls.

Readings go to a sink (``BufferSink``): an envelope per poll (split at the envelope's metric
limit), classified and put in the buffer exactly as a device's MQTT message is, so the local
rules, twins and sync see a polled device like any other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pulse.edge.buffer import Buffer
from pulse.edge.ingest import Quarantine, classify
from pulse.protocol import topics
from pulse.protocol.connectors import (
    DOWN_AFTER,
    Device,
    MetricValue,
    ModbusDevice,
    OidPoint,
    Read,
    RegisterPoint,
    SnmpDevice,
    SnmpRaw,
    backoff_s,
    encode,
    extract,
    health,
    next_due,
    plan_gets,
    plan_reads,
    scaled,
    snmp_value,
    unscaled,
    walk_metric,
)
from pulse.protocol.envelope import Envelope, Limits, MessageType
from pulse.protocol.errors import Code, ConnectorError
from pulse.protocol.topics import TopicKind

if TYPE_CHECKING:  # imported where a device of that kind is polled: pymodbus and pysnmp cost ~14 MB
    from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

    from pulse.edge.connectors import modbus, snmp

log = logging.getLogger("pulse.edge.connectors")

Sink = Callable[[str, int, Mapping[str, MetricValue]], Awaitable[None]]
Planner = Callable[[Sequence[RegisterPoint], int, int], tuple[Read, ...]]
_T = TypeVar("_T")
_FATAL = (Code.CONNECTOR_TIMEOUT, Code.CONNECTOR_UNREACHABLE)
"""Errors that mean the device is not answering: the poll stops there and fails."""


class BufferSink:
    """Readings -> telemetry envelopes -> ``classify`` -> the buffer: the path of a device's PUBLISH."""

    def __init__(self, buffer: Buffer, limits: Limits) -> None:
        self.buffer = buffer
        self.limits = limits
        self.stored = 0
        self.refused = 0

    async def __call__(self, device_id: str, ts_ms: int, metrics: Mapping[str, MetricValue]) -> None:
        topic = topics.build(device_id, TopicKind.TELEMETRY)
        items = sorted(metrics.items())
        n = self.limits.max_metrics
        pending = []
        for i in range(0, len(items), n):
            raw = Envelope(device_id, ts_ms, MessageType.TELEMETRY, dict(items[i : i + n])).to_json()
            decision = classify(device_id, topic, raw, now_ms=ts_ms, limits=self.limits)
            if isinstance(decision, Quarantine):
                self.refused += 1
                log.warning("connector reading of %s quarantined: %s %s", device_id, decision.code, decision.message)
            pending.append(self.buffer.submit(decision))
        await asyncio.gather(*(f for f in pending if f is not None))
        self.stored += len(pending)

    async def message(self, env: Envelope, kind: TopicKind, command_id: str | None = None) -> None:
        """One message a polled device "sends" (a twin report, a command answer), through the intake."""
        raw = env.to_json()
        decision = classify(env.device_id, topics.build(env.device_id, kind, command_id), raw, now_ms=env.ts_ms, limits=self.limits)
        if isinstance(decision, Quarantine):
            log.warning("connector message of %s quarantined: %s %s", env.device_id, decision.code, decision.message)
        await self.buffer.put(decision)


@dataclass
class DeviceState:
    """What the status page shows for one polled device."""

    device: Device
    polls: int = 0
    failed_polls: int = 0
    failures: int = 0
    """Consecutive failed polls (0 after a good one)."""
    point_errors: int = 0
    skipped: int = 0
    """Grid slots missed because a poll overran its interval."""
    points: int = 0
    last_poll_ms: int | None = None
    last_ok_ms: int | None = None
    last_duration_s: float | None = None
    max_duration_s: float = 0.0
    last_error: ConnectorError | None = None
    next_poll_s: float | None = None
    lateness_s: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2048))
    """How late each poll started against its due time (the benchmark's jitter)."""

    def as_dict(self, now: float) -> dict[str, Any]:
        d = self.device
        interval = d.polling.interval_s
        return {
            "id": d.id,
            "kind": d.kind.value,
            "line": d.line,
            "state": health(self.failures, self.polls > 0),
            "interval_s": interval,
            "last_poll_ms": self.last_poll_ms,
            "last_ok_ms": self.last_ok_ms,
            "duration_ms": round(self.last_duration_s * 1000, 1) if self.last_duration_s is not None else None,
            "max_duration_ms": round(self.max_duration_s * 1000, 1),
            "duration_of_interval": round(self.last_duration_s / interval, 3) if self.last_duration_s is not None else None,
            "polls": self.polls,
            "failed_polls": self.failed_polls,
            "consecutive_failures": self.failures,
            "point_errors": self.point_errors,
            "skipped": self.skipped,
            "points": self.points,
            "next_poll_in_s": round(max(0.0, self.next_poll_s - now), 1) if self.next_poll_s is not None else None,
            "last_error": self.last_error.as_dict() if self.last_error is not None else None,
        }


class Poller:
    """Polls connector devices; ``start`` / ``stop`` own every task, connection and engine it makes."""

    def __init__(
        self,
        devices: Sequence[Device],
        sink: Sink,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        planner: Planner | None = None,
    ) -> None:
        self.devices: dict[str, Device] = {d.id: d for d in devices}
        self.sink = sink
        self.clock = clock
        self.wall_ms = wall_ms
        self.states = {d.id: DeviceState(d) for d in devices}
        plan = planner or (lambda pts, gap, count: plan_reads(pts, max_gap=gap, max_count=count))
        self._reads = {d.id: plan(d.points, d.max_gap, d.max_registers) for d in devices if isinstance(d, ModbusDevice)}
        self._lines: dict[str, modbus.Line] = {}
        for d in devices:
            if isinstance(d, ModbusDevice):
                from pulse.edge.connectors import modbus  # only a gateway with Modbus devices loads pymodbus

                shared = [x for x in devices if x.line == d.line]
                size = min(x.max_in_flight for x in shared)
                self._lines.setdefault(d.line, modbus.Line(d, size, max(x.polling.timeout_s for x in shared)))
        snmp_devices = [d for d in devices if isinstance(d, SnmpDevice)]
        self._engine: SnmpEngine | None = None
        self._agents: dict[str, snmp.Agent] = {}
        if snmp_devices:
            from pulse.edge.connectors import snmp  # only a gateway with SNMP devices loads pysnmp

            self._engine = snmp.new_engine()
            self._agents = {d.id: snmp.Agent(self._engine, d) for d in snmp_devices}
        self._host_slots = {
            d.line: asyncio.Semaphore(min(x.max_in_flight for x in snmp_devices if x.line == d.line)) for d in snmp_devices
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.started = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        for device_id in self.devices:
            self._tasks.append(asyncio.create_task(self._run(device_id), name=f"connector:{device_id}"))

    async def stop(self) -> None:
        """Cancel every device's task until it has ended. Python 3.11's ``asyncio.timeout`` and
        ``wait_for`` can swallow a cancellation that races with their own deadline (a busy gateway
        with devices timing out hits that), so the loop also checks ``_stopping`` and the
        cancellation is repeated until each task is done."""
        self._stopping = True
        pending = set(self._tasks)
        while pending:
            for t in pending:
                t.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        self._tasks.clear()
        for line in self._lines.values():
            line.close()
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None

    def snapshot(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [s.as_dict(now) for s in self.states.values()]

    # -- the schedule -----------------------------------------------------------------------

    async def _run(self, device_id: str) -> None:
        state = self.states[device_id]
        polling = state.device.polling
        due = self.clock()
        while not self._stopping:
            state.next_poll_s = due
            delay = due - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            state.lateness_s.append(self.clock() - due)
            ok = await self.poll(device_id)
            finished = self.clock()
            if ok or state.failures < DOWN_AFTER:
                due, skipped = next_due(due, polling.interval_s, finished)
                state.skipped += skipped
            else:
                due = finished + backoff_s(state.failures, polling)

    async def poll(self, device_id: str) -> bool:
        """Poll a device once, record it in its state and hand the readings to the sink. True when
        the device answered with at least one value."""
        state = self.states[device_id]
        device = state.device
        started = self.clock()
        ts_ms = self.wall_ms()
        try:
            metrics, errors = await self.read(device)
        except ConnectorError as exc:
            metrics, errors, failure = {}, {}, exc
        else:
            failure = None if metrics else next(iter(errors.values()), None)
        duration = self.clock() - started
        state.polls += 1
        state.last_poll_ms = ts_ms
        state.last_duration_s = duration
        state.max_duration_s = max(state.max_duration_s, duration)
        state.point_errors += len(errors)
        if failure is not None:
            state.failed_polls += 1
            state.failures += 1
            state.last_error = failure
            if state.failures in (1, DOWN_AFTER):
                log.warning("connector %s: %s", device_id, failure.message)
            return False
        if state.failures >= DOWN_AFTER:
            log.info("connector %s answers again after %d failed polls", device_id, state.failures)
        state.failures = 0
        state.last_ok_ms = ts_ms
        state.points = len(metrics)
        if errors:
            state.last_error = next(iter(errors.values()))
        try:
            await self.sink(device_id, ts_ms, metrics)
        except Exception:
            log.exception("connector %s: the reading could not be stored", device_id)
        return True

    async def _attempts(self, device: Device, fn: Callable[[], Awaitable[_T]]) -> _T:
        for attempt in range(device.polling.retries + 1):
            try:
                return await fn()
            except ConnectorError as exc:
                if exc.code is not Code.CONNECTOR_TIMEOUT or attempt == device.polling.retries or self._stopping:
                    raise
        raise AssertionError("unreachable")

    # -- reading ----------------------------------------------------------------------------

    async def read(self, device: Device) -> tuple[dict[str, MetricValue], dict[str, ConnectorError]]:
        """Every point of a device: values, and the points that gave none (with why)."""
        if isinstance(device, ModbusDevice):
            return await self._read_modbus(device, self._reads[device.id])
        return await self._read_snmp(device, device.points)

    async def _read_modbus(self, device: ModbusDevice, reads: Sequence[Read]) -> tuple[dict[str, MetricValue], dict[str, ConnectorError]]:
        from pulse.edge.connectors import modbus  # loaded by __init__ already

        line = self._lines[device.line]
        metrics: dict[str, MetricValue] = {}
        errors: dict[str, ConnectorError] = {}
        for r in reads:
            try:
                words = await self._attempts(device, lambda r=r: modbus.read(line, device, r))  # type: ignore[misc]
            except ConnectorError as exc:
                if exc.code in _FATAL:
                    raise
                errors.update({p.metric: exc for p in r.points})
                continue
            m, e = extract(r, words)
            metrics.update(m)
            errors.update(e)
        return metrics, errors

    async def _read_snmp(self, device: SnmpDevice, points: Sequence[OidPoint]) -> tuple[dict[str, MetricValue], dict[str, ConnectorError]]:
        agent = self._agents[device.id]
        metrics: dict[str, MetricValue] = {}
        errors: dict[str, ConnectorError] = {}

        def take(point: OidPoint, name: str, raw: SnmpRaw) -> None:
            try:
                metrics[name] = snmp_value(point, raw)
            except ConnectorError as exc:
                errors[name] = exc

        async with self._host_slots[device.line]:
            for group in plan_gets(points, device.max_oids):
                try:
                    raws = await self._attempts(device, lambda g=group: agent.get(g))  # type: ignore[misc]
                except ConnectorError as exc:
                    if exc.code in _FATAL:
                        raise
                    errors.update({p.metric: exc for p in group})
                    continue
                for p in group:
                    take(p, p.metric, raws.get(p.oid))
            for p in (p for p in points if p.walk):
                try:
                    found = await self._attempts(device, lambda p=p: agent.walk(p))  # type: ignore[misc]
                except ConnectorError as exc:
                    if exc.code in _FATAL:
                        raise
                    errors[p.metric] = exc
                    continue
                for oid, raw in found.items():
                    name = walk_metric(p, oid)
                    if name is not None:
                        take(p, name, raw)
        return metrics, errors

    # -- writing ----------------------------------------------------------------------------

    async def write(self, device_id: str, metric: str, value: MetricValue) -> MetricValue:
        """Write one writable point, read it back, and return the value read. Raises
        ``ConnectorError`` (``connector.write_not_confirmed`` when the read-back differs)."""
        device = self.devices.get(device_id)
        if device is None:
            raise ConnectorError(Code.GATEWAY_DEVICE_UNKNOWN, f"no connector device {device_id}", device_id=device_id)
        point = next((p for p in device.points if p.metric == metric), None)
        if point is None:
            raise ConnectorError(Code.CONNECTOR_NOT_WRITABLE, f"{device_id} has no point {metric}", device_id=device_id, metric=metric)
        raw = unscaled(value, point)
        if isinstance(device, ModbusDevice):
            assert isinstance(point, RegisterPoint)
            from pulse.edge.connectors import modbus  # loaded by __init__ already

            line = self._lines[device.line]
            await modbus.write(line, device, point, raw)
            one = Read(point.table, point.address, point.width, (point,))
            expected, _ = extract(one, modbus_words(point, raw))
            got, errors = extract(one, await self._attempts(device, lambda: modbus.read(line, device, one)))
            want = expected.get(metric)
        else:
            assert isinstance(point, OidPoint)
            agent = self._agents[device.id]
            async with self._host_slots[device.line]:
                await agent.set(point, int(raw))
                raws = await self._attempts(device, lambda: agent.get([point]))
            want = scaled(int(raw), point)
            got, errors = {}, {}
            try:
                got[metric] = snmp_value(point, raws.get(point.oid))
            except ConnectorError as exc:
                errors[metric] = exc
        if metric in errors:
            raise errors[metric]
        if not _same(got.get(metric), want):
            raise ConnectorError(
                Code.CONNECTOR_WRITE_NOT_CONFIRMED,
                f"{device_id}: wrote {metric} = {value!r}, read back {got.get(metric)!r}",
                device_id=device_id,
                metric=metric,
            )
        return got[metric]


def modbus_words(point: RegisterPoint, raw: int | float | bool) -> list[int] | list[bool]:
    if point.table.bits:
        return [bool(raw)]
    words: list[int] = encode(raw, point.type, point.word_order, point.byte_order)
    return words


def _same(a: MetricValue | None, b: MetricValue | None) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b
