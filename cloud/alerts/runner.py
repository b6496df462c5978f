"""The cloud's rule runner: evaluates ``pulse.protocol.rules`` on every committed message, and
sweeps periodically for silence (heartbeats, gateways).

- Durable position: the transaction that stores telemetry also stores, per tenant, an entry in
  ``rule_outbox`` (``ingest.writer.write_rows``). ``drain(tenant)`` evaluates the tenant's entries
  oldest first and deletes them in the same ``db.tenant()`` transaction as the rule states and
  alerts they produced, so each committed row is evaluated exactly once: a crash between commit
  and evaluation leaves the entry behind, and ``catch_up()`` (at start and before every sweep)
  evaluates it. Nothing is kept only in memory, so nothing is lost or dropped when behind.
- Event-driven: ``observe(rows)`` is the telemetry writer's after-commit listener (synchronous, no
  I/O: it marks the rows' tenants and wakes the evaluation task), so a threshold is evaluated as
  soon as the reading is stored, with no polling delay. Gateway sync calls ``observe`` after its
  commit too.
- Evaluation locks the rule states it needs (``SELECT ... FOR UPDATE``, so concurrent evaluators of
  one (rule, device) serialise), evaluates, performs the actions (``store.apply_record``) and writes
  the new states in the same transaction. ``process(rows)`` evaluates given rows the same way
  without the outbox (for callers that hold rows in hand).
- ``sweep_once(now)``: per tenant, gateways silent for ``gateway_offline_after_s`` get ONE
  GATEWAY_OFFLINE alert and their devices show ``unreachable`` (their heartbeat rules are not
  advanced, so no NO_HEARTBEAT alert each); other devices' heartbeat rules advance (STALE, OFFLINE);
  flapping alerts settle.

``now`` is the cloud's clock: a row's ``received_at`` for messages, the sweep's clock otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from pulse.cloud.alerts.heartbeat import (
    DEFAULTS,
    INTERVAL_SQL,
    SETTINGS_COLUMNS,
    TWIN_JOIN,
    HeartbeatSettings,
    builtin_rule,
    interval_of,
    load_builtin,
)
from pulse.cloud.alerts.store import FUSABLE, Also, apply_record, set_device_status
from pulse.cloud.db.pool import Database
from pulse.cloud.db.rows import TelemetryRow
from pulse.protocol.alerts import GATEWAY_OFFLINE, NO_HEARTBEAT, AlertRecord
from pulse.protocol.errors import RuleError
from pulse.protocol.rules import (
    Device,
    Heartbeat,
    Rule,
    RuleState,
    Severity,
    Threshold,
    UpdateDeviceState,
    applies_to,
    evaluate,
    new_state,
    parse_rule,
    sweep,
)

log = logging.getLogger("pulse.cloud.alerts")
OUTBOX_ENTRIES_PER_TRANSACTION = 50
TRANSIENT = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# What evaluation needs of a stored row: (device id, metrics, received_at in Unix ms). The metrics
# are the row's parsed ``values`` for rows in hand, or the JSON text an outbox entry stored (parsed
# only when a rule of the tenant's own watches the device).
Item = tuple[str, Mapping[str, float | bool] | str, int]


@dataclass(frozen=True, slots=True)
class Reading:
    device_id: str
    metrics: Mapping[str, float | bool]


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    sweep_interval_s: float = 10.0
    gateway_offline_after_s: float = 300.0


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def device_of(row: asyncpg.Record | Mapping[str, object]) -> Device:
    """A registry row as the rule model sees it: tags ``name=value`` (or bare ``name``), site id as text."""
    return _device(row["device_id"], row["tags"], row["site_id"])  # type: ignore[arg-type]


def _device(device_id: object, tags: Iterable[object] | None, site: object) -> Device:
    named: dict[str, str] = {}
    for tag in tags or ():
        name, _, value = str(tag).partition("=")
        named[name] = value
    return Device(str(device_id), named, None if site is None else str(site))


def _parse_rules(rows: Iterable[tuple[str, object]], tenant_id: uuid.UUID) -> list[Rule]:
    rules = []
    for rule_id, definition in rows:
        try:
            rules.append(parse_rule(definition, tenant=str(tenant_id)))
        except RuleError as exc:  # only if a stored definition was changed behind the API's back
            log.error("rule %s of tenant %s is not valid and is skipped: %s", rule_id, tenant_id, exc)
    return rules


async def load_rules(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> list[Rule]:
    """The tenant's enabled rules (stored definitions were validated on the way in)."""
    rows = await conn.fetch("SELECT id, definition FROM rules WHERE enabled ORDER BY id")
    return _parse_rules(((r["id"], json.loads(r["definition"])) for r in rows), tenant_id)


