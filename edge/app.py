"""Wiring: build the gateway's parts from the settings, run them, stop them in order.

buffer (SQLite) -> local rule runner -> authenticator + intake -> broker (listeners) -> twins and
commands -> connectors (polled devices) -> uplink + downlink (once enrolled) -> status board + HTTP
server. Stopping goes the other way: the status page, the link to the cloud, the connectors, the
twins, then the broker (no new messages), then the rule runner, then the buffer (which commits what
is queued before it closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from typing import TYPE_CHECKING

from amqtt.errors import BrokerError

from pulse.broker.server import DeviceBroker
from pulse.broker.sessions import SessionStore
from pulse.common import heap, logs
from pulse.edge import broker as mqtt
from pulse.edge import status
from pulse.edge.auth import Authenticator, DeviceSecrets
from pulse.edge.buffer import Buffer
from pulse.edge.config import Settings
from pulse.edge.connectors.host import ConnectorHost
from pulse.edge.enrollment import load_enrollment
from pulse.edge.errors import ConfigError, StorageError, SyncError
from pulse.edge.identity import IdentityFiles
from pulse.edge.ingest import Store, connectivity_record
from pulse.edge.pacing import LinkState
from pulse.edge.rules import EdgeRuleRunner
from pulse.edge.throttle import TokenBucket
from pulse.edge.twin import EdgeTwins
from pulse.protocol.connectivity import Connectivity
from pulse.protocol.envelope import Limits

if TYPE_CHECKING:
    # The link to the cloud (httpx, cryptography: ~17 MB) is imported only once the gateway is
    # enrolled and syncs (_start_sync); an unenrolled gateway, or one with sync off, never loads it.
    from pulse.edge import firmware
    from pulse.edge.downlink import Downlink
    from pulse.edge.link import Connection
    from pulse.edge.uplink import Uplink

log = logging.getLogger("pulse.edge")


def configure_logging(level: str) -> None:
    logs.configure(level)  # JSON lines, or text on a terminal (common/logs.py)
    for noisy in ("amqtt", "transitions", "uvicorn", "aiosqlite", "pymodbus", "pysnmp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Gateway:
    """The running gateway's parts, for ``run`` and for tests that drive a gateway in-process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buffer = Buffer(settings.database, settings.buffer)
        self.secrets = DeviceSecrets(settings.database)
        self.rules = EdgeRuleRunner(settings.database, self.buffer)
        self.twins = EdgeTwins(settings.database, self.buffer)
        self.buffer.on_commit = self._committed
        self.intake = mqtt.Intake(self.buffer, Limits(max_bytes=settings.broker.max_message_bytes))
        self.intake.on_twin_get = self.twins.twin_get
        b = settings.broker
        self.sessions = SessionStore(settings.database, queue_max=b.session_queue_max, max_age_s=b.session_queue_max_age_s)
        self.broker: DeviceBroker | None = None
        self.connectors: ConnectorHost | None = None
        self.board: status.StatusBoard | None = None
        self._http: status.uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.uplink: Uplink | None = None
        self.downlink: Downlink | None = None
        self._sync_tasks: list[asyncio.Task[None]] = []
        self.firmware: firmware.FirmwareService | None = None
        self._firmware_http: status.uvicorn.Server | None = None
        self._firmware_task: asyncio.Task[None] | None = None
        self._firmware_sock: socket.socket | None = None
        self._link_state = LinkState.NOT_ENROLLED

    def _committed(self, stores: list[Store]) -> None:
        """After each buffer commit: the local rules, then the twins (each on its own)."""
        for listener in (self.rules.observe, self.twins.observe):
            try:
                listener(stores)
            except Exception:
                log.exception("after-commit listener %s failed; the records are stored", listener)

    async def start(self) -> None:
        s = self.settings
        await self.buffer.open()
        try:
            await self.rules.start()
            await self.secrets.open()
            authenticator = Authenticator(self.secrets, allow_anonymous=s.broker.allow_anonymous)
            try:
                self.sessions.open()
                self.broker = await mqtt.start(s.broker, self.intake, authenticator, self.sessions)
            except BrokerError as exc:
                raise ConfigError(f"the broker cannot listen: {exc}", port=s.broker.port) from exc
            # polled devices (gateway.toml's and the cloud's): readings, twin reports and command
            # answers go through the intake; the publisher answers for them in front of the broker
            self.connectors = ConnectorHost(s.connectors, s.database, self.buffer, self.intake.limits, self.broker,
                                            on_ready=self.twins.device_ready)
            await self.twins.start(self.connectors.publisher)
            self.broker.on_device_ready = self.twins.device_ready
            if s.broker.connectivity_events:
                self.broker.on_connectivity = self._connectivity
            await self.connectors.start()
            self._start_sync()
            self.board = status.StatusBoard(s, self.broker, self.intake, self.buffer, self.rules, link=self.link_status, twins=self.twins,
                                            sessions=self.sessions, connectors=self.connectors.snapshot)
            await self.board.sample()
            self._tasks.append(asyncio.create_task(self.board.run(), name="status-sampler"))
            if s.status.port:
                try:
                    sock = status.listen(s.status.host, s.status.port)
                except OSError as exc:
                    raise ConfigError(
                        f"the status page cannot listen on {s.status.host}:{s.status.port}: {exc}", port=s.status.port
                    ) from exc
                self._http = status.server(self.board, s.status.host, s.status.port)
                self._tasks.append(asyncio.create_task(self._http.serve(sockets=[sock]), name="status-http"))
        except BaseException:
            await self.stop()
            raise
        log.info(
            "gateway %s: MQTT on %s:%d, status on %s, buffer %s",
            s.gateway.id,
            s.broker.host,
            s.broker.port,
            s.status_url if s.status.port else "off",
            s.database,
        )

    def _connectivity(self, device_id: str, kind: Connectivity, will: bool) -> None:
        """A device connected, disconnected or was lost: a device event on the EVENTS stream."""
        try:
            self.buffer.submit(connectivity_record(device_id, kind, now_ms=int(time.time() * 1000), will=will), wait=False)
        except StorageError as exc:
            log.warning("connectivity event for %s not buffered: %s", device_id, exc.message)

    def _start_sync(self) -> None:
        s = self.settings
        try:
            enrollment = load_enrollment(s.state_dir)
        except SyncError as exc:
            log.error("%s", exc.message)
            return
        if enrollment is None:
            log.info("not enrolled: `pulse gateway enroll --cloud URL --token T` connects this gateway to the cloud")
            return
        if not s.sync.enabled:
            self._link_state = LinkState.DISABLED
            log.info("enrolled as %s, but sync.enabled is false: everything stays in the buffer", enrollment.gateway_id)
            return
        assert self.broker is not None
        from pulse.edge.downlink import Downlink
        from pulse.edge.link import Connection
        from pulse.edge.uplink import Uplink

        files = IdentityFiles(s.state_dir)
        connectors = self.connectors
        self.uplink = Uplink(s.sync, self.buffer, enrollment, files,
                             report_extra=None if connectors is None else lambda: {"connectors": connectors.report()})
        self.downlink = Downlink(
            s.sync,
            s.database,
            enrollment,
            files,
            disconnect=self.broker.disconnect_device,
            apply_rules=self.rules.set_rules,
            apply_twin=self.twins.apply_downlink,
            apply_connectors=self.connectors.apply if self.connectors is not None else None,
        )
        self._sync_tasks = [
            asyncio.create_task(self.uplink.run(), name="uplink"),
            asyncio.create_task(self.downlink.run(), name="downlink"),
        ]
        if s.firmware.port:
            self._start_firmware(Connection(enrollment, files, timeout_s=s.sync.request_timeout_s), self.uplink.bucket)
        log.info("syncing with %s as gateway %s (tenant %s)", enrollment.sync_url, enrollment.gateway_id, enrollment.tenant_id)

    def _start_firmware(self, connection: Connection, bucket: TokenBucket | None = None) -> None:
        """The firmware cache and its local download (edge/firmware.py): one fetch per artifact for the site."""
        from pulse.edge import firmware

        s = self.settings
        cache = firmware.FirmwareCache(s.gateway.data_dir / "firmware", connection, bucket=bucket)
        urls = firmware.LocalUrls(firmware.load_key(s.state_dir / firmware.KEY_FILE), s.firmware.base_url, s.firmware.url_ttl_s)
        self.firmware = firmware.FirmwareService(cache, urls)
        self.twins.prepare_command = self.firmware.prepare
        try:
            sock = status.listen(s.firmware.host, s.firmware.port)
        except OSError as exc:
            raise ConfigError(f"the firmware download cannot listen on {s.firmware.host}:{s.firmware.port}: {exc}",
                              port=s.firmware.port) from exc
        self._firmware_sock = sock
        self._firmware_http = firmware.server(self.firmware, s.firmware.host, s.firmware.port)
        self._firmware_task = asyncio.create_task(self._firmware_http.serve(sockets=[sock]), name="firmware-http")
        log.info("firmware downloads for devices on %s", s.firmware.base_url)

    def link_status(self) -> dict[str, object]:
        """The uplink and downlink as the status page shows them."""
        if self.uplink is None or self.downlink is None:
            return {"state": self._link_state.value, "certificate_expires": None, "downlink": None}
        return {**self.uplink.snapshot(), "downlink": self.downlink.snapshot(),
                "firmware": None if self.firmware is None else self.firmware.snapshot()}

    async def stop(self) -> None:
        """Stop every part, each one even when another failed to stop (a part left running, such as
        the buffer's aiosqlite thread, keeps the whole process alive); then raise the first failure."""
        failures: list[Exception] = []
        for step in (self._stop_tasks, self._stop_connectors, self.twins.stop, self._stop_broker, self.secrets.close, self.rules.stop, self.buffer.close):
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - raised below, once the other parts are stopped
                failures.append(exc)
        if failures:
            raise failures[0]

    async def _stop_tasks(self) -> None:
        if self._http is not None:
            self._http.should_exit = True
        for task in self._tasks[:1]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._firmware_http is not None:
            self._firmware_http.should_exit = True
            if self._firmware_task is not None:
                await asyncio.gather(self._firmware_task, return_exceptions=True)
            self._firmware_http = self._firmware_task = None
        if self._firmware_sock is not None:
            self._firmware_sock.close()
            self._firmware_sock = None
        if self.firmware is not None:
            await self.firmware.cache.stop()
            if self.firmware.cache.connection is not None:
                await self.firmware.cache.connection.drop()
        for task in self._sync_tasks:
            task.cancel()
        await asyncio.gather(*self._sync_tasks, return_exceptions=True)
        self._sync_tasks.clear()

    async def _stop_connectors(self) -> None:
        if self.connectors is not None:
            await self.connectors.stop()

    async def _stop_broker(self) -> None:
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await mqtt.stop(broker)
        self.sessions.close()


async def run(settings: Settings) -> None:
    """``pulse gateway run``: start, serve until SIGINT/SIGTERM, stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    # Every message allocates a few dozen short-lived objects (tasks, futures, packets): with
    # CPython's default collector settings the collector took ~15 % of the event loop's time at a
    # few thousand messages per second (common/heap.py)
    heap.settle(gen1_threshold=20, gen2_threshold=20)
    try:
        await stop.wait()
        log.info("stopping")
    finally:
        await gateway.stop()
