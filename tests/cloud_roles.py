"""Dropping the cloud's database roles after a test module (roles are cluster-wide, so a module's
roles outlive its database unless dropped). Shared by tests/conftest.py and the cloud tests."""

from __future__ import annotations

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