async def load_all(
    conn: asyncpg.Connection, tenant_id: uuid.UUID, device_ids: Sequence[str] | None = None
) -> tuple[list[Rule], frozenset[str]]:
    """The tenant's rules and its built-in NO_HEARTBEAT (last; with the intervals of ``device_ids``,
    None: every device), and the rule ids whose alerts are switched off (NO_HEARTBEAT when the
    tenant turned its alerts off: states kept, no alert opens)."""
    builtin, settings = await load_builtin(conn, tenant_id, device_ids)
    muted = frozenset() if settings.alerts_enabled else frozenset({NO_HEARTBEAT})
    return [*await load_rules(conn, tenant_id), builtin], muted


@dataclass(frozen=True, slots=True)
class Loaded:
    """What evaluating messages of some devices needs, read in one round trip (``load_for``)."""

    rules: list[Rule]
    """The tenant's enabled rules, then its NO_HEARTBEAT with the devices' own intervals (as ``load_all``)."""
    muted: frozenset[str]
    devices: dict[str, Device]
    """The devices as registered (one not in the registry: a bare ``Device``)."""


_LOAD_SQL = f"""SELECT
  (SELECT coalesce(json_agg(json_build_array(id, definition) ORDER BY id), '[]') FROM rules WHERE enabled)::text,
  (SELECT row_to_json(h) FROM (SELECT {SETTINGS_COLUMNS} FROM heartbeat_settings LIMIT 1) h)::text,
  (SELECT coalesce(json_agg(json_build_array(d.device_id, d.tags, d.site_id, {INTERVAL_SQL})), '[]')
     FROM devices d {TWIN_JOIN} WHERE d.device_id = ANY($1::text[]))::text"""


async def load_for(conn: asyncpg.Connection, tenant_id: uuid.UUID, device_ids: Sequence[str]) -> Loaded:
    """``load_all`` and the registry entries of ``device_ids``, in one statement (the drain runs it
    for every wake-up: each round trip counts in the alert's latency)."""
    rules_json, settings_json, devices_json = await conn.fetchrow(_LOAD_SQL, list(device_ids))
    return _loaded(tenant_id, device_ids, rules_json, settings_json, devices_json)


def _loaded(
    tenant_id: uuid.UUID, device_ids: Iterable[str], rules_json: str, settings_json: str | None, devices_json: str
) -> Loaded:
    """``Loaded`` from the three JSON texts ``_LOAD_SQL`` selects."""
    rules = _parse_rules(json.loads(rules_json), tenant_id)
    if settings_json is None:
        settings = DEFAULTS
    else:
        s = json.loads(settings_json)
        settings = HeartbeatSettings(
            bool(s["alerts_enabled"]),
            float(s["interval_s"]),
            float(s["stale_after"]),
            float(s["offline_after"]),
            str(s["severity"]),
            int(s["version"]),
        )
    devices: dict[str, Device] = {}
    intervals: dict[str, float] = {}
    for device_id, tags, site, own in json.loads(devices_json):
        devices[device_id] = _device(device_id, tags, site)
        # the interval arrives parsed: only a JSON number counts (as in device_intervals)
        value = interval_of(own) if isinstance(own, int | float) and not isinstance(own, bool) else None
        if value is not None:
            intervals[device_id] = value
    muted = frozenset() if settings.alerts_enabled else frozenset({NO_HEARTBEAT})
    return Loaded(
        [*rules, builtin_rule(tenant_id, settings, intervals)], muted, {d: devices.get(d, Device(d)) for d in device_ids}
    )


@dataclass(frozen=True, slots=True)
class Taken:
    """What the drain's one statement (``_TAKE_SQL``) read besides the entries."""

    loaded: Loaded
    states: list[tuple[str, str, str]]
    """(rule id, device id, state JSON): the existing states of the entries' devices under the
    tenant's enabled rules and NO_HEARTBEAT, locked (FOR UPDATE, in key order)."""


