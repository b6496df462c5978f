"""The cloud's certificate authority for gateways.

Made on first start in the cloud's data directory (``ca.key`` mode 0600, ``ca.crt``). It signs:
- gateway client certificates from a CSR the gateway made (the gateway's key never leaves it),
  short-lived (30 days by default), naming tenant and gateway in a SAN URI
  ``pulse://tenant/{tenant_id}/gateway/{gateway_id}``;
- the server certificate of the cloud's gateway listener (mTLS), for its host names.

Identity is read back only from a certificate this CA signed; the caller checks revocation against
the database (serial numbers are recorded at issue).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pulse.protocol.errors import Code, PulseError
from pulse.protocol.topics import valid_device_id

IDENTITY_RE = re.compile(r"pulse://tenant/([A-Za-z0-9_.:\-]{1,64})/gateway/([A-Za-z0-9][A-Za-z0-9_.:\-]{0,127})")
DEFAULT_LIFETIME = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(minutes=5)


class IdentityError(PulseError):
    """A CSR or certificate that cannot establish a gateway's identity."""


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    tenant_id: str
    gateway_id: str
    serial: int
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret (a private key) readable by its owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def identity_uri(tenant_id: str, gateway_id: str) -> str:
    return f"pulse://tenant/{tenant_id}/gateway/{gateway_id}"


class CertificateAuthority:
    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "Pulse gateway CA") -> CertificateAuthority:
        directory.mkdir(parents=True, exist_ok=True)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise IdentityError(Code.IDENTITY_BAD_CSR, f"{key_path} is not an EC key")
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pulse")])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert)

    def _builder(self, subject: x509.Name, public_key: object, lifetime: dt.timedelta, now: dt.datetime) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )

    def sign_gateway_csr(
        self, csr_pem: bytes, *, tenant_id: str, gateway_id: str, lifetime: dt.timedelta = DEFAULT_LIFETIME, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Sign a gateway's CSR. The names in the certificate come from the caller (the verified
        enrollment token), never from the CSR."""
        if not valid_device_id(gateway_id) or not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", tenant_id):
            raise IdentityError(Code.IDENTITY_BAD_CSR, "tenant or gateway id is not a valid id")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise IdentityError(Code.IDENTITY_BAD_CSR, "the certificate request is not a PEM CSR") from exc
        try:
            # both parse the request's key lazily: an invalid key (an EC point off its curve) raises here
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, TypeError) as exc:
            raise IdentityError(Code.IDENTITY_BAD_CSR, "the certificate request's public key is invalid (not a point on its curve?)") from exc
        if not valid:
            raise IdentityError(Code.IDENTITY_BAD_CSR, "the certificate request's signature does not verify")
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in ("secp256r1", "secp384r1"):
                raise IdentityError(Code.IDENTITY_BAD_CSR, "EC keys must be P-256 or P-384")
        elif isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise IdentityError(Code.IDENTITY_BAD_CSR, "RSA keys must be at least 2048 bits")
        else:
            raise IdentityError(Code.IDENTITY_BAD_CSR, "gateway keys are EC (P-256/P-384) or RSA (2048+)")
        now = now or _now()
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, gateway_id), x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"tenant {tenant_id}")]
        )
        return (
            self._builder(subject, public_key, lifetime, now)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity_uri(tenant_id, gateway_id))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue_server_cert(
        self, hosts: list[str], *, lifetime: dt.timedelta = dt.timedelta(days=365)
    ) -> tuple[bytes, bytes]:
        """A server certificate (and its new key) for the cloud's gateway listener: (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cert = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]), key.public_key(), lifetime, _now())
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    def identify(self, cert: x509.Certificate, *, now: dt.datetime | None = None) -> GatewayIdentity:
        """The gateway a certificate names, if this CA signed it and it is in its validity period.

        The TLS layer has verified the chain already; this re-checks, so the identity cannot come
        from a certificate we did not issue even if a listener were misconfigured."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise IdentityError(Code.IDENTITY_UNTRUSTED, "the certificate was not issued by this cloud's CA") from exc
        now = now or _now()
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise IdentityError(Code.IDENTITY_EXPIRED, "the gateway certificate is expired or not yet valid; renew or re-enroll")
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound as exc:
            raise IdentityError(Code.IDENTITY_UNTRUSTED, "the certificate names no gateway") from exc
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if m := IDENTITY_RE.fullmatch(uri):
                return GatewayIdentity(m.group(1), m.group(2), cert.serial_number, cert.not_valid_after_utc)
        raise IdentityError(Code.IDENTITY_UNTRUSTED, "the certificate names no gateway")
