"""Gateway configuration: a TOML file plus ``PULSE_GW_*`` environment overrides.

Built once in ``main`` (``load(path, os.environ)``) and passed down as small frozen objects; nothing
reads the environment or the file anywhere else. Every option is documented in docs/gateway.md.

File layout (every key optional)::

    [gateway]
    id = "site-7"
    data_dir = "/var/lib/pulse-gateway"   # relative paths are relative to this file's folder

    [broker]
    host = "0.0.0.0"
    port = 1883
    tls_port = 8883                       # TLS listener only when tls_port is set ...
    tls_certfile = "server.pem"           # ... with a certificate and key
    tls_keyfile = "server.key"
    ws_port = 8080                        # WebSocket listener only when set

    [buffer]
    quota_mb = 512

    [status]
    host = "127.0.0.1"
    port = 8081

    [sync]                                # the link to the cloud, once enrolled
    records_per_batch = 5000
    bandwidth_bytes_per_s = 0             # 0: no cap

    [[connectors.devices]]                # polled equipment (Modbus, SNMP): docs/gateway.md
    id = "ups-1"
    kind = "snmp"
    host = "192.0.2.10"
    profile = "ups-mib"

An environment variable ``PULSE_GW_<SECTION>_<KEY>`` (upper case) overrides ``[section] key``:
``PULSE_GW_BROKER_PORT=1884``, ``PULSE_GW_BUFFER_QUOTA_MB=64``. Unknown keys and values of the wrong
kind are refused with ``ConfigError`` naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulse.edge.errors import ConfigError
from pulse.protocol.connectors import Device, parse_devices
from pulse.protocol.errors import ConnectorError

ENV_PREFIX = "PULSE_GW_"
DATABASE_FILE = "gateway.db"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    id: str = ""
    """This gateway's name; defaults to the host name."""
    data_dir: Path = Path(".")
    """Folder of the SQLite file (gateway.db): buffer, quarantine, device credentials."""
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str = "0.0.0.0"
    port: int = 1883
    tls_port: int | None = None
    tls_host: str | None = None
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_cafile: Path | None = None
    """CA bundle for optional device client certificates (credentials are still required)."""
    ws_port: int | None = None
    ws_host: str | None = None
    allow_anonymous: bool = False
    max_connections: int = 0
    """Per listener; 0 means no limit."""
    max_message_bytes: int = 16 * 1024
    """Larger device messages are quarantined with envelope.too_large."""
    session_queue_max: int = 1000
    """Per persistent session (clean session 0): QoS 1 messages kept while the device is away; the oldest go first."""
    session_queue_max_age_s: float = 7 * 24 * 3600.0
    """A message queued for a persistent session longer than this is dropped instead of delivered."""
    connectivity_events: bool = True
    """Device connect, clean disconnect and Will become device events on the EVENTS stream."""


