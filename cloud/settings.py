"""The cloud's one settings object: every option is an environment variable with the PULSE_ prefix.

Built once in ``main``/``create_app()`` and passed down; never read at import time. Outside
development mode, placeholder secrets are refused (the server will not start with them)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "changethis"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.1, 192.168.0.0/24"`` -> networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in spec.split(",") if p.strip())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSE_", extra="ignore", frozen=True, populate_by_name=True)

    mode: Literal["development", "production"] = "production"

    # database
    database_url: str = Field(
        default="postgresql://pulse@127.0.0.1:5432/pulse",
        validation_alias=AliasChoices("PULSE_DATABASE_URL", "DATABASE_URL"),
    )
    db_role_prefix: str = "pulse"
    db_role_password: SecretStr | None = None
    db_pool_size: int = Field(default=10, ge=1)
    db_operator_pool_size: int = Field(default=2, ge=1)
    migrate_on_start: bool = True

    # sessions
    jwt_secret: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    jwt_issuer: str = "pulse"
    access_token_ttl_s: int = Field(default=900, ge=30)
    refresh_token_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)

    # external OIDC (optional)
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_tenant_claim: str = "pulse_tenant"
    oidc_roles_claim: str = "pulse_roles"
    oidc_jwks_cache_s: int = Field(default=300, ge=1)
    oidc_client_id: str | None = Field(default=None, description="console sign-in through the issuer (authorization code + PKCE)")
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid email profile"
    oidc_login_label: str = "Sign in with single sign-on"
    oidc_redirect_url: str | None = Field(default=None, description="<public address>/auth/oidc/callback (default: from the request)")

    # request bodies of endpoints anyone can reach (enrollment, login, refresh), enforced while reading
    public_max_body_bytes: int = Field(default=64 * 1024, ge=4096, le=16 * 1024 * 1024)

    # HTTP ingest
    ingest_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    ingest_max_messages: int = Field(default=1000, ge=1)
    ingest_rate_per_s: float = Field(default=20.0, gt=0)
    ingest_burst: float = Field(default=1000.0, ge=1)
    device_token_cache_s: float = Field(default=30.0, ge=0)

    # telemetry writer
    writer_batch_rows: int = Field(default=5000, ge=1)
    writer_flush_ms: int = Field(default=50, ge=1)
    writer_queue_rows: int = Field(default=100_000, ge=1)
    writer_connections: int = Field(default=2, ge=1)
    retry_after_s: int = Field(default=1, ge=1)

    # telemetry storage (native partitioning; TimescaleDB uses its own policies with the same figures)
    storage_engine: Literal["auto", "timescaledb", "native"] = Field(
        default="auto",
        description="telemetry table at the first migration: auto (TimescaleDB when installed and preloaded), timescaledb, native",
    )
    telemetry_retention_days: int = Field(default=90, ge=1)
    telemetry_partitions_ahead_days: int = Field(default=7, ge=1)
    maintenance_interval_s: int = Field(default=3600, ge=1)

    # rules and alerts
    rules_sweep_interval_s: float = Field(default=10.0, gt=0, description="heartbeat / gateway silence sweep period")
    gateway_offline_after_s: float = Field(default=300.0, gt=0, description="gateway silence that opens GATEWAY_OFFLINE")
    twin_max_state_bytes: int = Field(default=8192, ge=256, le=1024 * 1024, description="size limit of a twin's state (JSON bytes)")
    command_sweep_interval_s: float = Field(default=10.0, gt=0, description="how often commands past their deadline are expired")
    command_expiry_grace_s: int = Field(
        default=3600, ge=0, description="how long past its deadline a command a gateway holds may still be reported on"
    )

    # jobs and firmware
    job_interval_s: float = Field(default=5.0, gt=0, description="how often the job runner moves running jobs on")
    firmware_dir: Path | None = Field(default=None, description="where firmware artifacts are stored (default: <data_dir>/firmware)")
    firmware_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1, description="largest firmware artifact accepted (bytes)")
    firmware_s3_bucket: str | None = Field(default=None, description="keep firmware artifacts in this S3 bucket instead of firmware_dir")
    firmware_s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL (default: AWS)")
    firmware_s3_prefix: str = Field(default="", description="key prefix inside the bucket")
    firmware_s3_region: str = Field(default="us-east-1", description="the bucket's region")
    firmware_s3_access_key: str | None = Field(default=None, description="S3 access key id (default: boto3's own credential chain)")
    firmware_s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret access key")
    # the platform watching itself (system_metrics, /metrics, platform health rules)
    platform_sample_interval_s: float = Field(
        default=5.0, ge=0, description="how often the cloud samples its own figures into system_metrics (0: never)"
    )
    system_metrics_retention_days: int = Field(default=30, ge=1, description="how long platform samples are kept")
    health_alerts: bool = Field(default=True, description="evaluate the platform health rules on every sample")
    health_evaluation_lag_s: float = Field(default=60.0, gt=0, description="rules evaluation lag that opens platform.evaluation_lag")
    health_dead_letter_window_s: float = Field(
        default=900.0, gt=0, description="new dead letters within this window keep platform.dead_letters open"
    )
    health_writer_queue_rows: int = Field(default=50_000, ge=1, description="writer queue depth that opens platform.writer_queue")
    health_gateway_backlog_age_s: float = Field(
        default=900.0, gt=0, description="age of a gateway's oldest unsynced record that opens platform.gateway_backlog"
    )

    # server
    host: str = "127.0.0.1"
    trusted_proxies: str = Field(
        default="",
        description="addresses/networks of reverse proxies whose X-Forwarded-For/-Proto the public server believes (default: none)",
    )
    port: int = 8080
    workers: int = Field(default=1, ge=1, le=64)
    console_dir: Path | None = Field(default=None, description="built web console (default: cloud/console/dist)")
    data_dir: Path = Path(".pulse")

    # gateway sync (mutual TLS listener started by `pulse cloud serve`)
    sync_host: str | None = None
    sync_port: int = Field(default=8443, ge=0, le=65535)
    sync_names: str = "localhost,127.0.0.1"
    sync_public_url: str | None = None
    sync_trusted_proxies: str = ""
    gateway_cert_days: int = Field(default=30, ge=1, le=825)
    gateway_cert_overlap_s: int = Field(
        default=3600, ge=0, le=7 * 24 * 3600, description="how long a renewed certificate's predecessor keeps working"
    )
    enrollment_token_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    enroll_rate_per_min: float = Field(default=10.0, gt=0, description="enrollment requests per minute per source address")
    enroll_burst: int = Field(default=20, ge=1, description="enrollment requests a source address may make at once")

    # subscriptions and activation codes (issue 20)
    subscription_interval_s: float = Field(default=300.0, gt=0, description="how often the worker moves subscriptions on and sends notices")
    subscription_cache_s: float = Field(default=10.0, ge=0, description="how long ingest trusts what it read about a tenant's subscriptions")
    activation_rate_per_min: float = Field(default=10.0, gt=0, description="activation attempts per minute per source address or gateway")
    activation_burst: int = Field(default=10, ge=1, description="activation attempts a source address or gateway may make at once")

    # telemetry archive, reports and exports (issue 21)
    archive_enabled: bool = Field(default=True, description="archive complete days of telemetry to Parquet before retention drops them")
    archive_dir: Path | None = Field(default=None, description="local archive directory (default: <data_dir>/archive)")
    archive_lag_hours: int = Field(
        default=6, ge=0, le=24 * 30, description="how long after a UTC day ends it is archived (late rows from offline gateways land first)"
    )
    archive_s3_bucket: str | None = Field(default=None, description="archive to this S3 bucket instead of the local directory")
    archive_s3_endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL (default: AWS)")
    archive_s3_prefix: str = Field(default="", description="key prefix inside the bucket")
    archive_s3_region: str = Field(default="us-east-1", description="the bucket's region")
    archive_s3_access_key: str | None = Field(default=None, description="S3 access key id (default: boto3's own credential chain)")
    archive_s3_secret_key: SecretStr | None = Field(default=None, description="S3 secret access key")
    reports_enabled: bool = Field(default=True, description="make each tenant's daily SLA report and send it to its notification channels")
    report_interval_s: float = Field(default=300.0, gt=0, description="how often the report worker looks for a day without its report")
    # user administration: one-time links and the mail that carries them (issue 20)
    invite_ttl_s: int = Field(default=7 * 24 * 3600, ge=600, le=90 * 24 * 3600, description="how long an invitation link works")
    reset_ttl_s: int = Field(default=24 * 3600, ge=600, le=30 * 24 * 3600, description="how long a password-reset link works")
    forgot_rate_per_min: float = Field(default=5.0, gt=0, description="forgotten-password requests per minute per source address")
    forgot_burst: int = Field(default=5, ge=1, description="forgotten-password requests a source address may make at once")
    mail_host: str | None = Field(default=None, description="SMTP server for invitations and resets (unset: links are only shown in the console)")
    mail_port: int = Field(default=587, ge=1, le=65535)
    mail_security: Literal["starttls", "tls", "none"] = "starttls"
    mail_username: str | None = None
    mail_password: SecretStr | None = None
    mail_sender: str = Field(default="pulse@localhost.localdomain", description="the From address of invitations and resets")
    # replicas sharing one database (issue 26)
    ingest_tenant_rate_per_s: float = Field(default=0.0, ge=0, description="per-tenant sustained rate of HTTP ingest, all devices together (0: none)")
    ingest_tenant_burst: float = Field(default=20000.0, ge=1, description="messages a tenant's devices may send at once, together")
    rate_limit_lease: float = Field(default=20.0, ge=0, description="tokens a replica takes ahead from a shared rate-limit bucket")
    rate_limit_lease_s: float = Field(default=1.0, gt=0, description="how long a replica keeps leased tokens before giving back the unspent ones")
    cluster_poll_s: float = Field(default=2.0, gt=0, description="how often a replica tries to take over once-per-cluster jobs and renews its own")
    cluster_lease_s: float = Field(default=6.0, gt=0, le=10, description="a replica that cannot reach the database this long stops its once-per-cluster jobs")
    # the optional NATS JetStream between ingest and the telemetry writers (issue 26, cloud/stream/)
    stream_url: str | None = Field(default=None, description="nats://host:4222 (comma-separated for a cluster): ingest publishes to JetStream and partition writers store from it; unset: ingest writes to PostgreSQL itself")
    stream_name: str = Field(default="PULSE_INGEST", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the JetStream stream (subjects <stream_subject>.<partition>)")
    stream_subject: str = Field(default="pulse.ingest", pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$", description="subject prefix of the partitions")
    stream_partitions: int = Field(default=8, ge=1, le=1024, description="partitions (hash of tenant and device); change only with the stream drained")
    stream_replicas: int = Field(default=1, ge=1, le=5, description="JetStream replicas of the stream (a NATS cluster of at least that many servers)")
    stream_max_bytes: int = Field(default=-1, ge=-1, description="the stream's size limit in bytes (-1: the server's); publishes are refused when full")
    stream_publish_timeout_s: float = Field(default=2.0, gt=0, description="how long ingest waits for JetStream to acknowledge before answering 503")
    stream_batch_messages: int = Field(default=256, ge=1, description="stream messages a partition writer stores per transaction")
    stream_ack_wait_s: float = Field(default=60.0, gt=0, description="JetStream redelivers what a writer took but did not acknowledge after this long")
    # MQTT endpoint for direct devices (`pulse cloud mqtt`, docs/cloud.md)
    mqtt_host: str | None = Field(default=None, description="listen address of the MQTT endpoint (default: PULSE_HOST)")
    mqtt_tls_port: int = Field(default=8883, ge=0, le=65535, description="MQTT over TLS port")
    mqtt_plain_port: int | None = Field(default=None, ge=0, le=65535, description="plain-TCP MQTT port; off unless set")
    mqtt_tls_certfile: Path | None = Field(default=None, description="server certificate (PEM); default: issued by the cloud CA for PULSE_SYNC_NAMES")
    mqtt_tls_keyfile: Path | None = Field(default=None, description="the certificate's private key (PEM)")
    mqtt_max_connections: int = Field(default=10_000, ge=1, description="connections the endpoint accepts at once")
    mqtt_session_queue_max: int = Field(default=1000, ge=1, description="QoS 1 messages kept per persistent session")
    mqtt_session_queue_max_age_s: int = Field(default=7 * 24 * 3600, ge=60, description="queued messages older than this are dropped")
    mqtt_spool_retry_s: float = Field(default=2.0, gt=0, description="how often the spool tries the database again")

    @model_validator(mode="after")
    def _enforce_non_default_secrets(self) -> Settings:
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", self.db_role_prefix):
            raise ValueError("PULSE_DB_ROLE_PREFIX is 1-41 lower-case letters, digits or '_', starting with a letter")
        try:
            self.sync  # noqa: B018 - refuse bad sync settings at start, not at the first gateway
        except ValueError as exc:
            raise ValueError(f"PULSE_SYNC_NAMES or PULSE_SYNC_TRUSTED_PROXIES: {exc}") from exc
        try:
            self.proxies  # noqa: B018
        except ValueError as exc:
            raise ValueError(f"PULSE_TRUSTED_PROXIES: {exc}") from exc
        if (self.mqtt_tls_certfile is None) != (self.mqtt_tls_keyfile is None):
            raise ValueError("PULSE_MQTT_TLS_CERTFILE and PULSE_MQTT_TLS_KEYFILE go together: set both or neither")
        if self.mode != "development":
            if self.jwt_secret.get_secret_value() == PLACEHOLDER_SECRET or len(self.jwt_secret.get_secret_value()) < 32:
                raise ValueError(
                    "PULSE_JWT_SECRET is the placeholder or shorter than 32 characters; set a long random value "
                    "(python -c 'import secrets; print(secrets.token_urlsafe(48))') or PULSE_MODE=development"
                )
        return self

    @property
    def sync(self) -> SyncConfig:
        names = [n.strip() for n in self.sync_names.split(",") if n.strip()]
        if not names:
            raise ValueError("PULSE_SYNC_NAMES names at least one host name or address")
        host = self.sync_host or self.host
        return SyncConfig(
            host=host,
            port=self.sync_port,
            names=tuple(names),
            public_url=self.sync_public_url or f"https://{names[0]}:{self.sync_port}",
            trusted_proxies=networks(self.sync_trusted_proxies),
            ca_dir=self.data_dir / "ca",
            cert_lifetime_days=self.gateway_cert_days,
            cert_overlap_s=self.gateway_cert_overlap_s,
            enrollment_token_ttl_s=self.enrollment_token_ttl_s,
        )

    @property
    def mqtt(self) -> MqttConfig:
        return MqttConfig(
            host=self.mqtt_host or self.host,
            tls_port=self.mqtt_tls_port,
            plain_port=self.mqtt_plain_port,
            certfile=self.mqtt_tls_certfile,
            keyfile=self.mqtt_tls_keyfile,
            max_connections=self.mqtt_max_connections,
            data_dir=self.data_dir / "mqtt",
            session_queue_max=self.mqtt_session_queue_max,
            session_queue_max_age_s=self.mqtt_session_queue_max_age_s,
            spool_retry_s=self.mqtt_spool_retry_s,
        )

    @property
    def proxies(self) -> tuple[Network, ...]:
        """The reverse proxies the public server (API, ingest, enrollment) believes about the client's
        address (PULSE_TRUSTED_PROXIES). Empty by default: per-address limits count the socket's peer."""
        return networks(self.trusted_proxies)

    @property
    def archive(self) -> ArchiveConfig:
        return ArchiveConfig(
            directory=self.archive_dir or self.data_dir / "archive",
            work_dir=self.data_dir / "archive-work",
            cache_dir=self.data_dir / "archive-cache",
            lag_hours=self.archive_lag_hours,
            retention_days=self.telemetry_retention_days,
            s3_bucket=self.archive_s3_bucket,
            s3_endpoint=self.archive_s3_endpoint,
            s3_prefix=self.archive_s3_prefix,
            s3_region=self.archive_s3_region,
            s3_access_key=self.archive_s3_access_key,
            s3_secret_key=self.archive_s3_secret_key.get_secret_value() if self.archive_s3_secret_key else None,
        )

    @property
    def firmware_s3(self) -> S3Config | None:
        """Where firmware artifacts go when a bucket is set (PULSE_FIRMWARE_S3_*); None: firmware_dir."""
        if not self.firmware_s3_bucket:
            return None
        return S3Config(
            endpoint_url=self.firmware_s3_endpoint,
            bucket=self.firmware_s3_bucket,
            prefix=self.firmware_s3_prefix,
            region=self.firmware_s3_region,
            access_key=self.firmware_s3_access_key,
            secret_key=self.firmware_s3_secret_key.get_secret_value() if self.firmware_s3_secret_key else None,
        )

    @property
    def roles(self) -> RoleNames:
        return RoleNames.from_prefix(self.db_role_prefix)

    @property
    def writer(self) -> WriterConfig:
        return WriterConfig(
            batch_rows=self.writer_batch_rows,
            flush_s=self.writer_flush_ms / 1000,
            queue_rows=self.writer_queue_rows,
            connections=self.writer_connections,
        )

    @property
    def stream(self) -> StreamConfig | None:
        if not self.stream_url:
            return None
        return StreamConfig(
            servers=tuple(u.strip() for u in self.stream_url.split(",") if u.strip()),
            name=self.stream_name,
            subject=self.stream_subject,
            partitions=self.stream_partitions,
            replicas=self.stream_replicas,
            max_bytes=self.stream_max_bytes,
            publish_timeout_s=self.stream_publish_timeout_s,
            batch_messages=self.stream_batch_messages,
            batch_rows=self.writer_batch_rows,
            ack_wait_s=self.stream_ack_wait_s,
            retry_after_s=self.retry_after_s,
        )

    @property
    def ingest(self) -> IngestConfig:
        return IngestConfig(
            max_body_bytes=self.ingest_max_body_bytes,
            max_messages=self.ingest_max_messages,
            rate_per_s=self.ingest_rate_per_s,
            burst=self.ingest_burst,
            token_cache_s=self.device_token_cache_s,
            retry_after_s=self.retry_after_s,
        )


