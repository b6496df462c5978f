"""Escalation decisions on a simulated clock: level by level until someone acknowledges."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.escalation import AlertStatus, EscalationState, Notify, Policy, Stop, Wait, next_step, recipients
from pulse.cloud.notify.oncall import Schedule
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.UTC)
POLICY = Policy.parse(
    {
        "name": "plant ops",
        "levels": [
            {"targets": [{"kind": "channel", "id": "slack-ops"}], "escalate_after_min": 10},
            {"targets": [{"kind": "schedule", "id": "primary"}, {"kind": "channel", "id": "pd"}], "escalate_after_min": 15},
            {"targets": [{"kind": "channel", "id": "email-managers"}], "escalate_after_min": 30},
        ],
        "repeat": 1,
    }
)


def run(policy: Policy, until_min: int, status_at: dict[int, AlertStatus] | None = None) -> list[tuple[int, Any]]:
    """Drive next_step like the worker: call at each Wait.until (and each minute a status changes)."""
    state, now, log = EscalationState(), T0, []
    status: AlertStatus = "open"
    changes = dict(status_at or {})
    while now <= T0 + dt.timedelta(minutes=until_min):
        minute = int((now - T0).total_seconds() // 60)
        status = changes.get(minute, status)
        state, step = next_step(policy, status, state, now)
        if isinstance(step, Stop):
            log.append((minute, step))
            break
        if isinstance(step, Notify):
            log.append((minute, step.level, step.cycle))
            continue
        assert isinstance(step, Wait)
        pending = [T0 + dt.timedelta(minutes=m) for m in changes if T0 + dt.timedelta(minutes=m) > now]
        now = min([step.until, *pending])
    return log


def test_levels_fire_in_order_after_their_delays_then_repeat_then_stop() -> None:
    assert run(POLICY, until_min=240) == [
        (0, 0, 0),
        (10, 1, 0),
        (25, 2, 0),
        (55, 0, 1),
        (65, 1, 1),
        (80, 2, 1),
        (110, Stop("exhausted")),
    ]


def test_acknowledging_stops_the_escalation() -> None:
    assert run(POLICY, until_min=240, status_at={12: "acknowledged"}) == [(0, 0, 0), (10, 1, 0), (12, Stop("acknowledged"))]


def test_closing_stops_it_too() -> None:
    assert run(POLICY, until_min=240, status_at={3: "closed"}) == [(0, 0, 0), (3, Stop("closed"))]


def test_a_late_worker_catches_up_one_level_at_a_time() -> None:
    state, _ = next_step(POLICY, "open", EscalationState(), T0)
    late = T0 + dt.timedelta(hours=3)
    state, step = next_step(POLICY, "open", state, late)
    assert isinstance(step, Notify) and step.level == 1
    state, step = next_step(POLICY, "open", state, late)
    assert step == Wait(late + dt.timedelta(minutes=15))


def test_schedule_targets_resolve_to_who_is_on_call_now() -> None:
    primary = Schedule.parse(
        {"name": "p", "time_zone": "UTC", "layers": [{"name": "l", "members": ["ana", "ben"], "rotation": "daily", "start": "2026-11-24", "handoff": "00:00"}]}
    )
    step = Notify(1, 0, POLICY.levels[1].targets)
    got = recipients(step, {"primary": primary}, T0)
    assert got.channels == ("pd",) and got.people == ("ben",) and got.unstaffed == ()
    assert recipients(step, {}, T0).unstaffed == ("primary",)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"name": "p", "levels": []}, "levels"),
        ({"name": "p", "levels": [{"targets": [{"kind": "channel", "id": "x"}]}] * 6}, "levels"),
        ({"name": "p", "levels": [{"targets": []}]}, "targets"),
        ({"name": "p", "levels": [{"targets": [{"kind": "pager", "id": "x"}]}]}, "kind"),
        ({"name": "p", "levels": [{"targets": [{"kind": "channel", "id": "x"}], "escalate_after_min": 0}]}, "escalate_after_min"),
    ],
)
def test_bad_policies_are_refused_with_a_coded_error(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Policy.parse(raw)
    assert caught.value.code is Code.NOTIFY_BAD_POLICY and field in caught.value.message
