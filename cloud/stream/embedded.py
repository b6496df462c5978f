"""A ``nats-server`` with JetStream that Pulse starts itself: for the tests and ``pulse bench
scale`` (as ``db/embedded.py`` is for PostgreSQL). Production runs its own NATS (deploy/compose.yaml).

The binary is Debian's ``nats-server`` package (deploy/install.sh installs it; 2.9.x has
JetStream), found on PATH or in /usr/sbin. It listens on loopback on a free port and keeps its
JetStream store in the directory given.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pulse.common.ports import free_port


class EmbeddedNatsError(RuntimeError):
    """nats-server is missing, or did not start."""


def find_nats_server() -> str | None:
    return shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


class EmbeddedNats:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *, timeout_s: float = 20, port: int | None = None) -> str:
        """Start the server (on ``port``, or a free one); its URL (``nats://127.0.0.1:<port>``).
        Started again on its former port with the same store, it is the same server to its clients."""
        binary = find_nats_server()
        if binary is None:
            raise EmbeddedNatsError("nats-server is not installed: run deploy/install.sh (Debian package nats-server)")
        self.store.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        with (self.store / "server.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(self.store), "--server_name", f"pulse-{port}"],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise EmbeddedNatsError(f"nats-server exited: {(self.store / 'server.log').read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if s.recv(4) == b"INFO":
                        self.url = f"nats://127.0.0.1:{port}"
                        return self.url
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedNatsError(f"nats-server did not answer in {timeout_s:.0f} s")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
