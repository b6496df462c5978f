"""Subscriptions: kinds, the lifecycle as a transition table, and what a tenant is entitled to.

Pure: the caller passes the subscriptions and the time; nothing here reads a clock or a database.

Lifecycle (time-driven steps happen in ``step``; events come from operators through ``apply``)::

    TRIAL --ends_at--> GRACE --ends_at+14 d--> SUSPENDED --ends_at+14 d+90 d--> EXPIRED
    ACTIVE --ends_at--> GRACE           (renew: TRIAL|ACTIVE|GRACE|SUSPENDED -> ACTIVE)
    TEMPORARY (ACTIVE) --ends_at--> EXPIRED   (a project has an end date: no grace)
    ADDON: state and ends_at are its MAIN's (coterminous); it never steps on its own

EXPIRED is terminal: a tenant buys a new subscription. Data is retained (nothing here deletes).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from pulse.protocol.errors import Code, SubscriptionError

GRACE_PERIOD = dt.timedelta(days=14)
SUSPENDED_PERIOD = dt.timedelta(days=90)
TRIAL_PERIOD = dt.timedelta(days=14)
NOTICE_DAYS = (30, 7)
"""Renewal notices go out this many days before a MAIN (or TRIAL) subscription's end."""


class Kind(StrEnum):
    MAIN = "MAIN"
    ADDON = "ADDON"
    TRIAL = "TRIAL"
    TEMPORARY = "TEMPORARY"


class State(StrEnum):
    TRIAL = "TRIAL"
    ACTIVE = "ACTIVE"
    GRACE = "GRACE"
    SUSPENDED = "SUSPENDED"
    EXPIRED = "EXPIRED"


class Event(StrEnum):
    """What an operator does to a subscription (time-driven steps are not events)."""

    RENEW = "renew"  # paid: ACTIVE until a new ends_at
    SUSPEND = "suspend"  # blocked by hand (a payment dispute)
    EXPIRE = "expire"  # ended by hand


ENTITLED = frozenset({State.TRIAL, State.ACTIVE, State.GRACE})
"""States whose device limit counts and whose tenant may send data."""

# (state, event) -> next state. Anything missing is refused with subscription.illegal_transition.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.TRIAL, Event.RENEW): State.ACTIVE,
    (State.ACTIVE, Event.RENEW): State.ACTIVE,
    (State.GRACE, Event.RENEW): State.ACTIVE,
    (State.SUSPENDED, Event.RENEW): State.ACTIVE,
    (State.TRIAL, Event.SUSPEND): State.SUSPENDED,
    (State.ACTIVE, Event.SUSPEND): State.SUSPENDED,
    (State.GRACE, Event.SUSPEND): State.SUSPENDED,
    (State.TRIAL, Event.EXPIRE): State.EXPIRED,
    (State.ACTIVE, Event.EXPIRE): State.EXPIRED,
    (State.GRACE, Event.EXPIRE): State.EXPIRED,
    (State.SUSPENDED, Event.EXPIRE): State.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    kind: Kind
    state: State
    device_limit: int
    starts_at: dt.datetime
    ends_at: dt.datetime
    parent: str | None = None
    """An ADDON's MAIN subscription id; None for every other kind."""
    notices: frozenset[str] = frozenset()
    """Renewal notices already sent for the current term (``"30d"``, ``"7d"``, ``"grace"``, ``"suspended"``)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state to record in the subscription's history (and the audit log)."""

    subscription: str
    before: State
    after: State
    reason: str


@dataclass(frozen=True, slots=True)
class Notice:
    """A renewal notice to send through the tenant's notification channels."""

    subscription: str
    key: str
    message: str


