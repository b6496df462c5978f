"""On-call schedules: who is on call at an instant, and the timeline of shifts. Pure: no I/O, no clock.

A ``Schedule`` has a time zone (IANA, e.g. ``Europe/Berlin``), layers and overrides:

- a ``Layer`` rotates through its members, one shift each, handing off at a local wall-clock time
  (``handoff``) every day (``daily``) or every seven days (``weekly``, on the weekday of ``start``),
  counting from its ``start`` date. The layer covers from ``begins`` (local wall-clock time; default
  00:00 on ``start``), or from its first handoff if that is earlier: the first member is on call
  from then until the first shift ends, so a schedule that starts at 06:00 with a 09:00 handoff has
  someone on call at once. Wall-clock time is what counts: across a DST change the handoff
  stays at 09:00 local, so that day's shift is 23 or 25 hours long. A layer may be restricted to
  windows (e.g. Mon-Fri 09:00-17:00); outside them it has nobody.
- Layers are listed bottom first; a higher layer that has someone on call wins over the ones below.
- An ``Override`` puts someone on call for a time range; overrides are checked first, and among
  overlapping overrides the one listed last wins.

``on_call_at(schedule, when)`` answers with who and why; ``timeline(schedule, start, days=14)`` lists
the shifts (merged where the same person continues), both from the same rules.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pulse.cloud.notify.errors import ConfigError
from pulse.protocol.errors import Code

MAX_LAYERS = 10
MAX_MEMBERS = 100
TIMELINE_DAYS = 14


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Window(_Model):
    """A daily window in the schedule's time zone, starting on the listed weekdays (0 = Monday).

    ``end <= start`` crosses midnight (18:00-08:00 ends the next morning); ``end == start`` is 24 hours.
    """

    days: frozenset[int] = frozenset(range(7))
    start: dt.time
    end: dt.time

    @field_validator("days")
    @classmethod
    def _days(cls, value: frozenset[int]) -> frozenset[int]:
        if not value or not value <= set(range(7)):
            raise ValueError("days are weekday numbers 0 (Monday) to 6 (Sunday), at least one")
        return value

    def covers(self, local: dt.datetime) -> bool:
        t, today, yesterday = local.time(), local.weekday(), (local.weekday() - 1) % 7
        if self.start < self.end:
            return today in self.days and self.start <= t < self.end
        return (today in self.days and t >= self.start) or (yesterday in self.days and t < self.end)


class Layer(_Model):
    name: str = Field(min_length=1, max_length=64)
    members: tuple[str, ...] = Field(min_length=1, max_length=MAX_MEMBERS)
    rotation: Literal["daily", "weekly"]
    start: dt.date
    """The first shift starts at ``handoff`` on this date (local time)."""
    handoff: dt.time = dt.time(9, 0)
    restrictions: tuple[Window, ...] = ()
    begins: dt.datetime | None = None
    """When the layer starts covering (naive local wall-clock time); default 00:00 on ``start``.
    From then until the first handoff, the first member is on call."""

    @field_validator("begins")
    @classmethod
    def _naive(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("begins is a local wall-clock time, without a time zone")
        return value

    @property
    def shift_days(self) -> int:
        return 1 if self.rotation == "daily" else 7

    @property
    def covers_from(self) -> dt.datetime:
        """The local wall-clock time from which this layer has someone on call."""
        return self.begins if self.begins is not None else dt.datetime.combine(self.start, dt.time(0, 0))

    def member_at(self, local: dt.datetime) -> str | None:
        """Who this layer has on call at a local (naive, wall-clock) time, or None."""
        days = (local.date() - self.start).days - (1 if local.time() < self.handoff else 0)
        if days < 0:
            if local < self.covers_from:
                return None
            days = 0  # before the first handoff: the first member's shift has already begun
        if self.restrictions and not any(w.covers(local) for w in self.restrictions):
            return None
        return self.members[(days // self.shift_days) % len(self.members)]


class Override(_Model):
    start: dt.datetime
    end: dt.datetime
    who: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _range(self) -> Override:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("override start and end need a time zone (e.g. 2026-03-29T08:00:00+02:00)")
        if self.end <= self.start:
            raise ValueError("an override ends after it starts")
        return self


class Schedule(_Model):
    name: str = Field(min_length=1, max_length=100)
    time_zone: str
    layers: tuple[Layer, ...] = Field(min_length=1, max_length=MAX_LAYERS)
    overrides: tuple[Override, ...] = ()

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)") from exc
        return value

    @field_validator("layers")
    @classmethod
    def _names(cls, value: tuple[Layer, ...]) -> tuple[Layer, ...]:
        names = [layer.name for layer in value]
        if len(set(names)) != len(names):
            raise ValueError("layer names must differ")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @classmethod
    def parse(cls, raw: Any) -> Schedule:
        """From API JSON; refusals are ``notify.bad_schedule`` naming the field."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'schedule'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
            raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, f"on-call schedule: {problems}") from None


