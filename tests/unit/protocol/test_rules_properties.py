"""Properties of rule evaluation over any reading sequence (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rules_scenarios import DEVICE, MISSING, SWEEP, T0, message, play, threshold_rule

from pulse.protocol.errors import RuleError
from pulse.protocol.rules import (
    Action,
    CloseAlert,
    ConditionCleared,
    DeviceStatus,
    FlappingEnded,
    FlappingStarted,
    Heartbeat,
    OpenAlert,
    Operator,
    Rule,
    RuleState,
    Threshold,
    UpdateDeviceState,
    evaluate,
    new_state,
    parse_rule,
    rule_to_dict,
)

pytestmark = pytest.mark.unit
props = settings(deadline=None, max_examples=150)

flapping = st.none() | st.fixed_dictionaries({"cycles": st.integers(1, 4), "period_s": st.sampled_from([20, 100.5, 600])})


@st.composite
def threshold_rules(draw: st.DrawFn, auto_close: bool | None = True) -> Rule:
    op = draw(st.sampled_from(list(Operator)))
    doc: dict[str, Any] = {
        "id": "r-1",
        "severity": draw(st.sampled_from(["critical", "major", "minor", "warning", "info"])),
        "metric": "temp_c",
        "operator": str(op),
        "window_s": draw(st.sampled_from([0, 5, 30.5])),
        "flapping": draw(flapping),
        "auto_close": draw(st.booleans()) if auto_close is None else auto_close,
    }
    if op in (Operator.EQ, Operator.NEQ):
        doc["threshold"] = draw(st.sampled_from([True, False, 0, 3, 5.5]))
    else:
        doc["threshold"] = threshold = draw(st.integers(0, 10))
        if draw(st.booleans()):
            gap = draw(st.integers(1, 4))
            doc["clear_threshold"] = threshold - gap if op in (Operator.GT, Operator.GTE) else threshold + gap
    return parse_rule(doc, tenant="t-1")


@st.composite
def heartbeat_rules(draw: st.DrawFn) -> Rule:
    stale = draw(st.sampled_from([1, 1.5, 2]))
    doc = {
        "id": "hb-1",
        "kind": "heartbeat",
        "severity": "critical",
        "interval_s": draw(st.sampled_from([5, 10, 60])),
        "stale_after": stale,
        "offline_after": stale + draw(st.sampled_from([0.5, 1.5])),
        "alert_on": draw(st.sampled_from(["stale", "offline"])),
        "flapping": draw(flapping),
    }
    return parse_rule(doc, tenant="t-1")


values = st.one_of(st.integers(0, 10), st.sampled_from([5.5, True, False, MISSING, SWEEP]))


@st.composite
def timelines(draw: st.DrawFn) -> list[tuple[float, object]]:
    """Readings and sweeps at non-decreasing times (seconds after T0)."""
    steps = draw(st.lists(st.tuples(st.sampled_from([0, 1, 4, 10, 31, 200, 700]), values), max_size=60))
    out, now = [], 0.0
    for gap, value in steps:
        now += gap
        out.append((now, value))
    return out


def assert_one_open_alert_at_a_time(rule: Rule, actions: list[list[Action]], states: list[RuleState]) -> None:
    """Opens and closes alternate; nothing opens or closes while flapping; when not flapping, an
    auto-closing rule's alert is open exactly while its condition is active."""
    is_open = flapping_now = False
    for step_actions, state in zip(actions, states, strict=True):
        for action in step_actions:
            if isinstance(action, OpenAlert | FlappingStarted):
                assert not is_open and not flapping_now
                is_open, flapping_now = True, isinstance(action, FlappingStarted)
            elif isinstance(action, CloseAlert):
                assert is_open and not flapping_now
                is_open = False
            elif isinstance(action, FlappingEnded):
                assert flapping_now and is_open
                flapping_now = False
            else:
                assert isinstance(action, UpdateDeviceState)
        assert flapping_now is state.flapping
        if rule.auto_close:
            assert is_open is (state.active or state.flapping)


def play_states(rule: Rule, timeline: list[tuple[float, object]]) -> tuple[list[list[Action]], list[RuleState]]:
    states: list[RuleState] = []
    actions: list[list[Action]] = []
    state: RuleState | None = None
    for moment in timeline:
        state, [step_actions] = play(rule, [moment], state)
        assert state is not None
        states.append(state)
        actions.append(step_actions)
    return actions, states


