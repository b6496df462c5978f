"""Commands: the transition table, the expiry rule, and the wire forms (docs/protocol.md, "Commands")."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse.protocol.commands import (
    TERMINAL,
    TRANSITIONS,
    Command,
    CommandEvent,
    CommandState,
    command_message,
    from_json,
    is_expired,
    new_command,
    parse_ack,
    to_json,
    transition,
)
from pulse.protocol.errors import Code, CommandError

pytestmark = pytest.mark.unit

NOW = 1_764_061_200_000
DEADLINE = NOW + 300_000
Q, D, S, OK, KO, X = (
    CommandState.QUEUED,
    CommandState.DELIVERED,
    CommandState.SENT,
    CommandState.SUCCEEDED,
    CommandState.FAILED,
    CommandState.EXPIRED,
)
DELIVER, SEND, SUCCEED, FAIL, EXPIRE = CommandEvent


def make(**overrides: Any) -> Command:
    args: dict[str, Any] = {
        "id": "c-17",
        "device_id": "boiler-7",
        "name": "reboot",
        "params": {"delay_s": 5},
        "now_ms": NOW,
        "expires_at_ms": DEADLINE,
    }
    return new_command(**(args | overrides))


def at(state: CommandState) -> Command:
    """A command brought to ``state`` through legal moves before its deadline."""
    path = {Q: [], D: [DELIVER], S: [DELIVER, SEND], OK: [DELIVER, SEND, SUCCEED], KO: [DELIVER, SEND, FAIL], X: [EXPIRE]}
    cmd = make()
    for i, event in enumerate(path[state], 1):
        cmd = transition(cmd, event, DEADLINE if event is EXPIRE else NOW + i)
    assert cmd.state is state
    return cmd


# The contract, written out in full: every (state, event) pair before the deadline.
EXPECTED = {
    (Q, DELIVER): D,
    (D, DELIVER): D,
    (D, SEND): S,
    (D, SUCCEED): OK,
    (D, FAIL): KO,
    (S, SUCCEED): OK,
    (S, FAIL): KO,
}


def test_transition_table_is_exactly_the_documented_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED | {(Q, EXPIRE): X, (D, EXPIRE): X}
    assert not any(state in TERMINAL for state, _ in TRANSITIONS)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(CommandState, CommandEvent)))
def test_every_state_and_event_before_the_deadline(state: CommandState, event: CommandEvent) -> None:
    cmd = at(state)
    if event is EXPIRE:  # before the deadline, expiring is never a legal move
        with pytest.raises(CommandError) as err:
            transition(cmd, event, NOW + 10)
        assert err.value.code is Code.COMMAND_ILLEGAL_TRANSITION
        return
    target = EXPECTED.get((state, event))
    if target is None:
        with pytest.raises(CommandError) as err:
            transition(cmd, event, NOW + 10)
        assert err.value.code is Code.COMMAND_ILLEGAL_TRANSITION
        assert err.value.context["state"] == state and err.value.context["event"] == event
    else:
        assert transition(cmd, event, NOW + 10).state is target


@pytest.mark.parametrize("state", [Q, D])
@pytest.mark.parametrize("event", [DELIVER, SEND, EXPIRE])
@pytest.mark.parametrize("late_by", [0, 1, 86_400_000])
def test_a_command_is_never_sent_once_its_deadline_has_come(state: CommandState, event: CommandEvent, late_by: int) -> None:
    cmd = at(state)
    if (state, event) == (Q, SEND):  # never legal, deadline or not
        with pytest.raises(CommandError):
            transition(cmd, event, DEADLINE + late_by)
        return
    late = transition(cmd, event, DEADLINE + late_by)
    assert late.state is X
    assert late.history[-1] == (X, DEADLINE + late_by)


def test_one_millisecond_before_the_deadline_it_is_still_sent() -> None:
    assert transition(at(D), SEND, DEADLINE - 1).state is S
    assert not is_expired(at(D), DEADLINE - 1) and is_expired(at(D), DEADLINE)


def test_a_sent_command_waits_for_its_answer_past_the_deadline() -> None:
    sent = at(S)
    with pytest.raises(CommandError) as err:
        transition(sent, EXPIRE, DEADLINE + 1)
    assert err.value.code is Code.COMMAND_ILLEGAL_TRANSITION
    done = transition(sent, SUCCEED, DEADLINE + 5, result={"uptime_s": 3})
    assert (done.state, done.result) == (OK, {"uptime_s": 3})


@pytest.mark.parametrize("state", sorted(TERMINAL))
@pytest.mark.parametrize("event", list(CommandEvent))
def test_terminal_states_refuse_every_event_even_late(state: CommandState, event: CommandEvent) -> None:
    for now in (NOW + 10, DEADLINE + 10):
        with pytest.raises(CommandError) as err:
            transition(at(state), event, now)
        assert err.value.code is Code.COMMAND_ILLEGAL_TRANSITION


def test_history_records_every_state_entered_with_its_time() -> None:
    cmd = make()
    cmd = transition(cmd, DELIVER, NOW + 1)
    cmd = transition(cmd, DELIVER, NOW + 2)  # redelivery: same state, nothing recorded
    cmd = transition(cmd, SEND, NOW + 3)
    cmd = transition(cmd, FAIL, NOW + 4, error="valve stuck")
    assert cmd.history == ((Q, NOW), (D, NOW + 1), (S, NOW + 3), (KO, NOW + 4))
    assert (cmd.updated_ms, cmd.error, cmd.done) == (NOW + 4, "valve stuck", True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": ""},
        {"id": "a/b"},
        {"id": "x" * 65},
        {"id": "+"},
        {"device_id": "a/#"},
        {"name": ""},
        {"name": "9lives"},
        {"name": "re boot"},
        {"params": {"x": float("nan")}},
        {"params": {"blob": "x" * 5000}},
        {"params": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}},
        {"params": {"s": {1, 2}}},
        {"expires_at_ms": NOW},
        {"expires_at_ms": NOW - 1},
        {"expires_at_ms": NOW + 8 * 24 * 3600 * 1000},
    ],
)
def test_bad_commands_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(CommandError) as err:
        make(**overrides)
    assert err.value.code is Code.COMMAND_BAD


def test_command_message_is_what_the_device_receives() -> None:
    assert json.loads(command_message(make())) == {"id": "c-17", "name": "reboot", "params": {"delay_s": 5}, "expires": DEADLINE}


@pytest.mark.parametrize(
    ("body", "event"),
    [
        ({"id": "c-17", "status": "succeeded", "result": {"uptime_s": 3}}, SUCCEED),
        ({"id": "c-17", "status": "failed", "error": "valve stuck"}, FAIL),
    ],
)
def test_device_answers_become_events(body: dict[str, Any], event: CommandEvent) -> None:
    ack = parse_ack(body)
    assert (ack.command_id, ack.event, ack.result, ack.error) == ("c-17", event, body.get("result"), body.get("error"))
    done = transition(at(S), ack.event, NOW + 9, result=ack.result, error=ack.error)
    assert done.state is (OK if event is SUCCEED else KO)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "succeeded"},
        {"id": "c-17", "status": "ok"},
        {"id": "c-17"},
        {"id": "c-17", "status": "failed", "error": 5},
        {"id": "c-17", "status": "succeeded", "result": [1]},
        {"id": "a/b", "status": "succeeded"},
    ],
)
def test_malformed_answers_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(CommandError) as err:
        parse_ack(body)
    assert err.value.code is Code.COMMAND_BAD_ACK


@given(st.lists(st.sampled_from(list(CommandEvent)), max_size=6), st.integers(0, 2 * (DEADLINE - NOW)))
def test_any_legal_run_round_trips_and_never_sends_after_the_deadline(events: list[CommandEvent], step: int) -> None:
    cmd = make()
    for i, event in enumerate(events, 1):
        now = NOW + i * step // 6
        try:
            cmd = transition(cmd, event, now)
        except CommandError:
            continue
        assert from_json(to_json(cmd)) == cmd
    sent_at = [at_ms for state, at_ms in cmd.history if state is S]
    assert all(t < DEADLINE for t in sent_at)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d | {"state": "lost"},
        lambda d: d | {"history": []},
        lambda d: d | {"history": [["delivered", NOW]]},
        lambda d: d | {"history": [["queued", NOW], ["sent", "later"]], "state": "sent"},
        lambda d: {k: v for k, v in d.items() if k != "name"},
        lambda d: d | {"params": "reboot now"},
    ],
)
def test_malformed_stored_commands_are_refused(mangle: Any) -> None:
    stored = json.loads(to_json(transition(make(), DELIVER, NOW + 1)))
    with pytest.raises(CommandError) as err:
        from_json(json.dumps(mangle(stored)))
    assert err.value.code is Code.COMMAND_BAD


def test_stored_command_keeps_its_result_and_error() -> None:
    done = transition(at(S), FAIL, NOW + 9, result={"code": 3}, error="valve stuck")
    assert from_json(to_json(done)) == done
    assert replace(done, error=None) != done
