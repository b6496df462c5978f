"""Background jobs that run once per cluster: each job runs on the process holding its lock.

Every process runs a ``Leadership`` with the same jobs. It keeps one dedicated connection and
tries, every ``poll_s``, ``pg_try_advisory_lock`` for each job it does not run. A session-level
advisory lock belongs to the connection: while the connection lives the job runs here and nowhere
else; when the process dies (SIGKILL included) PostgreSQL ends the session and frees the lock, and
the next process to poll takes the job over. Each job has its own lock, so jobs spread over the
replicas as they start.

The lease: the holder pings its connection every ``poll_s``; if a ping fails or takes longer than
``lease_s``, the holder cancels its jobs at once, before the server could hand the lock to another
process (the server drops a silent peer's session after its TCP keep-alives give up, ~11 s, see
``bus.CONNECT_SETTINGS``; keep ``lease_s`` below that). Two processes therefore never run one job
at the same time, except for a job still finishing a database statement it sent before the lease
ran out; the jobs Pulse runs this way are idempotent for that reason.

Who holds what is visible in the ``cluster_leases`` table (job, holder, since, renewed_at), which
the holder renews at every ping; ``/health`` of each process reports the jobs it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from pulse.cloud.cluster.bus import CONNECT_SETTINGS, cancel, node_name

log = logging.getLogger("pulse.cloud.cluster")

Job = Callable[[], Coroutine[Any, Any, None]]
_TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ConnectionError)


class Leadership:
    def __init__(self, dsn: str, *, node: str | None = None, poll_s: float = 2.0, lease_s: float = 6.0) -> None:
        self.dsn = dsn
        self.node = node or node_name()
        self.poll_s = poll_s
        self.lease_s = lease_s
        self._jobs: dict[str, Job] = {}
        self._groups: dict[str, str] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, job: Job, *, group: str | None = None) -> None:
        """Run ``job()`` (a coroutine that loops until cancelled) on one process of the cluster.

        Jobs of one ``group`` (the ingest stream's partitions) are taken at most one per round by
        each process, so that replicas starting together share them rather than the first one
        taking them all."""
        self._jobs[name] = job
        if group is not None:
            self._groups[name] = group

    @property
    def held(self) -> list[str]:
        return sorted(self._running)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pulse-cluster-leadership")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel(self._task)
            self._task = None
        await self._stop_jobs()

    async def _stop_jobs(self) -> None:
        running, self._running = self._running, {}
        for name, task in running.items():
            await cancel(task)
            log.info("stopped cluster job %s on %s", name, self.node)

    async def _run(self) -> None:
        try:
            while True:
                conn: asyncpg.Connection | None = None
                try:
                    conn = await asyncpg.connect(self.dsn, server_settings=CONNECT_SETTINGS, timeout=10)
                    while True:
                        await asyncio.wait_for(self._round(conn), self.lease_s)
                        await asyncio.sleep(self.poll_s)
                except _TRANSIENT as exc:
                    if self._running:
                        log.warning("lost the cluster lease (%s): stopping %s here", exc, ", ".join(self.held))
                    await self._stop_jobs()
                finally:
                    if conn is not None:
                        conn.terminate()  # the session ends: the server frees whatever it still holds
                await asyncio.sleep(self.poll_s)
        finally:
            await self._stop_jobs()

    async def _round(self, conn: asyncpg.Connection) -> None:
        for name, task in list(self._running.items()):
            if task.done():  # a job that ended on its own (a bug): let it go, another process may take it
                del self._running[name]
                await conn.execute("SELECT pg_advisory_unlock(hashtextextended('pulse.job:' || $1, 0))", name)
                if not task.cancelled() and task.exception() is not None:
                    log.error("cluster job %s ended with an error", name, exc_info=task.exception())
        taken: set[str] = set()
        for name in sorted(self._jobs.keys() - self._running.keys()):
            group = self._groups.get(name)
            if group is not None and group in taken:
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended('pulse.job:' || $1, 0))", name):
                log.info("cluster job %s runs on %s", name, self.node)
                self._running[name] = asyncio.create_task(self._jobs[name](), name=f"pulse-job-{name}")
                await conn.execute("SELECT pulse_cluster_lease_take($1, $2)", name, self.node)
                if group is not None:
                    taken.add(group)
        await conn.execute("SELECT pulse_cluster_lease_renew($1::text[], $2)", self.held, self.node)
