"""The gateway's HTTP adapter to the cloud (docs/protocol.md section 6): enrollment state on disk,
the mutual-TLS context, and one method per request of the sync exchange.

Everything httpx raises is translated here into ``SyncError`` with a code
(``gateway.cloud_unreachable``, ``gateway.cloud_timeout``, ``gateway.tls_failed``, ``gateway.cloud_error``, or the code the
cloud put in its error body, e.g. ``identity.revoked``, ``batch.malformed``); the uplink and
downlink loops never see an httpx exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from pulse.common import aio
from pulse.edge.enrollment import STATE_FILE as STATE_FILE
from pulse.edge.enrollment import Enrollment as Enrollment
from pulse.edge.enrollment import load_enrollment as load_enrollment
from pulse.edge.enrollment import save_enrollment as save_enrollment
from pulse.edge.errors import SyncError
from pulse.edge.identity import IdentityFiles
from pulse.protocol import sync
from pulse.protocol.errors import Code
from pulse.protocol.firmware import SYNC_PATH as FIRMWARE_SYNC_PATH


def client_context(files: IdentityFiles) -> ssl.SSLContext:
    """TLS for the sync listener: present the gateway's certificate, trust only the cloud's CA."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the backoff decides instead


def response_error(resp: httpx.Response, what: str) -> SyncError:
    """A ``SyncError`` for an answer other than the one expected, with the cloud's code when it sent one."""
    code: Code = Code.GATEWAY_CLOUD_ERROR
    message = f"{what}: the cloud answered HTTP {resp.status_code}"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        try:
            code = Code(body["code"])
        except ValueError:
            pass
        message = f"{what}: {body.get('message') or body['code']} (HTTP {resp.status_code}, {body['code']})"
    return SyncError(code, message, status=resp.status_code, retry_after_s=_retry_after(resp.headers.get("retry-after")))


_NOT_TLS_FAILURES = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLZeroReturnError, ssl.SSLEOFError)
"""Found in the chain of a timeout or a cut inside an established TLS connection: not a handshake failure."""


def transport_error(exc: httpx.HTTPError, url: str) -> SyncError:
    """Translate an httpx failure to reach ``url``: a read, write or pool timeout is
    ``gateway.cloud_timeout`` (checked first: a timeout inside TLS carries ``ssl.SSLWantReadError``
    in its chain), a failed handshake ``gateway.tls_failed``, anything else (refused, unreachable,
    no connection in time, a cut) ``gateway.cloud_unreachable``."""
    text = str(exc) or exc.__class__.__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return SyncError(Code.GATEWAY_CLOUD_TIMEOUT, f"{url} did not answer in time ({exc.__class__.__name__})", url=url)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _NOT_TLS_FAILURES):
            return SyncError(Code.GATEWAY_TLS_FAILED, f"TLS with {url} failed: {cause.reason or cause}", url=url)
        cause = cause.__cause__ or cause.__context__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return SyncError(Code.GATEWAY_TLS_FAILED, f"TLS with {url} failed: {text}", url=url)
    if isinstance(exc, httpx.ConnectTimeout):
        return SyncError(Code.GATEWAY_CLOUD_UNREACHABLE, f"no connection to {url} in time ({exc.__class__.__name__})", url=url,
                         connect_failed=True)
    return SyncError(Code.GATEWAY_CLOUD_UNREACHABLE, f"cannot reach {url}: {text}", url=url,
                     connect_failed=isinstance(exc, httpx.ConnectError))


async def reachable(url: str, timeout_s: float) -> bool:
    """A cheap look at the link: can a TCP connection to ``url``'s host and port be made (no TLS,
    no request; about 300 bytes on the wire when it can, one SYN when it cannot)? Not proof the
    cloud is up: whatever accepts connections in front of it answers too (see ``Reachability``).
    A bare socket, closed before returning whatever happens (no transport left to the loop)."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            family, kind, proto, _, address = (await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            finally:
                sock.close()
    except (OSError, TimeoutError, IndexError):
        return False
    return True


@dataclass
class WireCounts:
    """What a loop's connections to the cloud cost: TLS handshakes made (each a few kilobytes on
    the wire: ``pulse bench link`` measures it) and the HTTP bytes written and read inside TLS."""

    handshakes: int = 0
    sent: int = 0
    received: int = 0
    on_handshake: Callable[[], None] | None = None


class _CountingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream, counts: WireCounts) -> None:
        self._inner, self._counts = inner, counts

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's interface)
        data = await self._inner.read(max_bytes, timeout)
        self._counts.received += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)
        self._counts.sent += len(buffer)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:  # noqa: ASYNC109
        try:
            stream = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            # httpcore closes the TCP stream of a failed handshake only for an Exception: a request
            # cancelled during its handshake (a window dropped after a cut, shutdown) left the socket open
            with contextlib.suppress(BaseException):
                await self._inner.aclose()
            raise
        self._counts.handshakes += 1
        if self._counts.on_handshake is not None:
            self._counts.on_handshake()
        return _CountingStream(stream, self._counts)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CountingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, with every connection's handshakes and bytes counted."""

    def __init__(self, counts: WireCounts) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._counts = counts

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return _CountingStream(await self._inner.connect_tcp(host, port, timeout, local_address, socket_options), self._counts)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return _CountingStream(await self._inner.connect_unix_socket(path, timeout, socket_options), self._counts)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _transport(ctx: ssl.SSLContext, connections: int, counts: WireCounts) -> httpx.AsyncHTTPTransport:
    """httpx's transport over a pool whose network backend counts (httpx takes no backend of its
    own, so the pool it made is replaced by the same pool with ours: ``_pool`` is the one
    attribute its ``handle_async_request`` uses)."""
    transport = httpx.AsyncHTTPTransport(verify=ctx)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ctx, max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=5.0,
        network_backend=_CountingBackend(counts),
    )
    return transport


