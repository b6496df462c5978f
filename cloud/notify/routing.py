"""Routing: which channels (and which escalation policy) an alert goes to. Pure: no I/O, no clock.

A tenant's routes are tried one by one; every enabled route that matches contributes its channels
(a channel named by several matching routes is notified once, with the longest throttle of those
routes) and its escalation policy (the first matching route that names one wins). A route matches
an alert when all of its conditions hold:

- ``min_severity``: the alert is at least this severe (critical > major > minor > warning > info);
- ``alert_types``: empty, or one of them is the alert's kind (``rule``, ``gateway_offline``), its
  rule's kind (``threshold``, ``heartbeat``) or its rule id;
- ``sites``: empty, or the alert's site (the device's or the gateway's) is listed;
- ``device_tags``: every listed tag is on the device with that value (``"*"``: any value).

``throttled(last_sent_at, throttle_s, now)``: whether an "opened"/"escalated" notification for the
same alert fingerprint (device and rule) on the same channel went out less than ``throttle_s`` ago.
Acknowledgements and closes are never throttled (PagerDuty must hear them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pulse.cloud.notify.model import SEVERITIES, Severity

ANY_VALUE = "*"


@dataclass(frozen=True)
class Route:
    id: str
    name: str = ""
    enabled: bool = True
    min_severity: Severity = "info"
    alert_types: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    device_tags: Mapping[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] = ()
    escalation_policy: str | None = None
    throttle_s: int = 0


@dataclass(frozen=True)
class AlertFacts:
    """What routing looks at; built from the alert row, its rule and its device."""

    severity: Severity
    types: frozenset[str]
    """The alert's kind, its rule's kind and its rule id."""
    site: str | None = None
    device_tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Routing:
    channels: Mapping[str, int]
    """channel id -> throttle in seconds (0: none), in the order routes named them."""
    escalation_policy: str | None
    routes: tuple[str, ...]
    """Ids of the routes that matched (shown in the delivery's notification)."""


def at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITIES.index(severity) <= SEVERITIES.index(minimum)


def matches(route: Route, alert: AlertFacts) -> bool:
    if not route.enabled or not at_least(alert.severity, route.min_severity):
        return False
    if route.alert_types and not alert.types & set(route.alert_types):
        return False
    if route.sites and alert.site not in route.sites:
        return False
    for name, wanted in route.device_tags.items():
        have = alert.device_tags.get(name)
        if have is None or (wanted not in (ANY_VALUE, have)):
            return False
    return True


def route(routes: Iterable[Route], alert: AlertFacts) -> Routing:
    channels: dict[str, int] = {}
    policy: str | None = None
    matched: list[str] = []
    for r in routes:
        if not matches(r, alert):
            continue
        matched.append(r.id)
        for channel in r.channels:
            channels[channel] = max(channels.get(channel, 0), r.throttle_s)
        if policy is None and r.escalation_policy:
            policy = r.escalation_policy
    return Routing(channels, policy, tuple(matched))


def throttled(last_sent_at: dt.datetime | None, throttle_s: int, now: dt.datetime) -> bool:
    return last_sent_at is not None and throttle_s > 0 and now - last_sent_at < dt.timedelta(seconds=throttle_s)
