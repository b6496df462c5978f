"""Connection pools and the two ways into the data.

- ``db.tenant(tenant_id)``: a transaction on the app role (row-level security applies) with
  ``app.tenant_id`` set LOCAL to the verified tenant. All customer API work goes through here.
- ``db.operator(actor=, action=, ...)``: a transaction on the operator role, which bypasses RLS.
  Every use first commits an audit row (who, what, why), so the trail survives even if the work
  fails or rolls back.
- ``db.writer_pool`` / ``db.writer_transaction()``: the telemetry writer's role (INSERT-only on
  telemetry and quarantine).
- identity look-ups (device credential, login email, refresh token) go through SECURITY DEFINER
  functions executed by the app role without a tenant.

The tenant, operator and identity ways translate PostgreSQL's refusals of the request's data (a NUL
character, a number out of range, a NOT NULL column left empty) into coded 4xx (db/refusals.py).

Each role connects with the owner DSN's host and database, its own user name, and
PULSE_DB_ROLE_PASSWORD when set."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from pulse.cloud.db.refusals import refusals
from pulse.cloud.settings import RoleNames


def role_dsn(owner_dsn: str, role: str, password: str | None) -> str:
    """The owner's DSN with another user (and password)."""
    parts = urlsplit(owner_dsn)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = quote(role, safe="")
    if password is not None:
        netloc += ":" + quote(password, safe="")
    netloc += "@" + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True, slots=True)
class PoolSizes:
    app: int = 10
    operator: int = 2
    writer: int = 2


class Database:
    """The cloud's pools; ``open()`` connects, ``close()`` drains."""

    def __init__(self, owner_dsn: str, roles: RoleNames, *, password: str | None = None, sizes: PoolSizes = PoolSizes()) -> None:
        self.owner_dsn = owner_dsn
        self.roles = roles
        self._password = password
        self._sizes = sizes
        self._app: asyncpg.Pool | None = None
        self._operator: asyncpg.Pool | None = None
        self._writer: asyncpg.Pool | None = None
        self._reset_sent: set[int] = set()
        """Server pids of app connections whose session reset went with their COMMIT (``tenant_now``)."""

    def dsn_for(self, role: str) -> str:
        return role_dsn(self.owner_dsn, role, self._password)

    async def open(self) -> None:
        self._app = await asyncpg.create_pool(
            self.dsn_for(self.roles.app), min_size=1, max_size=self._sizes.app, reset=self._reset_app
        )
        self._operator = await asyncpg.create_pool(self.dsn_for(self.roles.operator), min_size=0, max_size=self._sizes.operator)
        self._writer = await asyncpg.create_pool(self.dsn_for(self.roles.writer), min_size=1, max_size=self._sizes.writer)

    async def _reset_app(self, conn: asyncpg.Connection) -> None:
        """What the app pool runs as a connection comes back: asyncpg's own session reset (advisory
        locks, cursors, LISTENs, settings), unless ``tenant_now`` already sent it after its COMMIT."""
        pid = conn.get_server_pid()
        if pid in self._reset_sent:
            self._reset_sent.discard(pid)
            return
        if query := conn.get_reset_query():
            await conn.execute(query)

    async def close(self) -> None:
        for pool in (self._app, self._operator, self._writer):
            if pool is not None:
                await pool.close()

    @property
    def app_pool(self) -> asyncpg.Pool:
        assert self._app is not None, "Database.open() first"
        return self._app

    @property
    def writer_pool(self) -> asyncpg.Pool:
        assert self._writer is not None, "Database.open() first"
        return self._writer

    @property
    def operator_pool(self) -> asyncpg.Pool:
        assert self._operator is not None, "Database.open() first"
        return self._operator

    def pools(self) -> dict[str, asyncpg.Pool]:
        return {
            name: p for name, p in (("app", self._app), ("operator", self._operator), ("writer", self._writer)) if p is not None
        }

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
        """A transaction in which only ``tenant_id``'s rows exist (SET LOCAL app.tenant_id)."""
        with refusals():
            async with self.app_pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
                yield conn

    @asynccontextmanager
    async def tenant_now(self, tenant_id: uuid.UUID, *, derived: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """``tenant()`` with BEGIN and the tenant's setting sent as one script, and COMMIT with the
        pool's session reset: two round trips less, for callers whose latency is the point (the
        rules runner's drain: breach -> committed alert; gateway sync; notification claims).
        The tenant id is a ``UUID`` (its text form is safe to write into the script).

        ``derived``: the transaction writes only what can be computed again from rows already
        committed durably, and deletes what marks them as still to do (the rules runner's drain:
        alerts and rule states from outbox entries). It then commits without waiting for its WAL
        to reach the disk (``synchronous_commit = off``): a crash of PostgreSQL (or its host) within
        about 0.6 s loses the whole transaction, the mark with it, and the work is done again.
        Every synchronous commit after it flushes it too (WAL is flushed in order), so anything
        that acts on its rows and commits before acting outside the database (notification
        fan-out and claims) never acts on rows a crash could take back."""
        tenant = uuid.UUID(str(tenant_id))
        script = f"BEGIN; SELECT set_config('app.tenant_id', '{tenant}', true)"
        if derived:
            script += "; SET LOCAL synchronous_commit = off"
        with refusals():
            async with self.app_pool.acquire() as conn:
                pid = conn.get_server_pid()
                self._reset_sent.discard(pid)
                await conn.execute(script)
                try:
                    yield conn
                except BaseException:
                    if not conn.is_closed():
                        await conn.execute("ROLLBACK")
                    raise
                # the session reset the pool would send on release goes with the COMMIT: one trip
                await conn.execute(f"COMMIT; {conn.get_reset_query()}")
                self._reset_sent.add(pid)

    @asynccontextmanager
    async def writer_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A transaction on the writer role, for ``ingest.writer.write_rows`` together with other
        writes that must commit with the rows (gateway sync: the gateway's high-water mark)."""
        async with self.writer_pool.acquire() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def identity(self) -> AsyncIterator[asyncpg.Connection]:
        """An app-role connection with no tenant: only the pulse_identity_* functions see anything."""
        with refusals():
            async with self.app_pool.acquire() as conn:
                yield conn

    @asynccontextmanager
    async def operator(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        tenant_id: uuid.UUID | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction that bypasses RLS. The audit row is committed before the work starts."""
        with refusals():
            async with self.operator_pool.acquire() as conn:
                await audit(conn, actor=actor, action=action, target=target, tenant_id=tenant_id, detail=detail, bypass=True)
                async with conn.transaction():
                    yield conn


async def audit(
    conn: asyncpg.Connection,
    *,
    actor: str,
    action: str,
    target: str = "",
    tenant_id: uuid.UUID | None = None,
    detail: Mapping[str, object] | None = None,
    bypass: bool = False,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (tenant_id, actor, action, target, detail, bypass) VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
        tenant_id,
        actor,
        action,
        target,
        json.dumps(dict(detail or {}), default=str),
        bypass,
    )
