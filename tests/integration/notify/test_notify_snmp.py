"""SNMP traps received and decoded by a real pysnmp notification receiver on a loopback UDP port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.proto.rfc1902 import OctetString

from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify import senders
from pulse.cloud.notify.model import Delivered, Notification
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.senders.snmp import DEFAULT_ENGINE_ID

pytestmark = pytest.mark.integration
Make = Callable[..., Notification]
PREFIX = "1.3.6.1.4.1.55555.7"
SYS_UPTIME, TRAP_OID = "1.3.6.1.2.1.1.3.0", "1.3.6.1.6.3.1.1.4.1.0"


@dataclass
class TrapReceiver:
    port: int
    traps: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def _receiver(port: int, *, v3_priv_key: str = "priv-key-5678") -> tuple[engine.SnmpEngine, TrapReceiver]:
    """A pysnmp engine that accepts v2c community 'pulse-c' and v3 user 'ops' (SHA-256 + AES) from Pulse's engine id."""
    snmp = engine.SnmpEngine()
    config.add_transport(snmp, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(("127.0.0.1", port)))
    config.add_v1_system(snmp, "area", "pulse-c")
    config.add_v3_user(
        snmp,
        "ops",
        config.USM_AUTH_HMAC192_SHA256,
        "auth-key-1234",
        config.USM_PRIV_CFB128_AES,
        v3_priv_key,
        securityEngineId=OctetString(hexValue=DEFAULT_ENGINE_ID),
    )
    receiver = TrapReceiver(port)

    def on_trap(snmp_engine: Any, state: Any, context_engine_id: Any, context_name: Any, var_binds: Any, cb_ctx: Any) -> None:
        receiver.traps.append({str(oid): value for oid, value in var_binds})
        receiver.arrived.set()

    ntfrcv.NotificationReceiver(snmp, on_trap)
    return snmp, receiver


@pytest.fixture
async def trap_receiver() -> AsyncIterator[TrapReceiver]:
    snmp, receiver = _receiver(free_port())
    try:
        yield receiver
    finally:
        snmp.close_dispatcher()


async def _one_trap(receiver: TrapReceiver) -> dict[str, Any]:
    await asyncio.wait_for(receiver.arrived.wait(), 10)
    [trap] = receiver.traps
    return trap


def _check_varbinds(trap: dict[str, Any], n: Notification, trap_number: int) -> None:
    assert SYS_UPTIME in trap
    assert str(trap[TRAP_OID]) == f"{PREFIX}.0.{trap_number}"
    assert str(trap[f"{PREFIX}.1.1"]) == "al-1001"
    assert str(trap[f"{PREFIX}.1.2"]) == n.fingerprint
    assert str(trap[f"{PREFIX}.1.3"]) == n.event
    assert str(trap[f"{PREFIX}.1.4"]) == "major" and int(trap[f"{PREFIX}.1.5"]) == 2
    assert str(trap[f"{PREFIX}.1.7"]) == "pump-7" and str(trap[f"{PREFIX}.1.8"]) == "Plant <North> & Co"
    assert str(trap[f"{PREFIX}.1.9"]) == "temp" and str(trap[f"{PREFIX}.1.10"]) == "92.5" and str(trap[f"{PREFIX}.1.11"]) == "80"
    assert str(trap[f"{PREFIX}.1.13"]) == "https://pulse.example.com/alerts/al-1001"
    assert str(trap[f"{PREFIX}.1.14"]) == "2026-11-25T07:59:00+00:00"


async def test_v2c_trap_with_community_carries_every_field(trap_receiver: TrapReceiver, ctx: SendContext, make_notification: Make) -> None:
    n = make_notification(severity="major")
    raw = {"host": "127.0.0.1", "port": trap_receiver.port, "version": "v2c", "community": "pulse-c", "enterprise_oid": PREFIX}
    outcome = await senders.send("snmp", senders.validate("snmp", raw), n, ctx)
    assert isinstance(outcome, Delivered)
    _check_varbinds(await _one_trap(trap_receiver), n, 1)


async def test_v3_trap_with_auth_and_privacy_is_decrypted_by_the_receiver(
    trap_receiver: TrapReceiver, ctx: SendContext, make_notification: Make
) -> None:
    n = make_notification(severity="major", event="closed")
    raw = {
        "host": "localhost",
        "port": trap_receiver.port,
        "version": "v3",
        "user": "ops",
        "auth_protocol": "SHA256",
        "auth_key": "auth-key-1234",
        "priv_protocol": "AES",
        "priv_key": "priv-key-5678",
        "enterprise_oid": PREFIX,
    }
    outcome = await senders.send("snmp", senders.validate("snmp", raw), n, ctx)
    assert isinstance(outcome, Delivered)
    _check_varbinds(await _one_trap(trap_receiver), n, 3)


async def test_a_receiver_with_another_privacy_key_cannot_read_the_v3_trap(ctx: SendContext, make_notification: Make) -> None:
    snmp, receiver = _receiver(free_port(), v3_priv_key="not-the-same-key")
    try:
        raw = {
            "host": "127.0.0.1",
            "port": receiver.port,
            "version": "v3",
            "user": "ops",
            "auth_key": "auth-key-1234",
            "priv_key": "priv-key-5678",
            "enterprise_oid": PREFIX,
        }
        assert isinstance(await senders.send("snmp", senders.validate("snmp", raw), make_notification(), ctx), Delivered)
        # A v2c trap sent after it arrives; the v3 one must not have been decoded before it.
        v2 = {"host": "127.0.0.1", "port": receiver.port, "community": "pulse-c", "enterprise_oid": PREFIX}
        await senders.send("snmp", senders.validate("snmp", v2), make_notification(event="test"), ctx)
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        assert [str(t[TRAP_OID]) for t in receiver.traps] == [f"{PREFIX}.0.4"]
    finally:
        snmp.close_dispatcher()
