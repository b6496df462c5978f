"""Fleet jobs: one action over many devices, rolled out in stages (docs/protocol.md, "Jobs").

A job is data: a target query (resolved once, when the job starts), one action per device (a
command, a desired-state patch, or a firmware update), and a rollout (a canary stage, then batches
with a pause between, an abort rule and per-device time limits). Its progress is data too: each
device has an outcome. The cloud's runner is thin: it loads the job and its devices, refreshes the
outcomes from what the devices said (``command_outcome``, ``desired_applied``), calls ``step`` with
the time, and stores what ``step`` decided. Everything here is pure: no clock, no I/O.

Stage arithmetic (``plan_stages``)::

    n devices, canary c (a count, or ceil(n * canary_percent / 100)), batch b (a count, or
    ceil(n * batch_percent / 100); neither: everything left in one batch)
    stages = [min(c, n)] + [b, b, ..., rest]   (empty stages dropped)

Abort arithmetic (``stage_verdict``): a stage of s devices aborts the job as soon as
``(failed + timed_out) * 100 > abort_percent * s`` — *more than* N % of the stage. With
``abort_percent = 0`` one failure aborts; with 100 nothing does. The check runs as outcomes arrive,
so a job stops as soon as the threshold is certainly passed, not when the stage ends.

Per-device outcomes::

    queued --start--> in_progress --> succeeded | failed (the device's reason) | timed_out
    queued --(job deadline passed while the device was offline)--> skipped
    queued --(job cancelled or aborted)--> cancelled
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import cast

from pulse.protocol.envelope import JsonObject, JsonValue, json_fits
from pulse.protocol.errors import Code, JobError
from pulse.protocol.topics import valid_device_id

MAX_DEVICES = 100_000
MAX_STAGES = 1_000
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_REASON_LEN = 512


class ActionKind(StrEnum):
    COMMAND = "command"
    DESIRED = "desired"
    FIRMWARE = "firmware"


class Outcome(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # offline until the job's deadline: never started
    CANCELLED = "cancelled"  # the job was cancelled or aborted before the device's turn


DONE = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.SKIPPED, Outcome.CANCELLED})
BAD = frozenset({Outcome.FAILED, Outcome.TIMED_OUT})


class JobState(StrEnum):
    RUNNING = "running"  # a stage is under way
    PAUSED = "paused"  # between two stages, waiting for the pause to end
    COMPLETED = "completed"  # every stage ran; devices may have failed (below the abort rule)
    ABORTED = "aborted"  # a stage broke the abort rule
    CANCELLED = "cancelled"  # an operator stopped it


FINISHED = frozenset({JobState.COMPLETED, JobState.ABORTED, JobState.CANCELLED})


def _bad(message: str, **context: object) -> JobError:
    return JobError(Code.JOB_INVALID, message, **context)


# --- definition ----------------------------------------------------------------------------------


DEVICE_STATES = frozenset({"online", "stale", "offline", "unknown"})


@dataclass(frozen=True, slots=True)
class Target:
    """Which devices: all conditions must hold (an empty condition matches everything).

    ``devices``: ids; ``tags``: every tag (``name=value`` or bare ``name``) present; ``site``,
    ``gateway``: ids (uuid text); ``states``: the device's connectivity is one of these;
    ``firmware``: the version its twin reports at ``reported.firmware.version``."""

    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    site: str | None = None
    gateway: str | None = None
    states: tuple[str, ...] = ()
    firmware: str | None = None

    def to_json(self) -> JsonObject:
        return {
            "devices": list(self.devices),
            "tags": list(self.tags),
            "site": self.site,
            "gateway": self.gateway,
            "states": list(self.states),
            "firmware": self.firmware,
        }


def _strings(value: object, what: str, limit: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
        raise _bad(f"{what} is a list of at most {limit} non-empty strings")
    return tuple(dict.fromkeys(cast(list[str], value)))


def target_from_obj(obj: object) -> Target:
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise _bad("target is an object {devices, tags, site, gateway, states, firmware}")
    unknown = set(obj) - {"devices", "tags", "site", "gateway", "states", "firmware"}
    if unknown:
        raise _bad(f"target has no field {sorted(unknown)[0]!r}")
    devices = _strings(obj.get("devices"), "target.devices", MAX_DEVICES)
    if not all(valid_device_id(d) for d in devices):
        raise _bad("target.devices holds device ids")
    states = _strings(obj.get("states"), "target.states", len(DEVICE_STATES))
    if not set(states) <= DEVICE_STATES:
        raise _bad(f"target.states are among {sorted(DEVICE_STATES)}")
    single: dict[str, str | None] = {}
    for key in ("site", "gateway", "firmware"):
        value = obj.get(key)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= 200):
            raise _bad(f"target.{key} is a non-empty string or null")
        single[key] = value
    return Target(devices, _strings(obj.get("tags"), "target.tags", 32), single["site"], single["gateway"], states, single["firmware"])


@dataclass(frozen=True, slots=True)
class Action:
    """What each device gets. ``command``: ``name`` and ``params``; ``desired``: ``patch`` (a
    desired-state update; ``null`` deletes a key); ``firmware``: ``artifact`` (the artifact's id)."""

    kind: ActionKind
    name: str | None = None
    params: JsonObject = field(default_factory=dict)
    patch: JsonObject = field(default_factory=dict)
    artifact: str | None = None
    expires_in_s: int = 3600

    def to_json(self) -> JsonObject:
        doc: dict[str, JsonValue] = {"kind": self.kind.value, "expires_in_s": self.expires_in_s}
        if self.kind is ActionKind.COMMAND:
            doc.update(name=self.name, params=self.params)
        elif self.kind is ActionKind.DESIRED:
            doc["patch"] = self.patch
        else:
            doc["artifact"] = self.artifact
        return doc


def action_from_obj(obj: object) -> Action:
    if not isinstance(obj, dict):
        raise _bad("action is an object {kind: command | desired | firmware, ...}")
    try:
        kind = ActionKind(str(obj.get("kind")))
    except ValueError:
        raise _bad("action.kind is command, desired or firmware") from None
    expires = obj.get("expires_in_s", 3600)
    if type(expires) is not int or not 1 <= expires <= MAX_TIMEOUT_S:
        raise _bad(f"action.expires_in_s is whole seconds, 1 to {MAX_TIMEOUT_S}")
    if kind is ActionKind.COMMAND:
        name, params = obj.get("name"), obj.get("params", {})
        if not isinstance(name, str) or not name:
            raise _bad("a command action names its command: action.name")
        if not isinstance(params, dict) or not json_fits(params, 6):
            raise _bad("action.params is a JSON object")
        return Action(kind, name=name, params=cast(JsonObject, params), expires_in_s=expires)
    if kind is ActionKind.DESIRED:
        patch = obj.get("patch")
        if not isinstance(patch, dict) or not patch or not json_fits(patch, 8):
            raise _bad("a desired-state action has a non-empty JSON object: action.patch")
        return Action(kind, patch=cast(JsonObject, patch), expires_in_s=expires)
    artifact = obj.get("artifact")
    if not isinstance(artifact, str) or not 0 < len(artifact) <= 64:
        raise _bad("a firmware action names its artifact: action.artifact")
    return Action(kind, artifact=artifact, expires_in_s=expires)


@dataclass(frozen=True, slots=True)
class Rollout:
    """How the job proceeds. ``canary``/``canary_percent``: the first stage (0: no canary);
    ``batch_size``/``batch_percent``: the later stages (0: the rest in one); ``pause_s`` between
    stages; ``abort_percent``: abort when more than this share of a stage failed or timed out;
    ``device_timeout_s``: a started device that has not finished by then is ``timed_out``;
    ``deadline_s``: a device still offline this long after the job started is ``skipped``."""

    canary: int = 0
    canary_percent: float = 0.0
    batch_size: int = 0
    batch_percent: float = 0.0
    pause_s: int = 0
    abort_percent: float = 100.0
    device_timeout_s: int = 3600
    deadline_s: int = 24 * 3600

    def to_json(self) -> JsonObject:
        return {
            "canary": self.canary,
            "canary_percent": self.canary_percent,
            "batch_size": self.batch_size,
            "batch_percent": self.batch_percent,
            "pause_s": self.pause_s,
            "abort_percent": self.abort_percent,
            "device_timeout_s": self.device_timeout_s,
            "deadline_s": self.deadline_s,
        }


_ROLLOUT_INTS = {"canary": MAX_DEVICES, "batch_size": MAX_DEVICES, "pause_s": MAX_TIMEOUT_S,
                 "device_timeout_s": MAX_TIMEOUT_S, "deadline_s": 30 * 24 * 3600}
_ROLLOUT_PERCENTS = ("canary_percent", "batch_percent", "abort_percent")


def rollout_from_obj(obj: object) -> Rollout:
    if obj is None:
        return Rollout()
    if not isinstance(obj, dict):
        raise _bad("rollout is an object")
    unknown = set(obj) - set(_ROLLOUT_INTS) - set(_ROLLOUT_PERCENTS)
    if unknown:
        raise _bad(f"rollout has no field {sorted(unknown)[0]!r}")
    values: dict[str, int | float] = {}
    for key, top in _ROLLOUT_INTS.items():
        if key in obj:
            v = obj[key]
            if type(v) is not int or not 0 <= v <= top:
                raise _bad(f"rollout.{key} is a whole number, 0 to {top}")
            values[key] = v
    for key in _ROLLOUT_PERCENTS:
        if key in obj:
            v = obj[key]
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 100:
                raise _bad(f"rollout.{key} is a percentage, 0 to 100")
            values[key] = float(v)
    out = replace(Rollout(), **values)  # type: ignore[arg-type]  # each key was checked against its type above
    if out.canary and out.canary_percent:
        raise _bad("rollout gives the canary as a count or a percentage, not both")
    if out.batch_size and out.batch_percent:
        raise _bad("rollout gives batches as a count or a percentage, not both")
    if out.device_timeout_s < 1 or out.deadline_s < 1:
        raise _bad("rollout.device_timeout_s and rollout.deadline_s are at least 1 second")
    return out


# --- stage and abort arithmetic ------------------------------------------------------------------


def plan_stages(n: int, rollout: Rollout) -> list[int]:
    """The size of each stage for ``n`` devices (see the module docstring); sums to ``n``."""
    if n <= 0:
        return []
    canary = rollout.canary or math.ceil(n * rollout.canary_percent / 100)
    canary = min(canary, n)
    rest = n - canary
    batch = rollout.batch_size or math.ceil(n * rollout.batch_percent / 100) or rest
    batch = max(batch, math.ceil(rest / MAX_STAGES)) if rest else 0
    stages = [canary] if canary else []
    while rest > 0:
        take = min(batch, rest)
        stages.append(take)
        rest -= take
    return stages


def assign_stages(devices: Sequence[str], rollout: Rollout) -> list[tuple[str, int]]:
    """Each device with its stage index, in the order given (the resolved query's order)."""
    out: list[tuple[str, int]] = []
    it = iter(devices)
    for index, size in enumerate(plan_stages(len(devices), rollout)):
        out.extend((next(it), index) for _ in range(size))
    return out


def over_abort(bad: int, size: int, abort_percent: float) -> bool:
    """True when ``bad`` of ``size`` is more than ``abort_percent`` % (integer-exact for whole percentages)."""
    return size > 0 and bad * 100 > abort_percent * size


# --- the step ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRun:
    device_id: str
    stage: int
    outcome: Outcome = Outcome.QUEUED
    started_ms: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JobRun:
    state: JobState
    stage: int
    stages: int
    rollout: Rollout
    started_ms: int
    stage_started_ms: int
    stage_done_ms: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """What ``step`` decided: the job after it, and per-device moves (device id -> (outcome, reason))."""

    job: JobRun
    start: tuple[str, ...] = ()
    finish: Mapping[str, tuple[Outcome, str | None]] = field(default_factory=dict)


def step(job: JobRun, devices: Sequence[DeviceRun], online: Mapping[str, bool], now_ms: int) -> Step:
    """Advance the job at ``now_ms``: time out started devices, skip devices offline past the
    deadline, start the current stage's online devices, check the abort rule, and move to the next
    stage once the current one is done and the pause has passed. ``online``: the device's
    connectivity now (a device missing from it counts as online)."""
    if job.state in FINISHED:
        return Step(job)
    r = job.rollout
    finish: dict[str, tuple[Outcome, str | None]] = {}
    start: list[str] = []
    deadline = job.started_ms + r.deadline_s * 1000
    current = [d for d in devices if d.stage == job.stage]
    outcome: dict[str, Outcome] = {d.device_id: d.outcome for d in devices}
    for d in current:
        if d.outcome is Outcome.IN_PROGRESS and d.started_ms is not None and now_ms >= d.started_ms + r.device_timeout_s * 1000:
            finish[d.device_id] = (Outcome.TIMED_OUT, f"no answer within {r.device_timeout_s} s")
        elif d.outcome is Outcome.QUEUED and job.state is JobState.RUNNING:
            if now_ms >= deadline:
                finish[d.device_id] = (Outcome.SKIPPED, "offline until the job's deadline")
            elif online.get(d.device_id, True):
                start.append(d.device_id)
                outcome[d.device_id] = Outcome.IN_PROGRESS
    for device_id, (o, _) in finish.items():
        outcome[device_id] = o
    bad = sum(1 for d in current if outcome[d.device_id] in BAD)
    if over_abort(bad, len(current), r.abort_percent):
        reason = f"{bad} of {len(current)} devices of stage {job.stage + 1} failed or timed out (abort above {r.abort_percent:g} %)"
        for d in devices:
            if outcome[d.device_id] is Outcome.QUEUED or d.device_id in start:
                finish[d.device_id] = (Outcome.CANCELLED, "job aborted")
        start = []
        return Step(replace(job, state=JobState.ABORTED, reason=reason), (), finish)
    if not all(outcome[d.device_id] in DONE for d in current):
        return Step(job, tuple(start), finish)
    if job.stage + 1 >= job.stages:
        return Step(replace(job, state=JobState.COMPLETED, stage_done_ms=now_ms), tuple(start), finish)
    done_ms = job.stage_done_ms if job.stage_done_ms is not None else now_ms
    if now_ms < done_ms + r.pause_s * 1000:
        return Step(replace(job, state=JobState.PAUSED, stage_done_ms=done_ms), tuple(start), finish)
    nxt = replace(job, state=JobState.RUNNING, stage=job.stage + 1, stage_started_ms=now_ms, stage_done_ms=None)
    moved = [replace(d, outcome=outcome[d.device_id]) for d in devices]
    after = step(nxt, moved, online, now_ms)
    return Step(after.job, (*start, *after.start), {**finish, **after.finish})


def cancel(job: JobRun, devices: Sequence[DeviceRun]) -> Step:
    """Stop the job: devices not yet started are ``cancelled``; started ones keep going (a command
    once sent cannot be recalled) and their outcomes are still recorded."""
    if job.state in FINISHED:
        raise JobError(Code.JOB_ILLEGAL_STATE, f"a {job.state} job cannot be cancelled", state=str(job.state))
    finish = {d.device_id: (Outcome.CANCELLED, "job cancelled") for d in devices if d.outcome is Outcome.QUEUED}
    return Step(replace(job, state=JobState.CANCELLED, reason="cancelled"), (), finish)


# --- device outcomes -----------------------------------------------------------------------------


def command_outcome(state: str, error: str | None) -> tuple[Outcome, str | None]:
    """A job device's outcome from its command's state (protocol/commands.py)."""
    if state == "succeeded":
        return Outcome.SUCCEEDED, None
    if state == "failed":
        return Outcome.FAILED, (error or "the device answered failed")[:MAX_REASON_LEN]
    if state == "expired":
        return Outcome.TIMED_OUT, "the command expired before it was sent (device offline)"
    return Outcome.IN_PROGRESS, None


def desired_applied(patch: JsonObject, reported: JsonObject) -> bool:
    """True when the device reports what ``patch`` asked for: every leaf equal, ``null`` leaves absent."""
    for key, want in patch.items():
        have = reported.get(key)
        if want is None:
            if key in reported:
                return False
        elif isinstance(want, dict):
            if not isinstance(have, dict) or not desired_applied(want, have):
                return False
        elif have != want or key not in reported:
            return False
    return True


def previous_values(patch: JsonObject, desired: JsonObject) -> JsonObject:
    """What to write to undo ``patch`` on a device whose desired state was ``desired`` before it:
    each patched leaf's old value, or ``null`` where the key did not exist."""
    out: dict[str, JsonValue] = {}
    for key, want in patch.items():
        old = desired.get(key)
        if isinstance(want, dict) and isinstance(old, dict):
            out[key] = previous_values(want, old)
        else:
            out[key] = old if key in desired else None
    return out


def progress(devices: Sequence[DeviceRun]) -> dict[str, int]:
    """Counts by outcome (every outcome present, zero or not)."""
    counts = {o.value: 0 for o in Outcome}
    for d in devices:
        counts[d.outcome.value] += 1
    return counts
