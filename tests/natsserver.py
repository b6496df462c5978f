"""NATS JetStream for the test suite: a real ``nats-server`` of the test's own, on a free loopback
port with its JetStream store in a temporary directory (Debian's ``nats-server`` package, installed
by deploy/install.sh), or the server named by PULSE_TEST_NATS_URL when set. Tests name a stream and
subject prefix of their own (``stream_names``) so several can share one server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pulse.common.ports import free_port


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None)


@dataclass
class NatsServer:
    url: str
    proc: subprocess.Popen[bytes] | None = None
    store: Path | None = None

    @property
    def own(self) -> bool:
        """Started by this test (so it may be stopped), not PULSE_TEST_NATS_URL's."""
        return self.proc is not None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self.store is not None:
            shutil.rmtree(self.store, ignore_errors=True)


def start_nats() -> NatsServer:
    """A running JetStream server (ours, or PULSE_TEST_NATS_URL's); ``close()`` it afterwards."""
    if url := os.environ.get("PULSE_TEST_NATS_URL"):
        return NatsServer(url)
    binary = nats_server_binary()
    if binary is None:
        raise RuntimeError("nats-server is not installed: run deploy/install.sh (Debian package nats-server), or set PULSE_TEST_NATS_URL")
    store = Path(tempfile.mkdtemp(prefix="pulse-test-nats-"))
    port = free_port()
    with (store / "server.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store), "--server_name", f"pulse-test-{port}"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = NatsServer(f"nats://127.0.0.1:{port}", proc, store)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            log = (store / "server.log").read_text(errors="replace")[-2000:]
            server.close()
            raise RuntimeError(f"nats-server exited: {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(7) == b"INFO {\"":
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.close()
            raise RuntimeError("nats-server did not answer in 20 s")
        time.sleep(0.05)


def stream_names() -> dict[str, str]:
    """Settings of a stream no other test uses: ``stream_name`` and ``stream_subject``."""
    tag = uuid.uuid4().hex[:10]
    return {"stream_name": f"PULSE_T{tag}", "stream_subject": f"t{tag}.ingest"}