@dataclass(frozen=True, slots=True)
class BufferSettings:
    quota_mb: float = 512.0
    """Bytes of buffered records; when full the oldest telemetry is dropped (and counted)."""
    flush_interval_ms: float = 2.0
    """How long the writer waits to gather more messages into one transaction."""
    max_batch: int = 2000
    synchronous: str = "full"
    """SQLite synchronous mode: "full" survives power loss, "normal" survives process crashes only."""
    dedupe_window: int = 256
    """Per device, how many recent device sequence numbers are remembered to drop retransmissions."""
    quarantine_max_rows: int = 10_000
    max_file_mb: float = 0.0
    """Hard ceiling for the SQLite file (0: none). At the ceiling writes fail and nothing is
    acknowledged, so devices keep their messages and resend them later."""

    @property
    def quota_bytes(self) -> int:
        return int(self.quota_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class StatusSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    """0 disables the status page."""


@dataclass(frozen=True, slots=True)
class FirmwareSettings:
    """The local firmware download for the site's devices (docs/gateway.md "Firmware")."""

    host: str = "0.0.0.0"
    """Address the local download listens on (the site network)."""
    port: int = 0
    """0 (the default) disables it: firmware commands then reach devices without a ``url`` and they
    refuse the update; 8478 is the customary port."""
    public_host: str = ""
    """The host devices use in the URL (default: ``host``, or 127.0.0.1 when ``host`` is 0.0.0.0)."""
    url_ttl_s: float = 3600.0
    """How long a device's download URL is good after the command was published."""

    @property
    def base_url(self) -> str:
        host = self.public_host or (self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1")
        return f"http://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """The link to the cloud. It runs once the gateway is enrolled (``pulse gateway enroll``)."""

    enabled: bool = True
    """Set false to keep an enrolled gateway offline (everything stays in the buffer)."""
    link_profile: str = "default"
    """``default`` or ``cellular`` (metered LTE-M/NB-IoT): the profile's values (``LINK_PROFILES``)
    apply to every [sync] option not set in the file or the environment."""
    records_per_batch: int = 5000
    """Most records in one batch sent to the cloud."""
    batch_bytes: int = 65536
    """Most bytes in one encoded batch: a batch over it is sent with fewer records (a single record
    always goes), so one batch spends at most a few seconds on a slow link (64 KB: 9 s at 60 kbit/s)."""
    batch_target_s: float = 4.0
    """Seconds on the wire each batch is sized for, from the link's measured rate (or the bandwidth
    cap when lower), up to ``batch_bytes``: a few seconds keeps every ack close on a slow link."""
    window: int = 3
    """Batches of one stream sent before the first of them is acked (1 to 8): a slow link stays busy
    while an ack is on its way back. Each costs one encoded batch in memory and one connection."""
    bandwidth_bytes_per_s: int = 0
    """Cap on the bytes of batches sent per second, for metered links (0: no cap)."""
    report_interval_s: float = 300.0
    """How often the gateway reports its backlog and what the quota dropped."""
    request_timeout_s: float = 30.0
    """Longest wait for one request to the cloud (connect, send, answer)."""
    downlink_wait_s: int = 25
    """How long the cloud may hold a downlink long-poll open (at most 300; keep it under the NAT's idle timeout)."""
    idle_poll_s: float = 1.0
    """With nothing to send, how often the uplink looks at the buffer again."""
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 60.0
    probe_interval_s: float = 2.0
    """While backing off after the cloud could not be reached, how often a TCP connect (no TLS)
    checks whether the link is back, so the uplink retries at once (0: no probe, only the backoff)."""
    stall_after_s: float = 300.0
    """A backlog whose acked position has not moved for this long while the link is up is shown as
    ``stalled``, and the uplink's watchdog restarts the uplink's state (0: no watchdog)."""
    watchdog_interval_s: float = 5.0
    """How often the watchdog looks at the backlog."""


LINK_PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    # An idle gateway on a metered cellular link: one long poll every 4 minutes (inside the 5 minutes
    # many carriers' NATs keep an idle TCP mapping, and inside the cloud's 300 s gateway_offline_after_s),
    # a report an hour, patient requests, and a probe instead of frequent full reconnects.
    "cellular": {"downlink_wait_s": 240, "report_interval_s": 3600.0, "request_timeout_s": 60.0, "backoff_cap_s": 300.0,
                 "probe_interval_s": 5.0},
}


@dataclass(frozen=True, slots=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    firmware: FirmwareSettings = field(default_factory=FirmwareSettings)
    connectors: tuple[Device, ...] = ()
    """Polled devices (``[[connectors.devices]]``), validated by ``pulse.protocol.connectors``."""

    @property
    def database(self) -> Path:
        return self.gateway.data_dir / DATABASE_FILE

    @property
    def state_dir(self) -> Path:
        """Where the gateway's identity (key, certificate, cloud CA) and enrollment live."""
        return self.gateway.data_dir / "identity"

    @property
    def status_url(self) -> str:
        host = self.status.host if self.status.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.status.port}"


SECTIONS: dict[str, type] = {
    "gateway": GatewaySettings,
    "broker": BrokerSettings,
    "buffer": BufferSettings,
    "status": StatusSettings,
    "sync": SyncSettings,
    "firmware": FirmwareSettings,
}


def _coerce(value: Any, hint: Any, where: str, base: Path) -> Any:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if optional and (value is None or value == ""):
        return None
    from_env = isinstance(value, str)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if hint is Path:
            if not isinstance(value, str):
                raise ValueError
            path = Path(value).expanduser()
            return path if path.is_absolute() else (base / path).resolve()
    except ValueError:
        pass
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where} must be {'a ' if name != 'int' else 'an '}{name}, got {value!r}", key=where)


