"""`pulse cloud ...`: run and administer the cloud tier.

    pulse cloud migrate                          apply pending schema migrations
    pulse cloud serve [--host H] [--port P]      run the API and ingest server (migrates first) and the
                                                 gateway sync listener (mutual TLS, PULSE_SYNC_PORT)
    pulse cloud mqtt                             run the MQTT endpoint for direct devices (TLS, PULSE_MQTT_*)
    pulse cloud maintain                         archive due days, then create telemetry partitions ahead
                                                 and drop expired ones
    pulse cloud archive [--at TIME]              archive every complete day of telemetry not yet archived
    pulse cloud admin create-tenant SLUG NAME    bootstrap a tenant (audited)
    pulse cloud admin create-user EMAIL ...      bootstrap a user (audited)

Every option comes from the environment (PULSE_*; docs/cloud.md lists them)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

from pulse.common import heap, logs


def _settings() -> Any:
    from pulse.cloud.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise SystemExit(f"pulse cloud: configuration refused: {problems}") from exc


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}"


def _cmd_migrate(args: argparse.Namespace) -> int:
    from pulse.cloud.db.engine import StorageEngineError
    from pulse.cloud.db.migrate import migrate

    s = _settings()
    pw = s.db_role_password.get_secret_value() if s.db_role_password else None
    try:
        applied = asyncio.run(
            migrate(s.database_url, s.roles, role_password=pw, engine=s.storage_engine, on_notice=lambda m: print(f"notice: {m}"))
        )
    except StorageEngineError as exc:
        print(f"pulse cloud migrate: {exc}", file=sys.stderr)
        return 2
    print(f"applied: {', '.join(applied)}" if applied else "the schema is up to date")
    return 0


def _archive_pass(s: Any, at: Any) -> Any:
    from pulse.cloud.archive.archiver import archiver_for

    async def run(db: Any) -> Any:
        return await archiver_for(db, s).run_once(at)

    return asyncio.run(_with_db(run))


def _cmd_archive(args: argparse.Namespace) -> int:
    import datetime as dt

    s = _settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    at = dt.datetime.fromisoformat(args.at) if args.at else dt.datetime.now(dt.UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    done = _archive_pass(s, at)
    print(f"archived {done.days} days, {done.rows} rows, {done.bytes} bytes")
    return 0


def _cmd_maintain(args: argparse.Namespace) -> int:
    import datetime as dt

    from pulse.cloud.db.migrate import maintain_system_metrics, maintain_telemetry

    s = _settings()
    if s.archive_enabled:  # what retention is about to drop goes to the archive first
        done = _archive_pass(s, dt.datetime.now(dt.UTC))
        print(f"archived {done.days} days, {done.rows} rows")

    async def both() -> list[tuple[str, str]]:  # the same storage work as serve's hourly maintenance
        actions = await maintain_telemetry(
            s.database_url, ahead_days=s.telemetry_partitions_ahead_days, retention_days=s.telemetry_retention_days
        )
        return actions + await maintain_system_metrics(
            s.database_url, ahead_days=s.telemetry_partitions_ahead_days, retention_days=s.system_metrics_retention_days
        )

    actions = asyncio.run(both())
    for action, target in actions:
        print(f"{action}: {target}")
    if not actions:
        print("nothing to do")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pulse.cloud.app import create_app
    from pulse.cloud.ca import CertificateAuthority
    from pulse.cloud.web import proxy_options

    s = _settings()  # refuse a bad configuration before starting anything
    logs.configure(logging.INFO)  # JSON lines, or text on a terminal (docs/operations.md, "Logs")
    # the gateway CA is made here once, before worker processes start (they would race to make it)
    CertificateAuthority.load_or_create(s.sync.ca_dir)
    workers = args.workers or s.workers
    common: dict[str, Any] = {
        "host": args.host or s.host,
        "port": args.port or s.port,
        "log_level": "info",
        "access_log": args.access_log,
        "timeout_graceful_shutdown": 10,
        "log_config": None,  # uvicorn's records go through Pulse's format (common/logs.py)
        "ws": "websockets-sansio",  # the console's live socket (/api/v1/live)
        # asyncio's own loop, not uvloop: the sync listener runs each TLS handshake itself with
        # loop.start_tls (cloud/tls.py, so refused handshakes are seen), and under uvloop a
        # ClientHello can reach the plain protocol before start_tls takes the connection over: about
        # one handshake in four then hung until the client gave up
        "loop": "asyncio",
        **proxy_options(s.proxies),  # X-Forwarded-For only from PULSE_TRUSTED_PROXIES (none by default)
    }
    if workers == 1:
        app = create_app(s, sync_listener=True)
        heap.settle()  # the start-up heap out of the collector's way (common/heap.py)
        uvicorn.run(app, **common)
    else:
        # each worker process builds its own app (pools, writer, caches) from the same environment
        uvicorn.run("pulse.cloud.app:app_from_environment", factory=True, workers=workers, **common)
    return 0


def _cmd_mqtt(args: argparse.Namespace) -> int:
    import signal

    from pulse.cloud.mqtt.endpoint import run

    s = _settings()
    logs.configure(logging.INFO)  # JSON lines, or text on a terminal, as `pulse cloud serve` (docs/operations.md, "Logs")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        heap.settle()  # the start-up heap out of the collector's way, as serve does (common/heap.py)
        await run(s, stop)

    asyncio.run(main())
    return 0


async def _with_db(fn: Any) -> Any:
    from pulse.cloud.db.pool import Database

    s = _settings()
    db = Database(s.database_url, s.roles, password=s.db_role_password.get_secret_value() if s.db_role_password else None)
    await db.open()
    try:
        return await fn(db)
    finally:
        await db.close()


def _cmd_create_tenant(args: argparse.Namespace) -> int:
    from pulse.cloud.auth.accounts import create_tenant
    from pulse.cloud.errors import CloudError

    try:
        tenant_id = asyncio.run(_with_db(lambda db: create_tenant(db, slug=args.slug, name=args.name, actor=_actor())))
    except CloudError as exc:
        print(f"pulse cloud: {exc.message}", file=sys.stderr)
        return 1
    print(tenant_id)
    return 0


def _cmd_create_user(args: argparse.Namespace) -> int:
    from pulse.cloud.auth.accounts import create_user
    from pulse.cloud.errors import CloudError

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not args.external:
        password = getpass.getpass("password (12+ characters): ")
    try:
        user_id = asyncio.run(
            _with_db(
                lambda db: create_user(
                    db,
                    email=args.email,
                    password=password,
                    roles=args.role,
                    tenant=args.tenant,
                    actor=_actor(),
                    display_name=args.name,
                )
            )
        )
    except CloudError as exc:
        print(f"pulse cloud: {exc.message}", file=sys.stderr)
        return 1
    print(user_id)
    return 0


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("cloud", help="run and administer the cloud")
    p.set_defaults(handler=lambda args: (p.print_help(), 0)[1])
    cloud = p.add_subparsers(dest="cloud_command", metavar="COMMAND")

    c = cloud.add_parser("migrate", help="apply pending schema migrations (PULSE_DATABASE_URL)")
    c.set_defaults(handler=_cmd_migrate)

    c = cloud.add_parser(
        "serve", help="run the API and ingest server and the gateway sync listener; applies pending migrations first"
    )
    c.add_argument("--host", default=None, help="listen address (default: PULSE_HOST)")
    c.add_argument("--port", type=int, default=None, help="listen port (default: PULSE_PORT)")
    c.add_argument("--workers", type=int, default=None, help="worker processes (default: PULSE_WORKERS, 1)")
    c.add_argument("--access-log", action="store_true", help="log every request")
    c.set_defaults(handler=_cmd_serve)

    c = cloud.add_parser(
        "mqtt", help="run the MQTT endpoint for direct devices (TLS on PULSE_MQTT_TLS_PORT; plain TCP only with PULSE_MQTT_PLAIN_PORT)"
    )
    c.set_defaults(handler=_cmd_mqtt)

    c = cloud.add_parser("maintain", help="telemetry storage: archive due days, create partitions ahead, drop expired ones")
    c.set_defaults(handler=_cmd_maintain)

    c = cloud.add_parser("archive", help="archive every complete day of telemetry not yet archived (Parquet, PULSE_ARCHIVE_*)")
    c.add_argument("--at", default=None, help="the time to take as now (ISO 8601; default: the clock)")
    c.set_defaults(handler=_cmd_archive)

    a = cloud.add_parser("admin", help="bootstrap tenants and users (every use is audited)")
    a.set_defaults(handler=lambda args: (a.print_help(), 0)[1])
    admin = a.add_subparsers(dest="admin_command", metavar="COMMAND")

    c = admin.add_parser("create-tenant", help="create a tenant; prints its id")
    c.add_argument("slug", help="short unique name: lower-case letters, digits, '-'")
    c.add_argument("name", help="display name")
    c.set_defaults(handler=_cmd_create_tenant)

    c = admin.add_parser("create-user", help="create a user; prints its id")
    c.add_argument("email")
    c.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["customer", "tenant-admin", "operator", "operator-admin"],
        help="repeat for several roles",
    )
    c.add_argument("--tenant", default=None, help="tenant slug or id (not for operators)")
    c.add_argument("--name", default="", help="display name")
    c.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    c.add_argument("--external", action="store_true", help="no password: the user signs in through OIDC only")
    c.set_defaults(handler=_cmd_create_user)
