"""`pulse up`: run Pulse on one machine.

Today this starts what exists: the embedded PostgreSQL (or checks ``DATABASE_URL``). The cloud, a
gateway and the simulated fleet join as their issues land. It says what it started and runs until
Ctrl-C (or ``--exit-after``), then stops what it started.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import threading
from pathlib import Path

from pulse.cloud.db.embedded import EmbeddedPostgres, EmbeddedPostgresError


def data_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("PULSE_DATA_DIR") or ".pulse").resolve()


def _db_password(root: Path) -> str:
    """The embedded database's password: made once, kept in the data directory (mode 0600)."""
    path = root / "db-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def run(args: argparse.Namespace) -> int:
    root = data_dir(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    pg: EmbeddedPostgres | None = None
    dsn = ""
    if url := os.environ.get("DATABASE_URL"):
        dsn = url
        print(f"database   : using DATABASE_URL ({url.split('@')[-1]})", flush=True)
    else:
        pg = EmbeddedPostgres(root / "postgres", port=int(os.environ.get("PULSE_PG_PORT", "55432")), password=_db_password(root))
        fresh = not pg.initialised()
        print(f"database   : {'initialising' if fresh else 'starting'} embedded PostgreSQL in {pg.cluster_dir} ...", flush=True)
        try:
            dsn = pg.start()
        except EmbeddedPostgresError as exc:
            print(f"pulse up: {exc}", flush=True)
            return 1
        print(f"database   : running on 127.0.0.1:{pg.port} (password in {root / 'db-password'})", flush=True)
    from pulse.cloud.demo import start_cloud

    try:
        cloud = start_cloud(root, dsn)
    except RuntimeError as exc:
        print(f"pulse up: {exc}", flush=True)
        if pg is not None:
            pg.stop()
        return 1
    print(f"cloud      : {cloud.url}  (API docs {cloud.url}/docs, log {cloud.log})", flush=True)
    print(f"login      : {cloud.email} / {cloud.password}  (POST {cloud.url}/auth/login)", flush=True)
    print("gateway    : not built yet (issue: edge gateway)", flush=True)
    print("fleet      : not built yet (issue: simulated fleet)", flush=True)
    print("Pulse is up. Press Ctrl-C to stop.", flush=True)
    try:
        stop.wait(args.exit_after)
    finally:
        print("cloud      : stopping ...", flush=True)
        cloud.stop()
        if pg is not None:
            print("database   : stopping ...", flush=True)
            pg.stop()
        print("Pulse stopped.", flush=True)
    return 0