def load(path: Path | None, env: Mapping[str, str]) -> Settings:
    """Settings from the TOML file at ``path`` (None: defaults only) overridden by ``env``."""
    doc: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"no configuration file at {path}; see docs/gateway.md for a template", path=str(path)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", path=str(path)) from exc
        base = path.resolve().parent
    connectors = _connectors(doc.pop("connectors", {}))
    unknown = set(doc) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section [{sorted(unknown)[0]}]; sections are {', '.join(SECTIONS)}, connectors", key=sorted(unknown)[0])

    groups: dict[str, Any] = {}
    known_env = set()
    for section, cls in SECTIONS.items():
        raw = doc.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"[{section}] must be a table", key=section)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        for key in raw:
            if key not in names:
                raise ConfigError(f"unknown option {section}.{key}; options are {', '.join(sorted(names))}", key=f"{section}.{key}")
        values: dict[str, Any] = {}
        for name in names:
            env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
            known_env.add(env_name)
            if env_name in env:
                values[name] = _coerce(env[env_name], hints[name], env_name, Path.cwd())
            elif name in raw:
                values[name] = _coerce(raw[name], hints[name], f"{section}.{name}", base)
        if section == "gateway" and "data_dir" not in values:
            values["data_dir"] = base
        if section == "sync":
            profile = values.get("link_profile", "default")
            if profile not in LINK_PROFILES:
                raise ConfigError(f"sync.link_profile is one of {', '.join(LINK_PROFILES)}, got {profile!r}", key="sync.link_profile")
            for name, value in LINK_PROFILES[profile].items():
                values.setdefault(name, value)
        groups[section] = cls(**values)
    stray = sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in known_env and k != "PULSE_GW_CONFIG")
    if stray:
        raise ConfigError(f"unknown environment variable {stray[0]}", key=stray[0])

    settings = Settings(**groups, connectors=connectors)
    return _validated(settings)


def _connectors(raw: Any) -> tuple[Device, ...]:
    """``[connectors]`` holds one key, ``devices``: a list of device tables (``[[connectors.devices]]``)."""
    if not isinstance(raw, dict) or set(raw) - {"devices"}:
        raise ConfigError("[connectors] holds only devices = [...] ([[connectors.devices]] tables)", key="connectors")
    try:
        return parse_devices(raw.get("devices", []))
    except ConnectorError as exc:
        raise ConfigError(f"connectors: {exc.message} ({exc.code})", key="connectors", connector_code=str(exc.code)) from exc


def _validated(s: Settings) -> Settings:
    b = s.broker
    if b.tls_port is not None and (b.tls_certfile is None or b.tls_keyfile is None):
        raise ConfigError("broker.tls_port needs broker.tls_certfile and broker.tls_keyfile", key="broker.tls_port")
    for name in ("tls_certfile", "tls_keyfile", "tls_cafile"):
        p = getattr(b, name)
        if b.tls_port is not None and p is not None and not p.exists():
            raise ConfigError(f"broker.{name}: no file at {p}", key=f"broker.{name}")
    if b.session_queue_max < 1 or b.session_queue_max_age_s <= 0:
        raise ConfigError("broker.session_queue_max and session_queue_max_age_s must be positive", key="broker")
    if s.gateway.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("gateway.log_level is debug, info, warning or error", key="gateway.log_level")
    if s.buffer.synchronous not in ("full", "normal"):
        raise ConfigError('buffer.synchronous is "full" or "normal"', key="buffer.synchronous")
    if s.buffer.max_file_mb < 0:
        raise ConfigError("buffer.max_file_mb is 0 (no ceiling) or a size in MB", key="buffer.max_file_mb")
    if s.buffer.quota_mb <= 0 or s.buffer.max_batch < 1 or s.buffer.dedupe_window < 1 or s.buffer.quarantine_max_rows < 1:
        raise ConfigError("buffer.quota_mb, max_batch, dedupe_window and quarantine_max_rows must be positive", key="buffer")
    y = s.sync
    if y.records_per_batch < 1 or y.bandwidth_bytes_per_s < 0 or y.report_interval_s <= 0 or y.request_timeout_s <= 0:
        raise ConfigError("sync.records_per_batch, report_interval_s and request_timeout_s must be positive; "
                          "sync.bandwidth_bytes_per_s is 0 (no cap) or more", key="sync")
    if y.batch_bytes < 1024:
        raise ConfigError("sync.batch_bytes is at least 1024", key="sync.batch_bytes")
    if not (0.5 <= y.batch_target_s <= 60):
        raise ConfigError("sync.batch_target_s is 0.5 to 60 seconds", key="sync.batch_target_s")
    if not (1 <= y.window <= 8):
        raise ConfigError("sync.window is 1 to 8 batches in flight", key="sync.window")
    if not (1 <= y.downlink_wait_s <= 300):
        raise ConfigError("sync.downlink_wait_s is 1 to 300 seconds", key="sync.downlink_wait_s")
    if y.probe_interval_s < 0:
        raise ConfigError("sync.probe_interval_s is 0 (no probe) or more seconds", key="sync.probe_interval_s")
    if y.idle_poll_s <= 0 or y.backoff_base_s <= 0 or y.backoff_cap_s < y.backoff_base_s:
        raise ConfigError("sync.idle_poll_s and backoff_base_s must be positive, backoff_cap_s at least backoff_base_s", key="sync")
    if not s.gateway.id:
        s = dataclasses.replace(s, gateway=dataclasses.replace(s.gateway, id=socket.gethostname()))
    return s
