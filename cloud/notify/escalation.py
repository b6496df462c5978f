"""Escalation policies and the pure decision the escalation worker drives.

A ``Policy`` has 1-5 levels. Each level names its targets (channels, or on-call schedules whose
current person is notified) and how many minutes to wait for an acknowledgement before escalating
to the next level. When the last level has waited, the policy starts again from the first level up
to ``repeat`` more times, then stops. Acknowledging or closing the alert stops it at once.

``next_step(policy, alert, state, now) -> (state, step)`` is the whole decision: time, the alert's
status and the escalation state are passed in; the step is data (notify a level, wait until, stop).
The worker stores the returned state with the alert and calls again at ``Wait.until`` or when the
alert changes. Levels fire one at a time: after an outage the worker catches up level by level,
each one waiting its delay again, rather than paging every level at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.oncall import Schedule, on_call_at
from pulse.protocol.errors import Code

MAX_LEVELS = 5


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Target(_Model):
    kind: Literal["channel", "schedule"]
    id: str = Field(min_length=1, max_length=100)


class Level(_Model):
    targets: tuple[Target, ...] = Field(min_length=1, max_length=10)
    escalate_after_min: int = Field(default=15, ge=1, le=24 * 60)
    """Minutes to wait for an acknowledgement after notifying this level before moving on."""
    delay_s: int | None = Field(default=None, ge=1, le=24 * 3600)
    """The same wait in seconds (the API's ``delay_s``); when set it wins over ``escalate_after_min``."""

    @property
    def wait(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.delay_s) if self.delay_s is not None else dt.timedelta(minutes=self.escalate_after_min)


class Policy(_Model):
    name: str = Field(min_length=1, max_length=100)
    levels: tuple[Level, ...] = Field(min_length=1, max_length=MAX_LEVELS)
    repeat: int = Field(default=0, ge=0, le=3)
    """How many more times to run through all levels when nobody acknowledges."""

    @classmethod
    def parse(cls, raw: Any) -> Policy:
        """From API JSON; refusals are ``notify.bad_policy`` naming the field."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'policy'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            raise ConfigError(Code.NOTIFY_BAD_POLICY, f"escalation policy: {problems}") from None


AlertStatus = Literal["open", "acknowledged", "closed"]


@dataclass(frozen=True)
class EscalationState:
    """Stored with the alert: the level last notified (-1: none yet), when, and which pass through the levels."""

    level: int = -1
    notified_at: dt.datetime | None = None
    cycle: int = 0


@dataclass(frozen=True)
class Notify:
    level: int
    cycle: int
    targets: tuple[Target, ...]


@dataclass(frozen=True)
class Wait:
    until: dt.datetime


@dataclass(frozen=True)
class Stop:
    reason: Literal["acknowledged", "closed", "exhausted"]


Step = Notify | Wait | Stop


def next_step(policy: Policy, status: AlertStatus, state: EscalationState, now: dt.datetime) -> tuple[EscalationState, Step]:
    """What to do now for one alert under ``policy``. Pure."""
    if status != "open":
        return state, Stop(status)
    if state.level < 0 or state.notified_at is None:
        return _notify(policy, 0, state.cycle, now)
    due = state.notified_at + policy.levels[state.level].wait
    if now < due:
        return state, Wait(due)
    if state.level + 1 < len(policy.levels):
        return _notify(policy, state.level + 1, state.cycle, now)
    if state.cycle < policy.repeat:
        return _notify(policy, 0, state.cycle + 1, now)
    return state, Stop("exhausted")


def _notify(policy: Policy, level: int, cycle: int, now: dt.datetime) -> tuple[EscalationState, Step]:
    state = EscalationState(level=level, notified_at=now, cycle=cycle)
    return state, Notify(level, cycle, policy.levels[level].targets)


@dataclass(frozen=True)
class Recipients:
    channels: tuple[str, ...]
    people: tuple[str, ...]
    """People on call now for the level's schedule targets (who to route to their own channels)."""
    unstaffed: tuple[str, ...]
    """Schedule ids with nobody on call (or unknown): the worker reports these rather than dropping them."""


def recipients(step: Notify, schedules: dict[str, Schedule], now: dt.datetime) -> Recipients:
    """Resolve a Notify step's targets at ``now``: channels as they are, schedules to who is on call."""
    channels: list[str] = []
    people: list[str] = []
    unstaffed: list[str] = []
    for target in step.targets:
        if target.kind == "channel":
            channels.append(target.id)
            continue
        schedule = schedules.get(target.id)
        who = on_call_at(schedule, now).who if schedule else None
        (people if who else unstaffed).append(who or target.id)
    return Recipients(tuple(dict.fromkeys(channels)), tuple(dict.fromkeys(people)), tuple(unstaffed))
