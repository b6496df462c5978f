"""A cheap MQTT 3.1.1 load generator for `pulse bench edge`: many devices, QoS 1, one process.

Runs as its own process so that the broker under test has the event loop to itself::

    python -m pulse.bench.mqtt_load --port 1883 --devices 1000 --duration 10 [--credentials FILE]

It connects every device (username = device id, password from the credentials file, one
``device,secret`` per line; none when anonymous), prints ``connected N R`` on stdout (N devices
connected, and subscribed with ``--subscribe``; R filters the broker refused), waits for a
line on stdin, then keeps ``--inflight`` QoS 1 PUBLISHes outstanding per device, prints
``measuring`` after ``--warmup`` seconds and, ``--duration`` seconds later, one JSON line: messages
acknowledged and the seconds measured, and the PUBLISH-to-PUBACK latency of the messages acknowledged
in the window (``p50_ms``, ``p99_ms``; for a broker that acknowledges after its commit, publish to commit).

Each device publishes valid envelope v1 telemetry on ``pulse/{device}/telemetry`` with a running
``seq``. ``--persistent`` connects them with clean session 0; ``--subscribe`` makes each device
subscribe (QoS 1) to its ``twin/desired`` and ``cmd/+``, as a device that takes commands does, and
counts as connected once the SUBACK is in. The client is an ``asyncio.Protocol`` that builds packets by hand: it costs a few
microseconds per message, so on a 2-core machine the broker, not the generator, is what is
measured. It is a benchmark tool, not a device SDK (devices use any MQTT library).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from pulse.common import aio


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 60, *, clean: bool = True) -> bytes:
    flags = 0x02 if clean else 0x00  # clean session, or a persistent one (clean session 0)
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    var = _str("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    body = var + payload
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_str(f) + bytes([qos]) for f in filters)
    return b"\x82" + _remaining_length(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _remaining_length(len(body)) + body  # PUBLISH, QoS 1


class Device(asyncio.Protocol):
    def __init__(
        self, device_id: str, password: str | None, inflight: int, stats: Stats, *, clean: bool = True, subscribe: bool = False
    ) -> None:
        self.clean = clean
        self.subscribe = subscribe
        self.device_id = device_id
        self.password = password
        self.inflight = inflight
        self.stats = stats
        self.topic = f"pulse/{device_id}/telemetry".encode()
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.seq = 0
        self.sent_at: dict[int, float] = {}
        self.running = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        user = self.device_id if self.password is not None else None
        transport.write(connect_packet(self.device_id, user, self.password, clean=self.clean))
        if self.subscribe:  # ``connected`` then resolves on the SUBACK (data_received)
            transport.write(subscribe_packet(1, [f"pulse/{self.device_id}/twin/desired", f"pulse/{self.device_id}/cmd/+"]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_result(-1)

    def start(self) -> None:
        self.running = True
        for _ in range(self.inflight):
            self.send()

    def send(self) -> None:
        self.seq += 1
        payload = (
            b'{"v":1,"seq":%d,"ts":%d,"metrics":{"temp_c":%d.5,"on":true}}'
            % (self.seq, int(time.time() * 1000), self.seq % 40)
        )
        assert self.transport is not None
        packet_id = (self.seq % 65535) + 1
        self.sent_at[packet_id] = time.perf_counter()
        self.transport.write(publish_packet(self.topic, packet_id, payload))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        i = 0
        n = len(buf)
        while n - i >= 2:
            kind = buf[i] & 0xF0
            length = buf[i + 1]  # CONNACK, PUBACK, PINGRESP: always short
            if n - i < 2 + length:
                break
            if kind == 0x40:  # PUBACK
                self.stats.acked += 1
                sent = self.sent_at.pop(int.from_bytes(buf[i + 2 : i + 4], "big"), None)
                if sent is not None and self.stats.measuring:
                    self.stats.latencies.append(time.perf_counter() - sent)
                if self.running:
                    self.send()
            elif kind == 0x20:  # CONNACK
                if not self.connected.done() and (buf[i + 3] != 0 or not self.subscribe):
                    self.connected.set_result(buf[i + 3])
            elif kind == 0x90:  # SUBACK: one return code per filter, 0x80 = refused
                self.stats.suback_refused += buf[i + 4 : i + 2 + length].count(0x80)
                if not self.connected.done():
                    self.connected.set_result(0)
            i += 2 + length
        self.buf = buf[i:]


class Stats:
    def __init__(self) -> None:
        self.acked = 0
        self.suback_refused = 0
        self.measuring = False
        self.latencies: list[float] = []


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    creds: list[tuple[str, str | None]] = []
    if args.credentials:
        for line in Path(args.credentials).read_text().splitlines():  # noqa: ASYNC240 - read once before the loop runs anything
            if line.strip():
                device, secret = line.strip().split(",", 1)
                creds.append((device, secret))
    else:
        creds = [(f"bench-{i:05d}", None) for i in range(args.devices)]
    creds = creds[: args.devices]
    stats = Stats()
    devices: list[Device] = []
    sem = asyncio.Semaphore(64)

    async def open_one(device_id: str, secret: str | None) -> None:
        async with sem:
            _, proto = await loop.create_connection(
                lambda: Device(device_id, secret, args.inflight, stats, clean=not args.persistent, subscribe=args.subscribe),
                args.host,
                args.port,
            )
            code = await aio.wait_for(proto.connected, 30)
            if code != 0:
                raise SystemExit(f"{device_id}: CONNACK return code {code}")
            devices.append(proto)

    await asyncio.gather(*(open_one(d, s) for d, s in creds))
    print(f"connected {len(devices)} {stats.suback_refused}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for d in devices:
        d.start()
    await asyncio.sleep(args.warmup)
    print("measuring", flush=True)
    start_acked, t0 = stats.acked, time.perf_counter()
    stats.measuring = True
    await asyncio.sleep(args.duration)
    stats.measuring = False
    acked, elapsed = stats.acked - start_acked, time.perf_counter() - t0
    for d in devices:
        d.running = False
    lat = sorted(stats.latencies)
    pct = {f"p{q}_ms": round(lat[min(len(lat) - 1, len(lat) * q // 100)] * 1000, 2) for q in (50, 99)} if lat else {}
    print(json.dumps({"acked": acked, "seconds": elapsed, "closed": sum(d.closed for d in devices), **pct}), flush=True)
    await asyncio.sleep(0.5)
    for d in devices:
        if d.transport is not None:
            d.transport.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--inflight", type=int, default=4, help="QoS 1 messages outstanding per device")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--credentials", default=None, help="file of device,secret lines; none: anonymous")
    p.add_argument("--persistent", action="store_true", help="connect with clean session 0 (persistent sessions)")
    p.add_argument("--subscribe", action="store_true", help="each device subscribes to its twin/desired and cmd/+ (QoS 1)")
    return asyncio.run(_run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
