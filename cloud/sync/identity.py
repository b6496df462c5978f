"""Who a gateway is, and how it gets and keeps a certificate: the sync listener's identity check
(``certificate_of``, ``identify``), enrollment with a one-time token, renewal with the same key and
rekeying with a new one.

A gateway is who its verified client certificate says (``CertificateAuthority.identify``) and only
while the database has that certificate unrevoked and the gateway not revoked: checked on every
request, no cache, so a revocation takes effect on the next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
import uuid
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import unquote

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pulse.cloud.auth.credentials import sha256_hex
from pulse.cloud.ca import CertificateAuthority, IdentityError
from pulse.cloud.db.pool import Database, audit
from pulse.cloud.downlink import push_rules
from pulse.cloud.errors import AuthError, ConflictError, InvalidError
from pulse.cloud.settings import SyncConfig
from pulse.cloud.tls import Scope, peer_certificate
from pulse.common import logs
from pulse.protocol.errors import Code

PROXY_CERT_HEADER = "x-pulse-client-cert"
ENROLLMENT_TOKEN_PREFIX = "pet_"


def new_enrollment_token() -> str:
    return ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class GatewayCaller:
    """A gateway identified from a verified certificate that the database still accepts."""

    tenant_id: uuid.UUID
    gateway_id: uuid.UUID
    site_id: uuid.UUID | None
    serial: int
    key_sha256: str  # of the presented certificate's public key (SubjectPublicKeyInfo, DER)

    @property
    def wire_id(self) -> str:
        """The gateway id as batches and certificates spell it."""
        return str(self.gateway_id)


def key_fingerprint(key: object) -> str:
    """sha256 of a public key's SubjectPublicKeyInfo (DER), hex."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(der).hexdigest()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Identity:
    """Certificates of gateways: checked on every request, issued at enrollment, renewal and rekey."""

    def __init__(self, config: SyncConfig, db: Database) -> None:
        self.config = config
        self.db = db
        self._ca: CertificateAuthority | None = None

    @property
    def ca(self) -> CertificateAuthority:
        """The cloud's gateway CA, made in the data directory on first use (key mode 0600)."""
        if self._ca is None:
            self._ca = CertificateAuthority.load_or_create(self.config.ca_dir)
        return self._ca

    def certificate_of(self, scope: Scope, client_host: str | None, header: str | None) -> x509.Certificate | None:
        """The client certificate of a request: the one the TLS layer verified, or, only when the
        connection comes from a configured trusted proxy, the PEM (URL-encoded, as nginx's
        ``$ssl_client_escaped_cert``) in the ``X-Pulse-Client-Cert`` header."""
        if header and client_host and self._trusted(client_host):
            try:
                return x509.load_pem_x509_certificate(unquote(header).encode())
            except ValueError as exc:
                raise AuthError(Code.IDENTITY_UNTRUSTED, "the proxy's client certificate header is not a PEM certificate") from exc
        return peer_certificate(scope)

    def _trusted(self, host: str) -> bool:
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.config.trusted_proxies)

    async def identify(self, cert: x509.Certificate | None) -> GatewayCaller:
        if cert is None:
            raise AuthError(Code.IDENTITY_NO_CERTIFICATE, "the sync listener needs the gateway's client certificate")
        try:
            ident = self.ca.identify(cert)
            tenant, gateway = uuid.UUID(ident.tenant_id), uuid.UUID(ident.gateway_id)
        except IdentityError as exc:
            raise AuthError(exc.code, exc.message) from exc
        except ValueError as exc:
            raise AuthError(Code.IDENTITY_UNTRUSTED, "the certificate names no gateway of this cloud") from exc
        async with self.db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_gateway_certificate($1, $2)", Decimal(ident.serial), gateway)
        if row is None or row["tenant_id"] != tenant:
            raise AuthError(Code.IDENTITY_UNTRUSTED, "this certificate is not on record for the gateway; enroll it again")
        if row["revoked"] or row["gateway_status"] == "revoked":
            raise AuthError(Code.IDENTITY_REVOKED, "this gateway or its certificate was revoked; enroll again with a new token")
        if row["superseded"]:
            raise AuthError(Code.IDENTITY_SUPERSEDED, "a renewal replaced this certificate; use the newest one (or enroll again)")
        logs.bind(tenant=tenant, gateway=gateway)  # what this request logs names them
        return GatewayCaller(tenant, gateway, row["site_id"], ident.serial, key_fingerprint(cert.public_key()))

    def _sign(self, csr_pem: str, tenant: uuid.UUID, gateway: uuid.UUID) -> x509.Certificate:
        try:
            return self.ca.sign_gateway_csr(
                csr_pem.encode(),
                tenant_id=str(tenant),
                gateway_id=str(gateway),
                lifetime=dt.timedelta(days=self.config.cert_lifetime_days),
            )
        except IdentityError as exc:
            raise InvalidError(exc.code, exc.message) from exc

    @staticmethod
    async def _record(conn: asyncpg.Connection, tenant: uuid.UUID, gateway: uuid.UUID, cert: x509.Certificate) -> None:
        await conn.execute(
            "INSERT INTO gateway_certificates (serial, tenant_id, gateway_id, not_after) VALUES ($1, $2, $3, $4)",
            Decimal(cert.serial_number),
            tenant,
            gateway,
            cert.not_valid_after_utc,
        )

    async def enroll(self, token: str, csr_pem: str) -> dict[str, object]:
        """Exchange a one-time token and a CSR for a certificate. The token is consumed in the same
        transaction that records the certificate; a bad CSR leaves the token usable."""
        token_hash = sha256_hex(token)
        async with self.db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_enrollment_token($1)", token_hash)
        if row is None:
            raise AuthError(Code.ENROLL_TOKEN_INVALID, "the enrollment token is unknown, used already, or expired; ask for a new one")
        tenant, gateway = row["tenant_id"], row["gateway_id"]
        cert = self._sign(csr_pem, tenant, gateway)
        async with self.db.tenant(tenant) as conn:
            used = await conn.fetchval(
                "UPDATE gateway_enrollment_tokens SET used_at = now()"
                " WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING id",
                token_hash,
            )
            if used is None:
                raise AuthError(Code.ENROLL_TOKEN_INVALID, "the enrollment token was used meanwhile; ask for a new one")
            # a new enrollment means a new key: certificates issued before it stop working
            await conn.execute(
                "UPDATE gateway_certificates SET revoked_at = now() WHERE gateway_id = $1 AND revoked_at IS NULL", gateway
            )
            await self._record(conn, tenant, gateway, cert)
            if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM rules)"):
                await push_rules(conn, tenant, [gateway])  # a new gateway starts with the tenant's rules
            await conn.execute("UPDATE gateways SET status = 'active' WHERE id = $1", gateway)
            await audit(
                conn,
                actor=f"gateway:{gateway}",
                action="gateway.enroll",
                target=row["gateway_name"],
                tenant_id=tenant,
                detail={"serial": str(cert.serial_number), "not_after": cert.not_valid_after_utc.isoformat()},
            )
        return {
            "tenant_id": str(tenant),
            "gateway_id": str(gateway),
            "gateway_name": row["gateway_name"],
            "certificate": _pem(cert),
            "ca": self.ca.cert_pem.decode(),
            "sync_url": self.config.public_url,
        }

    async def renew(self, caller: GatewayCaller, csr_pem: str) -> dict[str, object]:
        """A new certificate for the same identity and the same key. The certificate the gateway
        renewed with retires after the overlap (PULSE_GATEWAY_CERT_OVERLAP_S); any other earlier one
        at once, so a gateway has at most two live certificates. A CSR with another key is refused
        (``identity.key_changed``): a new key goes through ``rekey``."""
        cert = self._sign(csr_pem, caller.tenant_id, caller.gateway_id)
        if key_fingerprint(cert.public_key()) != caller.key_sha256:
            raise ConflictError(
                Code.IDENTITY_KEY_CHANGED,
                "renewal keeps the gateway's key: send a CSR made with the key of the certificate you present,"
                " or change the key on purpose through /sync/v1/rekey",
            )
        async with self.db.tenant(caller.tenant_id) as conn:
            await conn.execute(
                "UPDATE gateway_certificates SET retires_at = CASE WHEN serial = $2"
                " THEN least(coalesce(retires_at, 'infinity'), now() + make_interval(secs => $3)) ELSE now() END"
                " WHERE gateway_id = $1 AND revoked_at IS NULL AND (retires_at IS NULL OR retires_at > now())",
                caller.gateway_id,
                Decimal(caller.serial),
                float(self.config.cert_overlap_s),
            )
            await self._record(conn, caller.tenant_id, caller.gateway_id, cert)
        return {"certificate": _pem(cert), "ca": self.ca.cert_pem.decode()}

    async def rekey(self, caller: GatewayCaller, csr_pem: str) -> dict[str, object]:
        """A certificate for a new key (one the gateway made, e.g. after its key may have been
        exposed). Every earlier certificate of the gateway, the presented one included, is revoked
        at once, in the transaction that records the new one; audited."""
        cert = self._sign(csr_pem, caller.tenant_id, caller.gateway_id)
        async with self.db.tenant(caller.tenant_id) as conn:
            revoked = await conn.fetchval(
                "WITH r AS (UPDATE gateway_certificates SET revoked_at = now() WHERE gateway_id = $1 AND revoked_at IS NULL RETURNING 1)"
                " SELECT count(*) FROM r",
                caller.gateway_id,
            )
            await self._record(conn, caller.tenant_id, caller.gateway_id, cert)
            name = await conn.fetchval("SELECT name FROM gateways WHERE id = $1", caller.gateway_id)
            await audit(
                conn,
                actor=f"gateway:{caller.gateway_id}",
                action="gateway.rekey",
                target=name or str(caller.gateway_id),
                tenant_id=caller.tenant_id,
                detail={
                    "serial": str(cert.serial_number),
                    "previous_serial": str(caller.serial),
                    "certificates_revoked": revoked,
                    "key_sha256": key_fingerprint(cert.public_key()),
                },
            )
        return {"certificate": _pem(cert), "ca": self.ca.cert_pem.decode()}