@dataclass(frozen=True)
class OnCall:
    who: str | None
    source: str
    """``override``, ``layer:<name>``, or ``nobody``."""


def on_call_at(schedule: Schedule, when: dt.datetime) -> OnCall:
    """Who is on call at the instant ``when`` (an aware datetime)."""
    if when.tzinfo is None:
        raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, "on_call_at needs an aware datetime")
    for override in reversed(schedule.overrides):
        if override.start <= when < override.end:
            return OnCall(override.who, "override")
    local = when.astimezone(schedule.zone).replace(tzinfo=None)
    for layer in reversed(schedule.layers):
        who = layer.member_at(local)
        if who is not None:
            return OnCall(who, f"layer:{layer.name}")
    return OnCall(None, "nobody")


@dataclass(frozen=True)
class Shift:
    start: dt.datetime
    end: dt.datetime
    who: str | None
    source: str


def timeline(schedule: Schedule, start: dt.datetime, days: int = TIMELINE_DAYS) -> list[Shift]:
    """The shifts from ``start`` for ``days`` days (UTC instants), consecutive equal ones merged."""
    if start.tzinfo is None:
        raise ConfigError(Code.NOTIFY_BAD_SCHEDULE, "timeline needs an aware start")
    start = start.astimezone(dt.UTC)
    end = start + dt.timedelta(days=days)
    cuts = {start}
    zone = schedule.zone
    first_day = start.astimezone(zone).date() - dt.timedelta(days=1)
    for offset in range(days + 2):
        day = first_day + dt.timedelta(days=offset)
        walls = {layer.handoff for layer in schedule.layers}
        walls |= {t for layer in schedule.layers for w in layer.restrictions for t in (w.start, w.end)}
        cuts |= {_first_instant_at(day, t, zone) for t in walls}
    cuts |= {_first_instant_at(layer.covers_from.date(), layer.covers_from.time(), zone) for layer in schedule.layers}
    cuts |= {t.astimezone(dt.UTC) for o in schedule.overrides for t in (o.start, o.end)}
    points = sorted(c for c in cuts if start <= c < end)
    shifts: list[Shift] = []
    for i, at in enumerate(points):
        until = points[i + 1] if i + 1 < len(points) else end
        who = on_call_at(schedule, at)
        if shifts and (shifts[-1].who, shifts[-1].source) == (who.who, who.source):
            shifts[-1] = Shift(shifts[-1].start, until, who.who, who.source)
        else:
            shifts.append(Shift(at, until, who.who, who.source))
    return shifts


def _first_instant_at(day: dt.date, wall: dt.time, zone: ZoneInfo) -> dt.datetime:
    """The first UTC instant at which the local clock reads ``day wall`` or later (DST gaps included)."""
    naive = dt.datetime.combine(day, wall)
    after = naive.replace(tzinfo=zone, fold=0).astimezone(dt.UTC)
    if after.astimezone(zone).replace(tzinfo=None) == naive:
        return after
    # ``naive`` falls in a spring-forward gap: the handoff happens when the clock jumps over it.
    before = naive.replace(tzinfo=zone, fold=1).astimezone(dt.UTC)
    lo, hi = sorted((int(before.timestamp()), int(after.timestamp())))
    while hi - lo > 1:  # local(lo) < naive <= local(hi); zone transitions fall on whole seconds
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return dt.datetime.fromtimestamp(hi, dt.UTC)
