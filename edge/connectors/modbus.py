"""Modbus TCP and RTU through pymodbus's async clients: a pool of connections per host or serial line.

Devices that share a host and port (a Modbus TCP gateway in front of several units) or a serial
line share that line's pool. A pool holds at most ``max_in_flight`` clients (1 for a serial line,
which carries one request at a time); a request borrows one for its duration, so requests in
flight per line are bounded by the pool's size and pymodbus's per-client lock. Everything pymodbus
raises is translated here into ``ConnectorError`` with a code; nothing past this module sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from pulse.protocol.connectors import ModbusDevice, Read, RegisterPoint, Table, Transport, encode
from pulse.protocol.errors import Code, ConnectorError

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


class Line:
    """The connections to one Modbus TCP host:port, or one serial line."""

    def __init__(self, device: ModbusDevice, size: int, timeout_s: float | None = None) -> None:
        self.device = device
        self.timeout_s = timeout_s or device.polling.timeout_s
        """pymodbus's own wait: the longest of the line's devices (each request is also bounded by its device's)."""
        self.size = 1 if device.transport is Transport.RTU else max(1, size)
        self._idle: asyncio.Queue[Client] = asyncio.Queue()
        self._made = 0
        self._all: list[Client] = []

    def _new_client(self) -> Client:
        d = self.device
        common = {"timeout": self.timeout_s, "retries": 0, "reconnect_delay": 0, "name": d.line}
        if d.transport is Transport.RTU:
            return AsyncModbusSerialClient(d.serial_port, baudrate=d.baudrate, parity=d.parity, stopbits=d.stopbits, **common)
        return AsyncModbusTcpClient(d.host, port=d.port, **common)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Client]:
        """Borrow a connected client; waits while ``size`` requests are in flight on this line."""
        if self._idle.empty() and self._made < self.size:
            self._made += 1
            made = self._new_client()
            self._all.append(made)
            self._idle.put_nowait(made)
        c = await self._idle.get()
        try:
            yield c
        finally:
            self._idle.put_nowait(c)

    def close(self) -> None:
        for c in self._all:
            c.close()
        self._all.clear()


async def _connected(c: Client, device: ModbusDevice) -> None:
    if c.connected:
        return
    try:
        ok = await c.connect()
    except (OSError, ModbusException) as exc:
        raise ConnectorError(Code.CONNECTOR_UNREACHABLE, f"{device.line}: {exc}", device_id=device.id) from exc
    if not ok:
        raise ConnectorError(Code.CONNECTOR_UNREACHABLE, f"could not connect to {device.line}", device_id=device.id)


def _check(response: object, device: ModbusDevice, what: str) -> None:
    if getattr(response, "isError", lambda: False)():
        code = getattr(response, "exception_code", None)
        raise ConnectorError(
            Code.CONNECTOR_DEVICE_EXCEPTION, f"{device.id} answered {what} with Modbus exception {code}", device_id=device.id, exception=code
        )


async def _call(c: Client, device: ModbusDevice, what: str, request: object) -> object:
    """Await one pymodbus request with the device's timeout, translating pymodbus's errors."""
    try:
        async with asyncio.timeout(device.polling.timeout_s):
            response = await request  # type: ignore[misc]
    except TimeoutError as exc:
        c.close()  # a late answer must not be taken for the next request's
        raise ConnectorError(Code.CONNECTOR_TIMEOUT, f"{device.id} did not answer {what} in {device.polling.timeout_s} s", device_id=device.id) from exc
    except ModbusIOException as exc:
        c.close()
        raise ConnectorError(Code.CONNECTOR_TIMEOUT, f"{device.id} did not answer {what}: {exc}", device_id=device.id) from exc
    except (ConnectionException, OSError) as exc:
        c.close()
        raise ConnectorError(Code.CONNECTOR_UNREACHABLE, f"{device.line}: {exc}", device_id=device.id) from exc
    except ModbusException as exc:
        raise ConnectorError(Code.CONNECTOR_DEVICE_EXCEPTION, f"{device.id} {what}: {exc}", device_id=device.id) from exc
    _check(response, device, what)
    return response


async def read(line: Line, device: ModbusDevice, r: Read) -> list[int] | list[bool]:
    """One read: registers (ints 0-65535) or bits."""
    what = f"a read of {r.count} {r.table} from {r.address}"
    async with line.client() as c:
        await _connected(c, device)
        fn = {
            Table.HOLDING: c.read_holding_registers,
            Table.INPUT: c.read_input_registers,
            Table.COIL: c.read_coils,
            Table.DISCRETE: c.read_discrete_inputs,
        }[r.table]
        response = await _call(c, device, what, fn(r.address, count=r.count, device_id=device.unit))
    if r.table.bits:
        return [bool(b) for b in response.bits[: r.count]]  # type: ignore[attr-defined]
    return list(response.registers)  # type: ignore[attr-defined]


async def write(line: Line, device: ModbusDevice, point: RegisterPoint, raw: int | float | bool) -> None:
    """Write one point's raw value: a coil (function 5), one register (6) or several (16)."""
    async with line.client() as c:
        await _connected(c, device)
        what = f"a write of {point.metric} at {point.address}"
        if point.table is Table.COIL:
            await _call(c, device, what, c.write_coil(point.address, bool(raw), device_id=device.unit))
            return
        words: Sequence[int] = encode(raw, point.type, point.word_order, point.byte_order)
        if len(words) == 1:
            await _call(c, device, what, c.write_register(point.address, words[0], device_id=device.unit))
        else:
            await _call(c, device, what, c.write_registers(point.address, list(words), device_id=device.unit))
