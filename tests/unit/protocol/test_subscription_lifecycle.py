"""The subscription lifecycle at fixed clock times: every transition, ADDONs, notices, entitlement."""

from __future__ import annotations

import datetime as dt

import pytest

from pulse.protocol import subscriptions as subs
from pulse.protocol.errors import Code, SubscriptionError
from pulse.protocol.subscriptions import Event, Kind, State

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
END = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def main(state: State = State.ACTIVE, limit: int = 10) -> subs.Subscription:
    return subs.Subscription("m", Kind.MAIN, state, limit, T0, END)


@pytest.mark.parametrize(
    ("kind", "state", "at", "expected"),
    [
        (Kind.MAIN, State.ACTIVE, END - dt.timedelta(seconds=1), State.ACTIVE),
        (Kind.MAIN, State.ACTIVE, END, State.GRACE),
        (Kind.TRIAL, State.TRIAL, END, State.GRACE),
        (Kind.MAIN, State.GRACE, END + 14 * DAY - dt.timedelta(seconds=1), State.GRACE),
        (Kind.MAIN, State.GRACE, END + 14 * DAY, State.SUSPENDED),
        (Kind.MAIN, State.SUSPENDED, END + 104 * DAY - dt.timedelta(seconds=1), State.SUSPENDED),
        (Kind.MAIN, State.SUSPENDED, END + 104 * DAY, State.EXPIRED),
        (Kind.MAIN, State.ACTIVE, END + 200 * DAY, State.EXPIRED),  # a worker that was down catches up
        (Kind.MAIN, State.EXPIRED, END + 999 * DAY, State.EXPIRED),
        (Kind.TEMPORARY, State.ACTIVE, END - dt.timedelta(seconds=1), State.ACTIVE),
        (Kind.TEMPORARY, State.ACTIVE, END, State.EXPIRED),
    ],
)
def test_the_clock_moves_a_subscription_at_its_boundaries(kind: Kind, state: State, at: dt.datetime, expected: State) -> None:
    sub = subs.Subscription("s", kind, state, 5, T0, END)
    assert subs.due_state(sub, at) is expected


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (State.TRIAL, Event.RENEW, State.ACTIVE),
        (State.ACTIVE, Event.RENEW, State.ACTIVE),
        (State.GRACE, Event.RENEW, State.ACTIVE),
        (State.SUSPENDED, Event.RENEW, State.ACTIVE),
        (State.ACTIVE, Event.SUSPEND, State.SUSPENDED),
        (State.GRACE, Event.SUSPEND, State.SUSPENDED),
        (State.SUSPENDED, Event.EXPIRE, State.EXPIRED),
        (State.ACTIVE, Event.EXPIRE, State.EXPIRED),
    ],
)
def test_operator_events_follow_the_table(state: State, event: Event, expected: State) -> None:
    new, transition = subs.apply(main(state), event, ends_at=END + 365 * DAY)
    assert new.state is expected
    assert (transition.before, transition.after, transition.reason) == (state, expected, event.value)


@pytest.mark.parametrize(
    ("state", "event"),
    [(State.EXPIRED, Event.RENEW), (State.EXPIRED, Event.SUSPEND), (State.EXPIRED, Event.EXPIRE), (State.SUSPENDED, Event.SUSPEND)],
)
def test_illegal_events_are_refused_with_a_code(state: State, event: Event) -> None:
    with pytest.raises(SubscriptionError) as err:
        subs.apply(main(state), event, ends_at=END + DAY)
    assert err.value.code is Code.SUBSCRIPTION_ILLEGAL_TRANSITION


def test_renewing_a_trial_makes_it_a_main_with_a_new_term_and_fresh_notices() -> None:
    trial = subs.new("t", Kind.TRIAL, 3, T0, None)
    assert (trial.state, trial.ends_at) == (State.TRIAL, T0 + 14 * DAY)
    trial = subs.Subscription("t", Kind.TRIAL, State.TRIAL, 3, T0, T0 + 14 * DAY, notices=frozenset({"7d"}))
    renewed, _ = subs.apply(trial, Event.RENEW, ends_at=END)
    assert (renewed.kind, renewed.state, renewed.ends_at, renewed.notices) == (Kind.MAIN, State.ACTIVE, END, frozenset())


def test_renew_needs_an_end_after_the_start() -> None:
    with pytest.raises(SubscriptionError) as err:
        subs.apply(main(), Event.RENEW, ends_at=None)
    assert err.value.code is Code.SUBSCRIPTION_INVALID


