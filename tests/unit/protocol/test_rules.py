"""Rule evaluation scenarios on a simulated clock: every feature of the rule model, as tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from rules_scenarios import DEVICE, MISSING, SWEEP, T0, check, heartbeat_rule, message, names, play, threshold_rule

from pulse.protocol.errors import Code, RuleError
from pulse.protocol.rules import (
    STATE_SCHEMA,
    CloseAlert,
    Device,
    DeviceStatus,
    Fingerprint,
    Flapping,
    Heartbeat,
    OpenAlert,
    Operator,
    RuleState,
    Scope,
    Severity,
    Threshold,
    UpdateDeviceState,
    applies_to,
    evaluate,
    new_state,
    parse_rule,
    sweep,
)

pytestmark = pytest.mark.unit


# --- threshold: operators ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "fires"),
    [
        ("GT", 30.5, True),
        ("GT", 30, False),
        ("GT", 29, False),
        ("GTE", 30, True),
        ("GTE", 29.9, False),
        ("LT", 29.9, True),
        ("LT", 30, False),
        ("LTE", 30, True),
        ("LTE", 30.1, False),
        ("EQ", 30, True),
        ("EQ", 30.0, True),
        ("EQ", 31, False),
        ("NEQ", 31, True),
        ("NEQ", 30, False),
    ],
)
def test_each_operator_fires_exactly_when_its_comparison_holds(op: str, value: float, fires: bool) -> None:
    check(threshold_rule(operator=op, threshold=30), [(0, value, "open" if fires else "")])


def test_a_condition_that_stops_holding_closes_the_alert_without_hysteresis() -> None:
    check(
        threshold_rule(flapping=None),
        [(0, 31, "open"), (10, 35, ""), (20, 30, "close"), (30, 31, "open"), (40, 29, "close"), (50, 20, "")],
    )


# --- threshold: duration window -------------------------------------------------------------------


def test_window_fires_on_the_first_reading_after_the_condition_held_for_the_whole_window() -> None:
    check(
        threshold_rule(window_s=300),
        [
            (0, 31, ""),
            (60, 32, ""),
            (299, 33, ""),
            (300, 31, "open"),
            (360, 40, ""),  # still firing: no second open
            (420, 29, "close"),
        ],
    )


def test_one_reading_that_breaks_the_condition_restarts_the_window() -> None:
    check(
        threshold_rule(window_s=300),
        [
            (0, 31, ""),
            (200, 31, ""),
            (250, 29, ""),  # breaks it
            (300, 31, ""),  # would have fired without the break; the window starts again here
            (500, 31, ""),
            (599, 31, ""),
            (600, 31, "open"),
        ],
    )


def test_window_does_not_fire_by_time_alone_only_on_a_reading() -> None:
    check(threshold_rule(window_s=300), [(0, 31, ""), (400, SWEEP, ""), (1000, SWEEP, ""), (1001, 31, "open")])


# --- threshold: hysteresis ------------------------------------------------------------------------


def test_hysteresis_fires_above_threshold_and_clears_only_past_the_clear_threshold() -> None:
    check(
        threshold_rule(threshold=30, clear_threshold=28, flapping=None),
        [
            (0, 29, ""),
            (10, 30.5, "open"),
            (20, 29, ""),  # below 30 but above 28: no chatter
            (30, 31, ""),
            (40, 28.5, ""),
            (50, 30.2, ""),
            (60, 28, "close"),  # no longer above 28
            (70, 29.9, ""),  # between the thresholds: does not re-open
            (80, 30.1, "open"),
        ],
    )


def test_hysteresis_works_downwards_for_lt() -> None:
    check(
        threshold_rule(operator="LT", threshold=5, clear_threshold=7, flapping=None),
        [(0, 4, "open"), (10, 6.9, ""), (20, 5.5, ""), (30, 7, "close"), (40, 6, ""), (50, 4.9, "open")],
    )


def test_without_hysteresis_the_same_readings_chatter() -> None:
    """The contrast to the hysteresis test: the same values open and close on every crossing."""
    check(
        threshold_rule(threshold=30, flapping=None),
        [(0, 29, ""), (10, 30.5, "open"), (20, 29, "close"), (30, 31, "open"), (40, 28.5, "close"), (50, 30.2, "open")],
    )


# --- threshold: what is not evaluated ---------------------------------------------------------------


def test_disabled_rule_does_nothing_and_keeps_its_state() -> None:
    rule = threshold_rule(window_s=60)
    state, _ = play(rule, [(0, 31)])
    assert state is not None and state.track is not None
    disabled = threshold_rule(window_s=60, enabled=False)
    for value in [40, 10, SWEEP]:
        after, actions = evaluate(disabled, state, message(value), T0) if value != SWEEP else sweep(disabled, state, T0)
        assert (after, actions) == (state, ())
    assert play(heartbeat_rule(enabled=False), [(0, SWEEP), (10_000, SWEEP)])[1] == [[], []]


def test_message_without_the_metric_leaves_the_window_running() -> None:
    check(
        threshold_rule(window_s=300),
        [(0, 31, ""), (100, MISSING, ""), (200, MISSING, ""), (300, 31, "open"), (310, MISSING, ""), (320, 10, "close")],
    )


def test_boolean_metrics_with_eq_and_neq() -> None:
    check(
        threshold_rule(metric="door_open", operator="EQ", threshold=True, window_s=60, flapping=None),
        [(0, False, ""), (10, True, ""), (70, True, "open"), (80, True, ""), (90, False, "close")],
    )
    check(threshold_rule(operator="NEQ", threshold=False), [(0, False, ""), (10, True, "open"), (20, False, "close")])


def test_value_of_the_other_kind_is_ignored_like_a_missing_metric() -> None:
    """A number against a true/false rule, or a boolean against a numeric one, changes nothing."""
    numeric = threshold_rule(window_s=60)
    state, _ = play(numeric, [(0, 31)])
    assert evaluate(numeric, state, message(True), T0 + 10_000) == (state, ())
    check(numeric, [(0, 31, ""), (30, True, ""), (60, 31, "open"), (70, False, ""), (80, 1, "close")])
    boolean = threshold_rule(operator="EQ", threshold=True)
    check(boolean, [(0, 1, ""), (10, 1.0, ""), (20, True, "open"), (30, 0, ""), (40, False, "close")])


# --- heartbeat -------------------------------------------------------------------------------------


def test_heartbeat_goes_stale_then_offline_by_sweep_and_online_on_a_message() -> None:
    actions = check(
        heartbeat_rule(interval_s=60),
        [
            (0, 1, ""),
            (60, SWEEP, ""),
            (89, SWEEP, ""),
            (90, SWEEP, "stale"),  # 1.5 x 60 s of silence
            (150, SWEEP, ""),
            (180, SWEEP, "offline open"),  # 3 x 60 s
            (500, SWEEP, ""),
            (600, MISSING, "online close"),  # any message counts, with or without metrics
            (630, SWEEP, ""),
            (700, SWEEP, "stale"),
            (710, 1, "online"),
        ],
    )
    update = actions[5][0]
    assert isinstance(update, UpdateDeviceState)
    assert (update.tenant, update.device, update.status) == ("acme", DEVICE, DeviceStatus.OFFLINE)
    assert update.explanation.last_seen_ms == T0 and update.explanation.interval_s == 60
    assert update.explanation.text == (
        "boiler-7 is offline: not heard from for 180 s since 2025-11-25T09:00:00Z "
        "(expected every 60 s, offline after 180 s); rule alive v1."
    )
    assert (
        actions[7][0].explanation.text
        == "boiler-7 is online: heard from at 2025-11-25T09:10:00Z after 600 s of silence; rule alive v1."
    )


def test_heartbeat_jumps_straight_to_offline_when_the_sweep_comes_late() -> None:
    check(heartbeat_rule(interval_s=10), [(0, 1, ""), (100, SWEEP, "offline open"), (101, 1, "online close")])


def test_heartbeat_can_alert_when_stale_and_has_configurable_factors() -> None:
    rule = heartbeat_rule(interval_s=100, stale_after=2, offline_after=5, alert_on="stale")
    check(rule, [(0, 1, ""), (199, SWEEP, ""), (200, SWEEP, "stale open"), (500, SWEEP, "offline"), (501, 1, "online close")])


def test_heartbeat_interval_per_device() -> None:
    rule = heartbeat_rule(interval_s=60, intervals={"meter-1": 3600})
    slow, _ = sweep(rule, new_state(rule, "meter-1", T0), T0 + 600_000)
    assert slow.status is DeviceStatus.ONLINE
    fast, actions = sweep(rule, new_state(rule, DEVICE, T0), T0 + 600_000)
    assert fast.status is DeviceStatus.OFFLINE and [type(a) for a in actions] == [UpdateDeviceState, OpenAlert]


def test_a_device_never_heard_from_goes_offline_from_when_monitoring_started() -> None:
    check(heartbeat_rule(interval_s=60), [(0, SWEEP, ""), (90, SWEEP, "stale"), (180, SWEEP, "offline open")])


# --- flapping -------------------------------------------------------------------------------------


def test_flapping_starts_after_n_cycles_within_the_period_and_ends_when_stable() -> None:
    rule = threshold_rule(flapping={"cycles": 2, "period_s": 600})
    check(
        rule,
        [
            (0, 31, "open"),
            (60, 29, "close"),
            (120, 31, "open"),
            (180, 29, "close"),  # two cycles within 600 s
            (240, 31, "flap+"),  # the third opening: one flapping alert instead
            (300, 29, ""),
            (360, 31, ""),
            (420, 29, ""),  # last change
            (600, 29, ""),
            (1019, SWEEP, ""),
            (1020, SWEEP, "flap- close"),  # stable for 600 s and clear: back to normal, and closed
            (1080, 31, "open"),  # counting starts again
        ],
    )


def test_flapping_that_ends_while_the_condition_holds_leaves_the_alert_open() -> None:
    rule = threshold_rule(flapping={"cycles": 1, "period_s": 60})
    check(
        rule,
        [
            (0, 31, "open"),
            (10, 29, "close"),
            (20, 31, "flap+"),
            (30, 29, ""),
            (40, 31, ""),
            (100, 31, "flap-"),
            (110, 29, "close"),
        ],
    )


def test_cycles_older_than_the_period_do_not_count() -> None:
    rule = threshold_rule(flapping={"cycles": 2, "period_s": 100})
    check(
        rule,
        [
            (0, 31, "open"),
            (10, 29, "close"),
            (200, 31, "open"),
            (210, 29, "close"),
            (220, 31, "open"),
            (230, 29, "close"),
            (240, 31, "flap+"),
        ],
    )


def test_heartbeat_flaps_too() -> None:
    rule = heartbeat_rule(interval_s=10, flapping={"cycles": 1, "period_s": 600})
    check(
        rule, [(0, 1, ""), (30, SWEEP, "offline open"), (31, 1, "online close"), (61, SWEEP, "offline flap+"), (62, 1, "online")]
    )


# --- auto-close -------------------------------------------------------------------------------------


def test_without_auto_close_a_clear_condition_leaves_the_alert_for_a_person() -> None:
    check(threshold_rule(auto_close=False, flapping=None), [(0, 31, "open"), (10, 29, "cleared"), (20, 31, "open")])


# --- explanations -----------------------------------------------------------------------------------


def test_firing_explains_values_window_threshold_operator_and_version() -> None:
    rule = threshold_rule(version=4, name="Boiler too hot", window_s=300, clear_threshold=28)
    actions = check(rule, [(0, 30.4, ""), (100, 32.1, ""), (200, 31.0, ""), (300, 31.9, "open")])
    opened = actions[3][0]
    assert isinstance(opened, OpenAlert)
    assert opened.fingerprint == Fingerprint("acme", DEVICE, "hot") and str(opened.fingerprint) == "acme/boiler-7/hot"
    assert opened.severity is Severity.MAJOR
    e = opened.explanation
    assert (e.metric, e.operator, e.threshold, e.clear_threshold, e.window_s) == ("temp_c", Operator.GT, 30, 28, 300)
    assert (e.rule_id, e.rule_version, e.since_ms, e.at_ms) == ("hot", 4, T0, T0 + 300_000)
    assert (e.readings, e.first, e.last, e.low, e.high) == (4, 30.4, 31.9, 30.4, 32.1)
    assert e.text == (
        "boiler-7: temp_c has been above 30 for 300 s (window 300 s): 4 readings since 2025-11-25T09:00:00Z, "
        '30.4 to 32.1, last 31.9; rule hot v4 "Boiler too hot", major.'
    )
    assert json.loads(json.dumps(e.to_dict()))["operator"] == "GT"


def test_clearing_and_single_reading_explanations_say_why() -> None:
    actions = check(threshold_rule(clear_threshold=28), [(0, 31, "open"), (10, 27.5, "close")])
    assert actions[0][0].explanation.text == "boiler-7: temp_c is 31, above 30; rule hot v1, major."
    assert actions[1][0].explanation.text == "boiler-7: temp_c is 27.5, no longer above the clear threshold 28; rule hot v1."


# --- state: persistence and restarts -----------------------------------------------------------------

RESTART_TABLE: list[tuple[float, object]] = [
    (0, 31),
    (100, 32),
    (150, MISSING),
    (250, 33),  # open
    (300, 31),
    (310, 29),  # close
    (320, 31),
    (520, 31),  # open
    (530, 29),  # close
    (540, 31),
    (600, SWEEP),
    (740, 31),  # flapping starts
    (750, 29),
    (2000, SWEEP),  # flapping ends, closed
]


def test_state_through_json_mid_window_gives_identical_results() -> None:
    """A runner that persists the state and restarts between any two readings decides the same."""
    rule = threshold_rule(window_s=200, flapping={"cycles": 2, "period_s": 1000})
    whole_state, whole = play(rule, RESTART_TABLE)
    restarted_state, restarted = play(rule, RESTART_TABLE, restart_each_step=True)
    assert restarted == whole and restarted_state == whole_state
    assert [n for n in names(whole) if n] == ["open", "close", "open", "close", "flap+", "flap- close"]


def test_restart_in_the_middle_of_a_window_keeps_the_window() -> None:
    rule = threshold_rule(window_s=300)
    state, _ = play(rule, [(0, 31), (200, 31)])
    assert state is not None
    stored = json.dumps(state.to_dict())
    after_restart = RuleState.from_dict(json.loads(stored))
    assert after_restart == state
    _, actions = evaluate(rule, after_restart, message(31), T0 + 300_000)
    assert [type(a) for a in actions] == [OpenAlert]


def test_heartbeat_state_survives_a_restart() -> None:
    rule = heartbeat_rule()
    state, _ = play(rule, [(0, 1), (100, SWEEP)], restart_each_step=True)
    assert state is not None and state.status is DeviceStatus.STALE
    state = RuleState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert names(play(rule, [(180, SWEEP)], state)[1]) == ["offline open"]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda d: [], Code.RULE_BAD_STATE),
        (lambda d: d | {"schema": STATE_SCHEMA + 1}, Code.RULE_STATE_VERSION_UNSUPPORTED),
        (lambda d: d | {"schema": 0}, Code.RULE_BAD_STATE),
        (lambda d: {k: v for k, v in d.items() if k != "clears"}, Code.RULE_BAD_STATE),
        (lambda d: d | {"extra": 1}, Code.RULE_BAD_STATE),
        (lambda d: d | {"active": "yes"}, Code.RULE_BAD_STATE),
        (lambda d: d | {"status": "asleep"}, Code.RULE_BAD_STATE),
        (lambda d: d | {"track": [1, 2, 3]}, Code.RULE_BAD_STATE),
        (lambda d: d | {"track": [1, 2, 3, "x", 1, 1, 1]}, Code.RULE_BAD_STATE),
        (lambda d: d | {"clears": [1.5]}, Code.RULE_BAD_STATE),
        (lambda d: d | {"rule_version": None}, Code.RULE_BAD_STATE),
        (lambda d: d | {"device_id": 7}, Code.RULE_BAD_STATE),
    ],
)
def test_state_that_this_code_did_not_write_is_refused(mutate: Callable[[dict[str, Any]], object], code: Code) -> None:
    state, _ = play(threshold_rule(window_s=60), [(0, 31)])
    assert state is not None
    with pytest.raises(RuleError) as err:
        RuleState.from_dict(mutate(state.to_dict()))
    assert err.value.code is code


def test_state_of_another_rule_or_device_is_refused() -> None:
    state, _ = play(threshold_rule(), [(0, 31)])
    with pytest.raises(RuleError) as err:
        evaluate(threshold_rule(), state, message(31, device="other-1"), T0)
    assert err.value.code is Code.RULE_STATE_MISMATCH
    with pytest.raises(RuleError):
        evaluate(threshold_rule(id="cold"), state, message(31), T0)


def test_an_edited_rule_restarts_its_window_but_keeps_the_open_alert() -> None:
    v1 = threshold_rule(window_s=100, flapping=None)
    state, _ = play(v1, [(0, 31), (50, 31)])
    v2 = threshold_rule(window_s=100, version=2, flapping=None)
    assert names(play(v2, [(100, 31), (199, 31), (200, 31)], state)[1]) == ["", "", "open"]
    state, _ = play(v1, [(0, 31), (100, 31)])
    assert state is not None and state.active
    assert names(play(v2, [(110, 31), (120, 29)], state)[1]) == ["", "close"]


# --- scope ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "device", "applies"),
    [
        (None, Device("any-1"), True),
        ({"devices": ["a-1", "a-2"]}, Device("a-2"), True),
        ({"devices": ["a-1", "a-2"]}, Device("b-1"), False),
        ({"sites": ["plant-a"]}, Device("a-1", site="plant-a"), True),
        ({"sites": ["plant-a"]}, Device("a-1", site="plant-b"), False),
        ({"sites": ["plant-a"]}, Device("a-1"), False),
        ({"tags": {"kind": "boiler"}}, Device("a-1", tags={"kind": "boiler", "floor": "2"}), True),
        ({"tags": {"kind": "boiler", "floor": "1"}}, Device("a-1", tags={"kind": "boiler", "floor": "2"}), False),
        ({"tags": {"kind": "boiler"}}, Device("a-1"), False),
        ({"sites": ["plant-a"], "tags": {"kind": "boiler"}}, Device("a-1", {"kind": "boiler"}, "plant-a"), True),
        ({"sites": ["plant-a"], "tags": {"kind": "boiler"}}, Device("a-1", {"kind": "pump"}, "plant-a"), False),
        ({"devices": ["a-1"], "sites": ["plant-a"]}, Device("a-1", site="plant-b"), False),
    ],
)
def test_scope_matches_devices_tags_and_sites_all_together(scope: object, device: Device, applies: bool) -> None:
    assert applies_to(threshold_rule(scope=scope), device) is applies


def test_close_carries_the_same_fingerprint_and_severity_as_the_open() -> None:
    actions = check(threshold_rule(severity="critical"), [(0, 31, "open"), (1, 29, "close")])
    opened, closed = actions[0][0], actions[1][0]
    assert isinstance(opened, OpenAlert) and isinstance(closed, CloseAlert)
    assert opened.fingerprint == closed.fingerprint and closed.severity is Severity.CRITICAL


# --- validation at the boundary ---------------------------------------------------------------------

GOOD = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30}
GOOD_HEARTBEAT = {"id": "alive", "kind": "heartbeat", "severity": "critical", "interval_s": 60}


@pytest.mark.parametrize(
    ("doc", "code"),
    [
        ([GOOD], Code.RULE_NOT_OBJECT),
        (GOOD | {"id": ""}, Code.RULE_BAD_ID),
        (GOOD | {"id": "a/b"}, Code.RULE_BAD_ID),
        ({k: v for k, v in GOOD.items() if k != "id"}, Code.RULE_BAD_ID),
        (GOOD | {"kind": "anomaly"}, Code.RULE_BAD_KIND),
        (GOOD | {"treshold": 30}, Code.RULE_UNKNOWN_FIELD),
        (GOOD | {"interval_s": 60}, Code.RULE_UNKNOWN_FIELD),
        (GOOD_HEARTBEAT | {"metric": "temp_c"}, Code.RULE_UNKNOWN_FIELD),
        (GOOD | {"name": 5}, Code.RULE_BAD_NAME),
        (GOOD | {"name": "x" * 201}, Code.RULE_BAD_NAME),
        (GOOD | {"version": 0}, Code.RULE_BAD_VERSION),
        (GOOD | {"version": "2"}, Code.RULE_BAD_VERSION),
        (GOOD | {"version": True}, Code.RULE_BAD_VERSION),
        ({k: v for k, v in GOOD.items() if k != "severity"}, Code.RULE_BAD_SEVERITY),
        (GOOD | {"severity": "MAJOR"}, Code.RULE_BAD_SEVERITY),
        (GOOD | {"enabled": "yes"}, Code.RULE_BAD_FLAG),
        (GOOD | {"auto_close": 1}, Code.RULE_BAD_FLAG),
        (GOOD | {"metric": ""}, Code.RULE_BAD_METRIC),
        (GOOD | {"metric": "temp c"}, Code.RULE_BAD_METRIC),
        (GOOD | {"metric": None}, Code.RULE_BAD_METRIC),
        (GOOD | {"operator": ">"}, Code.RULE_BAD_OPERATOR),
        (GOOD | {"operator": "gt"}, Code.RULE_BAD_OPERATOR),
        (GOOD | {"operator": None}, Code.RULE_BAD_OPERATOR),
        (GOOD | {"operator": ["GT"]}, Code.RULE_BAD_OPERATOR),
        ({k: v for k, v in GOOD.items() if k != "threshold"}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"threshold": "30"}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"threshold": float("inf")}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"threshold": float("nan")}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"threshold": True}, Code.RULE_BAD_THRESHOLD),  # a boolean with GT
        (GOOD | {"clear_threshold": 31}, Code.RULE_BAD_THRESHOLD),  # on the firing side
        (GOOD | {"clear_threshold": 30}, Code.RULE_BAD_THRESHOLD),  # no band at all
        (GOOD | {"operator": "LT", "clear_threshold": 29}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"operator": "EQ", "clear_threshold": 29}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"clear_threshold": "28"}, Code.RULE_BAD_THRESHOLD),
        (GOOD | {"window_s": -1}, Code.RULE_BAD_WINDOW),
        (GOOD | {"window_s": "5m"}, Code.RULE_BAD_WINDOW),
        (GOOD | {"window_s": 8 * 24 * 3600}, Code.RULE_BAD_WINDOW),
        (GOOD | {"scope": []}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"device": ["a-1"]}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"devices": "a-1"}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"devices": ["a/1"]}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"sites": [7]}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"tags": {"kind": 3}}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"scope": {"tags": ["kind"]}}, Code.RULE_BAD_SCOPE),
        (GOOD | {"flapping": {"cycles": 0}}, Code.RULE_BAD_FLAPPING),
        (GOOD | {"flapping": {"period_s": 0}}, Code.RULE_BAD_FLAPPING),
        (GOOD | {"flapping": {"minutes": 10}}, Code.RULE_BAD_FLAPPING),
        (GOOD | {"flapping": True}, Code.RULE_BAD_FLAPPING),
        ({k: v for k, v in GOOD_HEARTBEAT.items() if k != "interval_s"}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"interval_s": 0}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"stale_after": 3, "offline_after": 2}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"stale_after": 0.5}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"alert_on": "online"}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"alert_on": "down"}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"intervals": {"a-1": -5}}, Code.RULE_BAD_HEARTBEAT),
        (GOOD_HEARTBEAT | {"intervals": {"a/1": 5}}, Code.RULE_BAD_HEARTBEAT),
    ],
)
def test_bad_rules_are_refused_with_a_code_naming_the_problem(doc: object, code: Code) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule(doc, tenant="acme")
    assert err.value.code is code
    assert err.value.as_dict()["code"] == str(code) and err.value.message


def test_a_minimal_rule_gets_sensible_defaults() -> None:
    rule = parse_rule(GOOD, tenant="acme")
    assert (rule.tenant, rule.version, rule.enabled, rule.auto_close) == ("acme", 1, True, True)
    assert rule.flapping == Flapping(cycles=3, period_s=600) and rule.scope == Scope()
    assert rule.condition == Threshold("temp_c", Operator.GT, 30, None, 0)
    heartbeat = parse_rule(GOOD_HEARTBEAT, tenant="acme").condition
    assert heartbeat == Heartbeat(interval_s=60, stale_after=1.5, offline_after=3.0, alert_on=DeviceStatus.OFFLINE)


def test_the_tenant_comes_from_the_caller_not_the_document() -> None:
    with pytest.raises(RuleError) as err:
        parse_rule(GOOD | {"tenant": "other"}, tenant="acme")
    assert err.value.code is Code.RULE_UNKNOWN_FIELD
