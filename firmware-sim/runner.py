"""Runs a simulated fleet against a gateway (MQTT, each device with its own credentials, QoS 1) or
straight against the cloud's HTTP ingest. Each device reconnects on its own with full-jitter
backoff; a device that is down does not slow the others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

import aiomqtt
import httpx

from pulse.common import aio
from pulse.firmware_sim.device import Device, Fault, FaultKind
from pulse.firmware_sim.profiles import make_fleet
from pulse.protocol import firmware, topics
from pulse.protocol.envelope import Envelope, MessageType
from pulse.protocol.errors import FirmwareError
from pulse.protocol.sync import Backoff
from pulse.protocol.topics import TopicKind

log = logging.getLogger("pulse.sim")


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    credentials: dict[str, str]  # device id -> secret
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class HttpTarget:
    url: str  # the cloud's base URL
    tokens: dict[str, str]  # device id -> device token


@dataclass
class FleetStats:
    published: int = 0
    acknowledged: int = 0
    rejected: int = 0
    connect_errors: int = 0
    connected: set[str] = field(default_factory=set)
    last_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "published": self.published,
            "acknowledged": self.acknowledged,
            "rejected": self.rejected,
            "connect_errors": self.connect_errors,
            "connected": len(self.connected),
            "last_error": self.last_error,
        }


class Link(Protocol):
    async def send(self, payload: bytes, kind: TopicKind, command_id: str | None = None) -> bool: ...


class _MqttLink:
    def __init__(self, client: aiomqtt.Client, device_id: str) -> None:
        self.client, self.device_id = client, device_id

    async def send(self, payload: bytes, kind: TopicKind, command_id: str | None = None) -> bool:
        # aiomqtt's QoS 1 publish returns once the broker's PUBACK arrived: acknowledged.
        await self.client.publish(topics.build(self.device_id, kind, command_id), payload, qos=1)
        return True


class _HttpLink:
    def __init__(self, client: httpx.AsyncClient, url: str, token: str) -> None:
        self.client, self.url, self.token = client, url, token

    async def send(self, payload: bytes, kind: TopicKind, command_id: str | None = None) -> bool:
        r = await self.client.post(
            f"{self.url.rstrip('/')}/ingest/v1/telemetry",
            content=payload,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        if r.status_code in (429, 503):
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            return False
        if r.status_code >= 500:
            r.raise_for_status()
        return r.status_code < 300

    async def fetch(self, path: str) -> object:
        """GET one of the direct device's own resources (``twin``, ``commands``); None when the
        cloud does not answer with one (busy, or the device sits behind a gateway)."""
        r = await self.client.get(f"{self.url.rstrip('/')}/ingest/v1/{path}", headers={"Authorization": f"Bearer {self.token}"})
        if r.status_code >= 500:
            r.raise_for_status()
        return r.json() if r.status_code == 200 else None


async def _report(dev: Device, link: Link, reported: dict[str, object]) -> None:
    env = Envelope(dev.device_id, int(time.time() * 1000), MessageType.TWIN_REPORTED, body=reported)  # type: ignore[arg-type]
    await link.send(env.to_json(), TopicKind.TWIN_REPORTED)


async def _download(dev: Device, url: str, size: int, headers: dict[str, str]) -> bytes:
    """The firmware from the gateway's local URL (or the cloud's, for a direct device); a broken
    download (``fw_interrupt``) is retried once."""
    async with httpx.AsyncClient(timeout=120) as client:
        for attempt in range(2):
            data = bytearray()
            async with client.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    body = await resp.aread()
                    raise ValueError(f"download refused: HTTP {resp.status_code} {body[:200]!r}")
                async for chunk in resp.aiter_bytes():
                    data += chunk
                    if attempt == 0 and len(data) * 2 >= size and dev.take_fault(FaultKind.FW_INTERRUPT):
                        log.info("%s: firmware download interrupted at %d of %d bytes; again", dev.device_id, len(data), size)
                        break
                else:
                    return bytes(data)
        raise ValueError("download interrupted twice")


async def _update_firmware(dev: Device, link: Link, params: dict[str, object]) -> tuple[str, dict[str, object], str | None] | None:
    """A ``firmware.update`` command: download from the gateway, check, "install", report the new
    version on the twin. None: the device never comes back (``fw_never_back``)."""
    try:
        m = firmware.manifest_from_params(params)
    except FirmwareError as exc:
        return "failed", {}, f"{exc.code}: {exc.message}"
    url = params.get("url")
    if not isinstance(url, str):
        return "failed", {}, "no download URL: the gateway's firmware download is off"
    headers: dict[str, str] = {}
    if isinstance(link, _HttpLink):  # a direct device: the cloud's download, with its token
        url, headers = link.url.rstrip("/") + url, {"Authorization": f"Bearer {link.token}"}
    try:
        data = await _download(dev, url, m.size, headers)
    except (httpx.HTTPError, ValueError) as exc:
        return "failed", {}, f"download failed: {exc}"[:400]
    if dev.take_fault(FaultKind.FW_NEVER_BACK):
        dev.inject(Fault(FaultKind.SILENT), 0.0)
        log.info("%s: installing %s ... and never coming back", dev.device_id, m.version)
        return None
    status, reason = dev.install_firmware(m, data)
    if status == "succeeded":
        await _report(dev, link, {"firmware": {"version": dev.firmware_version}})
    return status, {"version": dev.firmware_version}, reason


async def _answer(dev: Device, link: Link, command_id: str, doc: dict[str, object]) -> None:
    """Run a command (its message: ``{"name", "params", ...}``) and send the device's answer."""
    params = doc.get("params") if isinstance(doc.get("params"), dict) else {}
    error = None
    if doc.get("name") == firmware.COMMAND_NAME:
        done = await _update_firmware(dev, link, params)  # type: ignore[arg-type]
        if done is None:
            return
        status, result, error = done
    else:
        status, result = dev.handle_command(str(doc.get("name", "")), params)  # type: ignore[arg-type]
    body: dict[str, object] = {"id": command_id, "status": status, "result": result}
    if error is not None:
        body["error"] = error
    env = Envelope(dev.device_id, int(time.time() * 1000), MessageType.COMMAND_ACK, body=body)  # type: ignore[arg-type]
    await link.send(env.to_json(), TopicKind.COMMAND_ACK, command_id)


