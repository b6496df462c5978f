"""The link shaper's outage schedule (bench/shaper.py): pure, times passed in."""

from __future__ import annotations

import pytest

from pulse.bench.shaper import LinkProfile, Outages

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("t", "down", "up_at"),
    [(0.0, False, 0.0), (39.9, False, 39.9), (40.0, True, 60.0), (59.0, True, 60.0), (60.0, False, 60.0), (100.0, True, 120.0)],
)
def test_down_twenty_seconds_of_every_sixty_after_forty(t, down, up_at):
    o = Outages(period_s=60, down_s=20, first_s=40)
    assert o.down(t) is down
    assert o.up_at(t) == pytest.approx(up_at)


def test_the_ends_of_outages_before_a_time():
    assert Outages(period_s=60, down_s=20, first_s=40).ends(200) == [60, 120, 180]
    assert Outages(period_s=60, down_s=20, first_s=40).ends(60) == []


def test_a_lost_segment_arrives_a_round_trip_late_and_never_sooner_than_linux_allows():
    assert LinkProfile(1000, 1000, 0.6, 0.6).retransmit_s == pytest.approx(1.8)
    assert LinkProfile(1000, 1000, 0.001, 0.0).retransmit_s == 0.2
