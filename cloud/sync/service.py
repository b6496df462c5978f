"""What the sync listener and enrollment do, behind thin routers (cloud/sync/app.py,
cloud/api/gateways.py).

Identity: a gateway is who its verified client certificate says (``CertificateAuthority.identify``)
and only while the database has that certificate unrevoked and the gateway not revoked: checked on
every request, no cache, so a revocation takes effect on the next request.

Delivery contract for a batch (docs/protocol.md section 6): the header is read first; a replay (at
or below the stream's high-water mark) is acked without being decompressed. Otherwise the batch is
decoded and, in ONE writer transaction, the mark row is locked (FOR UPDATE, so two copies of a batch
racing each other cannot both write), ``admit`` picks the records above it, rows and quarantine rows
are COPYed by ``ingest.writer.write_rows`` and the new mark is stored. Only after the commit does
the gateway get its ``BatchAck``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import unquote

import asyncpg
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pulse.cloud import twins
from pulse.cloud.alerts import connectivity, merge_edge_alerts
from pulse.cloud.auth.credentials import sha256_hex
from pulse.cloud.ca import CertificateAuthority, IdentityError
from pulse.cloud.connectors import record_report
from pulse.cloud.db.pool import Database, audit
from pulse.cloud.downlink import POLL_S, Notifier, pending, push_rules
from pulse.cloud.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    RateLimitedError,
    StorageUnavailableError,
)
from pulse.cloud.ingest.ratelimit import RateLimiter
from pulse.cloud.ingest.writer import QuarantineRow, TelemetryRow, write_rows
from pulse.cloud.metrics import Metrics
from pulse.cloud.settings import SyncConfig
from pulse.cloud.subscriptions import activation
from pulse.cloud.subscriptions.store import Entitlements
from pulse.cloud.tls import Scope, peer_certificate
from pulse.protocol import batch as codec
from pulse.protocol.batch import DEFAULT_BATCH_LIMITS, BatchLimits, Record, Stream
from pulse.protocol.envelope import MessageType
from pulse.protocol.errors import BatchError, Code
from pulse.protocol.sync import (
    MAX_DOWNLINK_WAIT_S,
    TWIN_RECORD_TYPES,
    BatchAck,
    ClockCheck,
    DownlinkItem,
    Verdict,
    admit,
    check_clock,
    classify,
    corrected_ts,
    in_order,
)
from pulse.protocol.topics import valid_device_id
from pulse.protocol.twin import DEFAULT_LIMITS as DEFAULT_TWIN_LIMITS
from pulse.protocol.twin import TwinLimits

log = logging.getLogger(__name__)

PROXY_CERT_HEADER = "x-pulse-client-cert"
IN_ORDER_WAIT_S = 5.0
"""How long a batch sent behind another (``X-Pulse-After``) waits for that one to be stored before ``409 sync.out_of_order``."""
ENROLLMENT_TOKEN_PREFIX = "pet_"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EXACT_FLOAT_MS = 2**33 * 1000
_DECODE_INLINE_BYTES = 64 * 1024  # bigger batches are decoded in a thread, off the event loop
_DISABLED = frozenset({"disabled", "decommissioned"})


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


@dataclass(frozen=True, slots=True)
class _Device:
    site_id: uuid.UUID | None
    status: str


def key_fingerprint(key: object) -> str:
    """sha256 of a public key's SubjectPublicKeyInfo (DER), hex."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(der).hexdigest()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class SyncService:
    def __init__(
        self,
        config: SyncConfig,
        db: Database,
        metrics: Metrics,
        *,
        limits: BatchLimits = DEFAULT_BATCH_LIMITS,
        on_commit: Callable[[Sequence[TelemetryRow]], None] | None = None,
        twin_limits: TwinLimits = DEFAULT_TWIN_LIMITS,
    ) -> None:
        self.config = config
        self.twin_limits = twin_limits
        self._on_commit = on_commit
        self.db = db
        self.metrics = metrics
        self.limits = limits
        self.notifier = Notifier()
        self.activation_limiter: RateLimiter | None = None
        """Device claims per gateway (PULSE_ACTIVATION_RATE_PER_MIN, PULSE_ACTIVATION_BURST)."""
        self.entitlements: Entitlements | None = None
        """A tenant whose subscriptions are SUSPENDED or EXPIRED: its gateways' batches are refused
        (403, that code) before anything is written; the gateway keeps them and sends them later."""
        self.on_twin_change: Callable[[uuid.UUID, str, str, dict[str, object]], None] | None = None
        """After a batch commits: (tenant, device id, "twin" | "command", detail), for the live view."""
        self._ca: CertificateAuthority | None = None

    @property
    def ca(self) -> CertificateAuthority:
        """The cloud's gateway CA, made in the data directory on first use (key mode 0600)."""
        if self._ca is None:
            self._ca = CertificateAuthority.load_or_create(self.config.ca_dir)
        return self._ca

    @property
    def max_request_bytes(self) -> int:
        return codec.HEADER_SIZE + 128 * 4 + self.limits.max_payload_bytes

    # --- identity ---------------------------------------------------------------------------

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
        return GatewayCaller(tenant, gateway, row["site_id"], ident.serial, key_fingerprint(cert.public_key()))

    # --- enrollment and renewal -------------------------------------------------------------

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

    # --- uplink -----------------------------------------------------------------------------

    async def receive(self, caller: GatewayCaller, data: bytes, after: int | None = None) -> BatchAck:
        """Store a batch. ``after``: the last sequence of an earlier batch of the stream that the
        gateway still has in flight (``X-Pulse-After``); this one is stored only after that one."""
        try:
            header = codec.read_header(data, self.limits)
        except BatchError as exc:
            raise BadRequestError(exc.code, exc.message, **exc.context) from exc
        if header.gateway_id != caller.wire_id:
            raise ForbiddenError(
                Code.SYNC_GATEWAY_MISMATCH, "the batch names another gateway than the client certificate", batch_gateway=header.gateway_id
            )
        if self.entitlements is not None:
            await self.entitlements.check_data(caller.tenant_id)
        clock = check_clock(header.gateway_time_ms, int(time.time() * 1000))
        self.metrics.sync_bytes.inc(len(data))
        deadline = time.monotonic() + IN_ORDER_WAIT_S
        while True:
            async with self.db.tenant(caller.tenant_id) as conn:
                mark = await conn.fetchval(
                    "SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1 AND stream = $2", caller.gateway_id, int(header.stream)
                )
            if in_order(after, mark or 0) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.02)  # the earlier batch is on its way or committing on another connection
        if classify(header, mark or 0) is Verdict.REPLAY:
            return await self._replayed(caller, header.stream, header.last_seq, len(data), clock)
        try:
            if len(data) > _DECODE_INLINE_BYTES:
                decoded = await asyncio.to_thread(codec.decode, data, self.limits)
            else:
                decoded = codec.decode(data, self.limits)
        except BatchError as exc:
            raise BadRequestError(exc.code, exc.message, **exc.context) from exc
        devices = await self._devices(caller, {r.device_id for r in decoded.records})
        received = dt.datetime.now(dt.UTC)
        try:
            async with self.db.writer_transaction() as conn:
                await conn.execute(
                    "INSERT INTO gateway_sync_marks (tenant_id, gateway_id, stream) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    caller.tenant_id,
                    caller.gateway_id,
                    int(header.stream),
                )
                high_water = await conn.fetchval(
                    "SELECT high_water FROM gateway_sync_marks WHERE gateway_id = $1 AND stream = $2 FOR UPDATE",
                    caller.gateway_id,
                    int(header.stream),
                )
                if not in_order(after, high_water):
                    raise ConflictError(
                        Code.SYNC_OUT_OF_ORDER,
                        f"the batch ending at {after} was not stored before this one; nothing was stored; send this batch after it",
                        after=after,
                    )
                admission = admit(header, decoded.records, high_water)
                rows: list[TelemetryRow] = []
                quarantined: list[QuarantineRow] = []
                applied = 0
                changes: list[tuple[str, str, dict[str, object]]] = []
                if admission.verdict is not Verdict.REPLAY:
                    if header.stream is Stream.ALERTS:
                        # alerts raised at the gateway merge into the tenant's alerts by fingerprint,
                        # in this transaction, so a replayed batch is never merged twice
                        quarantined = await self._merge_alerts(conn, caller, admission.new_records, received)
                    elif header.stream is Stream.TWIN:
                        # reported state and command answers apply in order, in this transaction,
                        # so a replayed batch is never applied twice
                        applied, quarantined = await self._apply_twin(
                            conn, caller, admission.new_records, devices, clock, received, changes
                        )
                    else:
                        rows, quarantined = self._rows(caller, header.stream, admission.new_records, devices, clock, received)
                    await write_rows(conn, rows, quarantined)
                    await conn.execute(
                        "UPDATE gateway_sync_marks SET high_water = $3, updated_at = now() WHERE gateway_id = $1 AND stream = $2",
                        caller.gateway_id,
                        int(header.stream),
                        admission.new_high_water,
                    )
                await self._touch(conn, caller, len(data), clock)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("sync batch from gateway %s not stored: %s", caller.gateway_id, exc)
            raise StorageUnavailableError(
                "storage is unavailable; nothing from this batch was stored; send it again later", retry_after_s=1
            ) from exc
        if self.on_twin_change is not None:
            for device_id, kind, detail in changes:
                try:
                    self.on_twin_change(caller.tenant_id, device_id, kind, detail)
                except Exception:  # a listener never fails a committed batch
                    log.exception("twin change listener failed; the batch is stored")
        if header.stream is Stream.EVENTS and connectivity.changes(rows):
            # connect / disconnect / Will events set the devices' states (cloud/alerts/connectivity.py)
            try:
                async with self.db.tenant(caller.tenant_id) as conn:
                    await connectivity.apply(conn, rows)
            except Exception:  # the events are stored; the next event or heartbeat sweep sets the state
                log.exception("connectivity events of gateway %s did not update device states", caller.gateway_id)
        if rows and self._on_commit is not None:
            try:
                self._on_commit(rows)
            except Exception:  # a listener never fails a committed batch
                log.exception("on_commit listener failed; the rows are stored")
        self.metrics.sync_batches.labels(admission.verdict.value).inc()
        self.metrics.sync_records.labels("written").inc(len(rows))
        self.metrics.sync_records.labels("quarantined").inc(len(quarantined))
        written = len(rows) + applied
        return BatchAck(header.stream, admission.ack_seq, admission.verdict, written, len(quarantined), clock.offset_ms, clock.corrected)

    @staticmethod
    async def _merge_alerts(
        conn: asyncpg.Connection, caller: GatewayCaller, records: Sequence[Record], received: dt.datetime
    ) -> list[QuarantineRow]:
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(caller.tenant_id))
        gateway_name = await conn.fetchval(
            "SELECT name FROM gateways WHERE tenant_id = $1 AND id = $2", caller.tenant_id, caller.gateway_id
        )
        report = await merge_edge_alerts(
            conn, caller.tenant_id, records, gateway_id=caller.gateway_id, gateway_name=gateway_name or "gateway"
        )
        by_seq = {r.seq: r for r in records}
        quarantined: list[QuarantineRow] = []
        for bad in report.rejected:
            rec = by_seq.get(bad.get("seq"))  # type: ignore[arg-type]
            if rec is None:
                continue
            raw = json.dumps({"stream": "alerts", **rec._asdict()}, default=str).encode()
            quarantined.append(
                QuarantineRow(
                    caller.tenant_id, rec.device_id, caller.gateway_id, "gateway", str(bad.get("code")), str(bad.get("message")), raw, received
                )
            )
        return quarantined

    async def _apply_twin(
        self,
        conn: asyncpg.Connection,
        caller: GatewayCaller,
        records: Sequence[Record],
        devices: Mapping[str, _Device],
        clock: ClockCheck,
        received: dt.datetime,
        changes: list[tuple[str, str, dict[str, object]]],
    ) -> tuple[int, list[QuarantineRow]]:
        """Stream.TWIN records in order through ``twins.apply_device_messages``, the rule HTTP ingest
        uses too. A record refused (here: an unknown or disabled device, a type that does not travel
        on this stream; there: the twin or command rules) is quarantined with its code; it still
        counts as delivered."""
        quarantined: list[QuarantineRow] = []
        tenant = caller.tenant_id

        def refuse(rec: Record, code: Code | str, reason: str) -> None:
            raw = json.dumps({"stream": "twin", **rec._asdict()}, default=str).encode()
            quarantined.append(
                QuarantineRow(tenant, rec.device_id, caller.gateway_id, "gateway", str(code), reason, raw, received)
            )

        said: list[Record] = []
        for rec in records:
            device = devices.get(rec.device_id)
            if device is None or (caller.site_id is not None and device.site_id != caller.site_id):
                refuse(rec, Code.SYNC_UNKNOWN_DEVICE, f"device {rec.device_id} is not registered at this gateway's site")
            elif rec.type not in TWIN_RECORD_TYPES:
                refuse(rec, Code.BATCH_MALFORMED, f"record type {rec.type!r} does not travel on the twin stream")
            elif rec.type == MessageType.TWIN_REPORTED.value and device.status in _DISABLED:
                refuse(rec, Code.AUTH_DEVICE_DISABLED, f"device {rec.device_id} is {device.status}")
            else:
                said.append(rec)
        result = await twins.apply_device_messages(
            conn,
            tenant,
            [twins.DeviceMessage(rec.device_id, rec.type, rec.body, corrected_ts(rec.ts_ms, clock)) for rec in said],
            actor=f"gateway:{caller.gateway_id}",
            limits=self.twin_limits,
        )
        for index, exc in result.refused.items():
            refuse(said[index], exc.code, exc.message)
        changes.extend(result.changes)
        return len(said) - len(result.refused), quarantined

    async def _replayed(self, caller: GatewayCaller, stream: Stream, last_seq: int, size: int, clock: ClockCheck) -> BatchAck:
        try:
            async with self.db.writer_transaction() as conn:
                await self._touch(conn, caller, size, clock)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("could not count a replayed batch of gateway %s: %s", caller.gateway_id, exc)
        self.metrics.sync_batches.labels(Verdict.REPLAY.value).inc()
        return BatchAck(stream, last_seq, Verdict.REPLAY, 0, 0, clock.offset_ms, clock.corrected)

    @staticmethod
    async def _touch(conn: asyncpg.Connection, caller: GatewayCaller, size: int, clock: ClockCheck) -> None:
        await conn.execute(
            "UPDATE gateways SET last_seen_at = now(), last_batch_at = now(), batches_received = batches_received + 1,"
            " bytes_received = bytes_received + $2, clock_offset_ms = $3,"
            " clock_corrected_at = CASE WHEN $4 THEN now() ELSE clock_corrected_at END WHERE id = $1",
            caller.gateway_id,
            size,
            clock.offset_ms,
            clock.corrected,
        )

    async def _devices(self, caller: GatewayCaller, device_ids: set[str]) -> dict[str, _Device]:
        """The batch's devices as registered in the gateway's tenant (RLS: other tenants' devices do not exist)."""
        async with self.db.tenant(caller.tenant_id) as conn:
            rows = await conn.fetch("SELECT device_id, site_id, status FROM devices WHERE device_id = ANY($1::text[])", list(device_ids))
        return {r["device_id"]: _Device(r["site_id"], r["status"]) for r in rows}

    def _rows(
        self,
        caller: GatewayCaller,
        stream: Stream,
        records: Sequence[Record],
        devices: Mapping[str, _Device],
        clock: ClockCheck,
        received: dt.datetime,
    ) -> tuple[list[TelemetryRow], list[QuarantineRow]]:
        rows: list[TelemetryRow] = []
        quarantined: list[QuarantineRow] = []

        def refuse(rec: Record, code: Code, reason: str) -> None:
            raw = json.dumps({"stream": stream.name.lower(), **rec._asdict()}, default=str).encode()
            quarantined.append(QuarantineRow(caller.tenant_id, rec.device_id, caller.gateway_id, "gateway", str(code), reason, raw, received))

        tenant, gateway, site = caller.tenant_id, caller.gateway_id, caller.site_id
        shift = clock.offset_ms if clock.corrected else 0
        dumps = orjson.dumps
        from_ts = dt.datetime.fromtimestamp
        append = rows.append
        for rec in records:
            device = devices.get(rec.device_id)
            if device is None:
                refuse(rec, Code.SYNC_UNKNOWN_DEVICE, f"device {rec.device_id} is not registered in this gateway's tenant")
                continue
            if site is not None and device.site_id != site:
                refuse(rec, Code.SYNC_UNKNOWN_DEVICE, f"device {rec.device_id} is not at this gateway's site")
                continue
            if device.status in _DISABLED:
                refuse(rec, Code.AUTH_DEVICE_DISABLED, f"device {rec.device_id} is {device.status}")
                continue
            ms = rec.ts_ms + shift  # corrected_ts(), inlined: this loop runs for every point
            try:
                # fromtimestamp is 3x faster and exact to the millisecond below 2**33 s (year 2242)
                at = from_ts(ms / 1000, dt.UTC) if 0 <= ms < _EXACT_FLOAT_MS else _EPOCH + dt.timedelta(milliseconds=ms)
            except (OverflowError, ValueError, OSError):
                refuse(rec, Code.ENVELOPE_BAD_TIMESTAMP, "the timestamp is outside the range the cloud stores")
                continue
            tags, body = rec.tags, rec.body
            append(
                TelemetryRow(
                    at,
                    tenant,
                    rec.device_id,
                    rec.type,
                    dumps(rec.metrics).decode(),
                    None if tags is None else dumps(tags).decode(),
                    None if body is None else dumps(body).decode(),
                    rec.device_seq,
                    gateway,
                    "gateway",
                    received,
                )
            )
        return rows, quarantined

    # --- downlink and reports ---------------------------------------------------------------

    async def downlink(self, caller: GatewayCaller, after: int, wait_s: float) -> tuple[list[DownlinkItem], int]:
        """Items after ``after``, at once if there are any, else when one arrives or ``wait_s`` ends.
        No database connection is held while waiting."""
        end = time.monotonic() + min(max(wait_s, 0.0), float(MAX_DOWNLINK_WAIT_S))
        while True:
            async with self.db.tenant(caller.tenant_id) as conn:
                items = await pending(conn, caller.gateway_id, after)
            left = end - time.monotonic()
            if items or left <= 0:
                return items, (items[-1].seq if items else after)
            await self.notifier.wait(caller.gateway_id, min(POLL_S, left))

    async def ack_downlink(self, caller: GatewayCaller, seq: int) -> None:
        async with self.db.tenant(caller.tenant_id) as conn:
            # the commands among the acked items reached the gateway: delivered
            await twins.deliver_acked(conn, caller.tenant_id, caller.gateway_id, seq, int(time.time() * 1000))
            await conn.execute(
                "UPDATE gateway_downlink SET acked_at = now() WHERE gateway_id = $1 AND seq <= $2 AND acked_at IS NULL",
                caller.gateway_id,
                seq,
            )

    async def claim(self, caller: GatewayCaller, code: str, device_id: str, name: str) -> dict[str, object]:
        """``pulse gateway device claim CODE``: a device of the code's tenant (the gateway's own),
        served by this gateway, with its token returned once."""
        if self.activation_limiter is not None:
            decision = self.activation_limiter.take(f"gw:{caller.gateway_id}", 1, time.monotonic())
            if not decision.allowed:
                raise RateLimitedError(
                    f"too many activation attempts from this gateway; retry in {decision.retry_after_s} s",
                    retry_after_s=decision.retry_after_s,
                    code=Code.ACTIVATION_RATE_LIMITED,
                )
        if not valid_device_id(device_id):
            raise InvalidError(Code.API_INVALID, "device ids are 1-128 letters, digits, '_', '-', '.', ':'")
        done = await activation.claim(
            self.db, code, device_id, name, dt.datetime.now(dt.UTC), gateway=caller.gateway_id,
            gateway_tenant=caller.tenant_id, gateway_site=caller.site_id, actor=f"gateway:{caller.gateway_id}",
        )
        self.notifier.wake(done.woken)
        return {"id": str(done.id), "device_id": done.device_id, "token": done.token}

    async def report(
        self, caller: GatewayCaller, *, dropped: Mapping[str, int], backlog: Mapping[str, int], oldest_unsynced_ms: int | None, version: str | None,
        connectors: Mapping[str, object] | None = None,
    ) -> None:
        oldest = None if oldest_unsynced_ms is None else _EPOCH + dt.timedelta(milliseconds=oldest_unsynced_ms)
        async with self.db.tenant(caller.tenant_id) as conn:
            await conn.execute(
                "UPDATE gateways SET dropped = $2::jsonb, backlog = $3::jsonb, oldest_unsynced_at = $4, agent_version = $5,"
                " reported_at = now() WHERE id = $1",
                caller.gateway_id,
                json.dumps(dict(dropped)),
                json.dumps(dict(backlog)),
                oldest,
                version,
            )
            if connectors is not None:
                await record_report(conn, caller.gateway_id, connectors)
