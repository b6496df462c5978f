"""`pulse cloud mqtt`: the MQTT 3.1.1 endpoint for direct devices (no gateway), docs/cloud.md.

The broker is the gateway's (pulse.broker.server: durable-before-PUBACK intake, topic ACL, keep
alive and Will, persistent sessions with QoS 1 redelivery); what is the cloud's:

- ``TokenAuthenticator``  CONNECT: username = device id, password = the device token, through the
  same cached look-up as HTTP ingest (``DeviceTokenCache``); the token must be the device's, the
  device active, the tenant's subscriptions not suspended or expired. Refused: CONNACK 5. The
  session is kept under ``{tenant}/{device}`` (device ids are unique only within a tenant).
- Connectivity: a device connecting, disconnecting cleanly or being lost (its keep-alive ran out,
  its link dropped: the Will case) is stored as its connectivity event (``protocol/connectivity.py``,
  as the gateway records them); the Will message itself is sent to nobody.
- ``CloudIntake``  a PUBLISH is checked (ACL, envelope) and stored by ``IngestService.store``
  (twin reports and command answers applied, rows group-committed by the telemetry writer) before
  PUBACK; refusals are quarantined with their code (source ``mqtt``) and acknowledged. Nothing a
  device publishes is forwarded to other clients. While PostgreSQL is unavailable messages are
  committed to the local spool (spool.py) and acknowledged; it drains when the database is back.
  With PULSE_STREAM_URL the rows go to the ingest stream instead (cloud/stream/): PUBACK once
  JetStream has them, the local spool while it cannot take them; `serve`'s partition writers store them.
- Downlink: a command becoming queued or a twin's desired state changing sends NOTIFY
  ``pulse_device`` (migration 0019); the endpoint holding the device's session publishes the
  commands on ``pulse/{device}/cmd/{id}`` and the delta on ``pulse/{device}/twin/desired`` at once,
  and again whenever the device (re)connects or subscribes. ``twin/get`` is answered on
  ``twin/document``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from amqtt.session import ApplicationMessage, Session

from pulse.broker.acl import denial, may_publish
from pulse.broker.server import AUTH_PLUGIN, DeviceBroker
from pulse.broker.sessions import SessionStore
from pulse.cloud import twins
from pulse.cloud.ca import CertificateAuthority, write_private
from pulse.cloud.db.pool import Database, PoolSizes
from pulse.cloud.db.rows import QuarantineRow
from pulse.cloud.errors import AuthError, CloudError, ConflictError, StorageUnavailableError, StreamUnavailableError
from pulse.cloud.ingest.http import IngestService, Message
from pulse.cloud.ingest.identity import DeviceIdentity, DeviceTokenCache, credential_lookup
from pulse.cloud.ingest.writer import RowWriter, Writer
from pulse.cloud.metrics import Metrics
from pulse.cloud.mqtt.spool import Spool, Spooled
from pulse.cloud.settings import MqttConfig, Settings
from pulse.cloud.stream.client import StreamClient
from pulse.cloud.stream.publisher import StreamPublisher
from pulse.cloud.subscriptions.store import Entitlements
from pulse.common import aio
from pulse.protocol import topics
from pulse.protocol.connectivity import Connectivity, event_message
from pulse.protocol.envelope import TOPIC_TYPE, MessageType
from pulse.protocol.errors import Code
from pulse.protocol.topics import TopicKind
from pulse.protocol.twin import TwinLimits, delta_message, document_message

log = logging.getLogger("pulse.cloud.mqtt")

SOURCE = "mqtt"
CHANNEL = "pulse_device"
REVOKED = "pulse_credential"
_UNAVAILABLE = (StorageUnavailableError, StreamUnavailableError, OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.InterfaceError)
"""What "the database (or the ingest stream) is not there" looks like from the writer and the pools: spool, do not refuse."""


def session_key(tenant_id: object, device_id: str) -> str:
    return f"{tenant_id}/{device_id}"


class TokenAuthenticator:
    def __init__(self, tokens: DeviceTokenCache, entitlements: Entitlements | None) -> None:
        self.tokens = tokens
        self.entitlements = entitlements
        self.identities: dict[str, DeviceIdentity] = {}
        """Session key -> the identity its last CONNECT proved."""

    async def check(self, username: str | None, password: str | None) -> bool | str:
        if not username or not password:
            return False
        try:
            identity = await self.tokens.resolve(f"Bearer {password}")
            if identity.device_id != username:
                log.info("refused connection: the token is not device %r's", username)
                return False
            if self.entitlements is not None:
                try:
                    await self.entitlements.check_data(identity.tenant_id)
                except _UNAVAILABLE:  # the database is away: admit (its messages wait in the spool); checked again next time
                    log.warning("admitted %s without checking its tenant's subscriptions: the database is unavailable", username)
        except CloudError as exc:
            log.info("refused connection from %s: %s", username, exc)
            return False
        except Exception:  # the database cannot answer for an uncached token: refuse, the device retries
            log.exception("refused connection from %s: the credential could not be checked", username)
            return False
        key = session_key(identity.tenant_id, identity.device_id)
        self.identities[key] = identity
        return key


class CloudBroker(DeviceBroker):
    """The shared broker, with nothing a device publishes (its Will included) fanned out to other
    clients: device ids repeat across tenants, and every downlink message is sent to one session
    (``deliver``). A device's session becoming ready calls ``on_session_ready`` with its key."""

    on_session_ready: Any = None
    on_session_connectivity: Any = None
    """Called with (session key, ``Connectivity`` kind, whether its Will would have been published)."""

    def _device_ready(self, session: Session) -> None:
        if self.on_session_ready is not None and session.client_id is not None:
            self.on_session_ready(session.client_id)

    def _connectivity(self, session: Session, kind: Connectivity) -> None:
        if self.on_session_connectivity is not None and session.client_id is not None and not self._closing:
            self.on_session_connectivity(session.client_id, kind, kind is Connectivity.LOST and bool(session.will_flag))

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: bytes | bytearray | None,
                                 force_qos: int | None = None) -> None:
        if session is not None:
            return  # a Will: logged as the connection being lost, never sent to anyone
        await super()._broadcast_message(session, topic, data, force_qos)

    async def retain_message(self, source_session: Session | None, topic_name: str | None, data: bytes | bytearray | None,
                             qos: int | None = None) -> None:
        if source_session is not None:
            return
        await super().retain_message(source_session, topic_name, data, qos)

    def holds(self, key: str, topic: str) -> bool:
        """The session ``key`` exists (connected, or persistent) and subscribes to ``topic``."""
        entry = self._sessions.get(key)
        if entry is None:
            return False
        session = entry[0]
        if session.transitions.state != "connected" and session.clean_session:
            return False
        return any(s is session for f, subs in self._subscriptions.items() if self._matches(topic, f) for s, _ in subs)

    def connected(self, key: str) -> bool:
        entry = self._sessions.get(key)
        return entry is not None and entry[0].transitions.state == "connected"


