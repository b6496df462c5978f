"""SNMP v2c/v3 GET, WALK (GETBULK) and SET through pysnmp's asyncio API, one engine for every SNMP device.

Values are handed to the pure code (``pulse.protocol.connectors.snmp_value``) as plain Python:
numbers as int, OCTET STRINGs as bytes, missing objects as None. pysnmp's error indications and
statuses are translated here into ``ConnectorError`` with a code.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Sequence
from typing import Any

from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_walk_cmd,
    get_cmd,
    set_cmd,
)
from pysnmp.hlapi.v3arch.asyncio import auth as usm
from pysnmp.proto import rfc1905
from pysnmp.proto.rfc1902 import Integer32, OctetString

from pulse.common.snmp import AUTH, PRIV
from pulse.protocol.connectors import OidPoint, SnmpDevice, SnmpRaw
from pulse.protocol.errors import Code, ConnectorError

_MISSING = (rfc1905.NoSuchObject, rfc1905.NoSuchInstance, rfc1905.EndOfMibView)


def new_engine() -> SnmpEngine:
    """pysnmp's engine constructor reads its boots file without closing it; that ResourceWarning is
    pysnmp's, and silenced here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return SnmpEngine()


def _auth(d: SnmpDevice) -> CommunityData | UsmUserData:
    if d.version == "2c":
        return CommunityData(d.community, mpModel=1)
    return UsmUserData(
        d.user,
        authKey=d.auth_key or None,
        privKey=d.priv_key or None,
        authProtocol=AUTH[d.auth_protocol] if d.auth_key else usm.USM_AUTH_NONE,
        privProtocol=PRIV[d.priv_protocol] if d.priv_key else usm.USM_PRIV_NONE,
    )


def plain(value: object) -> SnmpRaw:
    """A pysnmp value as the pure code takes it."""
    if isinstance(value, _MISSING) or value is None:
        return None
    if isinstance(value, OctetString):
        return bytes(value.asOctets())
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(value)


class Agent:
    """One SNMP device: its credentials and transport target (made once, on first use)."""

    def __init__(self, engine: SnmpEngine, device: SnmpDevice) -> None:
        self.engine = engine
        self.device = device
        self.auth = _auth(device)
        self._target: UdpTransportTarget | None = None

    async def target(self) -> UdpTransportTarget:
        if self._target is None:
            d = self.device
            try:
                self._target = await UdpTransportTarget.create((d.host, d.port), timeout=d.polling.timeout_s, retries=0)
            except Exception as exc:
                raise ConnectorError(Code.CONNECTOR_UNREACHABLE, f"{d.host}:{d.port}: {exc}", device_id=d.id) from exc
        return self._target

    def _failed(self, what: str, indication: object, status: object, index: object) -> ConnectorError:
        d = self.device
        if indication:
            text = str(indication)
            code = Code.CONNECTOR_TIMEOUT if "timeout" in text.lower() else Code.CONNECTOR_UNREACHABLE
            return ConnectorError(code, f"{d.id} ({d.host}:{d.port}) {what}: {text}", device_id=d.id)
        return ConnectorError(Code.CONNECTOR_DEVICE_EXCEPTION, f"{d.id} answered {what} with {status} at {index}", device_id=d.id, status=str(status))

    async def _bounded(self, what: str, coro: Any) -> Any:
        d = self.device
        try:
            async with asyncio.timeout(d.polling.timeout_s * 1.5 + 0.5):  # pysnmp times out first; this is a guard
                return await coro
        except TimeoutError as exc:
            raise ConnectorError(Code.CONNECTOR_TIMEOUT, f"{d.id} did not answer {what} in {d.polling.timeout_s} s", device_id=d.id) from exc
        except OSError as exc:
            raise ConnectorError(Code.CONNECTOR_UNREACHABLE, f"{d.id} {what}: {exc}", device_id=d.id) from exc

    async def get(self, points: Sequence[OidPoint]) -> dict[str, SnmpRaw]:
        """One GET of several OIDs: OID -> value (None when the agent has no such object)."""
        target = await self.target()
        what = f"a GET of {len(points)} OIDs"
        binds = [ObjectType(ObjectIdentity(p.oid)) for p in points]
        indication, status, index, var_binds = await self._bounded(
            what, get_cmd(self.engine, self.auth, target, ContextData(), *binds, lookupMib=False)
        )
        if indication or status:
            raise self._failed(what, indication, status, index)
        return {str(name): plain(value) for name, value in var_binds}

    async def walk(self, point: OidPoint) -> dict[str, SnmpRaw]:
        """Every OID under the point's subtree: GETBULK requests of up to ``max_oids`` objects each
        (v2c and v3 both have it), until the subtree ends, so a table of 40 rows is one or two round
        trips, not 40."""
        target = await self.target()
        what = f"a WALK of {point.oid}"
        out: dict[str, SnmpRaw] = {}
        walker = bulk_walk_cmd(self.engine, self.auth, target, ContextData(), 0, self.device.max_oids,
                               ObjectType(ObjectIdentity(point.oid)), lexicographicMode=False, lookupMib=False)
        try:
            while True:
                try:
                    indication, status, index, var_binds = await self._bounded(what, anext(walker))
                except StopAsyncIteration:
                    break
                if indication or status:
                    raise self._failed(what, indication, status, index)
                for name, value in var_binds:
                    out[str(name)] = plain(value)
        finally:
            await walker.aclose()
        return out

    async def set(self, point: OidPoint, raw: int) -> None:
        target = await self.target()
        what = f"a SET of {point.oid}"
        indication, status, index, _ = await self._bounded(
            what, set_cmd(self.engine, self.auth, target, ContextData(), ObjectType(ObjectIdentity(point.oid), Integer32(raw)), lookupMib=False)
        )
        if indication or status:
            raise self._failed(what, indication, status, index)