# The drain's first statement: take (delete) the oldest entries, and read what evaluating them
# needs (``_LOAD_SQL``'s three parts and the existing rule states, locked), one round trip. Those
# are read once (a CTE that locks is evaluated once) and returned on the first entry's row.
_TAKE_SQL = f"""WITH taken AS (
  DELETE FROM rule_outbox WHERE id IN (SELECT id FROM rule_outbox ORDER BY id LIMIT $1 FOR UPDATE)
  RETURNING id, device_ids, metrics, received_ms
), devs AS (SELECT DISTINCT unnest(device_ids) AS device_id FROM taken),
loaded AS (SELECT
  (SELECT coalesce(array_agg(device_id ORDER BY device_id), '{{}}') FROM devs) AS devices,
  (SELECT coalesce(json_agg(json_build_array(id, definition) ORDER BY id), '[]') FROM rules WHERE enabled)::text AS rules,
  (SELECT row_to_json(h) FROM (SELECT {SETTINGS_COLUMNS} FROM heartbeat_settings LIMIT 1) h)::text AS settings,
  (SELECT coalesce(json_agg(json_build_array(d.device_id, d.tags, d.site_id, {INTERVAL_SQL})), '[]')
     FROM devices d {TWIN_JOIN} WHERE d.device_id IN (SELECT device_id FROM devs))::text AS registry,
  (SELECT coalesce(json_agg(json_build_array(s.rule_id, s.device_id, s.state::text)), '[]') FROM (
     SELECT rule_id, device_id, state FROM rule_state
     WHERE device_id IN (SELECT device_id FROM devs) AND (rule_id = $2 OR rule_id IN (SELECT id FROM rules WHERE enabled))
     ORDER BY rule_id, device_id FOR UPDATE) s)::text AS states
)
SELECT t.id, t.device_ids, t.metrics, t.received_ms, l.devices, l.rules, l.settings, l.registry, l.states
FROM taken t LEFT JOIN loaded l ON t.id = (SELECT min(id) FROM taken)
ORDER BY t.id"""


async def _lock_states(
    conn: asyncpg.Connection, pairs: set[tuple[str, str]], rules: dict[str, Rule], now: int
) -> dict[tuple[str, str], RuleState]:
    """Create missing states (monitoring starts now), then lock and read them all."""
    if not pairs:
        return {}
    ordered = sorted(pairs)  # one order for every evaluator: concurrent inserts and locks cannot deadlock
    rule_ids, device_ids = [p[0] for p in ordered], [p[1] for p in ordered]
    fresh = [json.dumps(new_state(rules[r], d, now).to_dict()) for r, d in ordered]
    # one round trip: insert the missing states and lock the existing ones. ``kept`` reads the
    # statement's snapshot, so a state another evaluator inserted and committed meanwhile is in
    # neither part; those few are read (and locked) by a second statement, as before.
    rows = await conn.fetch(
        "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS u(r, d, s)), "
        "made AS (INSERT INTO rule_state (tenant_id, rule_id, device_id, state) "
        "  SELECT pulse_current_tenant(), r, d, s::jsonb FROM u ON CONFLICT DO NOTHING RETURNING rule_id, device_id, state), "
        "kept AS (SELECT rule_id, device_id, state FROM rule_state WHERE (rule_id, device_id) IN (SELECT r, d FROM u) "
        "  ORDER BY rule_id, device_id FOR UPDATE) "
        "SELECT * FROM made UNION ALL SELECT * FROM kept",
        rule_ids,
        device_ids,
        fresh,
    )
    missing = pairs - {(r["rule_id"], r["device_id"]) for r in rows}
    if missing:
        late = sorted(missing)
        rows = [
            *rows,
            *await conn.fetch(
                "SELECT rule_id, device_id, state FROM rule_state WHERE (rule_id, device_id) IN "
                "(SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY rule_id, device_id FOR UPDATE",
                [p[0] for p in late],
                [p[1] for p in late],
            ),
        ]
    return _states_of(((r["rule_id"], r["device_id"], r["state"]) for r in rows), rules, now)


def _states_of(rows: Iterable[tuple[str, str, str]], rules: Mapping[str, Rule], now: int) -> dict[tuple[str, str], RuleState]:
    """(rule id, device id, state JSON) rows as states; an unreadable one starts again (logged)."""
    states = {}
    for rule_id, device_id, state in rows:
        key = (rule_id, device_id)
        try:
            states[key] = RuleState.from_dict(json.loads(state))
        except RuleError as exc:
            log.error("rule state %s is unreadable (%s); starting it again", key, exc)
            states[key] = new_state(rules[key[0]], key[1], now)
    return states


