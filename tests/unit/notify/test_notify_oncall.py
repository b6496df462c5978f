"""On-call schedules on a simulated clock: rotations, handoffs across DST, layers, windows, overrides."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.oncall import Schedule, on_call_at, timeline
from pulse.cloud.notify.store import schedule_of
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

BERLIN = ZoneInfo("Europe/Berlin")


def berlin(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BERLIN)


def schedule(**changes: Any) -> Schedule:
    raw: dict[str, Any] = {
        "name": "plant ops",
        "time_zone": "Europe/Berlin",
        "layers": [{"name": "primary", "members": ["ana", "ben", "cem"], "rotation": "daily", "start": "2026-03-26", "handoff": "09:00"}],
    }
    return Schedule.parse(raw | changes)


@pytest.mark.parametrize(
    ("when", "who"),
    [
        (berlin(2026, 3, 25, 23, 59), None),  # before the schedule starts
        (berlin(2026, 3, 26, 0, 0), "ana"),  # the schedule covers from its start, before the first handoff
        (berlin(2026, 3, 26, 8, 59), "ana"),
        (berlin(2026, 3, 26, 9, 0), "ana"),
        (berlin(2026, 3, 27, 8, 59), "ana"),
        (berlin(2026, 3, 27, 9, 0), "ben"),
        (berlin(2026, 3, 28, 12, 0), "cem"),
        (berlin(2026, 3, 29, 9, 0), "ana"),  # DST began at 02:00 that night: still 09:00 local
        (berlin(2026, 3, 29, 8, 59), "cem"),
    ],
)
def test_daily_rotation_hands_off_at_local_wall_clock_time(when: dt.datetime, who: str | None) -> None:
    assert on_call_at(schedule(), when).who == who


UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def made_by_the_console(time_zone: str, day: dt.date, rotation: str = "daily") -> Schedule:
    """What the console creates: members ana, bo, cy, handoff 09:00, starting at local midnight of ``day``."""
    begins = dt.datetime.combine(day, dt.time(0, 0)).replace(tzinfo=ZoneInfo(time_zone))
    layer = {"name": "primary", "members": [{"name": m} for m in ("ana", "bo", "cy")], "rotation": rotation, "start": begins.isoformat(), "handoff": "09:00"}
    return schedule_of("primary on-call", time_zone, [layer], [])


@pytest.mark.parametrize(
    ("zone", "day", "when", "who"),
    [
        # made today in UTC, asked at several times of that day and the next
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 5, 0, 30), "ana"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 5, 8, 59), "ana"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 5, 9, 0), "ana"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 5, 23, 59), "ana"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 6, 8, 59), "ana"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 6, 9, 0), "bo"),
        ("UTC", dt.date(2026, 12, 5), utc(2026, 12, 4, 23, 59), None),  # before it starts
        # made in Berlin on the day summer time begins (02:00 -> 03:00): local midnight is 23:00 UTC the day before
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 28, 22, 59), None),
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 28, 23, 0), "ana"),
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 0, 30), "ana"),
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 8, 59), "ana"),
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 23, 59), "ana"),
        ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 30, 7, 0), "bo"),  # 09:00 CEST
        # ... and on the day it ends (03:00 -> 02:00)
        ("Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 0, 30), "ana"),
        ("Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 8, 59), "ana"),
        ("Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 23, 59), "ana"),
        ("Europe/Berlin", dt.date(2026, 10, 26), utc(2026, 10, 26, 7, 59), "ana"),  # 08:59 CET
        ("Europe/Berlin", dt.date(2026, 10, 26), utc(2026, 10, 26, 8, 0), "ana"),  # 09:00 CET: first handoff, ana's shift ends tomorrow
        # New York, on the day summer time begins (2026-03-08)
        ("America/New_York", dt.date(2026, 3, 8), utc(2026, 3, 8, 5, 0), "ana"),  # 00:00 EST
        ("America/New_York", dt.date(2026, 3, 8), utc(2026, 3, 8, 4, 59), None),
        ("America/New_York", dt.date(2026, 3, 8), utc(2026, 3, 8, 12, 59), "ana"),  # 08:59 EDT
    ],
)
def test_a_new_schedule_has_its_first_member_on_call_from_its_start_at_any_time_of_day(
    zone: str, day: dt.date, when: dt.datetime, who: str | None
) -> None:
    s = made_by_the_console(zone, day)
    assert on_call_at(s, when).who == who
    # the timeline agrees and has no gap from the start of the schedule on
    begins = dt.datetime.combine(day, dt.time(0, 0)).replace(tzinfo=ZoneInfo(zone))
    if when >= begins:
        shifts = timeline(s, when, days=2)
        assert shifts[0].who == who and all(sh.who is not None for sh in shifts)


def test_a_weekly_layer_that_starts_before_its_handoff_weekday_covers_the_days_until_then() -> None:
    begins = dt.datetime(2026, 12, 3, 14, 0, tzinfo=UTC)  # a Thursday; handoffs on Mondays at 09:00
    layer = {"name": "wk", "members": [{"name": "ana"}, {"name": "bo"}], "rotation": "weekly", "start": begins.isoformat(), "handoff": "09:00", "handoff_weekday": 0}
    s = schedule_of("weekly", "UTC", [layer], [])
    assert on_call_at(s, utc(2026, 12, 3, 13, 59)).who is None
    assert on_call_at(s, utc(2026, 12, 3, 14, 0)).who == "ana"
    assert on_call_at(s, utc(2026, 12, 7, 8, 59)).who == "ana"
    assert on_call_at(s, utc(2026, 12, 14, 8, 59)).who == "ana"
    assert on_call_at(s, utc(2026, 12, 14, 9, 0)).who == "bo"
    shifts = timeline(s, utc(2026, 12, 3, 0, 0), days=14)
    assert [(sh.start, sh.who) for sh in shifts] == [(utc(2026, 12, 3, 0, 0), None), (begins, "ana"), (utc(2026, 12, 14, 9, 0), "bo")]


def test_the_shift_across_spring_forward_is_23_hours_and_across_fall_back_25() -> None:
    spring = timeline(schedule(), berlin(2026, 3, 28, 0, 0), days=2)
    cem = next(s for s in spring if s.who == "cem")
    assert cem.end - cem.start == dt.timedelta(hours=23)
    assert cem.end == dt.datetime(2026, 3, 29, 7, 0, tzinfo=dt.UTC)  # 09:00 CEST
    autumn = timeline(schedule(), berlin(2026, 10, 24, 0, 0), days=2)
    long_one = next(s for s in autumn if s.start == dt.datetime(2026, 10, 24, 7, 0, tzinfo=dt.UTC))
    assert long_one.end - long_one.start == dt.timedelta(hours=25)


def test_a_handoff_inside_the_spring_gap_happens_when_the_clock_jumps() -> None:
    s = schedule(layers=[{"name": "night", "members": ["ana", "ben"], "rotation": "daily", "start": "2026-03-27", "handoff": "02:30"}])
    jump = dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC)  # 02:00 CET becomes 03:00 CEST
    before, after = on_call_at(s, jump - dt.timedelta(seconds=1)).who, on_call_at(s, jump).who
    assert (before, after) == ("ben", "ana")
    assert any(shift.start == jump for shift in timeline(s, berlin(2026, 3, 28, 12, 0), days=2))


def test_weekly_rotation_hands_off_on_the_start_weekday() -> None:
    s = schedule(layers=[{"name": "wk", "members": ["ana", "ben"], "rotation": "weekly", "start": "2026-11-02", "handoff": "10:00"}])
    assert on_call_at(s, berlin(2026, 11, 8, 23, 0)).who == "ana"  # Sunday
    assert on_call_at(s, berlin(2026, 11, 9, 9, 59)).who == "ana"  # Monday before the handoff
    assert on_call_at(s, berlin(2026, 11, 9, 10, 0)).who == "ben"
    assert on_call_at(s, berlin(2026, 11, 16, 10, 0)).who == "ana"


def test_a_higher_layer_wins_inside_its_window_and_the_lower_one_covers_the_rest() -> None:
    s = schedule(
        layers=[
            {"name": "base", "members": ["night-desk"], "rotation": "weekly", "start": "2026-01-05", "handoff": "00:00"},
            {
                "name": "business hours",
                "members": ["ana", "ben"],
                "rotation": "daily",
                "start": "2026-11-23",
                "handoff": "09:00",
                "restrictions": [{"days": [0, 1, 2, 3, 4], "start": "09:00", "end": "17:00"}],
            },
        ]
    )
    assert on_call_at(s, berlin(2026, 11, 24, 10, 0)).who == "ben"  # Tuesday, in the window
    assert on_call_at(s, berlin(2026, 11, 24, 17, 0)).source == "layer:base"
    assert on_call_at(s, berlin(2026, 11, 28, 10, 0)).who == "night-desk"  # Saturday


def test_an_overnight_window_covers_the_next_morning() -> None:
    s = schedule(
        layers=[
            {
                "name": "nights",
                "members": ["nia"],
                "rotation": "daily",
                "start": "2026-11-01",
                "restrictions": [{"days": [4], "start": "18:00", "end": "08:00"}],
            }
        ]
    )
    assert on_call_at(s, berlin(2026, 11, 27, 19, 0)).who == "nia"  # Friday evening
    assert on_call_at(s, berlin(2026, 11, 28, 7, 59)).who == "nia"  # Saturday morning, same window
    assert on_call_at(s, berlin(2026, 11, 28, 8, 0)).who is None


def test_overrides_are_checked_first_and_the_last_listed_wins() -> None:
    s = schedule(
        overrides=[
            {"start": "2026-03-27T12:00:00+01:00", "end": "2026-03-27T18:00:00+01:00", "who": "dora"},
            {"start": "2026-03-27T13:00:00+01:00", "end": "2026-03-27T14:00:00+01:00", "who": "eli"},
        ]
    )
    assert on_call_at(s, berlin(2026, 3, 27, 11, 59)).who == "ben"
    assert on_call_at(s, berlin(2026, 3, 27, 12, 0)).who == "dora"
    assert on_call_at(s, berlin(2026, 3, 27, 13, 30)).who == "eli"
    assert on_call_at(s, berlin(2026, 3, 27, 18, 0)).who == "ben"
    shifts = [(sh.start.astimezone(BERLIN).strftime("%d %H:%M"), sh.who, sh.source) for sh in timeline(s, berlin(2026, 3, 27, 9, 0), days=1)]
    assert shifts == [
        ("27 09:00", "ben", "layer:primary"),
        ("27 12:00", "dora", "override"),
        ("27 13:00", "eli", "override"),
        ("27 14:00", "dora", "override"),
        ("27 18:00", "ben", "layer:primary"),
    ]


def test_the_14_day_timeline_covers_every_instant_once_and_agrees_with_on_call_at() -> None:
    s = schedule(overrides=[{"start": "2026-03-30T20:00:00+02:00", "end": "2026-03-31T02:00:00+02:00", "who": "dora"}])
    start = berlin(2026, 3, 25, 6, 0)
    shifts = timeline(s, start)
    assert shifts[0].start == start.astimezone(dt.UTC) and shifts[-1].end == start.astimezone(dt.UTC) + dt.timedelta(days=14)
    assert all(a.end == b.start for a, b in zip(shifts, shifts[1:], strict=False))
    assert all((a.who, a.source) != (b.who, b.source) for a, b in zip(shifts, shifts[1:], strict=False))
    probe = start
    while probe < start + dt.timedelta(days=14):  # every 7 minutes, across the DST change
        [shift] = [sh for sh in shifts if sh.start <= probe < sh.end]
        assert shift.who == on_call_at(s, probe).who
        probe += dt.timedelta(minutes=7)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"layers": []}, "layers"),
        ({"layers": [{"name": "x", "members": [], "rotation": "daily", "start": "2026-01-01"}]}, "members"),
        ({"layers": [{"name": "x", "members": ["a"], "rotation": "hourly", "start": "2026-01-01"}]}, "rotation"),
        ({"overrides": [{"start": "2026-01-01T10:00:00", "end": "2026-01-01T11:00:00", "who": "a"}]}, "time zone"),
        ({"overrides": [{"start": "2026-01-01T10:00:00Z", "end": "2026-01-01T09:00:00Z", "who": "a"}]}, "ends after"),
    ],
)
def test_bad_schedules_are_refused_with_a_coded_error_naming_the_problem(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        schedule(**changes)
    assert caught.value.code is Code.NOTIFY_BAD_SCHEDULE and field in caught.value.message