class SyncClient:
    """One keep-alive HTTP/1.1 connection pool to the sync listener, authenticated by the gateway's
    certificate. Methods return typed answers or raise ``SyncError``. ``counts`` counts its TLS
    handshakes and bytes."""

    def __init__(self, enrollment: Enrollment, files: IdentityFiles, *, timeout_s: float, connections: int = 2,
                 counts: WireCounts | None = None) -> None:
        self.base = enrollment.sync_url.rstrip("/")
        self.counts = counts or WireCounts()
        self._http = httpx.AsyncClient(
            base_url=self.base,
            transport=_transport(client_context(files), connections, self.counts),
            timeout=httpx.Timeout(timeout_s),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, *, timeout_s: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            if timeout_s is not None:
                kwargs["timeout"] = httpx.Timeout(timeout_s)
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.base + path) from exc

    async def send_batch(self, data: bytes, timeout_s: float | None = None, after: int | None = None) -> sync.BatchAck:
        """Send one batch; ``after``: the last sequence of an earlier batch of the stream still in flight."""
        headers = {"content-type": sync.BATCH_CONTENT_TYPE}
        if after is not None:
            headers[sync.AFTER_HEADER] = str(after)
        resp = await self._request("POST", sync.BATCHES_PATH, content=data, headers=headers, timeout_s=timeout_s)
        if resp.status_code != 200:
            raise response_error(resp, "batch refused")
        try:
            return sync.BatchAck.from_json(resp.json())
        except ValueError as exc:
            raise SyncError(Code.GATEWAY_CLOUD_ERROR, f"the cloud's batch ack is unreadable: {exc}", status=200) from exc

    async def downlink(self, after: int, wait_s: int, timeout_s: float) -> tuple[list[Any], int]:
        """The items after ``after`` as sent (each is read by ``DownlinkItem.from_json`` one at a
        time, so one unreadable item cannot block the others) and the cloud's ``next`` cursor."""
        resp = await self._request("GET", sync.DOWNLINK_PATH, params={"after": after, "wait": wait_s}, timeout_s=timeout_s)
        if resp.status_code != 200:
            raise response_error(resp, "downlink")
        try:
            doc = resp.json()
            items = list(doc["items"])
            seqs = [i["seq"] for i in items if isinstance(i, dict) and type(i.get("seq")) is int]
            nxt = doc.get("next")
            nxt = int(nxt) if type(nxt) is int else max(seqs, default=after)
        except (ValueError, KeyError, TypeError) as exc:
            raise SyncError(Code.GATEWAY_CLOUD_ERROR, f"the cloud's downlink answer is unreadable: {exc}", status=200) from exc
        return items, nxt

    async def ack_downlink(self, seq: int) -> None:
        resp = await self._request("POST", sync.DOWNLINK_ACK_PATH, json={"seq": seq})
        if resp.status_code not in (200, 204):
            raise response_error(resp, "downlink ack")

    async def renew(self, csr_pem: bytes) -> tuple[bytes, bytes]:
        resp = await self._request("POST", sync.RENEW_PATH, json={"csr": csr_pem.decode()})
        if resp.status_code != 200:
            raise response_error(resp, "certificate renewal")
        try:
            doc = resp.json()
            return doc["certificate"].encode(), doc["ca"].encode()
        except (ValueError, KeyError, AttributeError) as exc:
            raise SyncError(Code.GATEWAY_CLOUD_ERROR, f"the cloud's renewal answer is unreadable: {exc}", status=200) from exc

    async def firmware(self, artifact: str, start: int, *, chunk_timeout_s: float) -> AsyncIterator[bytes]:
        """The bytes of an artifact from ``start`` (a ``Range`` request when above 0), as they arrive."""
        path = FIRMWARE_SYNC_PATH.format(artifact=artifact)
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=httpx.Timeout(chunk_timeout_s)) as resp:
                if resp.status_code not in (200, 206) or (start and resp.status_code != 206):
                    await resp.aread()
                    raise response_error(resp, "firmware download")
                async for chunk in resp.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.base + path) from exc

    async def report(self, doc: dict[str, object]) -> None:
        resp = await self._request("POST", sync.REPORT_PATH, json=doc)
        if resp.status_code not in (200, 204):
            raise response_error(resp, "report")


class Connection:
    """One ``SyncClient`` kept across a loop's sessions. A failure the cloud answered (a 503, a
    refused request) keeps the TLS connection, since a new handshake costs kilobytes on a metered
    link; a transport failure, a certificate renewal and shutdown drop it."""

    def __init__(self, enrollment: Enrollment, files: IdentityFiles, *, timeout_s: float, connections: int = 2,
                 counts: WireCounts | None = None) -> None:
        self.enrollment = enrollment
        self.files = files
        self.timeout_s = timeout_s
        self.connections = connections
        self.counts = counts or WireCounts()
        """Kept across the clients of every session."""
        self._client: SyncClient | None = None

    def get(self) -> SyncClient:
        if self._client is None:
            self._client = SyncClient(self.enrollment, self.files, timeout_s=self.timeout_s, connections=self.connections,
                                      counts=self.counts)
        return self._client

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[SyncClient]:
        """The client for one session; dropped when the session fails other than by the cloud's answer."""
        try:
            yield self.get()
        except SyncError as exc:
            if exc.status is None:
                await self.drop()
            raise
        except BaseException:
            await self.drop()
            raise

    async def drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(aio.wait_for(client.aclose(), 5))
