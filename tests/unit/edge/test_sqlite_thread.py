"""The gateway's one-connection-one-thread SQLite adapter (edge/sqlite.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from pulse.edge.sqlite import SqliteThread


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


async def test_everything_runs_on_one_thread_and_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    db = SqliteThread("sqlite-test-a")
    await db.open(lambda: sqlite3.connect(tmp_path / "g.db", isolation_level=None, check_same_thread=True))
    try:
        await db.run(lambda: db.conn.execute("CREATE TABLE t (v INTEGER)"))

        def add(v: int, fail: bool) -> None:
            with db.transaction() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (v,))
                if fail:
                    raise ValueError("refused")

        await db.run(add, 1, False)
        with pytest.raises(ValueError):
            await db.run(add, 2, True)
        assert await db.run(lambda: db.conn.execute("SELECT v FROM t").fetchall()) == [(1,)]
        assert await db.run(lambda: db.conn.in_transaction) is False
        assert len({await db.run(threading.get_ident) for _ in range(5)}) == 1
    finally:
        await db.close()
    assert not _threads("sqlite-test-a") and not db.is_open
    await db.close()  # twice is fine


async def test_a_connection_that_cannot_be_made_leaves_no_thread(tmp_path: Path) -> None:
    db = SqliteThread("sqlite-test-b")
    with pytest.raises(sqlite3.OperationalError):
        await db.open(lambda: sqlite3.connect(tmp_path / "missing" / "g.db"))
    assert not _threads("sqlite-test-b") and not db.is_open
