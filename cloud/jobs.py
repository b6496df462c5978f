"""Fleet jobs in the cloud's database, and their runner (docs/cloud.md "Jobs").

The decisions are ``pulse.protocol.jobs`` (pure); this module resolves the target query, stores
jobs and their devices, refreshes each started device's outcome from what it said (its command's
state, or its twin's reported state), calls ``jobs.step`` with the runner's clock, and performs what
the step decided (a command through ``twins.create_command``, a desired patch through
``twins.update_desired``), in the tenant's transaction. Every job change is audited.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pulse.cloud import firmware, twins
from pulse.cloud.db.pool import Database, audit
from pulse.protocol import commands, jobs
from pulse.protocol.envelope import JsonObject
from pulse.protocol.errors import Code, CommandError, FirmwareError, JobError, TwinError
from pulse.protocol.firmware import COMMAND_NAME as FIRMWARE_COMMAND
from pulse.protocol.jobs import Action, ActionKind, DeviceRun, JobRun, JobState, Outcome, Rollout, Target
from pulse.protocol.twin import TwinLimits, TwinUpdate

log = logging.getLogger("pulse.cloud.jobs")

STARTS_PER_ROUND = 500
"""Devices started in one transaction: a large stage starts in several commits, each visible at once,
and no transaction holds thousands of twins locked."""

Wake = Callable[[Iterable[uuid.UUID]], None]


def _uuid(value: str | None, what: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise JobError(Code.JOB_INVALID, f"target.{what} is an id (uuid)") from None


async def resolve(conn: asyncpg.Connection, tenant: uuid.UUID, target: Target) -> list[str]:
    """The device ids the query matches now, in id order (devices that may receive: provisioned or active)."""
    states = list(target.states)
    rows = await conn.fetch(
        "SELECT d.device_id FROM devices d"
        " LEFT JOIN device_states s ON s.tenant_id = d.tenant_id AND s.device_id = d.device_id"
        " LEFT JOIN twins t ON t.tenant_id = d.tenant_id AND t.device_id = d.device_id"
        " WHERE d.tenant_id = $1 AND d.status IN ('provisioned', 'active')"
        " AND (cardinality($2::text[]) = 0 OR d.device_id = ANY($2::text[]))"
        " AND d.tags @> $3::text[]"
        " AND ($4::uuid IS NULL OR d.site_id = $4) AND ($5::uuid IS NULL OR d.gateway_id = $5)"
        " AND (cardinality($6::text[]) = 0 OR (CASE WHEN s.status IS NULL THEN 'unknown' WHEN s.status = 'unreachable'"
        "      THEN 'offline' ELSE s.status END) = ANY($6::text[]))"
        " AND ($7::text IS NULL OR t.document #>> '{state,reported,firmware,version}' = $7)"
        " ORDER BY d.device_id",
        tenant, list(target.devices), list(target.tags), _uuid(target.site, "site"), _uuid(target.gateway, "gateway"),
        states, target.firmware,
    )
    return [r["device_id"] for r in rows]


def _ms(at: dt.datetime | None) -> int | None:
    return None if at is None else twins.to_ms(at)


@dataclass(frozen=True, slots=True)
class StoredJob:
    id: uuid.UUID
    name: str
    target: Target
    action: Action
    run: JobRun
    rollback_of: uuid.UUID | None
    created_by: str
    finished_ms: int | None


def job_from_row(row: asyncpg.Record) -> StoredJob:
    rollout = jobs.rollout_from_obj(json.loads(row["rollout"]))
    run = JobRun(JobState(row["state"]), row["stage"], row["stages"], rollout, twins.to_ms(row["started_at"]),
                 twins.to_ms(row["stage_started_at"]), _ms(row["stage_done_at"]), row["reason"])
    return StoredJob(row["id"], row["name"], jobs.target_from_obj(json.loads(row["target"])),
                     jobs.action_from_obj(json.loads(row["action"])), run, row["rollback_of"], row["created_by"],
                     _ms(row["finished_at"]))


async def load(conn: asyncpg.Connection, tenant: uuid.UUID, job_id: str, *, lock: bool = False) -> StoredJob | None:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        return None
    row = await conn.fetchrow("SELECT * FROM jobs WHERE tenant_id = $1 AND id = $2" + (" FOR UPDATE" if lock else ""), tenant, key)
    return None if row is None else job_from_row(row)


async def device_rows(conn: asyncpg.Connection, tenant: uuid.UUID, job_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM job_devices WHERE tenant_id = $1 AND job_id = $2 ORDER BY stage, position", tenant, job_id
    )
    return rows


def _run(row: asyncpg.Record) -> DeviceRun:
    return DeviceRun(row["device_id"], row["stage"], Outcome(row["outcome"]), _ms(row["started_at"]), row["reason"])


async def create(
    conn: asyncpg.Connection,
    tenant: uuid.UUID,
    *,
    name: str,
    target: Target,
    action: Action,
    rollout: Rollout,
    actor: str,
    now_ms: int,
    patches: Mapping[str, JsonObject] | None = None,
    rollback_of: uuid.UUID | None = None,
) -> uuid.UUID:
    """Resolve the target and store the job with its devices in stages (nothing is sent until the
    first ``tick``). ``patches``: per-device desired patches (a rollback). Audited."""
    if action.kind is ActionKind.FIRMWARE and await firmware.get(conn, tenant, action.artifact or "") is None:
        raise JobError(Code.JOB_INVALID, "action.artifact names no firmware artifact of your tenant", artifact=action.artifact)
    devices = await resolve(conn, tenant, target)
    if not devices:
        raise JobError(Code.JOB_NO_DEVICES, "the target matches no device of your tenant", target=json.dumps(target.to_json()))
    placed = jobs.assign_stages(devices, rollout)
    stages = max(s for _, s in placed) + 1
    now = twins.from_ms(now_ms)
    job_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO jobs (tenant_id, name, target, action, rollout, state, stages, rollback_of, started_at, stage_started_at, created_by)"
        " VALUES ($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, 'running', $6, $7, $8, $8, $9) RETURNING id",
        tenant, name, json.dumps(target.to_json()), json.dumps(action.to_json()), json.dumps(rollout.to_json()),
        stages, rollback_of, now, actor,
    )
    default_patch = json.dumps(action.patch) if action.kind is ActionKind.DESIRED else None
    await conn.executemany(
        "INSERT INTO job_devices (tenant_id, job_id, device_id, stage, position, patch) VALUES ($1, $2, $3, $4, $5, $6::jsonb)",
        [(tenant, job_id, d, s, i, json.dumps(patches[d]) if patches is not None else default_patch) for i, (d, s) in enumerate(placed)],
    )
    await audit(conn, actor=actor, action="job.create", target=str(job_id), tenant_id=tenant,
                detail={"name": name, "target": target.to_json(), "action": action.to_json(), "rollout": rollout.to_json(),
                        "devices": len(devices), "stages": stages, "rollback_of": None if rollback_of is None else str(rollback_of)})
    return job_id


async def _online(conn: asyncpg.Connection, tenant: uuid.UUID, device_ids: Sequence[str]) -> dict[str, bool]:
    rows = await conn.fetch(
        "SELECT device_id, status FROM device_states WHERE tenant_id = $1 AND device_id = ANY($2::text[])", tenant, list(device_ids)
    )
    return {r["device_id"]: r["status"] not in ("offline", "unreachable") for r in rows}


async def _refresh(conn: asyncpg.Connection, tenant: uuid.UUID, job: StoredJob, rows: list[asyncpg.Record]) -> dict[str, tuple[Outcome, str | None]]:
    """Outcomes of started devices from what they said since."""
    started = [r for r in rows if r["outcome"] == Outcome.IN_PROGRESS.value]
    out: dict[str, tuple[Outcome, str | None]] = {}
    if not started:
        return out
    if job.action.kind is ActionKind.DESIRED:
        docs = await conn.fetch(
            "SELECT device_id, document FROM twins WHERE tenant_id = $1 AND device_id = ANY($2::text[])",
            tenant, [r["device_id"] for r in started],
        )
        reported = {d["device_id"]: json.loads(d["document"])["state"].get("reported", {}) for d in docs}
        for r in started:
            if jobs.desired_applied(json.loads(r["patch"]), reported.get(r["device_id"], {})):
                out[r["device_id"]] = (Outcome.SUCCEEDED, None)
        return out
    cmds = await conn.fetch(
        "SELECT id, state, error FROM commands WHERE tenant_id = $1 AND id = ANY($2::text[])",
        tenant, [r["command_id"] for r in started if r["command_id"]],
    )
    by_id = {c["id"]: c for c in cmds}
    for r in started:
        c = by_id.get(r["command_id"])
        if c is not None:
            outcome, reason = jobs.command_outcome(c["state"], c["error"])
            if outcome is not Outcome.IN_PROGRESS:
                out[r["device_id"]] = (outcome, reason)
    return out


async def _start(
    conn: asyncpg.Connection, tenant: uuid.UUID, job: StoredJob, row: asyncpg.Record, now_ms: int, limits: TwinLimits
) -> tuple[list[uuid.UUID], dict[str, Any]]:
    """Send the action to one device; returns the gateways to wake and the columns to store."""
    device_uuid = await conn.fetchval("SELECT id FROM devices WHERE tenant_id = $1 AND device_id = $2", tenant, row["device_id"])
    actor = f"job:{job.id}"
    if job.action.kind is ActionKind.DESIRED:
        patch = json.loads(row["patch"])
        before = await twins.load(conn, tenant, row["device_id"])
        _, _, gateways = await twins.update_desired(conn, tenant, device_uuid, row["device_id"], TwinUpdate(desired=patch),
                                                    actor=actor, now_ms=now_ms, limits=limits)
        return gateways, {"previous": json.dumps(jobs.previous_values(patch, before.desired))}
    if job.action.kind is ActionKind.FIRMWARE:
        art = await firmware.get(conn, tenant, job.action.artifact or "")
        if art is None:
            raise FirmwareError(Code.FIRMWARE_INVALID, "the job's artifact was deleted")
        name, params = FIRMWARE_COMMAND, art.manifest.to_params()
    else:
        name, params = job.action.name or "", job.action.params
    cmd = commands.new_command(id=f"job-{job.id.hex[:12]}-{uuid.uuid4().hex[:12]}", device_id=row["device_id"], name=name,
                               params=params, now_ms=now_ms, expires_at_ms=now_ms + job.action.expires_in_s * 1000)
    gateways = await twins.create_command(conn, tenant, device_uuid, cmd, actor=actor)
    return gateways, {"command_id": cmd.id}


@dataclass(frozen=True, slots=True)
class Round:
    wake: list[uuid.UUID]
    """Gateways to wake (after the commit)."""
    more: bool
    """The step wanted to start more devices than one round starts: run another round now."""


async def tick(
    conn: asyncpg.Connection, tenant: uuid.UUID, job_id: uuid.UUID, *, now_ms: int, limits: TwinLimits, refresh: bool = True
) -> Round:
    """One round of one job in the caller's tenant transaction (at most ``STARTS_PER_ROUND``
    devices started; the others stay queued for the next round). ``refresh=False``: do not read
    the started devices' outcomes again (a further round of the same pass, moments after the first)."""
    job = await load(conn, tenant, str(job_id), lock=True)
    if job is None or job.run.state in jobs.FINISHED:
        return Round([], more=False)
    rows = await device_rows(conn, tenant, job.id)
    moved = await _refresh(conn, tenant, job, rows) if refresh else {}
    runs = [_run(r) for r in rows]
    runs = [DeviceRun(d.device_id, d.stage, moved[d.device_id][0], d.started_ms, moved[d.device_id][1]) if d.device_id in moved else d
            for d in runs]
    result = jobs.step(job.run, runs, await _online(conn, tenant, [d.device_id for d in runs if d.stage == job.run.stage]), now_ms)
    finish = {**moved, **result.finish}
    now = twins.from_ms(now_ms)
    for device_id, (outcome, reason) in finish.items():
        await conn.execute(
            "UPDATE job_devices SET outcome = $4, reason = $5, finished_at = $6 WHERE tenant_id = $1 AND job_id = $2 AND device_id = $3",
            tenant, job.id, device_id, outcome.value, reason, now,
        )
    by_device = {r["device_id"]: r for r in rows}
    wake: list[uuid.UUID] = []
    for device_id in result.start[:STARTS_PER_ROUND]:
        try:
            async with conn.transaction():
                gateways, columns = await _start(conn, tenant, job, by_device[device_id], now_ms, limits)
        except (JobError, FirmwareError, CommandError, TwinError) as exc:
            await conn.execute(
                "UPDATE job_devices SET outcome = 'failed', reason = $4, started_at = $5, finished_at = $5"
                " WHERE tenant_id = $1 AND job_id = $2 AND device_id = $3",
                tenant, job.id, device_id, f"{exc.code}: {exc.message}"[:512], now,
            )
            continue
        wake.extend(gateways)
        await conn.execute(
            "UPDATE job_devices SET outcome = 'in_progress', started_at = $4, command_id = coalesce($5, command_id),"
            " previous = coalesce($6::jsonb, previous) WHERE tenant_id = $1 AND job_id = $2 AND device_id = $3",
            tenant, job.id, device_id, now, columns.get("command_id"), columns.get("previous"),
        )
    if result.job != job.run:
        await _save_run(conn, tenant, job, result.job, now_ms)
    return Round(wake, more=len(result.start) > STARTS_PER_ROUND)


