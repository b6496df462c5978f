"""The uplink: drain the buffer to the cloud, a window of batches at a time, deleting only what the cloud acked.

Loop (``Uplink.run``, one task for the gateway's life)::

    forever:
        try:   one session: open a keep-alive mTLS connection pool to the sync listener, then
               report -> renew the certificate when due -> send the next batch -> repeat
        except anything: log it, count it, show it as the last error on the status page,
               wait Backoff.delay(attempt, random()) (or the cloud's Retry-After on 503), retry

Every await is bounded (``sync.request_timeout_s`` for requests and buffer calls), so no single
step can wedge the loop; an exception never ends it (only cancellation at shutdown does).

Batches: the stream is chosen by ``pulse.protocol.sync.next_stream`` (alerts, events, twin, then
telemetry), records in sequence order from the cursor, as many as fit the batch's byte budget
(``sync.batch_target_s`` on the wire at the estimated rate or the cap, at most ``sync.batch_bytes``,
halved after a timeout: ``pacing.BatchSizer``) and ``sync.records_per_batch``, encoded by
``pulse.protocol.batch.encode`` with the gateway's clock. The records are deleted
(``Buffer.ack``) only after a ``200`` BatchAck and only up to its ``ack_seq``.

Window: up to ``sync.window`` batches of the stream are in flight, each request in a task of its
own; every batch after the first names the one ahead of it (``X-Pulse-After``), so the cloud
stores them in order. Acks are taken oldest first. New batches are sent only while the stream is
still next in line: when alerts arrive during telemetry, the telemetry in flight drains and the
alerts go next. Any failure drops the rest of the window (nothing of it was deleted) and the
next round starts again from the acked position. While a batch travels, the next one is read and
encoded (on a worker thread, off the event loop the broker answers devices on).

Poison batches: a ``400 batch.*`` (or ``413``) means the cloud can never accept this batch, so
resending it would block the stream forever. The uplink halves the batch and tries again until the
refused batch is a single record; that record goes to the local quarantine with the cloud's code
(``Buffer.quarantine_unsendable``), the cursor moves past it, and draining goes on. A record the
gateway itself cannot encode (``batch.unencodable``) is treated the same way.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from cryptography import x509

from pulse.common.version import __version__
from pulse.edge.buffer import Buffer
from pulse.edge.config import SyncSettings
from pulse.edge.errors import GatewayError, SyncError
from pulse.edge.identity import IdentityFiles, make_key_and_csr, renewal_due, store_certificate
from pulse.edge.link import Connection, Enrollment, SyncClient, WireCounts, reachable
from pulse.edge.pacing import BatchSizer, ByteWindow, Health, LinkEstimate, LinkHealth, Reachability, fit_records
from pulse.edge.pacing import LinkState as LinkState
from pulse.edge.throttle import TokenBucket
from pulse.protocol import sync
from pulse.protocol.batch import VERSION_1, Record, Stream, encode
from pulse.protocol.errors import BatchError, Code, PulseError

log = logging.getLogger("pulse.edge.uplink")
_T = TypeVar("_T")
RENEW_RETRY_S = 600
PREPARED_MAX_AGE_S = 10.0
"""A prepared batch older than this is encoded again, so its header's gateway clock stays current."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A batch sent and not yet acked: the request's task, when it left, its timeout."""

    batch: _Prepared
    data: bytes
    task: asyncio.Task[sync.BatchAck]
    started: float
    timeout: float


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One batch ready to send: records of ``stream`` after ``after_seq``, and their encoding."""

    stream: Stream
    after_seq: int
    records: list[Record]
    data: bytes | None
    error: BatchError | None
    at: float
    version: int = VERSION_1


@dataclass
class StallWatch:
    """Pure: is the backlog stuck? It is when records wait, the link is up, and the acked position
    has not moved for ``after_s`` (clock passed in). After saying so once it starts counting again."""

    after_s: float
    position: tuple[int, ...] | None = None
    since: float = 0.0

    def observe(self, now: float, waiting: int, position: tuple[int, ...], link_up: bool) -> bool:
        if waiting == 0 or not link_up or position != self.position:
            self.position, self.since = position, now
            return False
        if self.after_s > 0 and now - self.since >= self.after_s:
            self.since = now
            return True
        return False


