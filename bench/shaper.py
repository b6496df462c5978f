"""A userspace link shaper for ``pulse bench link``: an asyncio TCP proxy on loopback that makes a
fast local connection behave like a slow, lossy, flapping cellular link. No root, no netem.

Each direction of each proxied connection is a ``_Pipe``: it reads the sender's bytes in segments
of ``SEGMENT`` bytes, holds each segment for its time on the wire at the direction's rate (the
whole shaper shares one wire per direction, like a modem), then delivers it after the one-way delay
plus a random jitter, never before the segment ahead of it (TCP delivers in order). Loss is
modelled as TCP sees it on a link with retransmission: a lost segment is sent again (it costs its
wire time twice) and arrives a round trip late (fast retransmit), holding up what follows it.

Outages come from a schedule (``Outages``: down ``down_s`` of every ``period_s``, starting after
``first_s``) in one of two kinds:

- ``blackhole``: nothing moves while the link is down; segments wait and move after it (what TCP's
  retransmissions do over a short outage); a new connection is accepted but nothing reaches the
  cloud until the link is back (so the client's handshake hangs, as it would).
- ``reset``: at the start of an outage every open connection is reset (RST to both ends), and
  while the link is down nothing listens: a new connection is refused.

Counters: bytes carried per direction (everything on the wire: TCP payload of TLS and HTTP;
retransmitted segments count twice) and connections accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from pulse.common import aio

SEGMENT = 1400


@dataclass(frozen=True, slots=True)
class Outages:
    period_s: float
    down_s: float
    first_s: float = 0.0
    kind: str = "blackhole"  # or "reset"

    def down(self, t: float) -> bool:
        if t < self.first_s:
            return False
        return (t - self.first_s) % self.period_s < self.down_s

    def up_at(self, t: float) -> float:
        """When the link is (or next is) up at or after ``t``."""
        if not self.down(t):
            return t
        return t - (t - self.first_s) % self.period_s + self.down_s

    def ends(self, until: float) -> list[float]:
        """The ends of the outages before ``until`` (relative times)."""
        out, start = [], self.first_s
        while start + self.down_s < until:
            out.append(start + self.down_s)
            start += self.period_s
        return out


@dataclass(frozen=True, slots=True)
class LinkProfile:
    up_bytes_per_s: float
    down_bytes_per_s: float
    delay_s: float
    jitter_s: float
    loss: float = 0.0
    outages: Outages | None = None

    @property
    def retransmit_s(self) -> float:
        """How late a lost segment arrives: a round trip (fast retransmit after duplicate acks, as
        TCP with SACK does), at least 200 ms (Linux's smallest retransmission timeout)."""
        return max(0.2, 2 * self.delay_s + self.jitter_s)


@dataclass
class _Wire:
    """One direction's wire, shared by all connections: when it is free again, bytes carried."""

    rate: float
    free_at: float = 0.0
    carried: int = 0


@dataclass
class Shaper:
    profile: LinkProfile
    target: tuple[str, int]
    seed: int = 1
    host: str = "127.0.0.1"
    port: int = 0
    accepted: int = 0
    resets: int = 0
    started: float = field(default_factory=time.monotonic)
    up: _Wire = field(init=False)
    down: _Wire = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.up = _Wire(self.profile.up_bytes_per_s)
        self.down = _Wire(self.profile.down_bytes_per_s)
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    @property
    def listening(self) -> bool:
        """False while a reset outage lasts (nothing listens)."""
        return self._server is not None

    def is_down(self, t: float | None = None) -> bool:
        o = self.profile.outages
        return o is not None and o.down(self.now() if t is None else t)

    async def start(self) -> int:
        self.started = time.monotonic()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.profile.outages is not None and self.profile.outages.kind == "reset":
            self._watch = asyncio.create_task(self._resetter())
        return self.port

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            c.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, *([self._watch] if self._watch else []), return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await aio.wait_for(self._server.wait_closed(), 2)

    def cut(self) -> int:
        """Reset every open connection now (both ends); the number reset."""
        conns = list(self._conns)
        for c in conns:
            c.abort()
        self.resets += len(conns)
        return len(conns)

    async def _resetter(self) -> None:
        """Outages that reset: open connections are reset, and while the link is down nothing
        listens (a new connection is refused, as a modem without a network refuses it)."""
        was_down = False
        while True:
            down = self.is_down()
            if down and not was_down:
                self.cut()
                if self._server is not None:
                    self._server.close()
                    self._server = None
            elif was_down and not down:
                self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
            was_down = down
            await asyncio.sleep(0.02)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        o = self.profile.outages
        if o is not None and o.kind == "blackhole":
            while self.is_down():  # the SYN's answer never comes while the link is down
                await asyncio.sleep(o.up_at(self.now()) - self.now() + 0.01)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        conn = _Conn(self, writer, up_writer)
        self._conns.add(conn)
        tasks = [asyncio.create_task(conn.pipe(reader, up_writer, self.up)),
                 asyncio.create_task(conn.pipe(up_reader, writer, self.down))]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            self._conns.discard(conn)
            conn.abort()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Conn:
    def __init__(self, shaper: Shaper, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.shaper = shaper
        self.client, self.server = client, server
        self.closed = False

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            _rst(self.client)
            _rst(self.server)

    async def pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, wire: _Wire) -> None:
        """Carry one direction: pace at the wire's rate, deliver after delay and jitter, in order."""
        sh, p = self.shaper, self.shaper.profile
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, dst))
        last_arrival = 0.0
        try:
            while not self.closed:
                data = await src.read(SEGMENT)
                if not data:
                    break
                now = sh.now()
                if p.outages is not None and p.outages.kind == "blackhole":
                    now = p.outages.up_at(now)
                cost = len(data) / wire.rate
                lost = sh._rng.random() < p.loss
                start = max(now, wire.free_at)
                wire.free_at = start + cost * (2 if lost else 1)
                wire.carried += len(data) * (2 if lost else 1)
                arrival = start + cost + p.delay_s + sh._rng.random() * p.jitter_s + (p.retransmit_s if lost else 0.0)
                if p.outages is not None and p.outages.kind == "blackhole":
                    arrival = p.outages.up_at(arrival)
                last_arrival = max(last_arrival, arrival)
                await queue.put((last_arrival, data))
                # the sender may not run ahead of the wire by more than a modem's buffer
                ahead = wire.free_at - sh.now() - 64 * 1024 / wire.rate
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await queue.put((last_arrival, b""))
            await deliver
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        sh = self.shaper
        while True:
            at, data = await queue.get()
            wait = at - sh.now()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.closed:
                return
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            dst.write(data)
            with contextlib.suppress(ConnectionError):
                await dst.drain()