async def _save_run(conn: asyncpg.Connection, tenant: uuid.UUID, job: StoredJob, run: JobRun, now_ms: int) -> None:
    finished = run.state in jobs.FINISHED
    await conn.execute(
        "UPDATE jobs SET state = $3, stage = $4, reason = $5, stage_started_at = $6, stage_done_at = $7,"
        " finished_at = CASE WHEN $8 THEN $9 ELSE finished_at END WHERE tenant_id = $1 AND id = $2",
        tenant, job.id, run.state.value, run.stage, run.reason, twins.from_ms(run.stage_started_ms),
        None if run.stage_done_ms is None else twins.from_ms(run.stage_done_ms), finished, twins.from_ms(now_ms),
    )
    if run.state is not job.run.state or run.stage != job.run.stage:
        await audit(conn, actor="job-runner", action=f"job.{run.state.value}", target=str(job.id), tenant_id=tenant,
                    detail={"stage": run.stage + 1, "stages": run.stages, "reason": run.reason})


async def cancel(conn: asyncpg.Connection, tenant: uuid.UUID, job_id: str, *, actor: str, now_ms: int) -> StoredJob | None:
    job = await load(conn, tenant, job_id, lock=True)
    if job is None:
        return None
    rows = await device_rows(conn, tenant, job.id)
    result = jobs.cancel(job.run, [_run(r) for r in rows])  # JobError when already finished
    for device_id, (outcome, reason) in result.finish.items():
        await conn.execute(
            "UPDATE job_devices SET outcome = $4, reason = $5, finished_at = $6 WHERE tenant_id = $1 AND job_id = $2 AND device_id = $3",
            tenant, job.id, device_id, outcome.value, reason, twins.from_ms(now_ms),
        )
    await conn.execute("UPDATE jobs SET state = 'cancelled', reason = $3, finished_at = $4 WHERE tenant_id = $1 AND id = $2",
                       tenant, job.id, f"cancelled by {actor}", twins.from_ms(now_ms))
    await audit(conn, actor=actor, action="job.cancel", target=str(job.id), tenant_id=tenant, detail={"devices_cancelled": len(result.finish)})
    return await load(conn, tenant, job_id)