def new(
    id: str, kind: Kind, device_limit: int, starts_at: dt.datetime, ends_at: dt.datetime | None, *, parent: Subscription | None = None
) -> Subscription:
    """A subscription as created: TRIALs in TRIAL (14 days unless ends_at says otherwise), ADDONs
    follow their MAIN, everything else ACTIVE."""
    if device_limit < 0 or device_limit > 10_000_000:
        raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "device_limit is 0 to 10,000,000")
    if starts_at.tzinfo is None or (ends_at is not None and ends_at.tzinfo is None):
        raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "times carry a time zone")
    if kind is Kind.ADDON:
        if parent is None or parent.kind is not Kind.MAIN:
            raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "an ADDON names its MAIN subscription (parent)")
        if parent.state is State.EXPIRED:
            raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "the MAIN subscription has expired")
        return Subscription(id, kind, parent.state, device_limit, starts_at, parent.ends_at, parent.id)
    if parent is not None:
        raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "only an ADDON has a parent")
    if ends_at is None:
        if kind is not Kind.TRIAL:
            raise SubscriptionError(Code.SUBSCRIPTION_INVALID, f"a {kind} subscription needs ends_at")
        ends_at = starts_at + TRIAL_PERIOD
    if ends_at <= starts_at:
        raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "ends_at is after starts_at")
    return Subscription(id, kind, State.TRIAL if kind is Kind.TRIAL else State.ACTIVE, device_limit, starts_at, ends_at)


def apply(sub: Subscription, event: Event, *, ends_at: dt.datetime | None = None) -> tuple[Subscription, Transition]:
    """An operator's event. RENEW needs the new ends_at; a renewed term sends its notices again."""
    if sub.kind is Kind.ADDON:
        raise SubscriptionError(Code.SUBSCRIPTION_ILLEGAL_TRANSITION, "an ADDON follows its MAIN; change the MAIN", subscription=sub.id)
    after = TRANSITIONS.get((sub.state, event))
    if after is None:
        raise SubscriptionError(
            Code.SUBSCRIPTION_ILLEGAL_TRANSITION, f"a {sub.state} subscription cannot {event}", subscription=sub.id
        )
    if event is Event.RENEW:
        if ends_at is None or ends_at.tzinfo is None or ends_at <= sub.starts_at:
            raise SubscriptionError(Code.SUBSCRIPTION_INVALID, "renew needs an ends_at (with a time zone) after starts_at")
        kind = Kind.MAIN if sub.kind is Kind.TRIAL else sub.kind
        new_sub = replace(sub, kind=kind, state=after, ends_at=ends_at, notices=frozenset())
    else:
        new_sub = replace(sub, state=after)
    return new_sub, Transition(sub.id, sub.state, after, event.value)


def due_state(sub: Subscription, now: dt.datetime) -> State:
    """The state the clock puts a non-ADDON subscription in, starting from its current one."""
    state = sub.state
    if sub.kind is Kind.TEMPORARY:
        return State.EXPIRED if state is not State.EXPIRED and now >= sub.ends_at else state
    if state in (State.TRIAL, State.ACTIVE) and now >= sub.ends_at:
        state = State.GRACE
    if state is State.GRACE and now >= sub.ends_at + GRACE_PERIOD:
        state = State.SUSPENDED
    if state is State.SUSPENDED and now >= sub.ends_at + GRACE_PERIOD + SUSPENDED_PERIOD:
        state = State.EXPIRED
    return state


def step(subs: Sequence[Subscription], now: dt.datetime) -> tuple[list[Subscription], list[Transition], list[Notice]]:
    """Move one tenant's subscriptions on to ``now``: returns the changed subscriptions, the
    transitions to record and the notices to send. ADDONs take their MAIN's state and ends_at."""
    by_id: dict[str, Subscription] = {s.id: s for s in subs}
    changed: dict[str, Subscription] = {}
    transitions: list[Transition] = []
    notices: list[Notice] = []
    for sub in subs:
        if sub.kind is Kind.ADDON:
            continue
        after = due_state(sub, now)
        new_sub = sub
        if after is not sub.state:
            transitions.append(Transition(sub.id, sub.state, after, "clock"))
            new_sub = replace(new_sub, state=after)
        for key, message in _notices_due(new_sub, now):
            notices.append(Notice(sub.id, key, message))
            new_sub = replace(new_sub, notices=new_sub.notices | {key})
        if new_sub != sub:
            changed[sub.id] = by_id[sub.id] = new_sub
    for main in list(by_id.values()):
        if main.kind is Kind.MAIN:
            followed, moved = follow(main, subs)
            changed.update((s.id, s) for s in followed)
            transitions += moved
    return list(changed.values()), transitions, notices