@dataclass(frozen=True, slots=True)
class RoleNames:
    """PostgreSQL roles are cluster-wide, so every name carries the configured prefix."""

    app: str
    operator: str
    writer: str
    identity: str

    @classmethod
    def from_prefix(cls, prefix: str) -> RoleNames:
        return cls(app=f"{prefix}_app", operator=f"{prefix}_operator", writer=f"{prefix}_writer", identity=f"{prefix}_identity")


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """The gateway sync listener and enrollment (built from Settings.sync)."""

    host: str
    port: int
    names: tuple[str, ...]  # host names and addresses in the listener's server certificate
    public_url: str  # what enrolling gateways are told to sync with
    trusted_proxies: tuple[Network, ...]
    ca_dir: Path
    cert_lifetime_days: int
    enrollment_token_ttl_s: int
    cert_overlap_s: int = 3600


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """The MQTT endpoint for direct devices (``pulse cloud mqtt``)."""

    host: str
    tls_port: int
    plain_port: int | None
    certfile: Path | None
    keyfile: Path | None
    max_connections: int
    data_dir: Path  # persistent sessions (sessions.sqlite) and the spool (spool.sqlite)
    session_queue_max: int = 1000
    session_queue_max_age_s: int = 7 * 24 * 3600
    spool_retry_s: float = 2.0


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_rows: int = 5000
    flush_s: float = 0.05
    queue_rows: int = 100_000
    connections: int = 2


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The optional JetStream between ingest and the writers (built from Settings.stream)."""

    servers: tuple[str, ...]
    name: str = "PULSE_INGEST"
    subject: str = "pulse.ingest"
    partitions: int = 8
    replicas: int = 1
    max_bytes: int = -1
    publish_timeout_s: float = 2.0
    batch_messages: int = 256
    batch_rows: int = 5000  # rows per writer transaction (PULSE_WRITER_BATCH_ROWS)
    ack_wait_s: float = 60.0
    retry_after_s: int = 1
    fetch_wait_s: float = 1.0  # how long a partition writer's fetch waits for messages before asking again


@dataclass(frozen=True, slots=True)
class IngestConfig:
    max_body_bytes: int = 1024 * 1024
    max_messages: int = 1000
    rate_per_s: float = 20.0
    burst: float = 1000.0
    token_cache_s: float = 30.0
    retry_after_s: int = 1


@dataclass(frozen=True, slots=True)
class S3Config:
    """An S3-compatible bucket (the archive's, the firmware artifacts'): ``pulse.cloud.s3``."""

    endpoint_url: str | None
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = None


@dataclass(frozen=True, slots=True)
class ArchiveConfig:
    """Where the telemetry archive goes (built from Settings.archive)."""

    directory: Path
    work_dir: Path
    cache_dir: Path
    lag_hours: int = 6
    retention_days: int = 90
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