async def rollback(conn: asyncpg.Connection, tenant: uuid.UUID, job_id: str, *, actor: str, now_ms: int) -> uuid.UUID | None:
    """A new desired-state job that writes back, per device, what the job's patch replaced."""
    job = await load(conn, tenant, job_id)
    if job is None:
        return None
    if job.action.kind is not ActionKind.DESIRED:
        raise JobError(Code.JOB_ILLEGAL_STATE, "only desired-state jobs roll back (a command or firmware cannot be undone by a patch)")
    rows = [r for r in await device_rows(conn, tenant, job.id) if r["previous"] is not None]
    if not rows:
        raise JobError(Code.JOB_ILLEGAL_STATE, "the job changed no device yet: there is nothing to roll back")
    patches = {r["device_id"]: json.loads(r["previous"]) for r in rows}
    merged: dict[str, Any] = {}
    for p in patches.values():
        merged.update(p)
    return await create(
        conn, tenant, name=f"rollback of {job.name or job.id}", target=Target(devices=tuple(patches)),
        action=Action(ActionKind.DESIRED, patch=merged, expires_in_s=job.action.expires_in_s), rollout=job.run.rollout,
        actor=actor, now_ms=now_ms, patches=patches, rollback_of=job.id,
    )


def job_out(job: StoredJob, rows: Sequence[asyncpg.Record] | None = None, counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The API shape of a job (docs/cloud.md "Jobs"); ``rows``: with its devices."""
    r = job.run
    runs = [_run(x) for x in rows] if rows is not None else None
    out: dict[str, Any] = {
        "id": str(job.id), "name": job.name, "state": r.state.value, "reason": r.reason,
        "target": job.target.to_json(), "action": job.action.to_json(), "rollout": r.rollout.to_json(),
        "stage": r.stage + 1, "stages": r.stages, "started": twins.iso(r.started_ms),
        "finished": None if job.finished_ms is None else twins.iso(job.finished_ms),
        "created_by": job.created_by, "rollback_of": None if job.rollback_of is None else str(job.rollback_of),
        "progress": dict(counts) if counts is not None else jobs.progress(runs or []),
    }
    if rows is not None:
        sizes = jobs.plan_stages(len(rows), r.rollout) if r.stages > 0 else []
        out["stage_progress"] = [
            {"stage": i + 1, "devices": sizes[i] if i < len(sizes) else 0,
             **jobs.progress([d for d in runs or [] if d.stage == i])}
            for i in range(r.stages)
        ]
        out["devices"] = [
            {"device": x["device_id"], "stage": x["stage"] + 1, "outcome": x["outcome"], "reason": x["reason"],
             "command": x["command_id"], "started": None if x["started_at"] is None else twins.iso(twins.to_ms(x["started_at"])),
             "finished": None if x["finished_at"] is None else twins.iso(twins.to_ms(x["finished_at"]))}
            for x in rows
        ]
    return out


async def run_once(db: Database, *, clock: Callable[[], int], limits: TwinLimits, wake: Wake | None = None) -> int:
    """One pass over every tenant's open jobs (a job with more devices to start than one round
    starts gets rounds until it has none, each its own transaction at ``clock()``); returns the rounds."""
    async with db.identity() as conn:
        tenants = [r[0] for r in await conn.fetch("SELECT pulse_job_tenants()")]
    count = 0
    for tenant in tenants:
        async with db.tenant(tenant) as conn:
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM jobs WHERE tenant_id = $1 AND state IN ('running', 'paused')", tenant)]
        for job_id in ids:
            more, first = True, True
            while more:
                async with db.tenant(tenant) as conn:
                    done = await tick(conn, tenant, job_id, now_ms=clock(), limits=limits, refresh=first)
                first = False
                if wake is not None and done.wake:
                    wake(done.wake)
                more = done.more
                count += 1
    return count


async def run_forever(db: Database, *, interval_s: float, clock: Callable[[], int], limits: TwinLimits, wake: Wake | None = None) -> None:
    while True:
        try:
            await run_once(db, clock=clock, limits=limits, wake=wake)
        except Exception:  # keep running jobs; the next round may succeed
            log.exception("job runner round failed; retrying in %ss", interval_s)
        await asyncio.sleep(interval_s)
