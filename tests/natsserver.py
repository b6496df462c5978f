"""NATS JetStream for the test suite: a real ``nats-server`` of the test's own, on a free loopback
port with its JetStream store in a temporary directory (``pulse.cloud.stream.embedded``: Debian's
``nats-server`` package, installed by deploy/install.sh), or the server named by
PULSE_TEST_NATS_URL when set. Tests name a stream and subject prefix of their own
(``stream_names``) so several can share one server."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from pulse.cloud.stream.embedded import EmbeddedNats


@dataclass
class NatsServer:
    url: str
    server: EmbeddedNats | None = None

    @property
    def own(self) -> bool:
        """Started by this test (so it may be stopped), not PULSE_TEST_NATS_URL's."""
        return self.server is not None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def restart(self) -> None:
        """Start a stopped server again, same port and store: its clients reconnect, its streams are back."""
        assert self.server is not None, "PULSE_TEST_NATS_URL's server is not ours to restart"
        self.server.start(port=int(self.url.rsplit(":", 1)[1]))

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            shutil.rmtree(self.server.store, ignore_errors=True)


def start_nats() -> NatsServer:
    """A running JetStream server (ours, or PULSE_TEST_NATS_URL's); ``close()`` it afterwards."""
    if url := os.environ.get("PULSE_TEST_NATS_URL"):
        return NatsServer(url)
    server = EmbeddedNats(Path(tempfile.mkdtemp(prefix="pulse-test-nats-")))
    try:
        return NatsServer(server.start(), server)
    except BaseException:
        shutil.rmtree(server.store, ignore_errors=True)
        raise


def stream_names() -> dict[str, str]:
    """Settings of a stream no other test uses: ``stream_name`` and ``stream_subject``."""
    tag = uuid.uuid4().hex[:10]
    return {"stream_name": f"PULSE_T{tag}", "stream_subject": f"t{tag}.ingest"}
