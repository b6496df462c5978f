"""The gateway's local rule runner: the same ``pulse.protocol.rules`` as the cloud, on every message
the gateway accepts, so a site raises alerts while its uplink is down.

- The buffer calls ``observe(stores)`` after each group commit, once the PUBACKs are released
  (synchronous, no I/O: it queues the stored records and wakes the evaluation task), so rule
  evaluation never delays an acknowledgement.
- The evaluation task parses each record, evaluates every rule whose scope covers the device
  (``now`` is the gateway's clock at evaluation, never the device's). When there are alert
  actions, it stores them (and the rule states) in one SQLite transaction and appends each to the
  ``ALERTS`` buffer stream (record type ``"alert"``, body ``AlertRecord.to_body()``), which syncs
  to the cloud; the cloud merges by fingerprint.
- Rule state alone (a window running, a heartbeat's last-seen time: it changes on every message)
  is checkpointed at each sweep, with each alert and at stop, not per message: writing it per
  message competed with the buffer for SQLite's write lock and delayed PUBACKs. A crash loses at
  most one sweep interval of state changes (a window may start again up to 5 s late).
- A periodic sweep advances heartbeat rules (STALE, OFFLINE) and settles flapping.

The rule set lives in the ``rules`` table: ``store_rules(path, docs)`` replaces it (the downlink
calls it with the tenant's rule set; ``pulse gateway rules set --file rules.json`` does it by hand)
and a running runner picks it up within one sweep (``reload()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pulse.edge.buffer import Buffer
from pulse.edge.errors import StorageError
from pulse.edge.ingest import Store
from pulse.edge.schema import PRAGMAS, SCHEMA, synchronous_pragma
from pulse.edge.sqlite import SqliteThread
from pulse.protocol.alerts import RECORD_TYPE, AlertRecord
from pulse.protocol.batch import Stream
from pulse.protocol.envelope import MetricValue
from pulse.protocol.errors import Code, RuleError
from pulse.protocol.rules import (
    Device,
    Heartbeat,
    Rule,
    RuleState,
    UpdateDeviceState,
    applies_to,
    evaluate,
    new_state,
    parse_rule,
    rule_to_dict,
    sweep,
)
from pulse.protocol.sync import COMMAND_STATE_TYPE, rule_devices_from_payload, rule_devices_to_payload

log = logging.getLogger("pulse.edge.rules")
_T = TypeVar("_T")
EDGE_TENANT = "gateway"
"""Rules at the edge name this tenant; the cloud replaces it with the tenant of the gateway's certificate."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # the runner uses one thread
    # The runner's commits (local alerts, rule-state checkpoints) do not wait for the disk: each
    # alert's ALERTS record follows at once through the buffer, whose commit syncs the WAL file and
    # with it everything written before (SQLite replays WAL in order). A power cut between the two
    # loses both, as one a moment earlier would have lost the evaluation; the reading that caused
    # it is in the buffer already, and the cloud evaluates it when it arrives.
    for pragma in (*PRAGMAS, synchronous_pragma("normal")):
        conn.execute(pragma)
    conn.executescript(SCHEMA)
    return conn


def store_rules(
    path: Path, docs: object, *, set_version: int | None = None, now_ms: int | None = None, devices: object = None
) -> list[Rule]:
    """Validate a rule set (a JSON list of rules) and make it the gateway's, replacing the previous
    one in one transaction. Raises ``RuleError`` (nothing is changed) if any rule is refused.
    States of rules that are gone are removed; local alerts stay. ``set_version``: the version of
    the whole set as the cloud numbers it (the downlink), kept in ``meta`` (``rules_version``).
    ``devices``: the tags and site of the devices the gateway serves (the downlink's
    ``rule_devices_to_payload``), kept in ``meta`` (``rule_devices``) so tag- and site-scoped rules
    apply here as in the cloud; None keeps the ones stored before."""
    if not isinstance(docs, list):
        raise RuleError(Code.RULE_NOT_OBJECT, "a rule set is a JSON list of rules")
    rules = [parse_rule(doc, tenant=EDGE_TENANT) for doc in docs]
    if devices is not None:
        try:
            registry = rule_devices_from_payload(devices)
        except ValueError as exc:
            raise RuleError(Code.RULE_BAD_SCOPE, str(exc)) from exc
        devices = json.dumps(rule_devices_to_payload(list(registry.values())))
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        conn = _connect(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM rules")
            conn.executemany(
                "INSERT INTO rules (id, version, definition, updated_ms) VALUES (?, ?, ?, ?)",
                [(r.id, r.version, json.dumps(rule_to_dict(r)), now_ms) for r in rules],
            )
            conn.execute("DELETE FROM rule_state WHERE rule_id NOT IN (SELECT id FROM rules)")
            if set_version is not None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('rules_version', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(set_version),),
                )
            if devices is not None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('rule_devices', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (devices,),
                )
            conn.execute("COMMIT")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"could not store the rule set in {path}: {exc}", path=str(path)) from exc
    return rules