_SAVE_STATES = (
    "UPDATE rule_state s SET state = u.st::jsonb, updated_at = now() "
    "FROM unnest($1::text[], $2::text[], $3::text[]) AS u(r, d, st) WHERE s.rule_id = u.r AND s.device_id = u.d"
)


def _first_heard_sql(devices: str, times: str) -> str:
    """``_first_heard``'s statement, its two arrays at the placeholders ``devices`` and ``times``."""
    return (
        "INSERT INTO device_states (tenant_id, device_id, status, reason, changed_at) "
        "SELECT pulse_current_tenant(), d, 'online', jsonb_build_object('text', d || ' is online: first heard from', 'at_ms', t), "
        f"to_timestamp(t / 1000.0) FROM unnest({devices}::text[], {times}::bigint[]) AS u(d, t) ON CONFLICT DO NOTHING"
    )


def _state_args(states: Mapping[tuple[str, str], RuleState]) -> list[list[str]]:
    return [[k[0] for k in states], [k[1] for k in states], [json.dumps(s.to_dict()) for s in states.values()]]


async def _save_states(conn: asyncpg.Connection, states: Mapping[tuple[str, str], RuleState]) -> None:
    if states:
        await conn.execute(_SAVE_STATES, *_state_args(states))


async def _finish(conn: asyncpg.Connection, states: Mapping[tuple[str, str], RuleState], first: Mapping[str, int]) -> None:
    """``_save_states`` and ``_first_heard`` in one round trip when both have work."""
    if states and first:
        sql = f"WITH saved AS ({_SAVE_STATES} RETURNING 1) {_first_heard_sql('$4', '$5')}"
        await conn.execute(sql, *_state_args(states), list(first), list(first.values()))
    else:
        await _save_states(conn, states)
        await _first_heard(conn, first)


def _finish_entries(states: Mapping[tuple[str, str], RuleState], first: Mapping[str, int]) -> Also:
    """``_finish`` as ``WITH`` entries, for ``apply_record(also=...)``: the states saved and the
    devices first heard from, in the alert action's own statement."""

    def also(n: int) -> tuple[list[str], list[object]]:
        entries: list[str] = []
        args: list[object] = []
        if states:
            entries.append(
                "saved AS (UPDATE rule_state s SET state = u.st::jsonb, updated_at = now() "
                f"FROM unnest(${n}::text[], ${n + 1}::text[], ${n + 2}::text[]) AS u(r, d, st) "
                "WHERE s.rule_id = u.r AND s.device_id = u.d)"
            )
            args += _state_args(states)
            n += 3
        if first:
            entries.append(f"heard AS ({_first_heard_sql(f'${n}', f'${n + 1}')})")
            args += [list(first), list(first.values())]
        return entries, args

    return also


def _doings(actions: Iterable[object], muted: frozenset[str], covered: Iterable[str]) -> list[UpdateDeviceState | AlertRecord]:
    """The actions to perform, in order: opening alerts of ``muted`` rules is skipped (closing still
    happens), and so are NO_HEARTBEAT's state changes for ``covered`` devices (a heartbeat rule of
    the tenant's own watches them: its state is the device's state, as before the built-in existed)."""
    out: list[UpdateDeviceState | AlertRecord] = []
    for action in actions:
        if isinstance(action, UpdateDeviceState):
            if not (action.explanation.rule_id == NO_HEARTBEAT and action.device in covered):
                out.append(action)
        else:
            record = AlertRecord.of(action)
            if not (record.rule_id in muted and record.action != "close"):
                out.append(record)
    return out


async def _do(conn: asyncpg.Connection, doing: UpdateDeviceState | AlertRecord, also: Also | None = None) -> None:
    if isinstance(doing, UpdateDeviceState):
        await set_device_status(conn, doing.device, doing.status, doing.explanation.to_dict(), doing.explanation.at_ms)
    else:
        await apply_record(conn, doing, also=also)


async def perform(
    conn: asyncpg.Connection, actions: Sequence[object], muted: frozenset[str] = frozenset(), covered: Iterable[str] = ()
) -> None:
    """Apply rule actions (``_doings`` says which)."""
    for doing in _doings(actions, muted, covered):
        await _do(conn, doing)


