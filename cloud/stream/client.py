"""One NATS connection per process, and the stream it publishes to and consumes from.

``StreamClient.start()`` connects in the background and keeps trying until the server answers (a
replica may start before NATS); the nats-py client then reconnects by itself. While there is no
connection, ``jetstream()`` raises ``StreamDown`` at once: ingest answers 503 rather than waiting.

The stream (created if missing, by whichever process connects first): subjects
``<prefix>.*``, file storage, work-queue retention (a message leaves the stream once its partition's
writer acknowledged it), ``discard new`` (a full stream refuses publishes: ingest answers 503 rather
than JetStream dropping stored messages).
"""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType
from nats.js.api import StreamConfig as JsStreamConfig

from pulse.cloud.cluster.bus import cancel
from pulse.cloud.settings import StreamConfig
from pulse.common import aio
from pulse.protocol.stream import subjects_wildcard

log = logging.getLogger("pulse.cloud.stream")

NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError, asyncio.TimeoutError)
"""What the nats-py client raises when the server is away, slow or refuses: translated at this package's edge."""


CLOSE_TIMEOUT_S = 5.0
"""How long stopping waits for the NATS connection to close before it leaves it behind."""


class StreamDown(Exception):
    """No connection to NATS right now."""


class StreamClient:
    def __init__(self, config: StreamConfig, *, name: str = "pulse") -> None:
        self.config = config
        self.name = name
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stream_checked = False

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="pulse-stream-connect")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel(self._task)
            self._task = None
        if self._nc is not None:
            # Bounded: nats-py's close() flushes what it buffered while reconnecting and waits for the
            # transport to close, which can wait forever when the server went away (a stopped
            # `pulse cloud mqtt` hung on it in a test; nats-io/nats.py#671 is the same wait).
            try:
                await aio.wait_for(self._nc.close(), timeout=CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("the connection to the ingest stream did not close within %.0f s; left behind", CLOSE_TIMEOUT_S)
            except NATS_ERRORS:
                pass
            self._nc = None
        self._ready.clear()

    async def _connect(self) -> None:
        delay = 0.2
        while True:
            try:
                self._nc = await nats.connect(
                    servers=list(self.config.servers),
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
            except NATS_ERRORS as exc:
                log.warning("cannot reach the ingest stream at %s (%s); retrying", ", ".join(self.config.servers), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            log.info("connected to the ingest stream at %s", self._nc.connected_url.netloc if self._nc.connected_url else "?")
            self._ready.set()
            return

    async def _error(self, exc: Exception) -> None:
        log.debug("nats: %s", exc)

    async def _disconnected(self) -> None:
        log.warning("lost the connection to the ingest stream; reconnecting")

    async def _reconnected(self) -> None:
        log.info("reconnected to the ingest stream")

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (its ``max_payload``, 1 MiB by default)."""
        return self._nc.max_payload if self._nc is not None else 1024 * 1024

    def jetstream(self) -> JetStreamContext:
        """JetStream on the current connection; ``StreamDown`` when there is none."""
        if self._nc is None or not self._nc.is_connected:
            raise StreamDown("not connected to the ingest stream")
        return self._nc.jetstream(timeout=self.config.publish_timeout_s)

    async def wait_connected(self) -> None:
        await self._ready.wait()
        while not self.connected:
            await asyncio.sleep(0.2)

    async def flush(self) -> None:
        """Send what the connection still buffers (acknowledgements) and wait for the server's answer."""
        if self._nc is not None and self._nc.is_connected:
            await self._nc.flush(timeout=max(1, int(self.config.publish_timeout_s)))

    def forget_stream(self) -> None:
        """Check (and create) the stream again before the next use: after a failure, it may have been deleted."""
        self._stream_checked = False

    async def ensure_stream(self) -> None:
        """Create the stream when it does not exist yet (any process may; the first one does)."""
        if self._stream_checked:
            return
        js = self.jetstream()
        cfg = self.config
        try:
            await js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(
                    JsStreamConfig(
                        name=cfg.name,
                        subjects=[subjects_wildcard(cfg.subject)],
                        retention=RetentionPolicy.WORK_QUEUE,
                        storage=StorageType.FILE,
                        discard=DiscardPolicy.NEW,
                        num_replicas=cfg.replicas,
                        max_bytes=cfg.max_bytes,
                    )
                )
                log.info("created the ingest stream %s (%s)", cfg.name, subjects_wildcard(cfg.subject))
            except nats.js.errors.BadRequestError:  # another process created it meanwhile
                await js.stream_info(cfg.name)
        self._stream_checked = True
