"""The userspace link shaper of `pulse bench link` (bench/shaper.py) carrying real TCP on loopback:
bytes arrive whole and in order through loss, lost segments cost their wire time twice, a cut
resets the connections, and reset outages refuse new connections. No timing is asserted."""

from __future__ import annotations

import asyncio
import os

import pytest

from pulse.bench.shaper import LinkProfile, Outages, Shaper

pytestmark = pytest.mark.integration


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def test_bytes_arrive_whole_and_in_order_through_loss_and_lost_segments_are_carried_twice():
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    shaper = Shaper(LinkProfile(400_000, 400_000, 0.001, 0.002, loss=0.2), ("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        port = await shaper.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = os.urandom(60_000)
        writer.write(payload)
        await writer.drain()
        got = await reader.readexactly(len(payload))
        assert got == payload
        assert shaper.up.carried > len(payload)  # some of the ~43 segments were lost and sent again
        writer.close()
    finally:
        await shaper.close()
        server.close()
        await server.wait_closed()


async def test_a_cut_resets_every_open_connection():
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    shaper = Shaper(LinkProfile(1_000_000, 1_000_000, 0.0, 0.0), ("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        port = await shaper.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert shaper.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await reader.readexactly(1)
        writer.close()
    finally:
        await shaper.close()
        server.close()
        await server.wait_closed()


async def test_while_a_reset_outage_lasts_new_connections_are_refused():
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    shaper = Shaper(LinkProfile(1_000_000, 1_000_000, 0.0, 0.0, outages=Outages(period_s=3600, down_s=3000, kind="reset")),
                    ("127.0.0.1", server.sockets[0].getsockname()[1]))
    try:
        port = await shaper.start()
        for _ in range(500):  # the shaper notices the outage within a few of its 20 ms looks
            if not shaper.listening:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        await shaper.close()
        server.close()
        await server.wait_closed()
