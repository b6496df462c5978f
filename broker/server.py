"""The amqtt broker of every Pulse tier, with device auth, topic ACL and durable-before-PUBACK intake.

Used by the gateway (edge/broker.py: its intake is the SQLite buffer) and by the cloud's endpoint
for direct devices (cloud/mqtt/: its intake is the PostgreSQL writer). What differs is passed in:
an ``Intake`` (``accept``: store or quarantine one PUBLISH) and an ``Authenticator`` (``check``).

Where amqtt 0.12 acknowledges. For an incoming QoS 1 PUBLISH, ``ProtocolHandler.
_handle_qos1_message_flow`` puts the message on the session's delivery queue and sends PUBACK at
once; the broker only later takes it off that queue, fires MESSAGE_RECEIVED and checks topic
permissions (``Broker._handle_message_delivery``). A plugin therefore runs too late to make the
PUBACK mean "stored". So the broker installs its own protocol handler for every client session
(``DeviceBroker._handle_client_session`` swaps in ``DeviceHandler`` before the session starts)
whose incoming message flows first await the intake (ACL check, envelope parse, the store's group
commit), and only then let amqtt queue the message and send PUBACK (QoS 1) or PUBREC (QoS 2).
QoS 0 has no acknowledgement: the message is queued for the next commit and the device is not
told anything (best effort by definition).

A refused message (ACL, or not a valid envelope) is quarantined with its code, acknowledged (MQTT
3.1.1 has no negative PUBACK; acknowledging stops the device from resending it forever) and not
forwarded to subscribers. If the intake cannot store it (it raises a ``PulseError``), nothing is
acknowledged and the connection is closed, so the device keeps the message and sends it again
after reconnecting.

Topic ACL (broker/acl.py): PUBLISH is decided by the intake before PUBACK; ``DeviceBroker.
_topic_filtering`` answers SUBSCRIBE (``may_subscribe``); a Will must be on the device's own topics.

Connections: ``username`` is the device id and ``password`` its secret; the MQTT client id must
equal the device id, so one device cannot take over another's session. The authenticator may
answer a string instead of True: the session is then kept under that key (the cloud's
``{tenant}/{device}``, since device ids are unique only within a tenant).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from amqtt.broker import Broker
from amqtt.codecs_amqtt import read_or_raise
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents, MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.packet import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.publish import PublishPacket, PublishPayload, PublishVariableHeader
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import INCOMING, ApplicationMessage, IncomingApplicationMessage, OutgoingApplicationMessage, Session
from amqtt.utils import gen_client_id

from pulse.broker.acl import may_publish, may_subscribe
from pulse.broker.sessions import Queued, SessionStore
from pulse.protocol.connectivity import Connectivity
from pulse.protocol.errors import PulseError

log = logging.getLogger("pulse.broker")


class Intake(Protocol):
    """Where a device's PUBLISH goes. ``accept`` returns True when the message should be forwarded
    to subscribers; with ``wait`` only after it is stored (raises ``PulseError`` when it was not)."""

    def identity(self, session: Session | None) -> str | None: ...

    async def accept(self, session: Session | None, message: ApplicationMessage, *, wait: bool) -> bool: ...


class Authenticator(Protocol):
    """``check(username, password)``: False refuses the CONNECT (CONNACK 5, not authorized); True
    admits it; a string admits it under that session key (replaces the client id)."""

    async def check(self, username: str | None, password: str | None) -> bool | str: ...


AUTH_PLUGIN = f"{__name__}.DeviceAuthPlugin"
"""The amqtt plugin path of our auth plugin: ``{"plugins": {AUTH_PLUGIN: {"authenticator": ...}}}``."""


Deliver = Callable[[Session, "DeviceHandler", ApplicationMessage], Awaitable[bool]]
"""Hands an accepted incoming message to the broker (``DeviceBroker._deliver_incoming``): False when
its topic may not be published at all (the connection is then closed)."""

_HANDLERS = {
    CONNACK: "handle_connack",
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback",
    UNSUBACK: "handle_unsuback",
    PUBACK: "handle_puback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    PINGREQ: "handle_pingreq",
    PINGRESP: "handle_pingresp",
    PUBLISH: "handle_publish",
    DISCONNECT: "handle_disconnect",
}
"""Packet type -> the handler method amqtt runs for it, as a task of its own (CONNECT is awaited)."""


async def _read_publish(reader: Any, fixed: MQTTFixedHeader) -> PublishPacket:
    """amqtt's ``PublishPacket.from_stream``, the same packet from one read of the remaining length
    (amqtt reads the topic's length, the topic, the packet id and the payload one by one, then
    encodes the variable header again to learn the payload's length). A PUBLISH shorter than its
    own topic and packet id is an ``MQTTError`` (discarded; the stream stays in step)."""
    body = await read_or_raise(reader, fixed.remaining_length)
    qos = (fixed.flags >> 1) & 0x03
    pos = 2 + int.from_bytes(body[:2], "big")
    if len(body) < 2 or len(body) < pos + (2 if qos else 0):
        raise MQTTError("a PUBLISH shorter than its topic and packet id")
    raw_topic = body[2:pos]
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        topic = str(raw_topic)  # as amqtt's decode_string
    packet_id = None
    if qos:
        packet_id = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
    packet = PublishPacket(fixed, PublishVariableHeader(topic, packet_id), PublishPayload(body[pos:]))
    packet.protocol_ts = datetime.now(UTC)
    return packet


class DeviceHandler(BrokerProtocolHandler):
    """amqtt's broker-side protocol handler, with the intake awaited before PUBACK/PUBREC, and
    amqtt's own costs per message cut where a profile of the gateway at full load (py-spy, 1,000
    devices) found them, each the same protocol behaviour:

    - an accepted QoS 0/1 message goes straight to the broker (``deliver``) from the task that
      handled it, instead of through the session's delivery queue, a task per message and an
      ``asyncio.wait`` over four futures in ``Broker._client_message_loop``, then the broadcast
      queue with another task and ``asyncio.wait`` per message. QoS 2 keeps amqtt's path (its
      PUBREL exchange);
    - keep-alive: the reader notes when each packet arrived and one timer per connection checks
      that, instead of ``asyncio.wait_for`` (a task and a timer) around every read;
    - no write timer: amqtt re-arms a timer on every packet sent, whose callback does nothing on a
      broker (``BrokerProtocolHandler.handle_write_timeout``);
    - a PUBLISH is decoded from one read of its remaining length (``_read_publish``), and a
      PUBACK written as its four bytes (``_send_puback``)."""

    def __init__(self, plugins_manager: Any, intake: Intake, deliver: Deliver | None = None) -> None:
        super().__init__(plugins_manager)
        self._intake = intake
        self._deliver = deliver
        self._suppressed: set[int] = set()
        self._last_read = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def _init_session(self, session: Session) -> None:
        super()._init_session(session)
        self.keepalive_timeout = None  # no write timer (see the class docstring)

    async def _reader_loop(self) -> None:
        """amqtt 0.12's ``ProtocolHandler._reader_loop`` with the keep-alive watchdog instead of a
        ``wait_for`` per packet and a table instead of the if-chain; otherwise the same."""
        session, reader, ready = self.session, self.reader, self._reader_ready
        if session is None or reader is None or ready is None:
            raise AMQTTError("the handler is not attached to a session")
        loop = asyncio.get_running_loop()
        timeout = session.keep_alive if session.keep_alive and session.keep_alive > 0 else None
        self._last_read = loop.time()
        if timeout is not None:
            self._watchdog = loop.call_later(timeout, self._check_keep_alive, timeout)
        running: deque[asyncio.Task[None]] = deque()
        ready.set()
        try:
            while True:
                try:
                    while running and running[0].done():
                        running.popleft()
                    fixed_header = await MQTTFixedHeader.from_stream(reader)
                    if not fixed_header:
                        break  # EOF
                    self._last_read = loop.time()
                    kind = fixed_header.packet_type
                    if kind in (RESERVED_0, RESERVED_15):
                        log.warning("%s: reserved packet type %d, closing the connection", session.client_id, kind)
                        await self.handle_connection_closed()
                        continue
                    if kind == PUBLISH:
                        packet = await _read_publish(reader, fixed_header)
                    else:
                        packet = await packet_class(fixed_header).from_stream(reader, fixed_header=fixed_header)
                    await self.plugins_manager.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=session)
                    if kind == CONNECT:
                        await self.handle_connect(packet)
                        continue
                    name = _HANDLERS.get(kind)
                    if name is None:
                        log.warning("%s: unhandled packet type %d", session.client_id, kind)
                        continue
                    running.append(asyncio.create_task(getattr(self, name)(packet)))
                except MQTTError:
                    log.debug("%s: message discarded", session.client_id)
                except asyncio.CancelledError:
                    break
                except NoDataError:
                    log.debug("%s: no data available", session.client_id)
                except Exception as exc:  # noqa: BLE001 - as amqtt: the connection ends, the broker goes on
                    log.warning("%s: unhandled exception in the reader: %r", session.client_id, exc)
                    break
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
        while running:
            running.popleft().cancel()
        await self.handle_connection_closed()
        self._reader_stopped.set()
        await self.stop()

    def _check_keep_alive(self, timeout: float) -> None:
        idle = asyncio.get_running_loop().time() - self._last_read
        if idle >= timeout:
            self.handle_read_timeout()
            idle = 0.0  # as amqtt: the next check is a whole period later
        self._watchdog = asyncio.get_running_loop().call_later(timeout - idle, self._check_keep_alive, timeout)

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        """amqtt's ``handle_publish`` without its debug line, whose f-string (with the session
        queue's size) was built for every message whether or not debug logging is on."""
        header = publish_packet.variable_header
        if publish_packet.topic_name is None or publish_packet.data is None:
            return
        message = IncomingApplicationMessage(
            header.packet_id if header else None, publish_packet.topic_name, publish_packet.qos, publish_packet.data,
            publish_packet.retain_flag,
        )
        message.publish_packet = publish_packet
        await self._handle_message_flow(message)

    async def _handle_qos0_message_flow(self, app_message: IncomingApplicationMessage | OutgoingApplicationMessage) -> None:
        if app_message.direction == INCOMING:
            if not await self._intake.accept(self.session, app_message, wait=False):
                return
            if self._deliver is None:
                await super()._handle_qos0_message_flow(app_message)
            elif app_message.publish_packet is not None and app_message.publish_packet.dup_flag:
                log.warning("[MQTT-3.3.1-2] DUP set on a QoS 0 message from %s: not forwarded", self._intake.identity(self.session))
            else:
                await self._forward(app_message)
            return
        await super()._handle_qos0_message_flow(app_message)

    async def _handle_qos1_message_flow(self, app_message: IncomingApplicationMessage | OutgoingApplicationMessage) -> None:
        if app_message.direction == INCOMING and app_message.puback_packet is None:
            forward = await self._accept_durably(app_message)
            if forward is None:
                return
            if forward and self._deliver is None:
                await super()._handle_qos1_message_flow(app_message)
                return
            if forward:
                await self._forward(app_message)  # before the PUBACK, as amqtt queues it before
            app_message.puback_packet = await self._send_puback(app_message.packet_id)
            return
        await super()._handle_qos1_message_flow(app_message)

    async def _send_puback(self, packet_id: int) -> Any:
        """PUBACK as its four bytes (MQTT-3.4), under the write lock, drained, with amqtt's handling
        of a closed connection; a packet object and the PACKET_SENT event only when a plugin listens
        for that event (none of ours does). Returns what ``puback_packet`` is set to."""
        if MQTTEvents.PACKET_SENT in getattr(self.plugins_manager, "_event_plugin_callbacks", (MQTTEvents.PACKET_SENT,)):
            puback = PubackPacket.build(packet_id)
            await self._send_packet(puback)
            return puback
        writer = self.writer
        if writer is not None:
            try:
                async with self._write_lock:
                    writer.write(b"\x40\x02" + packet_id.to_bytes(2, "big"))
                    await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                await self.handle_connection_closed()
        return True

    async def _forward(self, app_message: ApplicationMessage) -> None:
        assert self._deliver is not None and self.session is not None
        if not await self._deliver(self.session, self, app_message):
            await self.handle_connection_closed()

    async def _handle_qos2_message_flow(self, app_message: IncomingApplicationMessage | OutgoingApplicationMessage) -> None:
        if app_message.direction == INCOMING and app_message.pubrec_packet is None:
            forward = await self._accept_durably(app_message)
            if forward is None:
                return
            if not forward:
                self._suppressed.add(id(app_message))
        await super()._handle_qos2_message_flow(app_message)

    async def _accept_durably(self, app_message: IncomingApplicationMessage | OutgoingApplicationMessage) -> bool | None:
        """True: stored, forward it; False: acknowledge but do not forward; None: storage failed, connection closed."""
        try:
            return await self._intake.accept(self.session, app_message, wait=True)
        except PulseError as exc:
            log.error("not acknowledging a message from %s: %s", self._intake.identity(self.session), exc.message)
            await self.handle_connection_closed()
            return None

    def handle_read_timeout(self) -> None:
        # MQTT-3.1.2-24: nothing received for 1.5 x the keep-alive (the reader's timeout, set by
        # DeviceBroker) closes the connection; the broker then publishes the Will (not a DISCONNECT).
        log.info("%s: no packet within 1.5 x its keep-alive, disconnecting", self._intake.identity(self.session))
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def mqtt_deliver_next_message(self) -> ApplicationMessage | None:
        while True:
            message = await super().mqtt_deliver_next_message()
            if message is None or id(message) not in self._suppressed:
                return message
            self._suppressed.discard(id(message))


