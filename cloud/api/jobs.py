"""Fleet jobs and firmware artifacts: tenant-scoped API (docs/cloud.md "Jobs", "Firmware").

A job of another tenant does not exist here (404), nor does its artifact. Creating, cancelling and
rolling back a job and uploading firmware are in the tenant's audit log."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from pulse.cloud import firmware, jobs, twins
from pulse.cloud.api.deps import Parts, Reader, Writer
from pulse.cloud.db.pool import audit
from pulse.cloud.errors import ConflictError, NotFoundError, TooLargeError, UnavailableError
from pulse.cloud.settings import Settings
from pulse.protocol import firmware as fw
from pulse.protocol import jobs as job_model
from pulse.protocol.errors import Code, FirmwareError, JobError

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
log = logging.getLogger("pulse.cloud.api.jobs")
firmware_router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])


class JobPreview(BaseModel):
    count: int = Field(description="devices the target query matches now")
    devices: list[str] = Field(description="their ids, the first 1,000")


class JobDevice(BaseModel):
    device: str
    stage: int
    outcome: str = Field(description="queued, in_progress, succeeded, failed, timed_out, skipped or cancelled")
    reason: str | None = Field(description="the device's reason when it failed, or why it was skipped")
    command: str | None = Field(description="the command sent to it (command and firmware jobs)")
    started: str | None
    finished: str | None


class StageProgress(BaseModel):
    model_config = ConfigDict(extra="allow")  # plus the counts by outcome

    stage: int
    devices: int


class JobOut(BaseModel):
    """A job (docs/cloud.md "Jobs"); ``stage_progress`` and ``devices`` only for one job."""

    id: str
    name: str
    state: str
    reason: str | None
    target: dict[str, Any]
    action: dict[str, Any]
    rollout: dict[str, Any]
    stage: int
    stages: int
    started: str | None
    finished: str | None
    created_by: str
    rollback_of: str | None
    progress: dict[str, int] = Field(description="devices by outcome")
    stage_progress: list[StageProgress] | None = None
    devices: list[JobDevice] | None = None


class JobList(BaseModel):
    items: list[JobOut]


class ArtifactOut(BaseModel):
    id: str
    version: str
    model: str
    sha256: str
    size: int
    signed: bool
    signature: str | None
    filename: str
    created_by: str
    created_at: str
    bytes_served: int = Field(description="bytes the cloud wrote to gateways and direct devices, including what a cut link lost")
    downloads: int = Field(description="downloads that reached the last byte")


class ArtifactList(BaseModel):
    items: list[ArtifactOut]


def _now_ms(parts: Parts) -> int:
    return twins.to_ms(parts.clock())


class JobIn(BaseModel):
    name: str = Field(default="", max_length=200)
    target: dict[str, Any] = Field(default_factory=dict, description="devices, tags, site, gateway, states, firmware")
    action: dict[str, Any] = Field(description="{kind: command, name, params} | {kind: desired, patch} | {kind: firmware, artifact}")
    rollout: dict[str, Any] = Field(default_factory=dict, description="canary(_percent), batch_size/_percent, pause_s, abort_percent, ...")


class PreviewIn(BaseModel):
    target: dict[str, Any] = Field(default_factory=dict)


def _illegal(exc: JobError) -> Exception:
    return ConflictError(exc.code, exc.message) if exc.code is Code.JOB_ILLEGAL_STATE else exc


@router.post("/preview", response_model=JobPreview, summary="The devices a target query matches now (what a job would start with)")
async def preview(body: PreviewIn, caller: Reader, parts: Parts) -> dict[str, Any]:
    target = job_model.target_from_obj(body.target)
    async with parts.db.tenant(caller.tenant_id) as conn:
        devices = await jobs.resolve(conn, caller.tenant_id, target)
    return {"count": len(devices), "devices": devices[:1000]}


@router.post("", status_code=201, response_model=JobOut, response_model_exclude_unset=True, summary="Start a job: resolve the target now, then roll the action out in stages")
async def create_job(body: JobIn, caller: Writer, parts: Parts) -> dict[str, Any]:
    target = job_model.target_from_obj(body.target)
    action = job_model.action_from_obj(body.action)
    rollout = job_model.rollout_from_obj(body.rollout)
    async with parts.db.tenant(caller.tenant_id) as conn:
        job_id = await jobs.create(conn, caller.tenant_id, name=body.name, target=target, action=action, rollout=rollout,
                                   actor=caller.actor, now_ms=_now_ms(parts))
        job = await jobs.load(conn, caller.tenant_id, str(job_id))
        rows = await jobs.device_rows(conn, caller.tenant_id, job_id)
    assert job is not None
    return jobs.job_out(job, rows)


@router.get("", response_model=JobList, response_model_exclude_unset=True, summary="The tenant's jobs, newest first, with progress counts")
async def list_jobs(caller: Reader, parts: Parts, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        rows = await conn.fetch("SELECT * FROM jobs WHERE tenant_id = $1 ORDER BY started_at DESC, id LIMIT $2", caller.tenant_id, limit)
        counts = await conn.fetch(
            "SELECT job_id, outcome, count(*) AS n FROM job_devices WHERE tenant_id = $1 AND job_id = ANY($2::uuid[]) GROUP BY 1, 2",
            caller.tenant_id, [r["id"] for r in rows],
        )
    per: dict[uuid.UUID, dict[str, int]] = {r["id"]: {o.value: 0 for o in job_model.Outcome} for r in rows}
    for c in counts:
        per[c["job_id"]][c["outcome"]] = c["n"]
    items = []
    for r in rows:
        items.append(jobs.job_out(jobs.job_from_row(r), counts=per[r["id"]]))
    return {"items": items}


@router.get("/{job_id}", response_model=JobOut, response_model_exclude_unset=True, summary="One job: state, stages, per-device outcomes and reasons")
async def get_job(job_id: str, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        job = await jobs.load(conn, caller.tenant_id, job_id)
        if job is None:
            raise NotFoundError("job", job_id=job_id)
        rows = await jobs.device_rows(conn, caller.tenant_id, job.id)
    return jobs.job_out(job, rows)


@router.post("/{job_id}/cancel", response_model=JobOut, response_model_exclude_unset=True, summary="Stop a job: devices not yet started are cancelled; 409 job.illegal_state when it is finished")
async def cancel_job(job_id: str, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        try:
            job = await jobs.cancel(conn, caller.tenant_id, job_id, actor=caller.actor, now_ms=_now_ms(parts))
        except JobError as exc:
            raise _illegal(exc) from exc
        if job is None:
            raise NotFoundError("job", job_id=job_id)
        rows = await jobs.device_rows(conn, caller.tenant_id, job.id)
    return jobs.job_out(job, rows)


@router.post("/{job_id}/rollback", status_code=201, response_model=JobOut, response_model_exclude_unset=True, summary="A new job that writes back what a desired-state job replaced, per device")
async def rollback_job(job_id: str, caller: Writer, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        try:
            new_id = await jobs.rollback(conn, caller.tenant_id, job_id, actor=caller.actor, now_ms=_now_ms(parts))
        except JobError as exc:
            raise _illegal(exc) from exc
        if new_id is None:
            raise NotFoundError("job", job_id=job_id)
        job = await jobs.load(conn, caller.tenant_id, str(new_id))
        rows = await jobs.device_rows(conn, caller.tenant_id, new_id)
    assert job is not None
    return jobs.job_out(job, rows)


# --- firmware ------------------------------------------------------------------------------------


def files_of(s: Settings) -> firmware.FirmwareStore:
    return firmware.store_for(s)


def files(parts: Parts) -> firmware.FirmwareStore:
    return files_of(parts.settings)


@firmware_router.post(
    "",
    status_code=201,
    response_model=ArtifactOut,
    summary="Upload an artifact: the body is the file (application/octet-stream); version, model, sha256 (and signature) in the query",
)
async def upload(
    request: Request,
    caller: Writer,
    parts: Parts,
    version: Annotated[str, Query(max_length=64)],
    model: Annotated[str, Query(max_length=100)],
    sha256: Annotated[str, Query(max_length=64)],
    signature: Annotated[str | None, Query(max_length=200)] = None,
    filename: Annotated[str, Query(max_length=200)] = "",
) -> dict[str, Any]:
    fw.check_version(version)
    fw.check_model(model)
    expected = fw.check_sha256(sha256)
    store = files(parts)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > store.max_bytes:
        raise TooLargeError(Code.FIRMWARE_TOO_LARGE, f"artifacts are at most {store.max_bytes} bytes", limit=store.max_bytes)
    try:
        artifact, size = await store.receive(caller.tenant_id, request.stream(), expected)
    except FirmwareError as exc:
        if exc.code is Code.FIRMWARE_TOO_LARGE:
            raise TooLargeError(exc.code, exc.message, limit=store.max_bytes) from exc
        raise
    except firmware.FirmwareStorageError as exc:
        log.error("firmware upload not stored: %s", exc)
        raise UnavailableError(Code.FIRMWARE_STORAGE_UNAVAILABLE, "the firmware storage could not keep the artifact; try again later") from exc
    manifest = fw.Manifest(str(artifact), version, model, expected, size, signature)
    if signature is not None:
        fw.manifest_from_params(manifest.to_params())  # a malformed signature is refused with the rest
    try:
        async with parts.db.tenant(caller.tenant_id) as conn:
            art = await firmware.insert(conn, caller.tenant_id, artifact, manifest, filename=filename, actor=caller.actor)
            await audit(conn, actor=caller.actor, action="firmware.upload", target=str(artifact), tenant_id=caller.tenant_id,
                        detail={"version": version, "model": model, "sha256": expected, "size": size, "signed": signature is not None})
    except FirmwareError as exc:
        await store.remove(caller.tenant_id, artifact)
        if exc.code is Code.FIRMWARE_DUPLICATE:
            raise ConflictError(exc.code, exc.message) from exc
        raise
    except BaseException:
        await store.remove(caller.tenant_id, artifact)
        raise
    return art.to_json()


@firmware_router.get("", response_model=ArtifactList, summary="The tenant's firmware library, newest first")
async def list_firmware(caller: Reader, parts: Parts, model: str | None = None) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        arts = await firmware.listing(conn, caller.tenant_id, model)
    return {"items": [a.to_json() for a in arts]}


@firmware_router.get("/{artifact}", response_model=ArtifactOut, summary="One artifact: manifest, bytes served over uplinks, completed downloads")
async def get_firmware(artifact: str, caller: Reader, parts: Parts) -> dict[str, Any]:
    async with parts.db.tenant(caller.tenant_id) as conn:
        art = await firmware.get(conn, caller.tenant_id, artifact)
    if art is None:
        raise NotFoundError("firmware artifact", artifact=artifact)
    return art.to_json()
