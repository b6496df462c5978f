"""Background jobs that run once per cluster: each job runs on the process holding its lock.

Every process runs a ``Leadership`` with the same jobs. It keeps one dedicated connection and
tries, every ``poll_s``, ``pg_try_advisory_lock`` for each job it does not run. A session-level
advisory lock belongs to the connection: while the connection lives the job runs here and nowhere
else; when the process dies (SIGKILL included) PostgreSQL ends the session and frees the lock, and
the next process to poll takes the job over. Each job has its own lock, so jobs spread over the
replicas as they start.

Shared groups (``share``: the ingest stream's partition writers) are jobs of one kind that the
replicas divide between them. Each process in a group also holds a *shared* advisory lock named
after the group for as long as its connection lives, so every process sees how many are alive in
the group (the sessions holding that lock, in ``pg_locks``; a dead process leaves it with its
session, when its job locks go). With ``n`` alive and ``P`` jobs in the group, a process takes a
job of the group only while it runs fewer than ``ceil(P / n)`` of them (and at most one per round,
so processes starting together share them), and one that runs more releases one per round: it asks
the job to stop at a clean point (the job's ``release`` event), waits for it to return (up to
``release_s``, then cancels it), and only then unlocks it, so the job never runs on two processes at
once; another process takes it at its next round. A process stopping (SIGTERM) releases its jobs the
same way before it lets go of its locks.

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
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from pulse.cloud.cluster.bus import CONNECT_SETTINGS, cancel, node_name
from pulse.common import aio

log = logging.getLogger("pulse.cloud.cluster")

Job = Callable[[], Coroutine[Any, Any, None]]
SharedJob = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
"""A job of a shared group: runs until cancelled, or returns at a clean point soon after its
``release`` event is set (the process gives it up to another)."""

_TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ConnectionError)
_JOB_KEY = "hashtextextended('pulse.job:' || $1, 0)"
_GROUP_KEY = "hashtextextended('pulse.group:' || $1, 0)"
# the processes holding a group's shared lock (a bigint advisory key shows in pg_locks as classid, objid; objsubid 1)
_MEMBERS = f"""
    SELECT count(DISTINCT l.pid) FROM pg_locks l, (SELECT {_GROUP_KEY} AS k) g
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = (g.k >> 32) & 4294967295 AND l.objid::bigint = g.k & 4294967295
"""


class Leadership:
    def __init__(
        self, dsn: str, *, node: str | None = None, poll_s: float = 2.0, lease_s: float = 6.0, release_s: float = 10.0
    ) -> None:
        self.dsn = dsn
        self.node = node or node_name()
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.release_s = release_s
        self._jobs: dict[str, Job] = {}
        self._groups: dict[str, str] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._releases: dict[str, asyncio.Event] = {}
        """the release event of each running job of a shared group"""
        self._releasing: dict[str, float] = {}
        """jobs asked to stop (monotonic deadline before they are cancelled)"""
        self.members: dict[str, int] = {}
        """processes alive in each shared group, as of the last round"""
        self.released = 0
        """jobs this process gave up to share them out"""
        self._stopping = False
        self._joined: asyncpg.Connection | None = None
        """the session counted in the shared groups"""
        self._task: asyncio.Task[None] | None = None

    def add(self, name: str, job: Job) -> None:
        """Run ``job()`` (a coroutine that loops until cancelled) on one process of the cluster."""
        self._jobs[name] = job

    def share(self, group: str, name: str, job: SharedJob) -> None:
        """Run ``job(release)`` on one process of the cluster, the jobs of ``group`` divided fairly
        between the processes alive in the group (see the module's docstring)."""
        self._groups[name] = group

        def start() -> Coroutine[Any, Any, None]:
            release = self._releases[name] = asyncio.Event()
            return job(release)

        self._jobs[name] = start

    @property
    def held(self) -> list[str]:
        return sorted(self._running)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pulse-cluster-leadership")

    async def stop(self) -> None:
        """Release the jobs (shared ones at a clean point, up to ``release_s``), then the locks."""
        self._stopping = True  # rounds go on meanwhile (unlocking what stopped) but take nothing more
        for name in list(self._running):
            self._release(name)
        pending = [t for n, t in self._running.items() if n in self._releasing]
        if pending:
            await asyncio.wait(pending, timeout=self.release_s)
        await self._stop_jobs()  # the rest, cancelled; only then does the session (and its locks) end
        if self._task is not None:
            await cancel(self._task)
            self._task = None
        self._stopping = False

    async def _stop_jobs(self) -> None:
        running, self._running = self._running, {}
        self._releasing.clear()
        for name, task in running.items():
            await cancel(task)
            log.info("stopped cluster job %s on %s", name, self.node)

    def _release(self, name: str) -> None:
        release = self._releases.get(name)
        if release is not None and name in self._running and name not in self._releasing:
            release.set()
            self._releasing[name] = time.monotonic() + self.release_s

    async def _run(self) -> None:
        try:
            while True:
                conn: asyncpg.Connection | None = None
                try:
                    conn = await asyncpg.connect(self.dsn, server_settings=CONNECT_SETTINGS, timeout=10)
                    await self._join(conn)
                    while True:
                        await aio.wait_for(self._round(conn), self.lease_s)
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

    async def _join(self, conn: asyncpg.Connection) -> None:
        """Count in the shared groups as long as this session lives."""
        for group in sorted(set(self._groups.values())):
            await conn.execute(f"SELECT pg_advisory_lock_shared({_GROUP_KEY})", group)
        self._joined = conn

    async def _leave(self, conn: asyncpg.Connection) -> None:
        if self._joined is not None and self._joined == conn:
            self._joined = None
            for group in sorted(set(self._groups.values())):
                await conn.execute(f"SELECT pg_advisory_unlock_shared({_GROUP_KEY})", group)

    async def _round(self, conn: asyncpg.Connection) -> None:
        for name, task in list(self._running.items()):
            deadline = self._releasing.get(name)
            if deadline is not None and not task.done() and time.monotonic() > deadline:
                log.warning("cluster job %s did not stop within %s s of its release; cancelling it", name, self.release_s)
                await cancel(task)
            if task.done():  # released, or a job that ended on its own (a bug): let it go, another process may take it
                self._running.pop(name, None)
                released = self._releasing.pop(name, None) is not None
                await conn.execute(f"SELECT pg_advisory_unlock({_JOB_KEY})", name)
                if released:
                    self.released += 1
                    log.info("released cluster job %s on %s (to share the %s jobs)", name, self.node, self._groups.get(name))
                elif not task.cancelled() and task.exception() is not None:
                    log.error("cluster job %s ended with an error", name, exc_info=task.exception())
        if self._stopping:  # no longer counted in the groups: the others take what this process releases at once
            await self._leave(conn)
            return
        share = await self._shares(conn)
        for fair, running in share.values():
            if len(running) > fair:  # more than a fair share: give one up (it is unlocked once it stopped)
                self._release(running[-1])
        taken: set[str] = set()
        for name in sorted(self._jobs.keys() - self._running.keys()):
            group = self._groups.get(name)
            if group is not None:
                fair, running = share[group]
                if group in taken or len(running) >= fair:
                    continue
            if await conn.fetchval(f"SELECT pg_try_advisory_lock({_JOB_KEY})", name):
                log.info("cluster job %s runs on %s", name, self.node)
                self._running[name] = asyncio.create_task(self._jobs[name](), name=f"pulse-job-{name}")
                await conn.execute("SELECT pulse_cluster_lease_take($1, $2)", name, self.node)
                if group is not None:
                    taken.add(group)
        await conn.execute("SELECT pulse_cluster_lease_renew($1::text[], $2)", self.held, self.node)

    async def _shares(self, conn: asyncpg.Connection) -> dict[str, tuple[int, list[str]]]:
        """For each shared group: how many of its jobs are this process's fair share, and the ones it
        runs and keeps (not being released), in name order."""
        out: dict[str, tuple[int, list[str]]] = {}
        for group in sorted(set(self._groups.values())):
            members = max(1, int(await conn.fetchval(_MEMBERS, group)))
            self.members[group] = members
            size = sum(1 for g in self._groups.values() if g == group)
            running = sorted(n for n in self._running if self._groups.get(n) == group and n not in self._releasing)
            out[group] = (math.ceil(size / members), running)
        return out