def test_an_addon_is_coterminous_with_its_main() -> None:
    m = main()
    addon = subs.new("a", Kind.ADDON, 5, T0 + 30 * DAY, None, parent=m)
    assert (addon.state, addon.ends_at, addon.parent) == (State.ACTIVE, END, "m")
    changed, transitions, _ = subs.step([m, addon], END + 14 * DAY)
    by_id = {s.id: s for s in changed}
    assert by_id["m"].state is State.SUSPENDED and by_id["a"].state is State.SUSPENDED
    assert [(t.subscription, t.after) for t in transitions] == [("m", State.SUSPENDED), ("a", State.SUSPENDED)]
    # a renewed MAIN carries its ADDON's end along
    renewed, _ = subs.apply(by_id["m"], Event.RENEW, ends_at=END + 365 * DAY)
    changed, _, _ = subs.step([renewed, by_id["a"]], END + 15 * DAY)
    assert {s.id: (s.state, s.ends_at) for s in changed}["a"] == (State.ACTIVE, END + 365 * DAY)


def test_events_on_an_addon_are_refused() -> None:
    addon = subs.new("a", Kind.ADDON, 5, T0, None, parent=main())
    with pytest.raises(SubscriptionError) as err:
        subs.apply(addon, Event.SUSPEND)
    assert err.value.code is Code.SUBSCRIPTION_ILLEGAL_TRANSITION


@pytest.mark.parametrize(
    ("kind", "ends_at", "parent"),
    [
        (Kind.MAIN, None, None),
        (Kind.MAIN, T0, None),
        (Kind.ADDON, None, None),
        (Kind.TEMPORARY, END, main()),
        (Kind.ADDON, None, main(State.EXPIRED)),
    ],
)
def test_bad_subscriptions_are_refused_with_a_code(kind: Kind, ends_at: dt.datetime | None, parent: subs.Subscription | None) -> None:
    with pytest.raises(SubscriptionError) as err:
        subs.new("x", kind, 1, T0, ends_at, parent=parent)
    assert err.value.code is Code.SUBSCRIPTION_INVALID


def test_renewal_notices_go_out_once_each_at_their_time() -> None:
    m = main()
    sent: list[str] = []
    for at in (END - 31 * DAY, END - 30 * DAY, END - 29 * DAY, END - 7 * DAY, END - DAY, END, END + DAY, END + 14 * DAY, END + 20 * DAY):
        changed, _, notices = subs.step([m], at)
        sent += [n.key for n in notices]
        m = changed[0] if changed else m
    assert sent == ["30d", "7d", "grace", "suspended"]


def test_a_subscription_made_close_to_its_end_gets_only_the_nearest_notice() -> None:
    _, _, notices = subs.step([main()], END - 5 * DAY)
    assert [n.key for n in notices] == ["7d"]


def test_temporary_subscriptions_send_no_notices() -> None:
    temp = subs.Subscription("p", Kind.TEMPORARY, State.ACTIVE, 5, T0, END)
    assert subs.step([temp], END - DAY)[2] == []


def test_entitlement_sums_limits_over_entitled_subscriptions() -> None:
    assert subs.entitlement([]) == subs.Entitlement(None, None)
    grace = subs.Subscription("g", Kind.MAIN, State.GRACE, 10, T0, END)
    addon = subs.Subscription("a", Kind.ADDON, State.GRACE, 5, T0, END, "g")
    gone = subs.Subscription("x", Kind.TEMPORARY, State.EXPIRED, 100, T0, END)
    assert subs.entitlement([grace, addon, gone]) == subs.Entitlement(15, None)
    suspended = subs.Subscription("s", Kind.MAIN, State.SUSPENDED, 10, T0, END)
    assert subs.entitlement([suspended, gone]) == subs.Entitlement(0, Code.SUBSCRIPTION_SUSPENDED)
    assert subs.entitlement([gone]) == subs.Entitlement(0, Code.SUBSCRIPTION_EXPIRED)


def test_the_device_limit_refuses_one_device_too_many() -> None:
    ent = subs.Entitlement(3, None)
    subs.check_devices(ent, 2, 1)
    with pytest.raises(SubscriptionError) as err:
        subs.check_devices(ent, 3, 1)
    assert err.value.code is Code.SUBSCRIPTION_DEVICE_LIMIT and err.value.context == {"device_limit": 3, "devices": 3, "adding": 1}
    subs.check_devices(subs.Entitlement(None, None), 10**6, 10**6)
