"""Wiring: build the gateway's parts from the settings, run them until SIGINT/SIGTERM, stop them in order.

buffer (SQLite) -> authenticator + intake -> broker (listeners) -> status board + HTTP server.
Stopping goes the other way: the status page, then the broker (no new messages), then the buffer
(which commits what is queued before it closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from amqtt.errors import BrokerError

from pulse.edge import broker as mqtt
from pulse.edge import status
from pulse.edge.auth import Authenticator
from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings
from pulse.edge.errors import ConfigError
from pulse.protocol.envelope import Limits

log = logging.getLogger("pulse.edge")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions", "uvicorn", "aiosqlite"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


async def run(settings: Settings, *, stop: asyncio.Event | None = None, on_ready: Callable[[], None] | None = None) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    buffer = Buffer(settings.database, settings.buffer)
    await buffer.open()
    try:
        authenticator = Authenticator(buffer.secret_hash, allow_anonymous=settings.broker.allow_anonymous)
        intake = mqtt.Intake(buffer, Limits(max_bytes=settings.broker.max_message_bytes))
        try:
            broker = await mqtt.start(settings.broker, intake, authenticator)
        except BrokerError as exc:
            raise ConfigError(f"the broker cannot listen: {exc}", port=settings.broker.port) from exc
        try:
            board = status.StatusBoard(settings, broker, intake, buffer)
            tasks = [asyncio.create_task(board.run(), name="status-sampler")]
            http = None
            if settings.status.port:
                http = status.server(board, settings.status.host, settings.status.port)
                tasks.append(asyncio.create_task(http.serve(), name="status-http"))
            log.info(
                "gateway %s: MQTT on %s:%d, status on %s, buffer %s",
                settings.gateway.id,
                settings.broker.host,
                settings.broker.port,
                settings.status_url if settings.status.port else "off",
                settings.database,
            )
            if on_ready is not None:
                on_ready()
            await stop.wait()
            log.info("stopping")
            if http is not None:
                http.should_exit = True
            for task in tasks[:1]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await mqtt.stop(broker)
    finally:
        await buffer.close()
