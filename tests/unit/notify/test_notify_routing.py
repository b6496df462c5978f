"""Routing is a pure function: which channels and which escalation policy an alert goes to."""

from __future__ import annotations

import datetime as dt

import pytest

from pulse.cloud.notify.routing import AlertFacts, Route, matches, route, throttled
from pulse.cloud.notify.worker import MAX_BACKOFF_S, backoff

pytestmark = pytest.mark.unit

MAJOR_PUMP = AlertFacts(severity="major", types=frozenset({"rule", "threshold", "hot"}), site="site-1", device_tags={"line": "3", "kind": "pump"})


@pytest.mark.parametrize(
    ("route_", "expected"),
    [
        (Route("r"), True),
        (Route("r", enabled=False), False),
        (Route("r", min_severity="major"), True),
        (Route("r", min_severity="critical"), False),
        (Route("r", min_severity="warning"), True),
        (Route("r", alert_types=("threshold",)), True),
        (Route("r", alert_types=("hot",)), True),
        (Route("r", alert_types=("heartbeat", "gateway_offline")), False),
        (Route("r", sites=("site-1", "site-2")), True),
        (Route("r", sites=("site-2",)), False),
        (Route("r", device_tags={"line": "3"}), True),
        (Route("r", device_tags={"line": "4"}), False),
        (Route("r", device_tags={"kind": "*"}), True),
        (Route("r", device_tags={"zone": "*"}), False),
        (Route("r", device_tags={"line": "3", "kind": "valve"}), False),
        (Route("r", min_severity="minor", alert_types=("threshold",), sites=("site-1",), device_tags={"line": "3"}), True),
    ],
)
def test_a_route_matches_when_every_condition_holds(route_: Route, expected: bool) -> None:
    assert matches(route_, MAJOR_PUMP) is expected


def test_an_alert_without_site_or_tags_matches_only_routes_that_do_not_ask_for_them() -> None:
    bare = AlertFacts(severity="critical", types=frozenset({"gateway_offline"}))
    assert matches(Route("r"), bare) and not matches(Route("r", sites=("s",)), bare) and not matches(Route("r", device_tags={"a": "*"}), bare)


def test_channels_are_merged_once_with_the_longest_throttle_and_the_first_policy_wins() -> None:
    routes = [
        Route("a", channels=("slack", "pd"), throttle_s=60),
        Route("b", min_severity="critical", channels=("email",), escalation_policy="p-crit"),
        Route("c", channels=("pd", "teams"), throttle_s=300, escalation_policy="p1"),
        Route("d", channels=("webhook",), escalation_policy="p2"),
    ]
    out = route(routes, MAJOR_PUMP)
    assert dict(out.channels) == {"slack": 60, "pd": 300, "teams": 300, "webhook": 0}
    assert list(out.channels) == ["slack", "pd", "teams", "webhook"]
    assert out.escalation_policy == "p1" and out.routes == ("a", "c", "d")
    assert route([], MAJOR_PUMP).channels == {}


def test_throttle_window() -> None:
    t = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)
    assert not throttled(None, 60, t)
    assert not throttled(t, 0, t)
    assert throttled(t - dt.timedelta(seconds=59), 60, t)
    assert not throttled(t - dt.timedelta(seconds=60), 60, t)


def test_backoff_doubles_is_capped_and_yields_to_retry_after() -> None:
    assert [backoff(n, 10, None) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff(30, 10, None) == MAX_BACKOFF_S
    assert backoff(1, 10, 7.0) == 7.0 and backoff(3, 10, 0.0) == 0.0 and backoff(1, 10, 99999.0) == MAX_BACKOFF_S