def rules_version(path: Path) -> int | None:
    """The version of the rule set last stored with ``set_version`` (None: never, or set by hand)."""
    conn = _connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'rules_version'").fetchone()
    finally:
        conn.close()
    return None if row is None else int(row[0])


@dataclass(frozen=True, slots=True)
class _Reading:
    device_id: str
    metrics: dict[str, MetricValue]


@dataclass(frozen=True, slots=True)
class LocalAlert:
    id: int
    rule_id: str
    device_id: str
    severity: str
    state: str
    flapping: bool
    text: str
    opened_ms: int
    closed_ms: int | None


class EdgeRuleRunner:
    def __init__(
        self, path: Path, buffer: Buffer, *, sweep_interval_s: float = 5.0, clock: Callable[[], int] | None = None
    ) -> None:
        self._path = path
        self._buffer = buffer
        self._sweep_s = sweep_interval_s
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._db = SqliteThread("edge-rules")
        self._rules: list[Rule] = []
        self._states: dict[tuple[str, str], RuleState] = {}
        self._dirty: dict[tuple[str, str], RuleState] = {}  # changed since the last checkpoint
        self._devices: list[str] = []  # the gateway's registered devices: heartbeat rules watch them from the start
        self._registry: dict[str, Device] = {}  # their tags and site, from the cloud (rule scopes)
        self._pending: deque[Store] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.on_alert: Callable[[AlertRecord], None] | None = None  # tests and the bench watch here
        self.evaluated = 0
        self._lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self._db.open(lambda: _connect(self._path))
        await self._db.run(self._load)
        self._tasks = [
            asyncio.create_task(self._evaluator(), name="edge-rules"),
            asyncio.create_task(self._sweeper(), name="edge-rules-sweep"),
        ]

    def _load(self, *, states: bool = True) -> None:
        """Rules and registered devices from the SQLite file; with ``states``, the checkpointed rule
        states too (at start only: in memory they are newer than the last checkpoint)."""
        rules = []
        for rule_id, definition in self._db.conn.execute("SELECT id, definition FROM rules ORDER BY id"):
            try:
                rules.append(parse_rule(json.loads(definition), tenant=EDGE_TENANT))
            except RuleError as exc:
                log.error("stored rule %s is not valid and is skipped: %s", rule_id, exc)
        self._devices = [d for (d,) in self._db.conn.execute("SELECT device_id FROM devices ORDER BY device_id")]
        row = self._db.conn.execute("SELECT value FROM meta WHERE key = 'rule_devices'").fetchone()
        try:
            self._registry = {} if row is None else rule_devices_from_payload(json.loads(row[0]))
        except ValueError as exc:  # only if the file was changed behind the runner's back
            log.error("stored device scopes are not valid and are ignored: %s", exc)
            self._registry = {}
        self._rules = rules
        if states:
            loaded = {}
            for rule_id, device_id, state in self._db.conn.execute("SELECT rule_id, device_id, state FROM rule_state"):
                with contextlib.suppress(RuleError, ValueError):
                    loaded[(rule_id, device_id)] = RuleState.from_dict(json.loads(state))
            self._states = loaded

    async def reload(self) -> None:
        """Read the rule set and the registered devices again (after ``store_rules``). The rule
        states stay those in memory: reading the last checkpoint back would forget every message
        evaluated since, and a device heard from a second ago would look silent since the checkpoint."""
        async with self._lock:
            await self._db.run(lambda: self._load(states=False))

    async def set_rules(self, docs: object, *, set_version: int | None = None, devices: object = None) -> list[Rule]:
        """Store a new rule set (and the served devices' tags and sites) and use it at once: what the
        downlink calls with the tenant's rules. Raises ``RuleError`` (nothing changes) if any rule is refused."""
        rules = await self._db.run(lambda: store_rules(self._path, docs, set_version=set_version, devices=devices))
        await self.reload()
        return rules

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._run(list(self._pending), self._clock())  # evaluate what is queued, checkpoint the state
        self._pending.clear()
        await self._db.close()

    # --- evaluation ----------------------------------------------------------------------------

    def _device(self, device_id: str) -> Device:
        """The device as rule scopes see it: its tags and site as the cloud sent them (none if unknown)."""
        return self._registry.get(device_id) or Device(device_id)

    def observe(self, stores: Sequence[Store]) -> None:
        """The buffer's after-commit listener: queue what was stored. No I/O."""
        if self._rules:
            self._pending.extend(stores)
            self._wake.set()

    async def _evaluator(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._pending)
            self._pending.clear()
            try:
                await self._run(batch, None)
            except Exception:
                log.exception("local rule evaluation failed for %d messages (they are buffered)", len(batch))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_s)
            try:
                await self.reload()
                await self._run([], self._clock())
            except Exception:
                log.exception("the local rule sweep failed")

    async def sweep_once(self, now: int) -> None:
        await self._run([], now)

    async def _run(self, stores: list[Store], sweep_at: int | None) -> None:
        async with self._lock:
            await self._run_locked(stores, sweep_at)

    async def _run_locked(self, stores: list[Store], sweep_at: int | None) -> None:
        changed: dict[tuple[str, str], RuleState] = {}
        actions: list[object] = []
        now = self._clock()
        for store in stores:
            if store.stream is Stream.ALERTS or store.type == COMMAND_STATE_TYPE:
                continue  # the gateway's own records say nothing about the device's readings
            if store.envelope is not None:
                metrics = store.envelope.metrics
            else:
                try:
                    metrics = json.loads(store.raw).get("metrics") or {}
                except (ValueError, AttributeError):
                    continue
            reading = _Reading(store.device_id, metrics)
            device = self._device(store.device_id)
            for rule in self._rules:
                if not applies_to(rule, device):
                    continue
                key = (rule.id, store.device_id)
                state, done = evaluate(rule, self._states.get(key), reading, now)
                if state != self._states.get(key):
                    self._states[key] = changed[key] = state
                actions.extend(done)
            self.evaluated += 1
        if sweep_at is not None:
            rules = {r.id: r for r in self._rules}
            for rule in self._rules:  # a registered device never heard from is watched too
                if isinstance(rule.condition, Heartbeat):
                    for device_id in self._devices:
                        key = (rule.id, device_id)
                        if key not in self._states and applies_to(rule, self._device(device_id)):
                            self._states[key] = changed[key] = new_state(rule, device_id, sweep_at)
            for key, state in list(self._states.items()):
                rule = rules.get(key[0])
                if rule is None:
                    continue
                new, done = sweep(rule, state, sweep_at)
                if new != state:
                    self._states[key] = changed[key] = new
                actions.extend(done)
        records = [AlertRecord.of(a) for a in actions if not isinstance(a, UpdateDeviceState)]
        self._dirty.update(changed)
        if not records and sweep_at is None:
            return  # state only: checkpointed by the next sweep (or alert), not on every message
        dirty, self._dirty = self._dirty, {}
        if dirty or records:
            await self._db.run(self._persist, dirty, records)
        for rec in records:
            raw = json.dumps({"body": rec.to_body()}).encode()
            self._buffer.submit(Store(Stream.ALERTS, rec.device_id, rec.at_ms, RECORD_TYPE, None, raw, None), wait=False)
            if self.on_alert is not None:
                self.on_alert(rec)

    def _persist(self, states: dict[tuple[str, str], RuleState], records: list[AlertRecord]) -> None:
        with self._db.transaction() as conn:
            conn.executemany(
                "INSERT INTO rule_state (rule_id, device_id, state) VALUES (?, ?, ?) "
                "ON CONFLICT (rule_id, device_id) DO UPDATE SET state = excluded.state",
                [(k[0], k[1], json.dumps(s.to_dict())) for k, s in states.items()],
            )
            for rec in records:
                expl = json.dumps(rec.explanation)
                if rec.action in ("open", "flapping_started"):
                    conn.execute(
                        "INSERT INTO alerts (rule_id, device_id, severity, state, flapping, explanation, opened_ms) "
                        "VALUES (?, ?, ?, 'open', ?, ?, ?) ON CONFLICT (device_id, rule_id) WHERE state <> 'closed' "
                        "DO UPDATE SET explanation = excluded.explanation, flapping = flapping OR excluded.flapping",
                        (rec.rule_id, rec.device_id, str(rec.severity), rec.action == "flapping_started", expl, rec.at_ms),
                    )
                elif rec.action == "close":
                    conn.execute(
                        "UPDATE alerts SET state = 'closed', closed_ms = ? WHERE device_id = ? AND rule_id = ? AND state <> 'closed'",
                        (rec.at_ms, rec.device_id, rec.rule_id),
                    )
                elif rec.action == "flapping_ended":
                    conn.execute(
                        "UPDATE alerts SET flapping = 0 WHERE device_id = ? AND rule_id = ? AND state <> 'closed'",
                        (rec.device_id, rec.rule_id),
                    )

    # --- reading ---------------------------------------------------------------------------------

    def _alerts(self, open_only: bool, limit: int) -> list[LocalAlert]:
        conn = self._db.conn
        where = "WHERE state <> 'closed'" if open_only else ""
        rows = conn.execute(
            f"SELECT id, rule_id, device_id, severity, state, flapping, explanation, opened_ms, closed_ms FROM alerts {where} "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [LocalAlert(r[0], r[1], r[2], r[3], r[4], bool(r[5]), json.loads(r[6]).get("text", ""), r[7], r[8]) for r in rows]

    async def alerts(self, *, open_only: bool = False, limit: int = 50) -> list[LocalAlert]:
        return await self._db.run(self._alerts, open_only, limit)

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules)