class Fleet:
    def __init__(
        self,
        devices: list[Device],
        target: MqttTarget | HttpTarget,
        *,
        speed: float = 1.0,
        heartbeat_every: int = 6,
        seed: int = 1,
    ) -> None:
        self.devices = {d.device_id: d for d in devices}
        self.target = target
        self.speed = speed
        self.heartbeat_every = heartbeat_every
        self.stats = FleetStats()
        self.backoff = Backoff(base_s=0.5, cap_s=30.0)
        self.rng = random.Random(seed)
        self._t0 = time.monotonic()
        self._stop = asyncio.Event()
        self._twin_seen: dict[str, int | None] = {}

    @classmethod
    def generate(cls, count: int, target: MqttTarget | HttpTarget, *, interval_s: float = 10.0, seed: int = 7, prefix: str = "dev", **kw: float) -> Fleet:
        return cls([Device(sim, interval_s=interval_s) for sim in make_fleet(count, seed=seed, prefix=prefix)], target, **kw)  # type: ignore[arg-type]

    def sim_now(self) -> float:
        """Simulated seconds since start (runs ``speed`` times faster than the wall clock)."""
        return (time.monotonic() - self._t0) * self.speed

    def inject(self, device_id: str, fault: Fault) -> None:
        self.devices[device_id].inject(fault, self.sim_now())

    def clear(self, device_id: str, kind: FaultKind | None = None) -> None:
        self.devices[device_id].clear(kind)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, duration_s: float | None = None) -> FleetStats:
        tasks = [asyncio.create_task(self._device_loop(dev, i)) for i, dev in enumerate(self.devices.values())]
        try:
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(self._stop.wait(), duration_s)
        finally:
            self._stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return self.stats

    @contextlib.asynccontextmanager
    async def _connect(self, dev: Device) -> AsyncIterator[Link]:
        if isinstance(self.target, MqttTarget):
            async with aiomqtt.Client(
                self.target.host,
                self.target.port,
                identifier=dev.device_id,
                username=dev.device_id,
                password=self.target.credentials.get(dev.device_id),
                tls_context=self.target.tls,
                keepalive=30,
                clean_session=False,
            ) as client:
                await client.subscribe(topics.build(dev.device_id, TopicKind.TWIN_DESIRED), qos=1)
                await client.subscribe(f"pulse/{dev.device_id}/cmd/+", qos=1)
                link = _MqttLink(client, dev.device_id)
                reader = asyncio.create_task(self._downlink(dev, client, link))
                try:
                    yield link
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        else:
            async with httpx.AsyncClient(timeout=10) as client:
                yield _HttpLink(client, self.target.url, self.target.tokens[dev.device_id])

    async def _downlink(self, dev: Device, client: aiomqtt.Client, link: _MqttLink) -> None:
        async for message in client.messages:
            raw = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
            try:
                topic = topics.parse(str(message.topic))
            except topics.TopicError:
                continue
            if topic.kind is TopicKind.TWIN_DESIRED:
                reported = dev.on_delta(raw)  # apply the delta, then report what the device now runs
                if reported is not None:
                    await _report(dev, link, reported)
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if topic.kind is TopicKind.COMMAND and topic.command_id and isinstance(doc, dict):
                await _answer(dev, link, topic.command_id, doc)

    async def _poll_http(self, dev: Device, link: _HttpLink) -> None:
        """A direct device asks the cloud for its twin and commands (docs/protocol.md section 5)."""
        twin = await link.fetch("twin")
        delta = twin.get("state", {}).get("delta") if isinstance(twin, dict) else None
        version = twin.get("version") if isinstance(twin, dict) else None
        # each new delta once: desired keys the device does not understand stay in the delta, and
        # reporting them again on every poll would only raise the twin's version
        if isinstance(delta, dict) and delta and version != self._twin_seen.get(dev.device_id):
            await _report(dev, link, dev.apply_desired(delta))
            self._twin_seen[dev.device_id] = None if version is None else int(version) + 1  # our report is the next version
        waiting = await link.fetch("commands")
        for doc in waiting if isinstance(waiting, list) else []:
            if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                await _answer(dev, link, doc["id"], doc)

    async def _device_loop(self, dev: Device, index: int) -> None:
        attempt = 0
        # spread devices over the first interval, as a real fleet is
        await asyncio.sleep(self.rng.uniform(0, dev.interval_s / self.speed))
        while not self._stop.is_set():
            try:
                async with self._connect(dev) as link:
                    self.stats.connected.add(dev.device_id)
                    attempt = 0
                    n = 0
                    while not self._stop.is_set():
                        payload = dev.next_payload(self.sim_now())
                        if payload is not None:
                            self.stats.published += 1
                            ok = await link.send(payload, TopicKind.TELEMETRY)
                            self.stats.acknowledged += ok
                            self.stats.rejected += not ok
                            n += 1
                            if self.heartbeat_every and n % self.heartbeat_every == 0:
                                await link.send(dev.heartbeat(), TopicKind.HEARTBEAT)
                        if isinstance(link, _HttpLink):
                            await self._poll_http(dev, link)
                        with contextlib.suppress(TimeoutError):
                            await aio.wait_for(self._stop.wait(), dev.interval_s / self.speed)
            except (aiomqtt.MqttError, OSError, httpx.HTTPError) as exc:
                self.stats.connected.discard(dev.device_id)
                self.stats.connect_errors += 1
                self.stats.last_error = f"{dev.device_id}: {exc}"
                log.debug("device %s link error: %s", dev.device_id, exc)
                delay = self.backoff.delay(attempt, self.rng.random())
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await aio.wait_for(self._stop.wait(), delay)
        self.stats.connected.discard(dev.device_id)