async def _perform_and_finish(
    conn: asyncpg.Connection,
    actions: Sequence[object],
    muted: frozenset[str],
    covered: Iterable[str],
    states: Mapping[tuple[str, str], RuleState],
    first: Mapping[str, int],
) -> None:
    """``perform`` then ``_finish``; when the last action is an alert's open or close, the states
    and first-heard devices go in its statement (one round trip less on the way to the alert)."""
    doings = _doings(actions, muted, covered)
    last = doings[-1] if doings else None
    if isinstance(last, AlertRecord) and last.action in FUSABLE and (states or first):
        for doing in doings[:-1]:
            await _do(conn, doing)
        await _do(conn, last, _finish_entries(states, first))
        return
    for doing in doings:
        await _do(conn, doing)
    await _finish(conn, states, first)


async def _first_heard(conn: asyncpg.Connection, first: Mapping[str, int]) -> None:
    """A device's first message (``first``: device -> when, ms) gives it a state: online since then
    (NO_HEARTBEAT's state starts ONLINE, so evaluating it changes nothing the first time). Devices
    with a state keep theirs."""
    if first:
        await conn.execute(_first_heard_sql("$1", "$2"), list(first), list(first.values()))


def _covered(rules: Mapping[str, Rule], pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Devices a heartbeat rule of the tenant's own watches."""
    return {d for r, d in pairs if r != NO_HEARTBEAT and isinstance(rules[r].condition, Heartbeat)}


def _items(rows: Iterable[TelemetryRow]) -> list[Item]:
    return [(row.device_id, row.metric_values(), _ms(row.received_at)) for row in rows]


class RuleRunner:
    def __init__(self, db: Database, config: RunnerConfig = RunnerConfig(), *, clock: Callable[[], int] | None = None) -> None:
        self._db = db
        self._config = config
        self._clock = clock or (lambda: int(time.time() * 1000))
        self._dirty: set[uuid.UUID] = set()
        self._draining: dict[uuid.UUID, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.evaluated_rows = 0
        self.failed_rows = 0
        self.last_sweep_ms: int | None = None  # when the last sweep finished (the runner's clock), for the system page

    # --- event-driven ------------------------------------------------------------------------

    def observe(self, rows: Sequence[TelemetryRow]) -> None:
        """After-commit listener: the rows' outbox entries are committed; wake the evaluator for their tenants."""
        self._dirty.update(row.tenant_id for row in rows)
        self._wake.set()

    async def process(self, rows: Sequence[TelemetryRow]) -> None:
        """Evaluate rows in hand, one transaction per tenant, without the outbox."""
        by_tenant: dict[uuid.UUID, list[TelemetryRow]] = {}
        for row in rows:
            by_tenant.setdefault(row.tenant_id, []).append(row)
        failed = 0
        for tenant_id, tenant_rows in by_tenant.items():
            try:
                async with self._db.tenant(tenant_id) as conn:
                    await self._evaluate(conn, tenant_id, _items(tenant_rows))
            except Exception:  # one tenant's failure must not cost the others their alerts
                failed += len(tenant_rows)
                log.exception("rule evaluation failed for %d rows of tenant %s (they are stored)", len(tenant_rows), tenant_id)
        self.evaluated_rows += len(rows) - failed
        self.failed_rows += failed

    async def drain(self, tenant_id: uuid.UUID) -> int:
        """Evaluate the tenant's outbox entries, oldest first, each transaction deleting what it
        evaluated; returns the rows evaluated (entries, for a tenant without rules). An entry whose evaluation fails for a reason other
        than the database (a bug) is logged and removed alone, so it cannot block what follows."""
        lock = self._draining.setdefault(tenant_id, asyncio.Lock())
        done = 0
        async with lock:  # one drain per tenant in this process; other processes wait on the row locks
            limit = OUTBOX_ENTRIES_PER_TRANSACTION
            while True:
                try:
                    evaluated = await self._drain_once(tenant_id, limit)
                except TRANSIENT:
                    raise  # the entries stay; the next wake or sweep tries again
                except Exception as exc:  # noqa: BLE001 - a bug in evaluation: isolate the entry, drop it
                    if limit > 1:
                        limit = 1  # find the entry that fails
                        continue
                    await self._discard_first(tenant_id, exc)
                    limit = OUTBOX_ENTRIES_PER_TRANSACTION
                    continue
                if evaluated is None:
                    return done
                done += evaluated[0]
                if not evaluated[1]:
                    # fewer entries than asked for: the outbox was empty behind them. An entry that
                    # commits later marks the tenant again (``observe``), or the sweep finds it.
                    return done

    async def evaluate_readings(self, tenant_id: uuid.UUID, readings: Sequence[Reading], now: int) -> None:
        """Evaluate the tenant's threshold rules on readings in hand (no outbox, no device registry,
        no built-in heartbeat), in one transaction: the platform health rules' way in. A rule is
        evaluated only for readings that carry its metric."""
        async with self._db.tenant(tenant_id) as conn:
            rules = {r.id: r for r in await load_rules(conn, tenant_id) if isinstance(r.condition, Threshold)}
            pairs = {
                (r.id, x.device_id)
                for x in readings
                for r in rules.values()
                if isinstance(r.condition, Threshold) and r.condition.metric in x.metrics and applies_to(r, Device(x.device_id))
            }
            states = await _lock_states(conn, pairs, rules, now)
            changed: dict[tuple[str, str], RuleState] = {}
            for reading in readings:
                for rule_id, rule in rules.items():
                    key = (rule_id, reading.device_id)
                    if key not in states:
                        continue
                    state, actions = evaluate(rule, states[key], reading, now)
                    if state != states[key]:
                        states[key] = changed[key] = state
                    await perform(conn, actions)
            await _save_states(conn, changed)

    async def _drain_once(self, tenant_id: uuid.UUID, limit: int) -> tuple[int, bool] | None:
        """Evaluate the oldest ``limit`` entries in one transaction: (rows evaluated, whether
        ``limit`` entries were there), or None for an empty outbox. The entries are deleted as they
        are taken (locked the same way), so the deletion commits with what their evaluation wrote,
        or, on any failure, neither does."""
        async with self._db.tenant_now(tenant_id, derived=True) as conn:
            entries = await conn.fetch(_TAKE_SQL, limit, NO_HEARTBEAT)
            if not entries:
                return None
            items = [item for e in entries for item in zip(e["device_ids"], e["metrics"], e["received_ms"], strict=True)]
            head = entries[0]
            loaded = _loaded(tenant_id, head["devices"], head["rules"], head["settings"], head["registry"])
            await self._evaluate(conn, tenant_id, items, Taken(loaded, json.loads(head["states"])))
        self.evaluated_rows += len(items)
        return len(items), len(entries) == limit

    async def _discard_first(self, tenant_id: uuid.UUID, exc: Exception) -> None:
        async with self._db.tenant(tenant_id) as conn:
            entry = await conn.fetchrow(
                "DELETE FROM rule_outbox WHERE id = (SELECT min(id) FROM rule_outbox) RETURNING id, cardinality(device_ids) AS n"
            )
        if entry is not None:
            self.failed_rows += entry["n"]
            log.error(
                "rule evaluation failed for outbox entry %s of tenant %s (%d rows, stored; alerts from them may be missing)",
                entry["id"],
                tenant_id,
                entry["n"],
                exc_info=exc,
            )

    async def catch_up(self) -> int:
        """Evaluate every tenant's leftover outbox entries (what an earlier process committed but never evaluated)."""
        async with self._db.identity() as conn:
            tenants = [r[0] for r in await conn.fetch("SELECT pulse_rule_outbox_tenants()")]
        done = 0
        for tenant_id in tenants:
            try:
                done += await self.drain(tenant_id)
            except Exception:
                log.exception("catching up on rule evaluation failed for tenant %s; retrying at the next sweep", tenant_id)
        return done

    async def _evaluate(
        self,
        conn: asyncpg.Connection,
        tenant_id: uuid.UUID,
        items: Sequence[Item],
        taken: Taken | None = None,
    ) -> None:
        """Evaluate ``items`` of one tenant inside the caller's ``db.tenant()`` transaction
        (``taken``: what ``_TAKE_SQL`` read and locked with them; None: read and lock it here)."""
        if not items:
            return
        if taken is None:
            loaded = await load_for(conn, tenant_id, sorted({item[0] for item in items}))
        else:
            loaded = taken.loaded
        rules, muted, devices = {r.id: r for r in loaded.rules}, loaded.muted, loaded.devices  # never empty: NO_HEARTBEAT
        scoped = {d: [r for r in rules.values() if applies_to(r, dev)] for d, dev in devices.items()}
        pairs = {(r.id, d) for d, rs in scoped.items() for r in rs}
        now0 = min(item[2] for item in items)
        if taken is None:
            states = await _lock_states(conn, pairs, rules, now0)
        else:  # the existing states came locked with the entries; those not made yet are made now
            locked = _states_of((r for r in taken.states if (r[0], r[1]) in pairs), rules, now0)
            states = {k: locked[k] for k in pairs if k in locked}
            if missing := pairs - states.keys():
                states |= await _lock_states(conn, missing, rules, now0)
        actions: list[object] = []
        changed: dict[tuple[str, str], RuleState] = {}
        covered = _covered(rules, pairs)
        builtin = rules.get(NO_HEARTBEAT)
        span: dict[str, tuple[int, int]] = {}  # NO_HEARTBEAT: when each device was first and last heard in these items
        watched = {d for r, d in pairs if r == NO_HEARTBEAT}
        own = {d: [r for r in rs if r is not builtin] for d, rs in scoped.items()}
        for device_id, metrics, now in items:
            if device_id in watched:
                seen = span.get(device_id)
                span[device_id] = (now, now) if seen is None else (min(seen[0], now), max(seen[1], now))
            mine = own[device_id]
            if not mine:
                continue  # only the built-in watches it: the metrics need not be read
            reading = Reading(device_id, json.loads(metrics) if isinstance(metrics, str) else metrics)
            for rule in mine:
                key = (rule.id, device_id)
                state, done = evaluate(rule, states[key], reading, now)
                if state != states[key]:
                    states[key] = changed[key] = state
                actions += done  # performed in order at the end: evaluation reads only the states in hand
        # a heartbeat depends only on when a device was heard: its first message in the items (the
        # moment it came back) and its last (its last seen) say all the others would
        for device_id, (first, last) in span.items():
            assert builtin is not None
            key = (NO_HEARTBEAT, device_id)
            for now in (first,) if first == last else (first, last):
                state, done = evaluate(builtin, states[key], Reading(device_id, {}), now)
                if state != states[key]:
                    states[key] = changed[key] = state
                actions += done
        await _perform_and_finish(
            conn, actions, muted, covered, changed, {d: first for d, (first, _) in span.items() if d not in covered}
        )

    async def _evaluator(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            tenants, self._dirty = self._dirty, set()
            for tenant_id in tenants:
                try:
                    await self.drain(tenant_id)
                except Exception:  # keep evaluating what comes next; the entries stay for the next sweep
                    log.exception(
                        "rule evaluation failed for tenant %s (rows stored; evaluated again at the next sweep)", tenant_id
                    )

    # --- the sweep ---------------------------------------------------------------------------

    async def sweep_once(self, now: int | None = None) -> None:
        now = self._clock() if now is None else now
        async with self._db.identity() as conn:
            tenants = [r[0] for r in await conn.fetch("SELECT pulse_alerting_tenants()")]
        for tenant_id in tenants:
            try:
                await self._sweep_tenant(tenant_id, now)
            except Exception:
                log.exception("the rule sweep failed for tenant %s", tenant_id)

    async def _sweep_tenant(self, tenant_id: uuid.UUID, now: int) -> None:
        async with self._db.tenant(tenant_id) as conn:
            offline = await self._gateways(conn, now)
            listed, muted = await load_all(conn, tenant_id)
            rules = {r.id: r for r in listed}
            heartbeat = [r for r in rules.values() if isinstance(r.condition, Heartbeat)]
            devices = await conn.fetch(
                "SELECT device_id, tags, site_id, gateway_id, status FROM devices WHERE status IN ('provisioned', 'active')"
            )
            # watched: devices in service ('active'), and provisioned ones once heard from (a state
            # exists) -- so devices registered ahead of installation do not all alert as offline
            heard = {
                (r["rule_id"], r["device_id"])
                for r in await conn.fetch(
                    "SELECT rule_id, device_id FROM rule_state WHERE rule_id = ANY($1)", [r.id for r in heartbeat]
                )
            }
            # NO_HEARTBEAT watches only devices heard from (a device never seen has no state, no alert)
            pairs = {
                (r.id, d["device_id"])
                for d in devices
                for r in heartbeat
                if applies_to(r, device_of(d))
                and ((r.id, d["device_id"]) in heard or (d["status"] == "active" and r.id != NO_HEARTBEAT))
            }
            flapping = await conn.fetch(
                "SELECT rule_id, device_id FROM rule_state WHERE (state->>'flapping')::boolean AND rule_id = ANY($1)", list(rules)
            )
            pairs |= {(r["rule_id"], r["device_id"]) for r in flapping}
            states = await _lock_states(conn, pairs, rules, now)
            behind = {d["device_id"]: d["gateway_id"] for d in devices}
            covered = _covered(rules, pairs)
            changed = {}
            for key, state in states.items():
                gateway = behind.get(key[1])
                if gateway is not None and gateway in offline:
                    # its gateway is silent: the device is unreachable, not offline; its heartbeat
                    # rules wait (their state is not advanced) so no alert opens for each device
                    await set_device_status(
                        conn,
                        key[1],
                        "unreachable",
                        {"text": f"{key[1]} is unreachable: its gateway is offline", "gateway_id": str(gateway)},
                    )
                    continue
                new, actions = sweep(rules[key[0]], state, now)
                if new != state:
                    changed[key] = new
                await perform(conn, actions, muted, covered)
            await _save_states(conn, changed)

    async def _gateways(self, conn: asyncpg.Connection, now: int) -> set[uuid.UUID]:
        """Open GATEWAY_OFFLINE for silent gateways, close it for those heard from; returns the silent ones."""
        offline: set[uuid.UUID] = set()
        limit_ms = self._config.gateway_offline_after_s * 1000
        for gw in await conn.fetch("SELECT id, name, site_id, last_seen_at FROM gateways WHERE status = 'active'"):
            fp_device = f"gateway:{gw['name']}"
            is_open = await conn.fetchval(
                "SELECT id FROM alerts WHERE device_id = $1 AND rule_id = $2 AND state <> 'closed'", fp_device, GATEWAY_OFFLINE
            )
            last = gw["last_seen_at"]
            silent = last is not None and now - _ms(last) >= limit_ms
            if silent:
                offline.add(gw["id"])
                if is_open is None:
                    silence_s = (now - _ms(last)) / 1000
                    text = (
                        f"gateway {gw['name']} is offline: not heard from for {silence_s:g} s since "
                        f"{last.isoformat(timespec='seconds')} (offline after {self._config.gateway_offline_after_s:g} s); "
                        "its devices show as unreachable"
                    )
                    expl: dict[str, object] = {"text": text, "last_seen_ms": _ms(last), "at_ms": now, "gateway_id": str(gw["id"])}
                    rec = AlertRecord("open", GATEWAY_OFFLINE, fp_device, Severity.CRITICAL, now, None, expl)
                    await apply_record(conn, rec, kind="gateway_offline", gateway_id=gw["id"], site_id=gw["site_id"])
            elif is_open is not None:
                expl = {"text": f"gateway {gw['name']} is back online", "at_ms": now, "gateway_id": str(gw["id"])}
                rec = AlertRecord("close", GATEWAY_OFFLINE, fp_device, Severity.CRITICAL, now, None, expl)
                await apply_record(conn, rec)
                await conn.execute(
                    "UPDATE device_states SET status = 'online', changed_at = now(), reason = $2::jsonb "
                    "WHERE status = 'unreachable' AND device_id IN (SELECT device_id FROM devices WHERE gateway_id = $1)",
                    gw["id"],
                    json.dumps({"text": f"gateway {gw['name']} is back online"}),
                )
        return offline

    async def sweep_forever(self) -> None:
        """Catch up and sweep every ``sweep_interval_s`` until cancelled (one process of a cluster runs it)."""
        while True:
            try:
                await self.catch_up()  # at start: whatever was committed before a crash and not evaluated
                await self.sweep_once()
                self.last_sweep_ms = self._clock()
            except Exception:
                log.exception("the rule sweep failed; retrying in %ss", self._config.sweep_interval_s)
            await asyncio.sleep(self._config.sweep_interval_s)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self, *, sweep: bool = True) -> None:
        """Evaluate as rows commit; ``sweep``: also run ``sweep_forever`` here (false when the
        cluster's leadership runs it on one replica)."""
        self._tasks = [asyncio.create_task(self._evaluator(), name="pulse-rules-evaluator")]
        if sweep:
            self._tasks.append(asyncio.create_task(self.sweep_forever(), name="pulse-rules-sweep"))

    async def stop(self) -> None:
        """Stop; first evaluate what was committed and signalled (anything left waits in the outbox)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        tenants, self._dirty = self._dirty, set()
        for tenant_id in tenants:
            with contextlib.suppress(Exception):
                await self.drain(tenant_id)
