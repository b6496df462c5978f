"""SNMP traps (pysnmp): v2c with a community, or v3 with a USM user (auth and privacy).

Trap OIDs and variables hang off a configurable enterprise prefix P (default ``1.3.6.1.4.1.8072.9999.9999.4242``,
Net-SNMP's experimental subtree; use your own enterprise number in production):

- trap ``P.0.1`` alert opened, ``P.0.2`` acknowledged, ``P.0.3`` closed, ``P.0.4`` test;
- variables ``P.1.1`` alert id, ``.2`` fingerprint, ``.3`` event, ``.4`` severity (text), ``.5`` severity
  (1 critical .. 5 info), ``.6`` tenant, ``.7`` device, ``.8`` site, ``.9`` metric, ``.10`` value (text),
  ``.11`` threshold (text), ``.12`` explanation, ``.13`` console link, ``.14`` occurred at (ISO 8601 UTC).

The receiver's host goes through the SSRF guard and the trap is sent to the checked address. Traps
are unacknowledged UDP: "delivered" means handed to the network. v3 traps are sent by Pulse's
(authoritative) engine: the receiver must know its engine id (``engine_id``) for the user
(``createUser -e 0x<engine_id> ...`` in snmptrapd.conf).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    NotificationType,
    ObjectIdentity,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    send_notification,
)
from pysnmp.hlapi.v3arch.asyncio import auth as usm
from pysnmp.proto.rfc1902 import Integer32, OctetString

from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.model import SEVERITIES, Delivered, Notification, Outcome, Retry, format_value
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, SendContext
from pulse.cloud.notify.senders.http import address_outcome
from pulse.common.snmp import AUTH, PRIV
from pulse.protocol.errors import Code

DEFAULT_PREFIX = "1.3.6.1.4.1.8072.9999.9999.4242"
DEFAULT_ENGINE_ID = "80004fb80570756c7365"  # RFC 3411: enterprise 20408 (pysnmp), format 5, the octets "pulse"
TRAPS = {"opened": 1, "acknowledged": 2, "closed": 3, "test": 4, "notice": 5}
_OID = re.compile(r"^1(\.(0|[1-9][0-9]{0,9})){2,40}$")


class Config(ChannelConfig):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=162, ge=1, le=65535)
    version: Literal["v2c", "v3"] = "v2c"
    community: SecretStr | None = None
    """v2c: the community string the receiver expects."""
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_protocol: Literal["MD5", "SHA", "SHA224", "SHA256", "SHA384", "SHA512"] = "SHA256"
    auth_key: SecretStr | None = Field(default=None, min_length=8)
    priv_protocol: Literal["DES", "AES", "AES192", "AES256"] = "AES"
    priv_key: SecretStr | None = Field(default=None, min_length=8)
    engine_id: str = DEFAULT_ENGINE_ID
    """v3: Pulse's engine id as hex (5-32 octets); the receiver configures the user under it."""
    enterprise_oid: str = DEFAULT_PREFIX

    @field_validator("enterprise_oid")
    @classmethod
    def _oid(cls, value: str) -> str:
        if not _OID.match(value):
            raise ValueError("not a dotted OID starting with 1 (e.g. 1.3.6.1.4.1.<your enterprise number>)")
        return value

    @field_validator("engine_id")
    @classmethod
    def _engine(cls, value: str) -> str:
        value = value.lower().removeprefix("0x")
        if not re.fullmatch(r"([0-9a-f]{2}){5,32}", value):
            raise ValueError("not 5-32 octets of hex")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> Config:
        if self.version == "v2c" and self.community is None:
            raise ValueError("v2c needs a community")
        if self.version == "v3":
            if self.user is None:
                raise ValueError("v3 needs a user")
            if self.priv_key is not None and self.auth_key is None:
                raise ValueError("v3 privacy (priv_key) needs authentication (auth_key) too")
        return self


@dataclass(frozen=True)
class Trap:
    """The trap as data: its OID and its variables (OID, text or integer), in order."""

    oid: str
    variables: tuple[tuple[str, str | int], ...]


def build(config: Config, n: Notification) -> Trap:
    p = config.enterprise_oid
    values: list[str | int] = [
        n.alert_id,
        n.fingerprint,
        n.event,
        n.severity,
        SEVERITIES.index(n.severity) + 1,
        n.tenant,
        n.device,
        n.site or "",
        n.metric or "",
        "" if n.value is None else format_value(n.value),
        "" if n.threshold is None else format_value(n.threshold),
        n.explanation,
        n.console_url,
        n.occurred_at.isoformat(),
    ]
    return Trap(f"{p}.0.{TRAPS[n.event]}", tuple((f"{p}.1.{i}", v) for i, v in enumerate(values, start=1)))


def _auth(config: Config) -> CommunityData | UsmUserData:
    if config.version == "v2c":
        assert config.community is not None
        return CommunityData(config.community.get_secret_value(), mpModel=1)
    return UsmUserData(
        config.user,
        authKey=config.auth_key.get_secret_value() if config.auth_key else None,
        privKey=config.priv_key.get_secret_value() if config.priv_key else None,
        authProtocol=AUTH[config.auth_protocol] if config.auth_key else usm.USM_AUTH_NONE,
        privProtocol=PRIV[config.priv_protocol] if config.priv_key else usm.USM_PRIV_NONE,
    )


def _engine(engine_id: str) -> SnmpEngine:
    """A fresh engine per send. pysnmp raises its stored snmpEngineBoots (system temp dir) for each one,
    which keeps v3 receivers' timeliness checks happy. Its constructor reads that file without closing
    it; the ResourceWarning that comes with it is pysnmp's, and silenced here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return SnmpEngine(OctetString(hexValue=engine_id))


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    trap = build(config, n)
    try:
        address = (await ctx.guard.resolve(config.host.strip("[]"), config.port))[0]
    except AddressError as exc:
        return address_outcome(exc)
    engine = _engine(config.engine_id)
    try:
        transport = Udp6TransportTarget if address.version == 6 else UdpTransportTarget
        target = await transport.create((str(address), config.port), timeout=ctx.timeout_s, retries=0)
        notification = NotificationType(ObjectIdentity(trap.oid)).add_varbinds(
            *((oid, Integer32(v) if isinstance(v, int) else OctetString(v.encode())) for oid, v in trap.variables)
        )
        error, _status, _index, _vars = await send_notification(engine, _auth(config), target, ContextData(), "trap", notification)
    except OSError as exc:
        return Retry(Code.NOTIFY_UNREACHABLE, f"could not send the trap to {config.host}:{config.port}: {exc}")
    finally:
        engine.close_dispatcher()
    if error:
        return Retry(Code.NOTIFY_UNREACHABLE, f"the trap to {config.host}:{config.port} was not sent: {error}")
    return Delivered(f"trap {trap.oid} sent to {address}:{config.port}")


CHANNEL = Channel("snmp", Config, send)