@props
@given(threshold_rules(), timelines())
def test_threshold_rule_keeps_at_most_one_open_alert_per_fingerprint(rule: Rule, timeline: list[tuple[float, object]]) -> None:
    actions, states = play_states(rule, timeline)
    assert_one_open_alert_at_a_time(rule, actions, states)
    fingerprints = {a.fingerprint for step in actions for a in step if not isinstance(a, UpdateDeviceState)}
    assert len(fingerprints) <= 1
    assert isinstance(rule.condition, Threshold)
    for step_actions in actions:
        for action in step_actions:
            e = action.explanation
            if isinstance(action, OpenAlert | FlappingStarted):  # opened only after the whole window held
                assert e.since_ms is not None and e.at_ms - e.since_ms >= rule.condition.window_s * 1000
                assert e.readings >= 1 and e.threshold == rule.condition.threshold


@props
@given(heartbeat_rules(), timelines())
def test_heartbeat_rule_keeps_at_most_one_open_alert_and_reports_each_status_change_once(
    rule: Rule, timeline: list[tuple[float, object]]
) -> None:
    actions, states = play_states(rule, timeline)
    assert_one_open_alert_at_a_time(rule, actions, states)
    status = DeviceStatus.ONLINE
    assert isinstance(rule.condition, Heartbeat)
    for step_actions, state in zip(actions, states, strict=True):
        for action in step_actions:
            if isinstance(action, UpdateDeviceState):
                assert action.status is not status and action.device == DEVICE
                status = action.status
        assert state.status is status


@props
@given(threshold_rules(auto_close=False), timelines())
def test_a_rule_without_auto_close_never_closes(rule: Rule, timeline: list[tuple[float, object]]) -> None:
    _, actions = play(rule, timeline)
    assert not any(isinstance(a, CloseAlert) for step in actions for a in step)
    opened = any(isinstance(a, OpenAlert) for step in actions for a in step)
    cleared = any(isinstance(a, ConditionCleared) for step in actions for a in step)
    assert opened or not cleared


@props
@given(st.one_of(threshold_rules(auto_close=None), heartbeat_rules()), timelines())
def test_evaluation_is_deterministic_and_a_restart_at_any_step_changes_nothing(
    rule: Rule, timeline: list[tuple[float, object]]
) -> None:
    first = play(rule, timeline)
    assert play(rule, timeline) == first
    assert play(rule, timeline, restart_each_step=True) == first


@props
@given(st.one_of(threshold_rules(auto_close=None), heartbeat_rules()), st.booleans())
def test_rule_wire_form_round_trips(rule: Rule, enabled: bool) -> None:
    scope = {"devices": ["d-2", "d-1"], "tags": {"k": "v"}, "sites": ["s-1"]}
    doc = rule_to_dict(rule) | {"enabled": enabled, "version": 7, "name": "Näme", "scope": scope}
    again = parse_rule(doc, tenant="t-1")
    assert rule_to_dict(again) == doc | {"scope": scope | {"devices": ["d-1", "d-2"]}}
    assert parse_rule(rule_to_dict(again), tenant="t-1") == again


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


ALL_FIELDS = [
    *"id name version kind severity enabled auto_close scope flapping".split(),
    *"metric operator threshold clear_threshold window_s".split(),
    *"interval_s stale_after offline_after alert_on intervals".split(),
    "treshold",
]


@props
@given(st.one_of(threshold_rules(auto_close=None), heartbeat_rules()), st.sampled_from(ALL_FIELDS), json_values)
def test_any_field_set_to_any_json_is_accepted_or_refused_with_a_rule_code(rule: Rule, field: str, value: object) -> None:
    doc = rule_to_dict(rule) | {field: value}
    try:
        parsed = parse_rule(doc, tenant="t-1")
    except RuleError as exc:
        assert str(exc.code).startswith("rule.") and exc.message
    else:
        assert parse_rule(rule_to_dict(parsed), tenant="t-1") == parsed


@props
@given(json_values)
def test_any_json_document_is_accepted_or_refused_with_a_rule_code(doc: object) -> None:
    with pytest.raises(RuleError):
        parse_rule(doc, tenant="t-1")


@props
@given(offset=st.integers(0, 10**6), value=st.integers(0, 10))
def test_first_evaluation_without_state_equals_evaluation_from_a_new_state(offset: int, value: int) -> None:
    rule, now = threshold_rule(threshold=5), T0 + offset
    assert evaluate(rule, None, message(value), now) == evaluate(rule, new_state(rule, DEVICE, now), message(value), now)
