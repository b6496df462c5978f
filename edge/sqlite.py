"""One SQLite connection and the one thread that uses it: the gateway's way of touching its file.

The buffer's writer, the local rules and the twins each keep their tables in the gateway's SQLite
file and must not block the event loop on it. Each owns a ``SqliteThread``: a connection made in,
and only ever used from, a single worker thread. Code that runs there is plain synchronous
``sqlite3`` (one hop per unit of work, not per statement); the event loop awaits ``run``.

- ``await db.open(connect)``: make the connection in the thread (``connect()`` returns it).
- ``await db.run(fn, *args)``: run ``fn`` in the thread; inside it, ``db.conn`` is the connection.
- ``with db.transaction(): ...`` (in the thread): ``BEGIN IMMEDIATE``, then COMMIT, or ROLLBACK
  on any exception.
- ``await db.close()``: close the connection and end the thread, even after a failure (a thread
  left running keeps the whole process alive); safe to call twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import TypeVar

_T = TypeVar("_T")

__all__ = ["SqliteThread"]


class SqliteThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection: use it only in functions handed to ``run`` (its thread)."""
        assert self._conn is not None, f"{self._name}: open() first"
        return self._conn

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        try:
            self._conn = await self.run(connect)
        except BaseException:
            await self.close()
            raise

    async def run(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self._pool is not None, f"{self._name}: open() first"
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if conn.in_transaction:
            conn.execute("COMMIT")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        conn, self._conn = self._conn, None
        if pool is None:
            return
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        finally:
            pool.shutdown(wait=True)
