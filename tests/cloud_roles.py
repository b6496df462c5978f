"""Dropping the cloud's database roles after a test module (roles are cluster-wide, so a module's
roles outlive its database unless dropped), and a scratch database that drops them with itself.
Shared by tests/conftest.py and the cloud tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pulse.cloud.settings import RoleNames


async def drop_roles(database_url: str, pg_admin_dsn: str, roles: RoleNames) -> None:
    """Roles are cluster-wide: drop what they own in the test database, then the roles."""
    names = [roles.app, roles.operator, roles.writer, roles.identity]
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        if not await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", names):
            return
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY($1)", names)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("DROP OWNED BY " + ", ".join(f'"{n}"' for n in names))
        finally:
            await conn.close()
        for name in names:
            await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


@contextmanager
def scratch_database(pg_admin_dsn: str, name: str, roles: RoleNames) -> Iterator[str]:
    """An empty database on the admin's server (its DSN); afterwards ``roles`` and the database are dropped."""

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    dsn = urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{name}"))
    try:
        yield dsn
    finally:
        asyncio.run(drop_roles(dsn, pg_admin_dsn, roles))
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