@dataclass
class LinkStatus:
    """What the status page shows about one loop (uplink or downlink)."""

    state: LinkState = LinkState.CONNECTING
    errors: int = 0
    last_error: str | None = None
    last_error_code: str | None = None
    last_error_ms: int | None = None
    last_success_ms: int | None = None
    retry_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d


async def bounded(aw: Awaitable[_T], timeout_s: float, what: str, code: Code = Code.GATEWAY_CLOUD_TIMEOUT) -> _T:
    """Await with a deadline; a timeout becomes a ``SyncError`` (``gateway.cloud_timeout``) naming the step.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11 ``wait_for`` returns the inner
    result when its task is cancelled in the loop turn the inner awaitable finishes, so a cancelled
    uplink went on running (the sync bench's drain hung on it: issue 14)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await aw
    except TimeoutError as exc:
        raise SyncError(code, f"{what} took longer than {timeout_s:g} s") from exc


async def supervise(name: str, status: LinkStatus, session: Callable[[], Awaitable[None]], settings: SyncSettings,
                    attempts: list[int], probe: Callable[[], Awaitable[bool]] | None = None) -> None:
    """Run ``session`` forever. It returns to be started again at once (e.g. after a certificate
    renewal) and raises on failure: then the error is recorded and the loop backs off (capped,
    full jitter). ``attempts[0]`` is the consecutive-failure count; the session resets it after a
    success. While backing off after a failure to reach the cloud, ``probe`` (a TCP connect) is
    tried every ``sync.probe_interval_s``; when it succeeds after a probe or the session itself
    could not connect, the backoff ends (``Reachability``)."""
    backoff = sync.Backoff(settings.backoff_base_s, settings.backoff_cap_s)
    reach = Reachability()
    while True:
        try:
            await session()
            continue
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the supervisor's job: nothing ends the loop
            code = str(exc.code) if isinstance(exc, PulseError) else "gateway.internal"
            message = exc.message if isinstance(exc, PulseError) else f"{exc.__class__.__name__}: {exc}"
            if not isinstance(exc, GatewayError):
                log.exception("%s: unexpected error", name)
            else:
                log.warning("%s: %s", name, message)
            status.errors += 1
            status.last_error, status.last_error_code, status.last_error_ms = message, code, int(time.time() * 1000)
            if attempts[0] == 0:
                reach.reset()  # the last session had succeeded: nothing is known about the link yet
            delay = backoff.delay(attempts[0], random.random())
            if isinstance(exc, SyncError) and exc.retry_after_s is not None:
                delay = min(max(delay, exc.retry_after_s), settings.backoff_cap_s)
            attempts[0] += 1
            transport = isinstance(exc, SyncError) and exc.status is None
            if isinstance(exc, SyncError) and exc.context.get("connect_failed"):
                reach.observe(False)  # no TCP connection could be made: as good as a failed probe
        status.state, status.retry_in_s = LinkState.BACKING_OFF, round(delay, 2)
        await _pause(delay, probe if transport and settings.probe_interval_s > 0 else None, settings.probe_interval_s, reach,
                     attempts[0])
        status.retry_in_s = None


async def _pause(delay: float, probe: Callable[[], Awaitable[bool]] | None, interval: float, reach: Reachability,
                 failures: int) -> None:
    """Sleep ``delay``; with a probe, look every ``interval`` whether the link came back."""
    if probe is None:
        await asyncio.sleep(delay)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + delay
    while (left := deadline - loop.time()) > 0:
        await asyncio.sleep(min(interval, left))
        if deadline - loop.time() <= 0:
            return
        if reach.observe(await probe(), failures):
            return


class Uplink:
    def __init__(self, settings: SyncSettings, buffer: Buffer, enrollment: Enrollment, files: IdentityFiles, *,
                 clock: Callable[[], float] = time.monotonic, report_extra: Callable[[], Mapping[str, object]] | None = None) -> None:
        self.settings = settings
        self.report_extra = report_extra
        """More for the periodic report (the connector set's status)."""
        self.clock = clock
        self.stalled = False
        self.stalls = 0
        self._watch = StallWatch(settings.stall_after_s)
        self._current: asyncio.Task[None] | None = None
        self._restarting = False
        self.estimate = LinkEstimate()
        self.health = LinkHealth(since=clock())
        self.sent = ByteWindow()
        self._sizers: dict[Stream, BatchSizer] = {}
        self.buffer = buffer
        self.enrollment = enrollment
        self.files = files
        self.status = LinkStatus()
        self.bytes_sent = 0
        self.batches_acked = 0
        self.records_acked = 0
        self.records_quarantined = 0
        self.replays = 0
        self.in_flight = 0
        """Batches sent and not yet acked (at most ``sync.window``)."""
        self.clock_offset_ms = 0
        self.clock_corrected = False
        self.batch_version = VERSION_1
        """The batch format sent: version 1 until the cloud's acks announce a newer one both read."""
        self.certificate_expires: dt.datetime | None = None
        self._attempts = [0]
        self._limit: dict[Stream, int] = {}
        self._bucket = TokenBucket(float(settings.bandwidth_bytes_per_s))
        self.bucket = self._bucket
        """The bandwidth cap's bucket; the firmware fetch (edge/firmware.py) takes from it too."""
        self._next_report = 0.0
        self._next_renewal = 0.0
        self.handshakes = ByteWindow()
        """TLS handshakes made, per minute for a day (a ByteWindow of counts)."""
        self.wire = WireCounts(on_handshake=lambda: self.handshakes.add(self.clock(), 1))
        self._conn = Connection(enrollment, files, timeout_s=settings.request_timeout_s, connections=settings.window + 1,
                                counts=self.wire)
        self._prepared: asyncio.Task[_Prepared | None] | None = None

    def snapshot(self) -> dict[str, Any]:
        status = self.status.as_dict()
        if self.stalled:  # until the next ack, whatever the restarted loop is doing
            status["state"] = LinkState.STALLED.value
        return {
            **status,
            "sync_url": self.enrollment.sync_url,
            "gateway_id": self.enrollment.gateway_id,
            "tenant_id": self.enrollment.tenant_id,
            "bytes_sent": self.bytes_sent,
            "batches_acked": self.batches_acked,
            "records_acked": self.records_acked,
            "records_quarantined": self.records_quarantined,
            "replays": self.replays,
            "batches_in_flight": self.in_flight,
            "stalled": self.stalled,
            "stalls": self.stalls,
            "clock_offset_ms": self.clock_offset_ms,
            "clock_corrected": self.clock_corrected,
            "bandwidth_bytes_per_s": self.settings.bandwidth_bytes_per_s,
            "link": self.link_snapshot(),
            "certificate_expires": self.certificate_expires.isoformat() if self.certificate_expires else None,
        }

    async def run(self) -> None:
        watchdog = asyncio.create_task(self._watchdog(), name="uplink-watchdog")
        try:
            await supervise("uplink", self.status, self._session, self.settings, self._attempts,
                            lambda: reachable(self.enrollment.sync_url, min(2.0, self.settings.probe_interval_s)))
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    def link_snapshot(self) -> dict[str, Any]:
        """The link as it is now (connected, degraded, down), never older than the last request."""
        now = self.clock()
        state = self.health.at(now)
        rate, rtt = self.estimate.rate_bytes_per_s, self.estimate.rtt_s
        return {
            "state": state.value,
            "since_ms": int((time.time() - (now - self.health.since)) * 1000),
            "last_error_code": self.status.last_error_code if state is not Health.CONNECTED else None,
            "next_attempt_in_s": self.status.retry_in_s,
            "est_rate_bytes_per_s": None if rate is None else round(rate),
            "est_rtt_s": None if rtt is None else round(rtt, 3),
            "batch_bytes": {s.name.lower(): z.budget(self._sizing_rate()) for s, z in self._sizers.items()},
            "bytes_last_hour": self.sent.last(now, 3600),
            "bytes_last_day": self.sent.last(now, 86400),
            "tls_handshakes": self.wire.handshakes,
            "handshakes_last_hour": self.handshakes.last(now, 3600),
            "handshakes_last_day": self.handshakes.last(now, 86400),
            "http_bytes_sent": self.wire.sent,
            "http_bytes_received": self.wire.received,
        }

    def _sizer(self, stream: Stream) -> BatchSizer:
        sizer = self._sizers.get(stream)
        if sizer is None:
            s = self.settings
            sizer = self._sizers[stream] = BatchSizer(s.batch_bytes, s.records_per_batch, s.batch_target_s)
        return sizer

    def _sizing_rate(self) -> float | None:
        """The rate batches are sized for: the link's estimate, or the bandwidth cap when that is lower."""
        rate: float | None = self.estimate.rate_bytes_per_s
        cap = float(self.settings.bandwidth_bytes_per_s)
        if cap > 0:
            return cap if rate is None else min(rate, cap)
        return rate

    def _position(self) -> tuple[int, ...]:
        return tuple(self.buffer.acked(s) for s in Stream)

    def check_stall(self) -> bool:
        """One look by the watchdog: True (and the uplink is restarted) when the backlog is stuck."""
        # a request still on its way (bounded by its own timeout) is not a stall: on a slow link one
        # batch may take longer than stall_after_s
        link_up = self.status.state in (LinkState.CONNECTED, LinkState.STALLED) and self.health.outstanding_since is None
        if not self._watch.observe(self.clock(), sum(self.buffer.backlog().values()), self._position(), link_up):
            return False
        self.stalled, self.stalls = True, self.stalls + 1
        self.status.state = LinkState.STALLED
        self.status.last_error_code = str(Code.GATEWAY_UPLINK_STALLED)
        self.status.last_error = f"the backlog did not move for {self.settings.stall_after_s:g} s while the link was up"
        self.status.last_error_ms = int(time.time() * 1000)
        log.error("uplink: the backlog has not moved for %g s while the link is up; restarting the uplink",
                  self.settings.stall_after_s)
        self._restarting = True
        if self._current is not None:
            self._current.cancel()
        return True

    async def _watchdog(self) -> None:
        if self.settings.stall_after_s <= 0:
            return
        while True:
            await asyncio.sleep(self.settings.watchdog_interval_s)
            self.check_stall()

    async def _session(self) -> None:
        """One session, in a task of its own so that the watchdog can end it without ending the uplink."""
        inner = self._current = asyncio.create_task(self._session_body(), name="uplink-session")
        try:
            await inner
        except SyncError as exc:
            if exc.status is None or exc.status >= 500:
                self._link_failed()
            else:
                self.health.succeeded(self.clock())  # the cloud answered: the link itself is up
            raise
        except Exception:
            self.health.outstanding_since = None
            raise
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if not self._restarting or (me is not None and me.cancelling()):
                raise  # shutdown
            self._restarting = False
            await self._restart()
            raise SyncError(Code.GATEWAY_UPLINK_STALLED, f"the backlog did not move for {self.settings.stall_after_s:g} s "
                            "while the link was up; the uplink was restarted") from None
        finally:
            self._current = None

    def _link_failed(self) -> None:
        self.health.failed(self.clock())
        if self.health.state is Health.DOWN:
            self.estimate.reset()  # the link may come back different

    async def _restart(self) -> None:
        """Forget everything the uplink's loop held: the prepared batch, batch sizes, the connection,
        and the buffer's read connection (a read connection left with an open statement keeps an
        old snapshot and no longer sees new records)."""
        self._drop_prepared()
        self._limit.clear()
        await self._conn.drop()
        await bounded(self.buffer.reopen_reader(), self.settings.request_timeout_s, "reopening the buffer's read connection",
                      Code.GATEWAY_STORAGE_FAILED)

    async def _session_body(self) -> None:
        if self.status.state not in (LinkState.CONNECTED, LinkState.STALLED):
            self.status.state = LinkState.CONNECTING
        cert = x509.load_pem_x509_certificate(self.files.cert.read_bytes())
        self.certificate_expires = cert.not_valid_after_utc
        async with self._conn.session() as client:
            try:
                await self._loop(client, cert)
            finally:
                self._drop_prepared()

    async def _loop(self, client: SyncClient, cert: x509.Certificate) -> None:
        s = self.settings
        while True:
            if renewal_due(cert, dt.datetime.now(dt.UTC)) and time.monotonic() >= self._next_renewal:
                if await self._renew(client):
                    await self._conn.drop()  # a new session connects with the new certificate
                    return
            if time.monotonic() >= self._next_report:
                await self._report(client)
                self._next_report = time.monotonic() + s.report_interval_s
            if not await self._send_next(client):
                await asyncio.sleep(s.idle_poll_s)

    def _succeeded(self) -> None:
        self.status.state = LinkState.STALLED if self.stalled else LinkState.CONNECTED
        self.status.last_success_ms = int(time.time() * 1000)
        self._attempts[0] = 0

    async def _prepare(self, stream: Stream, after_seq: int) -> _Prepared | None:
        """Read the next records of ``stream`` after ``after_seq`` and encode them (on a thread)."""
        sizer, rate = self._sizer(stream), self._sizing_rate()
        limit = min(self._limit.get(stream, self.settings.records_per_batch), sizer.records(rate))
        budget = sizer.budget(rate)
        records = await bounded(self.buffer.read(stream, after_seq, limit), self.settings.request_timeout_s, "reading the buffer")
        if not records:
            return None
        version = self.batch_version
        try:
            while True:
                data = await asyncio.to_thread(
                    encode, records, gateway_id=self.enrollment.gateway_id, stream=stream, gateway_time_ms=int(time.time() * 1000),
                    version=version,
                )
                sizer.encoded(len(records), len(data))
                keep = fit_records(len(records), len(data), budget)
                if keep is None:
                    break
                records = records[:keep]  # more than its time on the wire: fewer records, encoded again
        except BatchError as exc:
            return _Prepared(stream, after_seq, records, None, exc, time.monotonic(), version)
        return _Prepared(stream, after_seq, records, data, None, time.monotonic(), version)

    def _drop_prepared(self) -> None:
        if self._prepared is not None:
            self._prepared.cancel()
            self._prepared = None

    async def _take_prepared(self, stream: Stream, after_seq: int) -> _Prepared | None:
        """The batch prepared during the last send, if it is the one due now; else a fresh one."""
        task, self._prepared = self._prepared, None
        if task is not None:
            try:
                ready = await task
            except (TimeoutError, PulseError, OSError) as exc:
                log.debug("uplink: the batch prepared ahead failed (%s); reading again", exc)
                ready = None
            if ready is not None and ready.stream is stream and ready.after_seq == after_seq and ready.version == self.batch_version:
                if time.monotonic() - ready.at <= PREPARED_MAX_AGE_S:
                    return ready
        return await self._prepare(stream, after_seq)

    async def _send_next(self, client: SyncClient) -> bool:
        """Send the batches of the stream next in line, up to ``sync.window`` of them in flight, and
        take their acks in order; False when there is nothing to send. Returns when the window has
        drained and the stream is no longer next in line (or has nothing more), so a higher stream
        (alerts before telemetry) waits at most for the batches already in flight."""
        stream = sync.next_stream(self.buffer.backlog())
        if stream is None:
            self._drop_prepared()
            return False
        window: collections.deque[_InFlight] = collections.deque()
        after = self.buffer.acked(stream)
        free_since = self.clock()
        acked = False
        try:
            while True:
                while len(window) < self.settings.window and sync.next_stream(self.buffer.backlog()) is stream \
                        and self.buffer.backlog().get(stream, 0) > sum(len(f.batch.records) for f in window):
                    batch = await self._take_prepared(stream, after)
                    if batch is None:
                        break
                    if batch.error is not None or batch.data is None:
                        if window:  # the batches ahead are taken first; this one is read again after them
                            break
                        exc = batch.error or BatchError(Code.BATCH_UNENCODABLE, "the batch could not be encoded")
                        await self._refused(stream, batch.records, str(exc.code), exc.message)
                        return True
                    window.append(await self._launch(client, batch, window))
                    self.in_flight = len(window)
                    after = batch.records[-1].seq
                if not window:
                    return acked
                head = window.popleft()
                self.in_flight = len(window) + 1  # the head until its ack is taken
                if not await self._acked(head, stream, free_since):
                    return True  # refused or partly acked: the next call reads from the acked position
                acked, free_since = True, self.clock()
                if window:
                    nxt = window[0]
                    self.health.started(free_since, self.estimate.expected_s(len(nxt.data)) or self.settings.request_timeout_s)
        finally:
            self.in_flight = 0
            for f in window:
                f.task.cancel()
            if window:
                self._drop_prepared()
                await asyncio.gather(*(f.task for f in window), return_exceptions=True)
                # a request cancelled while connecting closes its socket in a callback of the next loop turns
                await asyncio.sleep(0)
                await asyncio.sleep(0)

    async def _launch(self, client: SyncClient, batch: _Prepared, window: collections.deque[_InFlight]) -> _InFlight:
        """Send one batch behind those in ``window`` (named in ``X-Pulse-After``, so the cloud
        stores it only after them); the next batch is read and encoded meanwhile."""
        data = batch.data
        assert data is not None
        wait = self._bucket.reserve(len(data), time.monotonic())
        if wait > 0:
            await asyncio.sleep(wait)
        self.bytes_sent += len(data)
        last = batch.records[-1].seq
        ahead = sum(len(f.data) for f in window)
        if self.buffer.backlog().get(batch.stream, 0) > sum(len(f.batch.records) for f in window) + len(batch.records):
            # pipelining: the next batch of this stream is read and encoded while this one travels
            self._prepared = asyncio.create_task(self._prepare(batch.stream, last))
        timeout = self.estimate.timeout_s(ahead + len(data), self.settings.request_timeout_s * 2)
        started = self.clock()
        if not window:
            self.health.started(started, self.estimate.expected_s(len(data)) or self.settings.request_timeout_s)
        self.sent.add(started, len(data))
        previous = window[-1].batch.records[-1].seq if window else None

        async def send() -> sync.BatchAck:  # the request is made inside the task, so cancelling it early leaves nothing behind
            return await bounded(client.send_batch(data, timeout, previous), timeout + 1, "sending a batch")

        task = asyncio.create_task(send())
        return _InFlight(batch, data, task, started, timeout)

    async def _acked(self, head: _InFlight, stream: Stream, free_since: float) -> bool:
        """Wait for the oldest batch in flight and record its ack; False when the window must be
        started again from the acked position (refused, out of order, or not acked to its end)."""
        records, data = head.batch.records, head.data
        last = records[-1].seq
        try:
            ack: sync.BatchAck = await head.task
        except SyncError as exc:
            self._drop_prepared()
            if exc.code is Code.GATEWAY_CLOUD_TIMEOUT:
                size = self._sizer(stream).after_timeout(len(data))
                log.warning("uplink: a %s batch of %d records (%d bytes) timed out after %g s; the next has at most %d bytes",
                            stream.name.lower(), len(records), len(data), head.timeout, size)
            if exc.status == 409 and exc.code is Code.SYNC_OUT_OF_ORDER:
                self.health.succeeded(self.clock())  # the cloud answered; the batch ahead of it failed
                return False
            if exc.status == 400 and exc.code is Code.BATCH_VERSION_UNSUPPORTED and head.batch.version != VERSION_1:
                # the cloud no longer reads this format (rolled back to an older version): the
                # records are fine, so they go again in version 1, which every cloud reads
                self.health.succeeded(self.clock())
                log.warning("uplink: the cloud refused batch format %d; sending version 1", head.batch.version)
                self.batch_version = VERSION_1
                return False
            if exc.status == 413 or (exc.status == 400 and str(exc.code).startswith("batch.")):
                self.health.succeeded(self.clock())  # the cloud answered
                await self._refused(stream, records, str(exc.code), exc.message)
                return False
            raise
        if ack.stream != stream or ack.ack_seq > last:
            self._drop_prepared()
            raise SyncError(Code.GATEWAY_CLOUD_ERROR, f"the cloud acked {ack.stream.name.lower()} up to {ack.ack_seq} "
                            f"for a {stream.name.lower()} batch ending at {last}; nothing deleted", status=200)
        self.stalled = False
        now = self.clock()
        # the time the link was this batch's: from its send, or from the ack ahead of it when it was
        # sent behind another (the link was busy with it from there)
        self.estimate.observe(len(data), now - max(head.started, free_since), pipelined=head.started < free_since)
        self.health.succeeded(now)
        self._sizer(stream).after_ack()
        self._succeeded()
        self.clock_offset_ms, self.clock_corrected = ack.clock_offset_ms, ack.clock_corrected
        self.batch_version = sync.choose_batch_version(ack.batch_versions)
        if ack.verdict is sync.Verdict.REPLAY:
            self.replays += 1
        # counted as the cloud's ack arrives: the buffer's backlog drops inside ``Buffer.ack``, and
        # whoever watches it (the sync bench) may stop the uplink before that call returns
        self.batches_acked += 1
        self.records_acked += sum(1 for r in records if r.seq <= ack.ack_seq)
        if ack.ack_seq > self.buffer.acked(stream):
            await bounded(self.buffer.ack(stream, ack.ack_seq), self.settings.request_timeout_s, "recording the cloud's ack")
        return bool(ack.ack_seq >= last)

    async def _refused(self, stream: Stream, records: list[Record], code: str, message: str) -> None:
        """A batch that can never be accepted: halve it until the refused one is a single record,
        then quarantine that record and move on."""
        if len(records) > 1:
            self._limit[stream] = max(1, len(records) // 2)
            log.warning("uplink: %s batch of %d records refused (%s); trying %d", stream.name.lower(), len(records), code,
                        self._limit[stream])
            return
        rec = records[0]
        log.error("uplink: %s record %d of %s refused for good (%s: %s); moved to the quarantine",
                  stream.name.lower(), rec.seq, rec.device_id, code, message)
        await bounded(self.buffer.quarantine_unsendable(stream, rec.seq, code, message), self.settings.request_timeout_s,
                      "quarantining a refused record")
        self.records_quarantined += 1
        self._limit.pop(stream, None)

    async def _report(self, client: SyncClient) -> None:
        stats = await bounded(self.buffer.stats(), self.settings.request_timeout_s, "reading the buffer's figures")
        oldest = min((st.oldest_received_ms for st in stats.streams if st.oldest_received_ms is not None), default=None)
        doc: dict[str, object] = {
            "dropped": {st.stream: st.dropped_count for st in stats.streams},
            "backlog": {st.stream: st.depth for st in stats.streams},
            "oldest_unsynced_ms": oldest,
            "version": __version__,
        }
        if self.report_extra is not None:
            doc.update(self.report_extra())
        started = self.clock()
        self.health.started(started, self.estimate.rtt_s or self.settings.request_timeout_s)
        try:
            await bounded(client.report(doc), self.settings.request_timeout_s * 2, "sending the report")
            self.estimate.observe(0, self.clock() - started)
            self.health.succeeded(self.clock())
        except SyncError as exc:
            if exc.status is None:
                raise  # the link is down: the supervisor backs off
            # The cloud answered but refused the report: that must not hold up the data.
            self.health.succeeded(self.clock())
            log.warning("uplink: the cloud refused the report: %s", exc.message)
            self._note(exc)
            return
        self._succeeded()

    def _note(self, exc: SyncError) -> None:
        """Show an error that does not stop the uplink on the status page."""
        self.status.errors += 1
        self.status.last_error, self.status.last_error_code = exc.message, str(exc.code)
        self.status.last_error_ms = int(time.time() * 1000)

    async def _renew(self, client: SyncClient) -> bool:
        """Renew with a fresh CSR from the same key. A failed renewal does not stop the uplink
        (the certificate is still valid for a third of its life): it is shown as the last error
        and tried again after ``RENEW_RETRY_S``."""
        csr = make_key_and_csr(self.files, self.enrollment.gateway_id)
        try:
            cert_pem, ca_pem = await bounded(client.renew(csr), self.settings.request_timeout_s * 2, "renewing the certificate")
            cert = store_certificate(self.files, cert_pem, ca_pem)
        except (SyncError, ValueError) as exc:
            self._next_renewal = time.monotonic() + RENEW_RETRY_S
            if not isinstance(exc, SyncError):
                exc = SyncError(Code.GATEWAY_CLOUD_ERROR, f"the renewed certificate is unreadable: {exc}")
            log.warning("uplink: certificate renewal failed: %s; retrying in %d s", exc.message, RENEW_RETRY_S)
            self._note(exc)
            return False
        self.certificate_expires = cert.not_valid_after_utc
        log.info("uplink: certificate renewed; valid until %s", cert.not_valid_after_utc.isoformat())
        return True
