"""The gateway's polled devices: those of its own gateway.toml, plus the set the cloud pushed.

An operator manages a gateway's polled devices from the cloud (``PUT /api/v1/gateways/{id}/connectors``);
the set reaches the gateway as a ``connectors`` downlink item, versioned like a rule set: each set
replaces the previous one whole, and only a newer version is taken. The set in use is kept in
gateway.db (``meta`` key ``connector_set``), so a restart with the link down polls the same devices.

gateway.toml wins: a pushed device with the id of one in the file is left out, and that is said in
the status (``connector.defined_locally``). A set that cannot be used (it does not validate, or it
and the file together put two settings on one serial line) is refused whole and the devices in use
keep polling.

A change restarts the poller once; a device whose definition did not change keeps its figures
(polls, errors) on the status page. Newly added devices are "ready" at once, so commands held for
them go out.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pulse.edge.auth import connect as connect_db
from pulse.edge.buffer import Buffer
from pulse.edge.connectors.actions import ConnectorPublisher, Publisher
from pulse.edge.connectors.poller import BufferSink, Poller
from pulse.protocol.connectors import ConnectorSet, Device, combine, parse_set
from pulse.protocol.envelope import Limits
from pulse.protocol.errors import Code, ConnectorError

log = logging.getLogger("pulse.edge.connectors")

META_KEY = "connector_set"


def _read_stored(database: Path) -> dict[str, Any] | None:
    conn = connect_db(database)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (META_KEY,)).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    doc = json.loads(row[0])
    return doc if isinstance(doc, dict) else None


def _store(database: Path, payload: dict[str, object]) -> None:
    conn = connect_db(database)
    try:
        with conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                         (META_KEY, json.dumps(payload)))
    finally:
        conn.close()


class ConnectorHost:
    """Owns the poller (replaced when the set changes) and the publisher that answers for polled
    devices in front of the broker. ``start``/``stop`` own every task the poller makes."""

    def __init__(self, local: Sequence[Device], database: Path, buffer: Buffer, limits: Limits, broker: Publisher,
                 on_ready: Callable[[str], object] | None = None) -> None:
        self.local = tuple(local)
        self.database = database
        self.sink = BufferSink(buffer, limits)
        self.on_ready = on_ready
        self.pushed: ConnectorSet | None = None
        self.conflicts: tuple[str, ...] = ()
        self.status = "none pushed"
        self.poller = Poller((), self.sink)
        self.publisher = ConnectorPublisher(broker, self.poller, self.sink)
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        devices: tuple[Device, ...] = self.local
        stored = await asyncio.to_thread(_read_stored, self.database)
        if stored is not None:
            try:
                self.pushed = parse_set(stored)
                devices, self.conflicts = combine(self.local, self.pushed.devices)
                self.status = "applied"
            except ConnectorError as exc:  # a gateway.toml edited since: the file wins, the cloud's set waits
                self.status = f"refused: {exc.code}: {exc.message}"
                log.error("connectors: the stored set from the cloud cannot be used with gateway.toml: %s", exc.message)
                devices = self.local
        await self._swap(devices)

    async def stop(self) -> None:
        await self.publisher.stop()
        await self.poller.stop()

    async def apply(self, payload: object) -> str:
        """Take a ``connectors`` downlink payload; returns the item's status for gateway.db."""
        async with self._lock:
            try:
                pushed = parse_set(payload)
            except ConnectorError as exc:
                return f"refused: {exc.code}: {exc.message}"
            if self.pushed is not None and pushed.version <= self.pushed.version:
                return f"superseded: version {self.pushed.version} is in use"
            try:
                devices, conflicts = combine(self.local, pushed.devices)
            except ConnectorError as exc:
                self.status = f"refused: {exc.code}: {exc.message}"
                log.error("connectors: set version %d refused: %s", pushed.version, exc.message)
                return self.status
            await asyncio.to_thread(_store, self.database, pushed.to_payload())
            self.pushed, self.conflicts = pushed, conflicts
            self.status = "applied"
            await self._swap(devices)
            if conflicts:
                log.warning("connectors: set version %d: %s defined in gateway.toml, kept from there (%s)", pushed.version,
                            ", ".join(conflicts), Code.CONNECTOR_DEFINED_LOCALLY)
            log.info("connectors: set version %d in use: %d devices polled", pushed.version, len(devices))
            return "applied" if not conflicts else f"applied; {Code.CONNECTOR_DEFINED_LOCALLY}: {', '.join(conflicts)}"

    async def _swap(self, devices: tuple[Device, ...]) -> None:
        old = self.poller
        if tuple(old.devices.values()) == devices and old.started:
            return
        await old.stop()
        new = Poller(devices, self.sink)
        for device_id, device in new.devices.items():
            if old.devices.get(device_id) == device:
                new.states[device_id] = old.states[device_id]
        self.poller = self.publisher.poller = new
        new.start()
        for device_id in new.devices:  # a polled device is always "there": commands held for it go out now
            if self.on_ready is not None and device_id not in old.devices:
                self.on_ready(device_id)

    def snapshot(self) -> list[dict[str, Any]]:
        local = {d.id for d in self.local}
        return [{**s, "source": "gateway.toml" if s["id"] in local else f"cloud v{self.pushed.version if self.pushed else '?'}"}
                for s in self.poller.snapshot()]

    def report(self) -> dict[str, object]:
        """What the gateway tells the cloud about the pushed set (in its periodic report)."""
        return {
            "version": self.pushed.version if self.pushed is not None else None,
            "status": self.status,
            "polled": sorted(self.poller.devices),
            "defined_locally": list(self.conflicts),
        }