def follow(main: Subscription, subs: Iterable[Subscription]) -> tuple[list[Subscription], list[Transition]]:
    """The ADDONs of ``main`` among ``subs``, given its state and ends_at (coterminous)."""
    changed: list[Subscription] = []
    transitions: list[Transition] = []
    for sub in subs:
        if sub.kind is Kind.ADDON and sub.parent == main.id and (sub.state, sub.ends_at) != (main.state, main.ends_at):
            if sub.state is not main.state:
                transitions.append(Transition(sub.id, sub.state, main.state, f"main {main.id}"))
            changed.append(replace(sub, state=main.state, ends_at=main.ends_at))
    return changed, transitions


def _notices_due(sub: Subscription, now: dt.datetime) -> Iterable[tuple[str, str]]:
    if sub.kind is Kind.TEMPORARY:
        return
    end = sub.ends_at.date().isoformat()
    if sub.state in (State.TRIAL, State.ACTIVE):
        # only the nearest notice that is due: a subscription created 5 days before its end gets the 7-day one
        for days in sorted(NOTICE_DAYS):
            key = f"{days}d"
            if now >= sub.ends_at - dt.timedelta(days=days):
                if key not in sub.notices and not any(f"{d}d" in sub.notices for d in NOTICE_DAYS if d < days):
                    yield key, f"Your {sub.kind} subscription ends on {end}: renew it to keep your devices connected."
                return
    elif sub.state is State.GRACE and "grace" not in sub.notices:
        until = (sub.ends_at + GRACE_PERIOD).date().isoformat()
        yield "grace", f"Your {sub.kind} subscription ended on {end}; it is in its grace period until {until}, then data is refused."
    elif sub.state is State.SUSPENDED and "suspended" not in sub.notices:
        yield "suspended", f"Your {sub.kind} subscription is suspended: devices' data is refused (gateways keep it) until it is renewed."


@dataclass(frozen=True, slots=True)
class Entitlement:
    device_limit: int | None
    """The devices a tenant may have: the sum over entitled subscriptions; None = no subscriptions (unmetered)."""
    refusal: Code | None
    """Why data is refused (subscription.suspended or subscription.expired); None while data is accepted."""


def entitlement(subs: Iterable[Subscription]) -> Entitlement:
    """What a tenant's subscriptions allow. A tenant with no subscription at all is unmetered (a
    self-hosted install that does not sell); one with subscriptions is held to them."""
    subs = list(subs)
    if not subs:
        return Entitlement(None, None)
    entitled = [s for s in subs if s.state in ENTITLED]
    if entitled:
        return Entitlement(sum(s.device_limit for s in entitled), None)
    if any(s.state is State.SUSPENDED for s in subs):
        return Entitlement(0, Code.SUBSCRIPTION_SUSPENDED)
    return Entitlement(0, Code.SUBSCRIPTION_EXPIRED)


def check_devices(ent: Entitlement, current: int, adding: int) -> None:
    """Refuse adding devices over the limit (one code at every door)."""
    if ent.device_limit is not None and current + adding > ent.device_limit:
        raise SubscriptionError(
            Code.SUBSCRIPTION_DEVICE_LIMIT,
            f"your subscriptions allow {ent.device_limit} devices and you have {current}; adding {adding} would pass the limit",
            device_limit=ent.device_limit,
            devices=current,
            adding=adding,
        )