class DeviceAuthPlugin(BaseAuthPlugin):
    """CONNECT: username = device id, password = its secret, client id = device id."""

    @dataclass
    class Config:
        authenticator: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        auth: Authenticator = self.config.authenticator
        username, password = session.username, session.password
        if username is not None and session.client_id != username:
            log.info("refused connection: client id %r is not the device id %r", session.client_id, username)
            return False
        try:
            ok = await auth.check(username, password)
        except PulseError as exc:
            log.error("refused connection from %s: cannot read credentials: %s", username, exc.message)
            return False
        if ok and username is None:
            session.is_anonymous = True
        if isinstance(ok, str):
            session.client_id = ok  # the key the session is kept under (the cloud's tenant/device)
            return True
        if not ok:
            log.info("refused connection from %s (client id %r)", username or "an anonymous client", session.client_id)
        return ok


class SessionState:
    """A small stand-in for the ``transitions.Machine`` amqtt gives every Session (new -> connected
    <-> disconnected). The Machine costs about 16 KB per session, a sixth of the whole memory
    budget at 1,000 devices; this does the same three transitions with the same callbacks."""

    __slots__ = ("_session", "state")

    def __init__(self, session: Session, state: str) -> None:
        self._session = session
        self.state = state

    def connect(self) -> None:
        if self.state == "connected":
            raise ValueError("session is already connected")
        self.state = "connected"
        self._session._on_enter_connected()

    def disconnect(self) -> None:
        self.state = "disconnected"
        self._session._on_enter_disconnected()

    def is_connected(self) -> bool:
        return self.state == "connected"

    def is_disconnected(self) -> bool:
        return self.state == "disconnected"

    def is_new(self) -> bool:
        return self.state == "new"


