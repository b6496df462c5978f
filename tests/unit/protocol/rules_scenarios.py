"""A simulated clock for rule scenarios: play a table of (seconds, input) and name the actions.

Shared by the rule tests in this folder (scenario tables and hypothesis properties)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, cast

from pulse.protocol.envelope import Envelope, MessageType, MetricValue
from pulse.protocol.rules import (
    Action,
    CloseAlert,
    ConditionCleared,
    FlappingEnded,
    FlappingStarted,
    OpenAlert,
    Rule,
    RuleState,
    Threshold,
    UpdateDeviceState,
    evaluate,
    new_state,
    parse_rule,
    sweep,
)

T0 = 1_764_061_200_000  # 2025-11-25T09:00:00Z
DEVICE = "boiler-7"
SWEEP = "sweep"
MISSING = "missing"  # a message without the rule's metric


def threshold_rule(**fields: Any) -> Rule:
    doc = {"id": "hot", "version": 1, "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30}
    return parse_rule(doc | fields, tenant="acme")


def heartbeat_rule(**fields: Any) -> Rule:
    doc = {"id": "alive", "kind": "heartbeat", "severity": "critical", "interval_s": 60}
    return parse_rule(doc | fields, tenant="acme")


def message(value: object, *, metric: str = "temp_c", device: str = DEVICE, ts: int = T0) -> Envelope:
    """A telemetry message carrying ``value`` as ``metric`` (or only another metric, for MISSING)."""
    metrics: Mapping[str, MetricValue] = {"other": 1} if value == MISSING else {metric: cast(MetricValue, value)}
    return Envelope(device_id=device, ts_ms=ts, type=MessageType.TELEMETRY, metrics=metrics)


def name(action: Action) -> str:
    if isinstance(action, UpdateDeviceState):
        return str(action.status)
    return {
        OpenAlert: "open",
        CloseAlert: "close",
        ConditionCleared: "cleared",
        FlappingStarted: "flap+",
        FlappingEnded: "flap-",
    }[type(action)]


def step(rule: Rule, state: RuleState | None, value: object, now: int) -> tuple[RuleState, tuple[Action, ...]]:
    """One input at ``now``: a sweep, or a message carrying ``value`` (or MISSING)."""
    if value == SWEEP:
        return sweep(rule, state or new_state(rule, DEVICE, now), now)
    metric = rule.condition.metric if isinstance(rule.condition, Threshold) else "temp_c"
    return evaluate(rule, state, message(value, metric=metric, ts=now), now)


def play(
    rule: Rule, inputs: Iterable[tuple[float, object]], state: RuleState | None = None, *, restart_each_step: bool = False
) -> tuple[RuleState | None, list[list[Action]]]:
    """Run ``inputs`` (seconds after T0, value) and return the final state and each step's actions.

    With ``restart_each_step`` the state goes through JSON text between steps, as a runner that
    persists it and restarts would see it."""
    out: list[list[Action]] = []
    for seconds, value in inputs:
        if restart_each_step and state is not None:
            state = RuleState.from_dict(json.loads(json.dumps(state.to_dict())))
        state, actions = step(rule, state, value, T0 + round(seconds * 1000))
        out.append(list(actions))
    return state, out


def names(actions: list[list[Action]]) -> list[str]:
    return [" ".join(name(a) for a in step_actions) for step_actions in actions]


def check(rule: Rule, table: list[tuple[float, object, str]]) -> list[list[Action]]:
    """Play a scenario table of (seconds, input, expected action names) and compare all steps at once."""
    _, actions = play(rule, [(t, v) for t, v, _ in table])
    got = [(t, v, n) for (t, v, _), n in zip(table, names(actions), strict=True)]
    assert got == table, "\n".join(
        f"{'  ' if g == e else '!!'} at {g[0]} s, {g[1]!r}: got {g[2]!r}, expected {e[2]!r}"
        for g, e in zip(got, table, strict=True)
    )
    return actions
