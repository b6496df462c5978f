"""What replicas tell each other, without a database: notification packing under PostgreSQL's payload
limit, and what a process announces about the consoles it serves (and how it degrades when long)."""

from __future__ import annotations

import json
import uuid

import pytest

from pulse.cloud.cluster.bus import MAX_PAYLOAD, Bus, fits, pack
from pulse.cloud.live import Interest, LiveHub, LiveRelay, _interest_of


@pytest.mark.parametrize(
    ("sizes", "text"),
    [
        ([10] * 5, "a"),
        ([3000, 3000, 3000], "a"),
        ([7000, 10, 7000], "a"),
        ([1000] * 30, "é"),  # two bytes each in UTF-8: the limit counts bytes
    ],
)
def test_packed_payloads_stay_under_the_limit_and_keep_every_message_in_order(sizes: list[int], text: str) -> None:
    messages = [json.dumps({"i": i, "pad": text * n}, ensure_ascii=False) for i, n in enumerate(sizes)]
    payloads = pack("host:1", messages)
    assert all(len(p.encode()) <= MAX_PAYLOAD for p in payloads)
    unpacked = [m for p in payloads for m in json.loads(p)["m"]]
    assert [m["i"] for m in unpacked] == list(range(len(sizes)))
    assert {json.loads(p)["o"] for p in payloads} == {"host:1"}


def test_a_message_that_cannot_fit_alone_is_refused_not_cut() -> None:
    assert fits("x" * 7000)
    assert not fits("x" * MAX_PAYLOAD)
    bus = Bus("postgresql://unused")
    assert not bus.post("c", {"pad": "x" * MAX_PAYLOAD})
    assert bus.post("c", {"pad": "x" * 100})


def test_interest_says_which_feeds_and_devices_are_watched() -> None:
    t1, t2 = uuid.uuid4(), uuid.uuid4()
    hub = LiveHub()
    hub.subscribe(t1, "boiler-1")
    hub.subscribe_feed(t2)
    mine = hub.interest()
    assert mine.wants_points((t1, "boiler-1")) and not mine.wants_points((t1, "boiler-2"))
    assert mine.wants_feed(t2) and not mine.wants_feed(t1)
    operators = Interest(all_feeds=True)
    assert mine.union(operators).wants_feed(t1)
    assert not Interest()


def test_a_long_interest_is_announced_per_tenant_then_as_everything() -> None:
    tenant = uuid.uuid4()
    hub = LiveHub()
    relay = LiveRelay(hub, Bus("postgresql://unused"), fetch=None)  # type: ignore[arg-type]
    for i in range(400):
        hub.subscribe(tenant, f"device-with-a-long-name-{i:04d}")
    message = relay._interest_message()
    assert fits(json.dumps(message, separators=(",", ":")))
    announced = _interest_of(message)
    assert announced.wants_points((tenant, "device-with-a-long-name-0399")) and announced.wants_points((tenant, "another"))
    assert not announced.wants_points((uuid.uuid4(), "device-with-a-long-name-0001"))

    many = LiveHub()
    relay = LiveRelay(many, Bus("postgresql://unused"), fetch=None)  # type: ignore[arg-type]
    for _ in range(400):
        many.subscribe(uuid.uuid4(), "d")
    message = relay._interest_message()
    assert fits(json.dumps(message, separators=(",", ":")))
    everything = _interest_of(message)
    assert everything.wants_points((uuid.uuid4(), "x")) and everything.wants_feed(uuid.uuid4())
    assert Interest().union(everything).wants_points((uuid.uuid4(), "y"))