_AUTHENTICATED = "pulse.authenticated"
_CONNECT_FIELDS = ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive", "username", "password",
                   "remote_address", "remote_port", "ssl_object", "is_anonymous")


async def _refuse(writer: Any) -> None:
    """CONNACK 5 (not authorized), then close; a client that hung up first is no error."""
    try:
        await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
        await writer.close()
    except ConnectionError:
        pass


class FilterTable(dict[str, list[tuple[Session, int]]]):
    """amqtt's subscription table (topic filter -> its subscribers) that counts changes to its set
    of filters (``version``), so that the fan-out can remember which filters match a topic: amqtt
    tries every filter for every message (about 1 µs each; 2 ms a message at 1,000 devices with
    two filters each). Changes to a filter's subscriber list do not count: the fan-out reads those
    from the table every time."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def __setitem__(self, key: str, value: list[tuple[Session, int]]) -> None:
        if key not in self:
            self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.version += 1
        super().__delitem__(key)

    def setdefault(self, key: str, default: list[tuple[Session, int]] | None = None) -> list[tuple[Session, int]]:
        if key not in self:
            self.version += 1
        return super().setdefault(key, default if default is not None else [])

    def pop(self, key: str, *default: Any) -> Any:
        self.version += 1
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, list[tuple[Session, int]]]:
        self.version += 1
        return super().popitem()

    def clear(self) -> None:
        self.version += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        self.version += 1
        super().update(*args, **kwargs)


_MATCH_CACHE_MAX = 16_384
"""Topics whose matching filters are remembered (a site has a few topics per device)."""


class DeviceBroker(Broker):
    """amqtt's Broker with ``DeviceHandler`` installed for every client session, and what the
    twin feature needs (edge/twin.py, cloud/mqtt/): ``publish`` (from the broker itself, to every
    matching subscription, optionally retained), ``deliver`` (to one session only),
    ``subscribed`` (is a device connected with a subscription matching a topic), and
    ``on_device_ready`` (called with the device id when a device's session starts, and after it
    subscribes, so commands waiting for it go out).

    Persistent sessions (clean session 0) live in ``store`` (broker/sessions.py) as well as in
    amqtt's memory: restored at start (so CONNACK says session present after a restart), their
    subscriptions saved on every change, and every QoS 1 message for them queued in SQLite first
    and sent from there by one task per connected session (``_pump``), one message in flight at a
    time, deleted on PUBACK. A message sent and not acknowledged before the connection ends is sent
    again with DUP and the same packet id when the session resumes. ``on_connectivity`` is called
    with (device id, ``Connectivity`` kind, whether a Will was published) as devices come and go
    (not while the broker itself stops)."""

    def __init__(self, config: dict[str, Any], intake: Intake, store: SessionStore | None = None) -> None:
        super().__init__(config)
        self._subscriptions: FilterTable = FilterTable()
        self._matching: dict[str, tuple[str, ...]] = {}
        self._matching_version = -1
        self.intake = intake
        self.store = store
        self.on_device_ready: Callable[[str], None] | None = None
        self.on_connectivity: Callable[[str, Connectivity, bool], None] | None = None
        self._closing = False
        self._wake: dict[str, asyncio.Event] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._sends: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await super().start()
        if self.store is not None:
            self._restore(self.store)

    async def shutdown(self) -> None:
        self._closing = True  # the devices did not leave: the gateway is stopping
        await super().shutdown()

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        """amqtt's connection handling, and the connection always closed at its end. amqtt leaves
        it open on some paths (a CONNECT never read, a task cancelled while the broker stops, or
        its ``close`` interrupted in ``drain`` after marking itself closed), and the socket then
        lingers until the garbage collector finds it."""
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            inner = getattr(writer, "_writer", None)  # amqtt's StreamWriterAdapter over asyncio's StreamWriter
            if isinstance(inner, asyncio.StreamWriter) and not inner.is_closing():
                inner.close()

    def _restore(self, store: SessionStore) -> None:
        for stored in store.load():
            session = Session()
            session.client_id = stored.client_id
            session.username = stored.username
            session.clean_session = False
            session.transitions = SessionState(session, "disconnected")  # type: ignore[assignment]
            for topic_filter, qos in stored.subscriptions:
                self._subscriptions.setdefault(topic_filter, []).append((session, qos))
            self._sessions[stored.client_id] = (session, None)  # type: ignore[assignment]
        log.info("restored %d persistent session(s)", len(self._sessions))

    def session_subscriptions(self, client_id: str) -> list[tuple[str, int]]:
        return [(f, qos) for f, subs in self._subscriptions.items() for s, qos in subs if s.client_id == client_id]

    async def publish(self, topic: str, payload: bytes, *, retain: bool, expires_ms: int | None = None) -> None:
        """Publish as the gateway (QoS 1). ``retain``: also keep it for later subscribers; an empty
        retained payload clears the topic's retained message. ``expires_ms``: a persistent session's
        queue drops it unsent from then on (a command's deadline)."""
        if retain:
            await self.retain_message(None, topic, payload, QOS_1)
        await self._broadcast_queue.put({"session": None, "topic": topic, "data": payload, "qos": QOS_1, "expires_ms": expires_ms})

    async def deliver(self, client_id: str, topic: str, payload: bytes, *, expires_ms: int | None = None) -> bool:
        """Send ``payload`` on ``topic`` (QoS 1) to the session kept under ``client_id`` only, if it
        holds a matching subscription: queued in the store for a persistent session (sent at once
        when it is connected, when it is back otherwise), sent at once to a connected clean one.
        False when the session is unknown, not subscribed, or a clean one that is not connected."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session, handler = entry
        qos = max((q for f, subs in self._subscriptions.items() if self._matches(topic, f) for s, q in subs if s is session), default=None)
        if qos is None:
            return False
        if self.store is not None and not session.clean_session and qos >= QOS_1:
            self.store.enqueue(client_id, topic, payload, QOS_1, expires_ms=expires_ms)
            wake = self._wake.get(client_id)
            if wake is not None:
                wake.set()
            return True
        if session.transitions.state != "connected" or handler is None:
            return False
        task = asyncio.create_task(handler.mqtt_publish(topic, payload, qos, retain=False), name=f"deliver-{client_id}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)
        return True

    def subscribed(self, device_id: str, topic: str) -> bool:
        """A connected session of the device subscribes to ``topic``, or a persistent one (connected
        or not) does: its queue then holds what is published until it is back."""
        for topic_filter, subscriptions in self._subscriptions.items():
            if not bool(self._matches(topic, topic_filter)):
                continue
            for session, _ in subscriptions:
                if session.username != device_id:
                    continue
                if session.transitions.state == "connected" or (self.store is not None and not session.clean_session):
                    return True
        return False

    def _device_ready(self, session: Session) -> None:
        if self.on_device_ready is not None and session.username is not None:
            try:
                self.on_device_ready(session.username)
            except Exception:  # a listener never breaks a session
                log.exception("device-ready listener failed for %s", session.username)

    def _connectivity(self, session: Session, kind: Connectivity) -> None:
        if self.on_connectivity is not None and session.username is not None and not self._closing:
            try:
                self.on_connectivity(session.username, kind, kind is Connectivity.LOST and bool(session.will_flag))
            except Exception:  # a listener never breaks a session
                log.exception("connectivity listener failed for %s", session.username)

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        cid = client_session.client_id
        persistent = self.store is not None and cid is not None and not client_session.clean_session
        if self.store is not None and cid is not None:
            try:
                if persistent:
                    self.store.save(cid, client_session.username, self.session_subscriptions(cid))
                else:
                    self.store.delete(cid)  # a clean session ends a stored one (only once authenticated)
            except Exception:
                log.exception("session store failed for %s", cid)
        self._connectivity(client_session, Connectivity.CONNECTED)
        pump: asyncio.Task[None] | None = None
        if persistent and cid is not None:
            await self._stop_pump(cid)  # a connection this one took over
            pump = self._pumps[cid] = asyncio.create_task(self._pump(client_session, handler), name=f"session-{cid}")
        self._device_ready(client_session)  # connected, and a resumed session has its subscriptions
        try:
            await super()._client_message_loop(client_session, handler)
        finally:
            if pump is not None and cid is not None and self._pumps.get(cid) is pump:  # not a newer connection's
                await self._stop_pump(cid)
            elif pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)

    async def _handle_disconnect(self, client_session: Session, handler: Any, disconnect_waiter: Any) -> None:
        result = disconnect_waiter.result()
        clean = result is not None and isinstance(result, DisconnectPacket)
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        self._connectivity(client_session, Connectivity.DISCONNECTED if clean else Connectivity.LOST)

    async def _stop_pump(self, client_id: str) -> None:
        task = self._pumps.pop(client_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _pump(self, session: Session, handler: Any) -> None:
        """Send the session's queued messages in order, one in flight, each deleted on its PUBACK."""
        store, cid = self.store, session.client_id
        assert store is not None and cid is not None
        wake = self._wake.setdefault(cid, asyncio.Event())
        try:
            while True:
                wake.clear()
                batch = store.pending(cid)
                if not batch:
                    await wake.wait()
                    continue
                for queued in batch:
                    if not await self._send_queued(session, handler, queued):
                        return
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("session %s: delivery stopped", cid)

    async def _send_queued(self, session: Session, handler: Any, queued: Queued) -> bool:
        """False when the connection ended before the PUBACK (the message stays queued)."""
        store = self.store
        assert store is not None
        dup = queued.packet_id is not None
        packet_id = queued.packet_id if queued.packet_id is not None else session.next_packet_id
        if dup:
            store.counters.redelivered += 1
        else:
            store.sent(queued.id, packet_id)  # before it goes out: after a crash it is sent again, with DUP
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        handler._puback_waiters[packet_id] = waiter
        try:
            await handler._send_packet(PublishPacket.build(queued.topic, queued.payload, packet_id, dup, queued.qos, False))
            await waiter
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                raise
            return False  # the handler stopped (connection closed): its waiters were cancelled
        finally:
            handler._puback_waiters.pop(packet_id, None)
        store.acked(queued.id)
        return True

    async def _deliver_incoming(self, session: Session, handler: DeviceHandler, message: ApplicationMessage) -> bool:
        """``Broker._handle_message_delivery`` for a message the handler hands over directly (the
        same events, checks, fan-out and retain); False: a topic no client may publish on."""
        await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id, message=message)
        topic = message.topic
        if not topic or "#" in topic or "+" in topic or topic.startswith("$"):
            log.warning("%s: a PUBLISH on %r is not allowed (MQTT-4.7), closing the connection", session.client_id, topic)
            return False
        if not await self._topic_filtering(session, topic=topic, action=Action.PUBLISH):
            return True
        await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message)
        # fanned out here rather than through amqtt's broadcast queue (a task and an asyncio.wait per message)
        self._fan_out({"session": session, "topic": topic, "data": message.data}, self._tasks_queue)
        if message.publish_packet is not None and message.publish_packet.retain_flag:
            await self.retain_message(session, topic, message.data, message.qos)
        return True

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt's fan-out of one message from the broadcast queue (the gateway's own ``publish``,
        QoS 2 messages of devices, Wills): ``_fan_out``."""
        broadcast = await self._broadcast_queue.get()
        self._fan_out(broadcast, running_tasks)

    def _fan_out(self, broadcast: dict[str, Any], running_tasks: deque[asyncio.Task[Any]]) -> None:
        """One message to every matching subscription, with QoS 1+ for persistent sessions queued in
        the store (connected or not) and the delivered QoS never above the subscription's. Sends
        to connected clean sessions are tasks on ``running_tasks`` (amqtt's ``_tasks_queue``)."""
        while running_tasks and running_tasks[0].done():  # as amqtt's _broadcast_loop: reap, log failures
            task = running_tasks.popleft()
            if not task.cancelled() and task.exception() is not None:
                log.error("a delivery to a subscriber failed: %r", task.exception())
        topic, data = broadcast["topic"], broadcast["data"]
        if topic is None or data is None:
            return
        for topic_filter in self._filters_matching(topic):
            subscriptions = self._subscriptions.get(topic_filter)
            if not subscriptions:
                continue
            for target, sub_qos in list(subscriptions):
                qos = min(broadcast.get("qos", sub_qos), sub_qos)
                if self.store is not None and not target.clean_session and qos >= QOS_1 and target.client_id:
                    try:
                        self.store.enqueue(target.client_id, topic, bytes(data), QOS_1, expires_ms=broadcast.get("expires_ms"))
                    except Exception:
                        log.exception("session %s: could not queue a message on %s", target.client_id, topic)
                        continue
                    wake = self._wake.get(target.client_id)
                    if wake is not None:
                        wake.set()
                    continue
                if target.transitions.state != "connected":
                    continue
                handler = self._get_handler(target)
                if handler:
                    running_tasks.append(asyncio.ensure_future(handler.mqtt_publish(topic, data, qos, retain=False)))

    def _filters_matching(self, topic: str) -> tuple[str, ...]:
        """The subscription table's filters that match ``topic`` (amqtt's ``_matches``), remembered
        until the table's set of filters changes."""
        table = self._subscriptions
        if self._matching_version != table.version:
            self._matching.clear()
            self._matching_version = table.version
        found = self._matching.get(topic)
        if found is None:
            found = tuple(f for f in table if self._matches(topic, f))
            if len(self._matching) < _MATCH_CACHE_MAX:
                self._matching[topic] = found
        return found

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Session) -> None:
        # amqtt calls this at every CONNECT for every filter anyone subscribes to, so a device would
        # get the retained messages of other devices' topics (their twin deltas). Only a filter the
        # session itself holds sends it retained messages.
        holders = self._subscriptions.get(subscription[0], ())
        if any(s.client_id == session.client_id for s, _ in holders):
            await super()._publish_retained_messages_for_subscription(subscription, session)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        # QoS 2 is not offered to subscribers: a QoS 2 request is granted QoS 1 (MQTT-3.9.3: the
        # server may grant less), so every message a device receives is at most once-or-more QoS 1,
        # the level persistent sessions queue.
        topic_filter, qos = subscription
        return await super().add_subscription((topic_filter, min(qos, QOS_1)), session)

    async def _handle_subscription(self, client_session: Session, handler: Any, subscribe_waiter: Any) -> None:
        await super()._handle_subscription(client_session, handler, subscribe_waiter)
        self._save_subscriptions(client_session)
        self._device_ready(client_session)

    async def _handle_unsubscription(self, client_session: Session, handler: Any, unsubscribe_waiter: Any) -> None:
        await super()._handle_unsubscription(client_session, handler, unsubscribe_waiter)
        self._save_subscriptions(client_session)

    def _save_subscriptions(self, session: Session) -> None:
        if self.store is None or session.clean_session or session.client_id is None:
            return
        try:
            self.store.save(session.client_id, session.username, self.session_subscriptions(session.client_id))
        except Exception:
            log.exception("session store failed for %s", session.client_id)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str, remote_port: int) -> tuple[Any, Session]:
        """Read the CONNECT into a new session and change nothing else yet. amqtt would, before any
        credential is checked, end the stored session of that client id (clean session 1) or write
        the CONNECT's username, password and Will into it (clean session 0); the gateway does
        either only once the client is authenticated (``_handle_client_session``)."""
        try:
            _, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()  # a refused CONNECT (e.g. MQTT 5: CONNACK 0x01 was sent)
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        if incoming.clean_session and not incoming.client_id:
            incoming.client_id = gen_client_id()
        incoming.parent = 0
        # No handler: _handle_client_session makes a DeviceHandler. amqtt's caller keeps what is
        # returned here for the whole connection, and the handler amqtt made for the CONNECT (two
        # queues, two events, a lock: ~5 KB) would live that long for nothing.
        return None, incoming

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        if session.attributes.get(_AUTHENTICATED):
            return True  # checked already by _handle_client_session, for the same credentials
        return await super()._authenticate(session, listener)

    async def _handle_client_session(self, reader: Any, writer: Any, client_session: Session, handler: Any, *args: Any) -> None:
        server, listener_name = args
        if not await self._authenticate(client_session, self.listeners_config[listener_name]):
            # Refused before the session table is touched: amqtt would first take over a connected
            # session with that client id and put the refused one in its place.
            await _refuse(writer)
            return
        if client_session.will_flag and not may_publish(client_session.username, client_session.will_topic or ""):
            # amqtt publishes a Will without the topic ACL: a device could put words in another's mouth
            log.info("refused connection from %s: its Will topic %r is not its to publish on", client_session.username,
                     client_session.will_topic)
            await _refuse(writer)
            return
        cid = client_session.client_id
        if client_session.clean_session:
            await self._delete_session(cid)  # type: ignore[arg-type]
        elif cid in self._sessions:
            existing, _ = self._sessions[cid]
            for name in _CONNECT_FIELDS:  # the new connection's credentials, Will and keep-alive
                setattr(existing, name, getattr(client_session, name))
            client_session, existing.parent = existing, 1
        client_session.attributes[_AUTHENTICATED] = True
        # amqtt built a plain BrokerProtocolHandler from the CONNECT packet; it holds no state yet.
        if not isinstance(client_session.transitions, SessionState):
            client_session.transitions = SessionState(client_session, client_session.transitions.state)
        # The reader waits this long for the next packet before DeviceHandler.handle_read_timeout
        # closes the connection (MQTT-3.1.2-24: one and a half times the keep-alive).
        client_session.keep_alive = client_session.keep_alive * 1.5  # type: ignore[assignment]
        try:
            await super()._handle_client_session(
                reader, writer, client_session, DeviceHandler(self.plugins_manager, self.intake, self._deliver_incoming), server,
                listener_name
            )
        finally:
            client_session.attributes.pop(_AUTHENTICATED, None)  # the next CONNECT is checked again

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # The topic ACL, answered here rather than by a topic plugin: amqtt runs plugins as one task
        # each per call. PUBLISH was already decided by DeviceHandler before PUBACK: a refused
        # message never reaches the delivery queue, so everything asked about here is allowed.
        if action == Action.SUBSCRIBE:
            return may_subscribe(session.username if session is not None else None, topic)
        return True

    async def disconnect_device(self, device_id: str) -> int:
        """End the open sessions of ``device_id`` (its credential was revoked); how many were ended.
        The device is told nothing (no MQTT 3.1.1 packet says why); its reconnect is refused."""
        ended = 0
        for session, handler in list(self.sessions.values()):
            if session.username == device_id and session.transitions.state == "connected" and handler is not None:
                await handler.handle_connection_closed()
                ended += 1
        return ended

    def connected_devices(self) -> int:
        return sum(1 for session, _ in self.sessions.values() if session.transitions.state == "connected")
