"""The gateway listener identifies gateways from the verified client certificate, over real TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from forged import off_curve_csr

from pulse.cloud.ca import CertificateAuthority, IdentityError
from pulse.cloud.db.embedded import free_port
from pulse.cloud.tls import peer_certificate, server_context
from pulse.edge.identity import IdentityFiles, make_key_and_csr, renewal_due, store_certificate

pytestmark = pytest.mark.integration


def _identity_app(ca: CertificateAuthority) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        cert = peer_certificate(scope)
        try:
            ident = ca.identify(cert) if cert else None
            body = {"tenant": ident.tenant_id, "gateway": ident.gateway_id} if ident else {"error": "no certificate"}
            status = 200 if ident else 401
        except IdentityError as exc:
            body, status = exc.as_dict(), 401
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[tuple[str, CertificateAuthority, Path]]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert_pem, key_pem = ca.issue_server_cert(["localhost", "127.0.0.1"])
    (tmp_path / "server.crt").write_bytes(cert_pem)
    (tmp_path / "server.key").write_bytes(key_pem)
    port = free_port()
    config = uvicorn.Config(
        _identity_app(ca),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        **server_context(str(tmp_path / "server.crt"), str(tmp_path / "server.key"), str(tmp_path / "ca" / "ca.crt")),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}/", ca, tmp_path
    finally:
        server.should_exit = True
        await task


def _client(ca_file: Path, files: IdentityFiles | None) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return httpx.AsyncClient(verify=ctx, timeout=5)


def _enroll(ca: CertificateAuthority, directory: Path, gateway: str, **kwargs: Any) -> IdentityFiles:
    files = IdentityFiles(directory)
    csr = make_key_and_csr(files, gateway)
    cert = ca.sign_gateway_csr(csr, tenant_id="tenant-a", gateway_id=gateway, **kwargs)
    store_certificate(files, cert.public_bytes(serialization.Encoding.PEM), ca.cert_pem)
    return files


async def test_gateway_is_identified_from_its_verified_certificate(listener: tuple[str, CertificateAuthority, Path]) -> None:
    url, ca, tmp = listener
    files = _enroll(ca, tmp / "gw", "gw-north-1")
    assert oct(files.key.stat().st_mode & 0o777) == "0o600"
    async with _client(files.ca, files) as client:
        r = await client.get(url, headers={"X-Gateway-Id": "gw-spoofed"})
    assert r.status_code == 200
    assert r.json() == {"tenant": "tenant-a", "gateway": "gw-north-1"}


async def test_connection_without_client_certificate_is_refused(listener: tuple[str, CertificateAuthority, Path]) -> None:
    url, ca, tmp = listener
    async with _client(tmp / "ca" / "ca.crt", None) as client:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(url)


async def test_certificate_from_another_ca_is_refused(listener: tuple[str, CertificateAuthority, Path]) -> None:
    url, _, tmp = listener
    rogue = CertificateAuthority.load_or_create(tmp / "rogue-ca")
    files = _enroll(rogue, tmp / "rogue-gw", "gw-north-1")
    async with _client(tmp / "ca" / "ca.crt", files) as client:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(url)


async def test_expired_certificate_is_refused(listener: tuple[str, CertificateAuthority, Path]) -> None:
    url, ca, tmp = listener
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    files = _enroll(ca, tmp / "old-gw", "gw-old", now=past, lifetime=dt.timedelta(days=30))
    async with _client(files.ca, files) as client:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await client.get(url)


def test_certificate_names_come_from_the_cloud_not_the_csr(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    files = IdentityFiles(tmp_path / "gw")
    csr = make_key_and_csr(files, "gw-claims-to-be-someone-else")
    cert = ca.sign_gateway_csr(csr, tenant_id="tenant-b", gateway_id="gw-real")
    ident = ca.identify(cert)
    assert (ident.tenant_id, ident.gateway_id) == ("tenant-b", "gw-real")
    assert oct((tmp_path / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    # reloading the CA from disk keeps the same identity
    assert CertificateAuthority.load_or_create(tmp_path / "ca").cert == ca.cert
    with pytest.raises(IdentityError) as err:
        ca.sign_gateway_csr(b"not a csr", tenant_id="tenant-b", gateway_id="gw-real")
    assert err.value.code == "identity.bad_csr"


def test_csr_with_an_off_curve_key_is_a_coded_refusal(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    with pytest.raises(IdentityError) as err:
        ca.sign_gateway_csr(off_curve_csr(), tenant_id="t", gateway_id="gw")
    assert err.value.code == "identity.bad_csr"


def test_renewal_is_due_at_two_thirds_of_the_certificate_life(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = ca.sign_gateway_csr(make_key_and_csr(IdentityFiles(tmp_path / "gw"), "gw"), tenant_id="t", gateway_id="gw", now=start)
    begins = cert.not_valid_before_utc
    life = cert.not_valid_after_utc - begins
    assert not renewal_due(cert, begins + life * 0.6)
    assert renewal_due(cert, begins + life * 0.67)
