"""The gateway's own identity: its key pair (made here, never sent anywhere), its CSR, and the
certificate the cloud signed. Files live in the gateway's state directory: ``gateway.key`` (0600),
``gateway.crt``, ``ca.crt`` (the cloud CA, to verify the cloud's listener).

``cryptography`` is imported by the functions that make or read keys and certificates, not with
the module: a gateway that is not enrolled never loads it (~9 MB of memory)."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "gateway.key"

    @property
    def cert(self) -> Path:
        return self.directory / "gateway.crt"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def enrolled(self) -> bool:
        return self.key.exists() and self.cert.exists() and self.ca.exists()


def make_key_and_csr(files: IdentityFiles, gateway_id: str) -> bytes:
    """Make (or reuse) the gateway's private key and return a CSR for it (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files.directory.mkdir(parents=True, exist_ok=True)
    if files.key.exists():
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{files.key} is not an EC private key")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def store_certificate(files: IdentityFiles, cert_pem: bytes, ca_pem: bytes) -> x509.Certificate:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    tmp = files.cert.with_suffix(".tmp")
    tmp.write_bytes(cert_pem)
    os.replace(tmp, files.cert)
    files.ca.write_bytes(ca_pem)
    return cert


def renewal_due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """Renew at two thirds of the certificate's life."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * 2 / 3
