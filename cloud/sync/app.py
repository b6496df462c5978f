"""The gateway sync listener: a small ASGI app served over mutual TLS (``SyncListener``), next to
the public API, by ``pulse cloud serve``. Routes are thin; ``SyncService``'s parts do the work
(identity, receive, downlink, claim, reports: see cloud/sync/service.py).

Every request is identified from the verified client certificate (or, only from a configured
trusted proxy, from the ``X-Pulse-Client-Cert`` header) and checked against the database."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, Field
from uvicorn.config import SSL_PROTOCOL_VERSION, create_ssl_context

from pulse.cloud import firmware
from pulse.cloud.bodylimit import PUBLIC_BODY_LIMIT, BodyLimit
from pulse.cloud.ca import CertificateAuthority, write_private
from pulse.cloud.errors import BadRequestError
from pulse.cloud.firmware import FirmwareStore
from pulse.cloud.metrics import Metrics
from pulse.cloud.settings import SyncConfig
from pulse.cloud.sync.identity import PROXY_CERT_HEADER, GatewayCaller
from pulse.cloud.sync.service import SyncService
from pulse.cloud.tls import RateLimitedLog, TlsAcceptingH11Protocol, accepting_protocol
from pulse.cloud.web import install_error_handlers, read_limited
from pulse.protocol.activation import CLAIM_PATH
from pulse.protocol.errors import Code
from pulse.protocol.firmware import SYNC_PATH as FIRMWARE_SYNC_PATH
from pulse.protocol.sync import (
    AFTER_HEADER,
    BATCHES_PATH,
    DOWNLINK_ACK_PATH,
    DOWNLINK_PATH,
    MAX_DOWNLINK_WAIT_S,
    REKEY_PATH,
    RENEW_PATH,
    REPORT_PATH,
)

log = logging.getLogger(__name__)


def _service(request: Request) -> SyncService:
    return request.app.state.sync  # type: ignore[no-any-return]


async def gateway(request: Request) -> GatewayCaller:
    svc = _service(request)
    client = request.client.host if request.client else None
    cert = svc.identity.certificate_of(request.scope, client, request.headers.get(PROXY_CERT_HEADER))
    return await svc.identity.identify(cert)


Gateway = Annotated[GatewayCaller, Depends(gateway)]
Service = Annotated[SyncService, Depends(_service)]


class DownlinkAck(BaseModel):
    seq: int = Field(ge=0)


class RenewRequest(BaseModel):
    csr: str = Field(max_length=16_384)


class ClaimRequest(BaseModel):
    code: str = Field(max_length=40)
    device_id: str = Field(max_length=128)
    name: str = Field(default="", max_length=200)


class ConnectorReport(BaseModel):
    """What the gateway did with the connector set pushed to it (edge/connectors/host.py)."""

    version: int | None = Field(default=None, ge=1)
    status: str = Field(max_length=1000)
    polled: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=2000)
    defined_locally: list[Annotated[str, Field(max_length=128)]] = Field(default_factory=list, max_length=2000)


class Report(BaseModel):
    dropped: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=16)
    backlog: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict, max_length=16)
    oldest_unsynced_ms: int | None = Field(default=None, ge=0, le=2**53)
    version: str | None = Field(default=None, max_length=64)
    connectors: ConnectorReport | None = None


def _too_large(limit: int) -> Callable[[int | None], BadRequestError]:
    return lambda size: BadRequestError(Code.BATCH_TOO_LARGE, f"batches are at most {limit} bytes; send smaller batches")


def create_sync_app(service: SyncService, firmware_files: FirmwareStore | None = None) -> FastAPI:
    """``firmware_files``: where artifacts are, for ``GET /sync/v1/firmware/{artifact}`` (none: 404)."""
    app = FastAPI(title="Pulse gateway sync", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sync = service
    install_error_handlers(app)
    # JSON bodies are small; batches have their own limit (read_limited)
    app.add_middleware(BodyLimit, limits=dict.fromkeys((RENEW_PATH, REKEY_PATH, REPORT_PATH, DOWNLINK_ACK_PATH, CLAIM_PATH), PUBLIC_BODY_LIMIT))

    @app.post(BATCHES_PATH)
    async def batches(request: Request, caller: Gateway, svc: Service) -> dict[str, object]:
        raw_after = request.headers.get(AFTER_HEADER)
        if raw_after is not None and not (raw_after.isascii() and raw_after.isdigit() and len(raw_after) <= 19):
            raise BadRequestError(Code.BATCH_MALFORMED, f"{AFTER_HEADER} must be a sequence number (digits)")
        limit = svc.receiver.max_request_bytes
        data = await read_limited(request, limit, _too_large(limit))
        ack = await svc.receiver.receive(caller, data, None if raw_after is None else int(raw_after))
        return ack.to_json()

    @app.get(DOWNLINK_PATH)
    async def downlink(
        caller: Gateway,
        svc: Service,
        after: Annotated[int, Query(ge=0)] = 0,
        wait: Annotated[float, Query(ge=0, le=MAX_DOWNLINK_WAIT_S)] = 0,
    ) -> dict[str, object]:
        items, nxt = await svc.downlink.items(caller, after, wait)
        return {"items": [i.to_json() for i in items], "next": nxt}

    @app.post(DOWNLINK_ACK_PATH, status_code=204)
    async def downlink_ack(body: DownlinkAck, caller: Gateway, svc: Service) -> Response:
        await svc.downlink.ack(caller, body.seq)
        return Response(status_code=204)

    @app.post(RENEW_PATH)
    async def renew(body: RenewRequest, caller: Gateway, svc: Service) -> dict[str, object]:
        return await svc.identity.renew(caller, body.csr)

    @app.post(REKEY_PATH)
    async def rekey(body: RenewRequest, caller: Gateway, svc: Service) -> dict[str, object]:
        return await svc.identity.rekey(caller, body.csr)

    @app.post(REPORT_PATH, status_code=204)
    async def report(body: Report, caller: Gateway, svc: Service) -> Response:
        await svc.reports.store(
            caller, dropped=body.dropped, backlog=body.backlog, oldest_unsynced_ms=body.oldest_unsynced_ms, version=body.version,
            connectors=None if body.connectors is None else body.connectors.model_dump(),
        )
        return Response(status_code=204)

    @app.post(CLAIM_PATH, status_code=201)
    async def claim(body: ClaimRequest, caller: Gateway, svc: Service) -> dict[str, object]:
        return await svc.claims.claim(caller, body.code, body.device_id, body.name)

    @app.get(FIRMWARE_SYNC_PATH.replace("{artifact}", "{artifact_id}"))
    async def firmware_download(artifact_id: str, request: Request, caller: Gateway, svc: Service) -> Response:
        """The gateway's (ranged, resumable) download of one of its tenant's artifacts; the bytes
        sent are counted on the artifact (``bytes_served``): what crossed the uplink."""
        return await firmware.download(firmware_files, svc.db, caller.tenant_id, artifact_id, request.headers.get("range"),
                                       requester=f"gateway:{caller.gateway_id}")

    return app


class _Server(uvicorn.Server):
    """The public server owns the process's signals; this one is stopped by the app's lifespan."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class SyncListener:
    """The mutual-TLS listener. Its server certificate is issued by the cloud's CA for the
    configured names at every start. The socket uses SO_REUSEPORT, so several worker processes
    share the port."""

    def __init__(
        self, app: FastAPI, config: SyncConfig, ca: CertificateAuthority, metrics: Metrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._config = config
        self._ca = ca
        self._metrics = metrics
        self._clock = clock
        self._refusals = RateLimitedLog(every_s=60.0)
        self._protocol: type[TlsAcceptingH11Protocol] | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = config.port  # the bound port once started (PULSE_SYNC_PORT=0 picks a free one)

    def refused(self, peer: str | None, reason: str, exc: BaseException) -> None:
        """A TLS handshake the listener refused: counted always, logged once per peer and reason a minute."""
        self._metrics.sync_tls_refused.labels(reason).inc()
        if self._refusals.due((peer, reason), self._clock()):
            log.warning("gateway sync listener refused a TLS handshake from %s: %s (%s)", peer or "an unknown address", reason, exc)

    def _ssl_context(self, cert_file: Path, key_file: Path) -> ssl.SSLContext:
        # behind a trusted TLS-terminating proxy the proxy may connect without a certificate of
        # its own; requests without one are still refused by the app unless they come from it
        reqs = ssl.CERT_OPTIONAL if self._config.trusted_proxies else ssl.CERT_REQUIRED
        context = create_ssl_context(
            cert_file, key_file, None, SSL_PROTOCOL_VERSION, reqs, str(self._config.ca_dir / "ca.crt"), "TLSv1"
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def start(self) -> None:
        directory = self._config.ca_dir
        cert_pem, key_pem = self._ca.issue_server_cert(list(self._config.names))
        # per process (several workers each issue their own); removed once the TLS context is loaded
        cert_file, key_file = directory / f"sync-server-{os.getpid()}.crt", directory / f"sync-server-{os.getpid()}.key"
        write_private(key_file, key_pem)
        cert_file.write_bytes(cert_pem)
        try:
            context = self._ssl_context(cert_file, key_file)
        finally:
            cert_file.unlink(missing_ok=True)
            key_file.unlink(missing_ok=True)
        family = socket.AF_INET6 if ":" in self._config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted connections
        sock.bind((self._config.host, self._config.port))
        self.port = sock.getsockname()[1]
        self._protocol = accepting_protocol(context, self.refused)
        config = uvicorn.Config(
            self._app,
            host=self._config.host,
            port=self._config.port,
            lifespan="off",
            # logging belongs to the public server: this one must not reconfigure it
            log_config=None,
            log_level=None,
            timeout_keep_alive=MAX_DOWNLINK_WAIT_S + 15,
            timeout_graceful_shutdown=5,
            # mutual TLS: the protocol runs the handshake itself (so refusals are seen, cloud/tls.py)
            # and puts the verified client certificate in the scope
            http=self._protocol,
            # no request header may change the peer address: the trusted-proxy check
            # (Identity.certificate_of) must see the socket's own peer, or anyone on a host
            # uvicorn trusts by default (loopback) could claim to be the proxy and name any gateway
            proxy_headers=False,
            forwarded_allow_ips="",
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="pulse-sync-listener")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the sync listener stopped while starting")
            await asyncio.sleep(0.01)
        log.info("gateway sync listener on https://%s:%s (mutual TLS)", self._config.host, self.port)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        if self._protocol is not None:
            for handshake in list(self._protocol.pending):
                handshake.cancel()
            await asyncio.gather(*self._protocol.pending, return_exceptions=True)
        self._server = self._task = None
