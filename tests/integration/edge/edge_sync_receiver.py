"""A receiver standing in for the cloud's gateway listeners in the gateway's sync tests.

It is a real HTTPS server on loopback (uvicorn, real TLS): a public listener for ``POST /enroll/v1``
and a sync listener that requires a client certificate from the test's CA (made by
``pulse.cloud.ca.CertificateAuthority``; the gateway is identified from the verified certificate
with ``pulse.cloud.tls.peer_certificate``). Batches are decoded with ``protocol.batch.decode`` and
admitted with ``protocol.sync.admit`` against an in-memory high-water mark per stream, as the cloud
does; downlink items are served by long-poll.

Faults the tests switch on: ``abort_after_commit`` (the connection is cut after the batch was
committed, before the ack reaches the gateway), ``busy`` (503 with Retry-After, by turns
``ingest.overloaded`` and ``sync.stream_unavailable`` as the cloud answers them), a record with the
metric ``poison`` (400 batch.malformed), and ``stop()``/``start()`` of the sync listener. A batch sent behind another still in flight
(``X-Pulse-After``) is stored only after that one, as the cloud does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.db.embedded import free_port
from pulse.cloud.tls import PeerCertH11Protocol, peer_certificate, server_context
from pulse.protocol import sync
from pulse.protocol.batch import VERSION_1, VERSIONS, Record, Stream, decode
from pulse.protocol.errors import BatchError

TENANT, GATEWAY = "tenant-a", "gw-1"


class _Server(uvicorn.Server):
    """uvicorn inside the test's loop; the test, not uvicorn, owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _TransportProtocol(PeerCertH11Protocol):
    """Also exposes the connection's transport to the app, so a test can cut it mid-request."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            scope["test.transport"] = transport
            await inner(scope, receive, send)

        self.app = app


@dataclass
class Receiver:
    directory: Path
    ca: CertificateAuthority = field(init=False)
    tokens: dict[str, tuple[str, str]] = field(default_factory=lambda: {"good-token": (TENANT, GATEWAY)})
    cert_lifetime: dt.timedelta = dt.timedelta(days=30)
    cert_backdate: dt.timedelta = dt.timedelta(0)
    high_water: dict[Stream, int] = field(default_factory=lambda: dict.fromkeys(Stream, 0))
    rows: list[tuple[Stream, Record]] = field(default_factory=list)
    batch_streams: list[Stream] = field(default_factory=list)
    verdicts: list[sync.Verdict] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    renewals: int = 0
    identities: set[str] = field(default_factory=set)
    abort_after_commit: int = 0
    busy: int = 0
    busy_answers: int = 0
    refuse_reports: bool = False
    hang: int = 0
    short_acks: int = 0
    """The next N batches are stored and acked only up to their second-to-last record (a cloud may
    ack less than it was sent; the gateway must send the rest again, not skip past it)."""
    batch_delay_s: float = 0.0
    """Each batch waits this long before it is stored (a slow cloud, so the gateway works ahead)."""
    hung: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    """Records in each batch that reached the receiver, answered or not."""
    batch_bytes: list[int] = field(default_factory=list)
    """Bytes of each batch that reached the receiver (its encoding), answered or not."""
    aborted: int = 0
    batches_after: int = 0
    """Batches sent behind another still in flight (with ``X-Pulse-After``)."""
    out_of_order: int = 0
    batch_versions: tuple[int, ...] = VERSIONS
    """The batch formats this receiver reads and announces in its acks (``(1,)``: a cloud older than version 2)."""
    versions_seen: list[int] = field(default_factory=list)
    """The format of each batch that reached the receiver."""
    downlink_items: list[dict[str, Any]] = field(default_factory=list)
    downlink_polls: list[int] = field(default_factory=list)
    downlink_acks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca = CertificateAuthority.load_or_create(self.directory / "ca")
        cert, key = self.ca.issue_server_cert(["127.0.0.1"])
        (self.directory / "server.crt").write_bytes(cert)
        (self.directory / "server.key").write_bytes(key)
        self.ca_file = self.directory / "ca" / "ca.crt"
        self.public_port = free_port()
        self.sync_port = free_port()
        self._servers: dict[str, tuple[uvicorn.Server, asyncio.Task[None]]] = {}
        self._new_item = asyncio.Event()
        self._closing = False

    @property
    def public_url(self) -> str:
        return f"https://127.0.0.1:{self.public_port}"

    @property
    def sync_url(self) -> str:
        return f"https://127.0.0.1:{self.sync_port}"

    # ---- lifecycle ---------------------------------------------------------------------------
    async def _serve(self, name: str, port: int, **tls: Any) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False, interface="asgi3",
                                timeout_graceful_shutdown=1, **tls)
        server = _Server(config)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._servers[name] = (server, task)
        for _ in range(500):
            if server.started:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError(f"the {name} listener did not start")

    async def start(self) -> None:
        if "public" not in self._servers:
            await self._serve("public", self.public_port, ssl_certfile=str(self.directory / "server.crt"),
                              ssl_keyfile=str(self.directory / "server.key"))
        tls = server_context(str(self.directory / "server.crt"), str(self.directory / "server.key"), str(self.ca_file))
        tls["http"] = _TransportProtocol
        await self._serve("sync", self.sync_port, **tls)

    async def stop_sync(self) -> None:
        await self._stop("sync")

    async def _stop(self, name: str) -> None:
        server, task = self._servers.pop(name)
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 10)

    async def close(self) -> None:
        self._closing = True
        self._new_item.set()
        for name in list(self._servers):
            await self._stop(name)

    def add_downlink(self, kind: str, payload: dict[str, Any]) -> int:
        seq = len(self.downlink_items) + 1
        self.downlink_items.append({"seq": seq, "kind": kind, "payload": payload})
        self._new_item.set()
        return seq

    # ---- the app -------------------------------------------------------------------------------
    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == sync.ENROLL_PATH and method == "POST":
            status, doc, headers = self._enroll(json.loads(body))
        else:
            cert = peer_certificate(scope)
            if cert is None:
                status, doc, headers = 401, {"code": "identity.no_certificate", "message": "no client certificate"}, {}
            else:
                ident = self.ca.identify(cert)
                self.identities.add(f"{ident.tenant_id}/{ident.gateway_id}")
                if path == sync.BATCHES_PATH and method == "POST":
                    with contextlib.suppress(BatchError):
                        self.batch_sizes.append(decode(body).header.record_count)
                        self.batch_bytes.append(len(body))
                if path == sync.BATCHES_PATH and method == "POST" and self.hang > 0:
                    self.hang -= 1
                    self.hung += 1
                    while not self._closing:  # accept the request, never answer it
                        await asyncio.sleep(0.05)
                    return
                if path == sync.BATCHES_PATH and method == "POST":
                    if self.batch_delay_s:
                        await asyncio.sleep(self.batch_delay_s)
                    after = _after(scope)
                    if after is not None:
                        self.batches_after += 1
                    status, doc, headers = await self._in_order(body, ident.gateway_id, after)
                    if status == 200 and self.abort_after_commit > 0:
                        self.abort_after_commit -= 1
                        self.aborted += 1
                        scope["test.transport"].abort()  # committed, but the ack never arrives
                        return
                elif path == sync.DOWNLINK_PATH and method == "GET":
                    status, doc, headers = await self._downlink(scope)
                elif path == sync.DOWNLINK_ACK_PATH and method == "POST":
                    self.downlink_acks.append(json.loads(body)["seq"])
                    status, doc, headers = 204, None, {}
                elif path == sync.REPORT_PATH and method == "POST" and self.refuse_reports:
                    status, doc, headers = 404, {"code": "api.not_found", "message": "no reports here"}, {}
                elif path == sync.REPORT_PATH and method == "POST":
                    self.reports.append(json.loads(body))
                    status, doc, headers = 204, None, {}
                elif path == sync.RENEW_PATH and method == "POST":
                    self.renewals += 1
                    signed = self.ca.sign_gateway_csr(json.loads(body)["csr"].encode(), tenant_id=ident.tenant_id,
                                                      gateway_id=ident.gateway_id)
                    status, doc, headers = 200, {"certificate": _pem(signed), "ca": self.ca.cert_pem.decode()}, {}
                else:
                    status, doc, headers = 404, {"code": "api.not_found", "message": path}, {}
        out = b"" if doc is None else json.dumps(doc).encode()
        hdrs = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in headers.items())]
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": out})

    def _enroll(self, doc: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        names = self.tokens.pop(doc.get("token", ""), None)
        if names is None:
            return 401, {"code": "enroll.token_invalid", "message": "unknown or used enrollment token"}, {}
        now = dt.datetime.now(dt.UTC) - self.cert_backdate
        cert = self.ca.sign_gateway_csr(doc["csr"].encode(), tenant_id=names[0], gateway_id=names[1], lifetime=self.cert_lifetime, now=now)
        return 201, {"tenant_id": names[0], "gateway_id": names[1], "gateway_name": "Test site", "certificate": _pem(cert),
                     "ca": self.ca.cert_pem.decode(), "sync_url": self.sync_url}, {}

    async def _in_order(self, body: bytes, gateway_id: str, after: int | None) -> tuple[int, Any, dict[str, str]]:
        """As the cloud does: a batch sent behind another (``X-Pulse-After``) is stored only after it,
        waiting a little for it, else ``409 sync.out_of_order`` and nothing stored."""
        with contextlib.suppress(BatchError):
            stream = decode(body).header.stream
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not sync.in_order(after, self.high_water[stream]):
                if loop.time() >= deadline or self._closing:
                    self.out_of_order += 1
                    return 409, {"code": "sync.out_of_order", "message": f"the batch ending at {after} is not stored"}, {}
                await asyncio.sleep(0.01)
        return self._batch(body, gateway_id)

    def _batch(self, body: bytes, gateway_id: str) -> tuple[int, Any, dict[str, str]]:
        if self.busy > 0:
            self.busy -= 1
            self.busy_answers += 1
            code = ("ingest.overloaded", "sync.stream_unavailable")[self.busy_answers % 2]
            return 503, {"code": code, "message": "busy"}, {"Retry-After": "0.2"}
        try:
            batch = decode(body)
        except BatchError as exc:
            return 400, exc.as_dict(), {}
        h = batch.header
        self.versions_seen.append(h.version)
        if h.version not in self.batch_versions:
            return 400, {"code": "batch.version_unsupported", "message": f"this receiver reads formats {self.batch_versions}"}, {}
        if h.gateway_id != gateway_id:
            return 403, {"code": "sync.gateway_mismatch", "message": "another gateway"}, {}
        if any("poison" in r.metrics for r in batch.records):
            return 400, {"code": "batch.malformed", "message": "a record this cloud can never accept"}, {}
        records = batch.records
        if self.short_acks > 0 and len(records) > 1:
            self.short_acks -= 1
            records = records[:-1]
            h = dataclasses.replace(h, last_seq=records[-1].seq, record_count=len(records))
        adm = sync.admit(h, records, self.high_water[h.stream])
        self.rows.extend((h.stream, r) for r in adm.new_records)  # "one transaction": rows and mark together
        self.high_water[h.stream] = adm.new_high_water
        self.batch_streams.append(h.stream)
        self.verdicts.append(adm.verdict)
        ack = sync.BatchAck(h.stream, adm.ack_seq, adm.verdict, len(adm.new_records), 0, 0, False, self.batch_versions)
        doc = ack.to_json()
        if self.batch_versions == (VERSION_1,):
            del doc["batch_versions"]  # what a cloud from before version 2 answers
        return 200, doc, {}

    async def _downlink(self, scope: Any) -> tuple[int, Any, dict[str, str]]:
        q = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
        after, wait = int(q.get("after", 0)), min(int(q.get("wait", 0)), sync.MAX_DOWNLINK_WAIT_S)
        self.downlink_polls.append(after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            items = [i for i in self.downlink_items if i["seq"] > after]
            if items or loop.time() >= deadline or self._closing:
                nxt = max((i["seq"] for i in items), default=after)
                return 200, {"items": items, "next": nxt}, {}
            self._new_item.clear()
            try:
                await asyncio.wait_for(self._new_item.wait(), deadline - loop.time())
            except TimeoutError:
                pass


def _after(scope: Any) -> int | None:
    for k, v in scope["headers"]:
        if k.decode().lower() == sync.AFTER_HEADER:
            return int(v)
    return None


def _pem(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
