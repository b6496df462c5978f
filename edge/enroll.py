"""``pulse gateway enroll``: the gateway makes its key and CSR, trades a one-time token for a
certificate at the cloud's ``POST /enroll/v1``, and stores what it got in its state directory
(``<data_dir>/identity``: ``gateway.key`` 0600, ``gateway.crt``, ``ca.crt``, ``enrollment.json``).

The private key never leaves the gateway. Enrolling again (a new token) keeps the key and replaces
the certificate.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pulse.edge.config import Settings
from pulse.edge.errors import SyncError
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate
from pulse.edge.link import Enrollment, response_error, save_enrollment, transport_error
from pulse.protocol import sync
from pulse.protocol.errors import Code


def enroll(
    settings: Settings, cloud_url: str, token: str, *, ca_file: Path | None = None, insecure: bool = False, timeout_s: float = 30.0
) -> tuple[Enrollment, x509.Certificate]:
    """Enroll this gateway; returns what the cloud said and the certificate. Raises ``SyncError``.

    Plain ``http://`` is refused unless ``insecure``: the CA in the cloud's answer becomes the
    gateway's trust anchor for every later sync, so whoever can change that answer on the way
    (anyone on the path, without TLS) would own the gateway's link to the cloud."""
    cloud_url = cloud_url.rstrip("/")
    if not cloud_url.startswith(("https://", "http://")):
        raise SyncError(Code.GATEWAY_CLOUD_UNREACHABLE, f"--cloud must be a URL such as https://pulse.example.com, got {cloud_url!r}")
    if cloud_url.startswith("http://") and not insecure:
        raise SyncError(
            Code.GATEWAY_INSECURE_URL,
            f"refusing to enroll over plain HTTP ({cloud_url}): the CA the cloud answers with becomes this gateway's trust "
            "anchor, and without TLS anyone on the path could substitute their own. Use the cloud's https:// URL, or pass "
            "--insecure only on a network you trust (a demo on one machine)",
        )
    if not token.strip():
        raise SyncError(Code.ENROLL_TOKEN_INVALID, "the enrollment token is empty: copy it from the cloud console")
    files = IdentityFiles(settings.state_dir)
    csr = make_key_and_csr(files, settings.gateway.id)
    url = cloud_url + sync.ENROLL_PATH
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
    try:
        resp = httpx.post(url, json={"token": token.strip(), "csr": csr.decode()}, verify=verify, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise transport_error(exc, url) from exc
    if resp.status_code == 401:
        err = response_error(resp, "enrollment refused")
        raise SyncError(Code.ENROLL_TOKEN_INVALID, "the cloud refused the enrollment token (unknown, used already, or expired): "
                        "ask the operator for a new one", status=401, detail=err.message)
    if resp.status_code not in (200, 201):
        raise response_error(resp, "enrollment refused")
    try:
        doc = resp.json()
        cert_pem, ca_pem = doc["certificate"].encode(), doc["ca"].encode()
        enrollment = Enrollment(cloud_url, str(doc["sync_url"]), str(doc["tenant_id"]), str(doc["gateway_id"]),
                                str(doc.get("gateway_name") or doc["gateway_id"]), int(time.time() * 1000))
        cert = x509.load_pem_x509_certificate(cert_pem)
        x509.load_pem_x509_certificate(ca_pem)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SyncError(Code.GATEWAY_CLOUD_ERROR, f"the cloud's enrollment answer is unreadable: {exc}", status=resp.status_code) from exc
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        raise SyncError(Code.GATEWAY_CLOUD_ERROR, "the certificate the cloud returned is not for this gateway's key")
    store_certificate(files, cert_pem, ca_pem)
    save_enrollment(settings.state_dir, enrollment)
    return enrollment, cert
