"""An embedded PostgreSQL server that Pulse initialises and manages in a data directory.

Used by ``pulse up`` (when ``DATABASE_URL`` is not set) and by the test suite. It runs the system's
own server binaries (Debian: ``/usr/lib/postgresql/<version>/bin``, not on PATH). PostgreSQL
refuses to run as root, so when Pulse runs as root the cluster belongs to, and the server runs as,
an unprivileged account (``postgres`` by default).

Errors (all ``EmbeddedPostgresError``, a ``PulseError``-free local tree because nothing here
reaches an API user): binaries missing, data directory unusable, server failed to start (the
server's own log tail is in the message).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pulse.common.ports import free_port, port_is_free

FALLBACK_ROOT = Path("/var/lib/pulse/embedded-postgres")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be prepared, started or stopped; the message says what to do."""


def find_bindir() -> Path:
    """Where initdb, pg_ctl and postgres live: $PULSE_PG_BINDIR, pg_config, Debian's layout, PATH."""
    candidates: list[str] = []
    if env := os.environ.get("PULSE_PG_BINDIR"):
        candidates.append(env)
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())

    def version_key(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", path)) or (0,)

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise EmbeddedPostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them "
        "(Debian: apt-get install postgresql), set PULSE_PG_BINDIR, or point DATABASE_URL at a server."
    )


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Can ``user`` reach ``path`` (execute permission on every ancestor)?"""
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == user.pw_gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir``: ``start()`` initialises it on first use and reuses it after.

    ``durable=False`` turns off fsync for throwaway test clusters; the demo and anything holding
    real data keeps it on."""

    data_dir: Path
    port: int | None = None
    user: str = "pulse"
    password: str | None = None
    durable: bool = True
    run_as: str = "postgres"
    extra_settings: dict[str, str] = field(default_factory=dict)
    bindir: Path | None = None  # server binaries to use (default: find_bindir())
    _bindir: Path | None = field(default=None, init=False, repr=False)
    _os_user: pwd.struct_passwd | None = field(default=None, init=False, repr=False)

    @property
    def root(self) -> Path:
        """Where the cluster lives: ``data_dir``, unless (as root) the unprivileged account cannot
        reach it (a clone under /root, say); then a directory of its own under /var/lib/pulse,
        named after ``data_dir`` so each data directory keeps its own cluster."""
        if os.geteuid() != 0:
            return self.data_dir
        try:
            user = pwd.getpwnam(self.run_as)
        except KeyError:
            return self.data_dir
        if _traversable_by(self.data_dir.resolve().parent, user):
            return self.data_dir
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        return FALLBACK_ROOT / digest

    @property
    def cluster_dir(self) -> Path:
        return self.root / "cluster"

    @property
    def log_file(self) -> Path:
        return self.root / "postgresql.log"

    @property
    def dsn(self) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/postgres"

    def _prepare(self) -> None:
        self._bindir = self.bindir or find_bindir()
        if os.geteuid() == 0:
            try:
                self._os_user = pwd.getpwnam(self.run_as)
            except KeyError as exc:
                raise EmbeddedPostgresError(
                    f"running as root, Pulse starts PostgreSQL as the unprivileged account '{self.run_as}', which does not exist; "
                    "create it (useradd --system postgres) or run Pulse as an ordinary user"
                ) from exc
            if self.root != self.data_dir:
                FALLBACK_ROOT.mkdir(parents=True, exist_ok=True)
                os.chmod(FALLBACK_ROOT, 0o755)
                self.data_dir.mkdir(parents=True, exist_ok=True)
                (self.data_dir / "CLUSTER_LOCATION").write_text(
                    f"The account '{self.run_as}' cannot reach this directory, so the database cluster lives in {self.root}\n"
                )
        self.root.mkdir(parents=True, exist_ok=True)
        if self._os_user is not None:
            os.chown(self.root, self._os_user.pw_uid, self._os_user.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        user = {"user": self._os_user.pw_uid, "group": self._os_user.pw_gid, "extra_groups": []} if self._os_user else {}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(args, capture_output=True, text=True, env=env, cwd=self.root, **user, **kwargs)  # type: ignore[call-overload, no-any-return]

    def initialised(self) -> bool:
        return (self.cluster_dir / "PG_VERSION").exists()

    def _initdb(self) -> None:
        assert self._bindir is not None
        args = [str(self._bindir / "initdb"), "-D", str(self.cluster_dir), "-U", self.user, "-E", "UTF8", "--no-instructions"]
        pwfile = self.root / ".pwfile"
        if self.password is None:
            args += ["--auth=trust"]
        else:
            pwfile.write_text(self.password + "\n")
            if self._os_user:
                os.chown(pwfile, self._os_user.pw_uid, self._os_user.pw_gid)
            os.chmod(pwfile, 0o600)
            args += ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        if not self.durable:
            args += ["--no-sync"]
        try:
            result = self._run(args)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed:\n{result.stderr[-2000:]}")

    def _options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            **({} if self.durable else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}),
            **self.extra_settings,
        }
        return " ".join(f"-c {k}={v}" for k, v in settings.items())

    def running(self) -> bool:
        if self._bindir is None or not self.initialised():
            return False
        return self._run([str(self._bindir / "pg_ctl"), "-D", str(self.cluster_dir), "status"]).returncode == 0

    def start(self, timeout: float = 60.0) -> str:
        """Initialise (first time), start, wait until it accepts connections; returns the DSN."""
        self._prepare()
        assert self._bindir is not None
        if not self.initialised():
            self._initdb()
        if self.running():
            self._run([str(self._bindir / "pg_ctl"), "-D", str(self.cluster_dir), "-m", "fast", "-w", "stop"])
        if not self.port or not port_is_free(self.port):
            self.port = free_port()
        deadline = time.monotonic() + timeout
        result = self._run(
            [
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.cluster_dir),
                "-l",
                str(self.log_file),
                "-o",
                self._options(),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ]
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"PostgreSQL did not start (log {self.log_file}):\n{self.log_tail()}")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self.dsn
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL started but does not accept connections on port {self.port}")

    def stop(self) -> None:
        if self._bindir is None or not self.initialised():
            return
        self._run([str(self._bindir / "pg_ctl"), "-D", str(self.cluster_dir), "-m", "fast", "-w", "stop"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
