"""The persistent-session store (pulse.broker.sessions, the gateway's and the cloud's) on a real SQLite file, with the clock passed in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse.broker.sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SessionStore]:
    s = SessionStore(tmp_path / "gateway.db", queue_max=3, max_age_s=60, clock=clock)
    s.open()
    yield s
    s.close()


def topics(store: SessionStore, client_id: str) -> list[str]:
    return [q.topic for q in store.pending(client_id)]


def test_sessions_and_their_queue_survive_reopening_the_file(tmp_path: Path, store: SessionStore, clock: Clock) -> None:
    store.save("dev-1", "dev-1", [("pulse/dev-1/cmd/+", 1), ("pulse/dev-1/twin/desired", 1)])
    store.enqueue("dev-1", "pulse/dev-1/cmd/a", b"a", 1)
    (first,) = store.pending("dev-1")
    store.sent(first.id, 7)
    store.close()
    again = SessionStore(tmp_path / "gateway.db", queue_max=3, max_age_s=60, clock=clock)
    again.open()
    try:
        (stored,) = again.load()
        assert (stored.client_id, stored.username) == ("dev-1", "dev-1")
        assert stored.subscriptions == [("pulse/dev-1/cmd/+", 1), ("pulse/dev-1/twin/desired", 1)]
        (queued,) = again.pending("dev-1")
        assert (queued.topic, queued.payload, queued.packet_id) == ("pulse/dev-1/cmd/a", b"a", 7)
        assert again.persistent() == 1
    finally:
        again.close()


def test_a_full_queue_drops_its_oldest_messages_and_counts_them(store: SessionStore) -> None:
    store.save("dev-1", "dev-1", [])
    for n in range(5):
        store.enqueue("dev-1", f"t/{n}", b"x", 1)
    assert topics(store, "dev-1") == ["t/2", "t/3", "t/4"]
    assert store.snapshot()["dropped_full"] == 2


def test_messages_older_than_the_age_limit_are_dropped_not_delivered(store: SessionStore, clock: Clock) -> None:
    store.enqueue("dev-1", "t/old", b"x", 1)
    clock.now += 30
    store.enqueue("dev-1", "t/new", b"x", 1)
    clock.now += 31  # t/old is 61 s old, t/new 31 s
    assert topics(store, "dev-1") == ["t/new"]
    assert store.snapshot()["dropped_age"] == 1


def test_a_message_past_its_deadline_is_dropped_unsent(store: SessionStore, clock: Clock) -> None:
    deadline = int(clock.now * 1000) + 5_000
    store.enqueue("dev-1", "pulse/dev-1/cmd/c1", b"c", 1, expires_ms=deadline)
    store.enqueue("dev-1", "pulse/dev-1/twin/desired", b"d", 1)
    assert topics(store, "dev-1") == ["pulse/dev-1/cmd/c1", "pulse/dev-1/twin/desired"]
    clock.now += 5
    assert topics(store, "dev-1") == ["pulse/dev-1/twin/desired"]
    assert store.snapshot()["expired"] == 1


def test_acknowledged_messages_leave_the_queue_and_a_clean_session_ends_the_stored_one(store: SessionStore) -> None:
    store.save("dev-1", "dev-1", [("pulse/dev-1/#", 1)])
    store.enqueue("dev-1", "t/1", b"1", 1)
    store.enqueue("dev-1", "t/2", b"2", 1)
    first = store.pending("dev-1")[0]
    store.acked(first.id)
    assert topics(store, "dev-1") == ["t/2"]
    store.delete("dev-1")
    assert store.load() == [] and store.pending("dev-1") == [] and store.persistent() == 0


def test_queues_are_per_session(store: SessionStore) -> None:
    store.enqueue("dev-1", "t/1", b"1", 1)
    store.enqueue("dev-2", "t/2", b"2", 1)
    assert topics(store, "dev-1") == ["t/1"]
    assert topics(store, "dev-2") == ["t/2"]