class CloudIntake:
    """The broker's intake: ``accept`` hands each PUBLISH to the endpoint and never forwards it."""

    def __init__(self, endpoint: MqttEndpoint) -> None:
        self.endpoint = endpoint
        self._tasks: set[asyncio.Task[None]] = set()

    def identity(self, session: Session | None) -> str | None:
        return session.username if session is not None else None

    async def accept(self, session: Session | None, message: ApplicationMessage, *, wait: bool) -> bool:
        if session is None or session.password is None:
            raise AuthError(Code.AUTH_MISSING, "an unauthenticated session cannot publish")
        # the token again, through the cache: a revoked token stops being accepted within the cache's TTL
        try:
            identity = await self.endpoint.tokens.resolve(f"Bearer {session.password}")
        except _UNAVAILABLE as exc:  # the database is away: the identity this connection proved at CONNECT
            proven = self.endpoint.auth.identities.get(session.client_id or "")
            if proven is None:
                raise StorageUnavailableError("the device's token cannot be checked now") from exc
            identity = proven
        work = self.endpoint.take(identity, message.topic, bytes(message.data))
        if wait:
            await work
        else:  # QoS 0: stored when it can be; the device is promised nothing
            task = asyncio.create_task(_logged(work), name=f"mqtt-qos0-{identity.device_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return False


async def _logged(work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("a QoS 0 message could not be stored")


class MqttEndpoint:
    """Everything `pulse cloud mqtt` runs: database pools, writer, ingest, broker, spool, LISTEN."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.config: MqttConfig = settings.mqtt
        password = settings.db_role_password.get_secret_value() if settings.db_role_password else None
        self.db = Database(settings.database_url, settings.roles, password=password,
                           sizes=PoolSizes(app=settings.db_pool_size, operator=1, writer=settings.writer_connections))
        self.metrics = metrics or Metrics()
        self.tokens = DeviceTokenCache(credential_lookup(self.db), ttl_s=settings.device_token_cache_s)
        self.writer = Writer(settings.writer, retry_after_s=settings.retry_after_s, on_flush=self.metrics.on_flush)
        # with PULSE_STREAM_URL, messages go to JetStream (PUBACK once it has them); serve's partition writers store them
        self.stream = StreamClient(settings.stream, name="pulse-cloud-mqtt") if settings.stream else None
        self.sink: RowWriter = StreamPublisher(self.stream, settings.stream) if self.stream and settings.stream else self.writer
        self.ingest = IngestService(config=settings.ingest, tokens=self.tokens, writer=self.sink, metrics=self.metrics, db=self.db,
                                    twin_limits=TwinLimits(max_state_bytes=settings.twin_max_state_bytes))
        self.entitlements = Entitlements(self.db, ttl_s=settings.subscription_cache_s)
        self.ingest.entitlements = self.entitlements
        self.auth = TokenAuthenticator(self.tokens, self.entitlements)
        self.spool = Spool(self.config.data_dir / "spool.sqlite")
        self.sessions = SessionStore(self.config.data_dir / "sessions.sqlite", queue_max=self.config.session_queue_max,
                                     max_age_s=self.config.session_queue_max_age_s)
        self.intake = CloudIntake(self)
        self.broker: CloudBroker | None = None
        self.counters = {"stored": 0, "quarantined": 0, "spooled": 0, "commands_sent": 0, "deltas_sent": 0}
        self._spool_lock = asyncio.Lock()
        self._drain_wake = asyncio.Event()
        self._push_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._listener: asyncpg.Connection | None = None
        self._background: list[asyncio.Task[None]] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def _tls_files(self) -> tuple[Path, Path]:
        c = self.config
        if c.certfile is not None and c.keyfile is not None:
            return c.certfile, c.keyfile
        ca = CertificateAuthority.load_or_create(self.settings.sync.ca_dir)
        cert_pem, key_pem = ca.issue_server_cert(list(self.settings.sync.names))
        c.data_dir.mkdir(parents=True, exist_ok=True)
        cert, key = c.data_dir / "server.pem", c.data_dir / "server.key"
        cert.write_bytes(cert_pem)
        write_private(key, key_pem)
        return cert, key

    def broker_config(self) -> dict[str, Any]:
        c = self.config
        listeners: dict[str, Any] = {}
        if c.plain_port is not None:
            listeners["default"] = {"type": "tcp", "bind": f"{c.host}:{c.plain_port}", "max_connections": c.max_connections}
        cert, key = self._tls_files()
        tls = {"type": "tcp", "bind": f"{c.host}:{c.tls_port}", "max_connections": c.max_connections, "ssl": True,
               "certfile": str(cert), "keyfile": str(key)}
        listeners["tls" if listeners else "default"] = tls
        return {"listeners": listeners, "plugins": {AUTH_PLUGIN: {"authenticator": self.auth}}}

    async def start(self) -> None:
        await self.db.open()
        self.writer.start(self.db.writer_pool)
        if self.stream is not None:
            self.stream.start()
        self.spool.open()
        self.sessions.open()
        broker = CloudBroker(self.broker_config(), self.intake, self.sessions)
        broker.on_session_ready = self._on_session_ready
        broker.on_session_connectivity = self._on_connectivity
        await broker.start()
        self.broker = broker
        self._background = [
            asyncio.create_task(self._drain_forever(), name="mqtt-spool-drain"),
            asyncio.create_task(self._listen_forever(), name="mqtt-listen"),
        ]
        if self.spool.count:
            self._drain_wake.set()

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.shutdown()
        for task in list(self._tasks) + list(self.intake._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self.intake._tasks, return_exceptions=True)
        await self._unlisten()
        await self.writer.stop()
        if self.stream is not None:
            await self.stream.stop()
        await self.db.close()
        self.spool.close()
        self.sessions.close()

    # --- device -> cloud ----------------------------------------------------------------------

    async def take(self, identity: DeviceIdentity, topic: str, raw: bytes) -> None:
        """Store (or quarantine) one message; returns once it is committed to PostgreSQL or the spool."""
        received = dt.datetime.now(dt.UTC)
        if not may_publish(identity.device_id, topic):
            code, message = denial(identity.device_id, topic)
            log.info("quarantined a publish from %s on %s: %s", identity.device_id, topic[:200], code)
            row = QuarantineRow(identity.tenant_id, identity.device_id, None, SOURCE, str(code), message, raw, received)
            await self._write_quarantine(row)
            return
        kind = topics.parse(topic).kind
        if kind is TopicKind.TWIN_GET:
            await self._answer_twin_get(identity)
            return
        await self._store(identity, TOPIC_TYPE[kind], raw, received)

    async def _write_quarantine(self, row: QuarantineRow) -> None:
        try:
            await self.sink.write([], [row])
        except _UNAVAILABLE as exc:  # not acknowledged: the device sends it again after reconnecting
            raise StorageUnavailableError(f"the quarantine row could not be written: {exc}") from exc
        self.counters["quarantined"] += 1

    async def _store(self, identity: DeviceIdentity, msg_type: MessageType, raw: bytes, received: dt.datetime) -> None:
        if not self.spool.count:
            try:
                prepared = await self.ingest.store(identity, [Message(raw, msg_type)], source=SOURCE, received_at=received)
                self.counters["stored"] += len(prepared.telemetry)
                self.counters["quarantined"] += len(prepared.quarantine)
                return
            except _UNAVAILABLE as exc:
                log.warning("database unavailable (%s): spooling messages until it is back", exc)
        self.spool.put(tenant_id=identity.tenant_id, device=identity.device, device_id=identity.device_id,
                       credential_id=identity.credential_id, msg_type=msg_type.value, raw=raw,
                       received_ms=int(received.timestamp() * 1000))
        self.counters["spooled"] += 1
        self._drain_wake.set()

    async def _drain_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._drain_wake.wait(), timeout=self.config.spool_retry_s)
            self._drain_wake.clear()
            if self.spool.count:
                await self.drain()

    async def drain(self) -> int:
        """Store what the spool holds, oldest first; stops at the first message the database cannot take."""
        done = 0
        async with self._spool_lock:
            while self.spool.count:
                batch = self.spool.head()
                if not batch:
                    break
                for item in batch:
                    try:
                        await self._store_spooled(item)
                    except _UNAVAILABLE:
                        return done
                    self.spool.delete(item.id)
                    done += 1
        if done:
            log.info("spool drained: %d message(s) stored", done)
        return done

    async def _store_spooled(self, item: Spooled) -> None:
        identity = DeviceIdentity(item.tenant_id, item.device, item.device_id, "active", item.credential_id)
        received = dt.datetime.fromtimestamp(item.received_ms / 1000, dt.UTC)
        msg_type = MessageType(item.msg_type) if item.msg_type else None
        prepared = await self.ingest.store(identity, [Message(item.raw, msg_type)], source=SOURCE, received_at=received)
        self.counters["stored"] += len(prepared.telemetry)

    # --- cloud -> device ----------------------------------------------------------------------

    def _on_connectivity(self, key: str, kind: Connectivity, will: bool) -> None:
        """A device connecting, disconnecting or being lost (keep-alive, a dropped link: then its Will
        counts) is stored as its connectivity event, as the gateway records it (protocol/connectivity.py)."""
        identity = self.auth.identities.get(key)
        if identity is None:
            return
        now = dt.datetime.now(dt.UTC)
        raw = event_message(kind, now_ms=int(now.timestamp() * 1000), will=will)
        task = asyncio.create_task(_logged(self._store(identity, MessageType.EVENT, raw, now)), name=f"mqtt-connectivity-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_session_ready(self, key: str) -> None:
        self._schedule_push(key)

    def _schedule_push(self, key: str) -> None:
        task = asyncio.create_task(self._push_logged(key), name=f"mqtt-push-{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push_logged(self, key: str) -> None:
        try:
            await self.push(key)
        except _UNAVAILABLE as exc:
            log.info("%s: downlink not sent now (database unavailable: %s); sent when it reconnects", key, exc)
        except Exception:
            log.exception("%s: downlink failed", key)

    async def push(self, key: str) -> None:
        """Send a connected device its queued commands and its twin delta, on the topics it subscribes to."""
        broker, identity = self.broker, self.auth.identities.get(key)
        if broker is None or identity is None or not broker.connected(key):
            return
        lock = self._push_locks.setdefault(key, asyncio.Lock())
        async with lock:
            device = identity.device_id
            if broker.holds(key, topics.build(device, TopicKind.COMMAND, "probe")):
                try:
                    messages = await self.ingest.commands_for(identity)
                except ConflictError:
                    messages = []  # its commands go through its gateway
                for payload in messages:
                    command_id = str(orjson.loads(payload)["id"])
                    await broker.deliver(key, topics.build(device, TopicKind.COMMAND, command_id), payload)
                    self.counters["commands_sent"] += 1
            desired = topics.build(device, TopicKind.TWIN_DESIRED)
            if broker.holds(key, desired):
                async with self.db.tenant(identity.tenant_id) as conn:
                    doc = await twins.load(conn, identity.tenant_id, device)
                payload = delta_message(doc, now_ms=int(time.time() * 1000))
                if payload is not None:
                    await broker.deliver(key, desired, payload)
                    self.counters["deltas_sent"] += 1

    async def _answer_twin_get(self, identity: DeviceIdentity) -> None:
        broker = self.broker
        key = session_key(identity.tenant_id, identity.device_id)
        topic = topics.build(identity.device_id, TopicKind.TWIN_DOCUMENT)
        if broker is None or not broker.holds(key, topic):
            return
        async with self.db.tenant(identity.tenant_id) as conn:
            doc = await twins.load(conn, identity.tenant_id, identity.device_id)
        await broker.deliver(key, topic, document_message(doc, now_ms=int(time.time() * 1000)))

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if self.broker is not None and self.broker.connected(payload):
            self._schedule_push(payload)

    def _revoked(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """A token rotated or revoked, or a device's status changed: forget it and end its sessions."""
        try:
            if payload.startswith("device:"):
                device = uuid.UUID(payload.removeprefix("device:"))
                self.tokens.invalidate(device=device)
                keys = [k for k, i in self.auth.identities.items() if i.device == device]
            else:
                credential = uuid.UUID(payload)
                self.tokens.invalidate(credential_id=credential)
                keys = [k for k, i in self.auth.identities.items() if i.credential_id == credential]
        except ValueError:
            return
        for key in keys:
            task = asyncio.create_task(self.disconnect(key), name=f"mqtt-revoke-{key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def disconnect(self, key: str) -> bool:
        """End the live connection of session ``key`` (its credential changed); True when there was one."""
        self.auth.identities.pop(key, None)
        broker = self.broker
        entry = broker._sessions.get(key) if broker is not None else None
        if entry is None or entry[1] is None or entry[0].transitions.state != "connected":
            return False
        log.info("%s: credential changed, ending its session", key)
        await entry[1].handle_connection_closed()
        return True

    async def _listen_forever(self) -> None:
        """LISTEN pulse_device on a connection of its own; after it is lost (the database restarted),
        listen again and push to every connected device (what was notified meanwhile was missed)."""
        while True:
            if self._listener is None or self._listener.is_closed():
                try:
                    self._listener = await asyncpg.connect(self.db.dsn_for(self.db.roles.app))
                    await self._listener.add_listener(CHANNEL, self._notified)
                    await self._listener.add_listener(REVOKED, self._revoked)
                    if self.broker is not None:
                        for key in list(self.auth.identities):
                            if self.broker.connected(key):
                                self._schedule_push(key)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("LISTEN %s failed (%s); retrying", CHANNEL, exc)
                    await self._unlisten()
            await asyncio.sleep(self.config.spool_retry_s)

    async def _unlisten(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    def snapshot(self) -> dict[str, Any]:
        return {**self.counters, "spool_depth": self.spool.count, "sessions": self.sessions.snapshot(),
                "connected": self.broker.connected_devices() if self.broker is not None else 0}


async def run(settings: Settings, stop: asyncio.Event) -> None:
    endpoint = MqttEndpoint(settings)
    await endpoint.start()
    c = endpoint.config
    log.info("MQTT endpoint: TLS on %s:%d%s", c.host, c.tls_port, f", plain TCP on {c.host}:{c.plain_port}" if c.plain_port else "")
    try:
        await stop.wait()
    finally:
        await endpoint.stop()
