"""Malformed device messages land in the local quarantine with their code and raw bytes; the broker keeps serving."""

from __future__ import annotations

import asyncio

import pytest

from pulse.protocol.batch import Stream

pytestmark = pytest.mark.integration

BAD = [
    ("pulse/boiler-1/telemetry", b"\x00\xffgarbage{", "envelope.not_json"),
    ("pulse/boiler-1/telemetry", b'{"v":1,"metrics":{"t":1},"pad":"' + b"x" * 20_000 + b'"}', "envelope.too_large"),
    ("pulse/boiler-1/telemetry", b'{"v":2,"metrics":{"t":1}}', "envelope.version_unsupported"),
    ("pulse/boiler-1/telemetry", b'{"v":1,"metrics":{"t":NaN}}', "envelope.bad_metric"),
    ("pulse/boiler-1/telemetry", b'{"v":1,"metrics":{"t":1e400}}', "envelope.bad_metric"),
    ("pulse/boiler-1/telemetry", b'{"v":1,"device":"boiler-2","metrics":{"t":1}}', "envelope.device_mismatch"),
    ("pulse/boiler-1/event", b'{"v":1,"type":"telemetry","metrics":{"t":1}}', "envelope.bad_type"),
    ("pulse/boiler-1/telemetry", b"[1,2,3]", "envelope.not_object"),
    ("pulse/boiler-1/twin/reported", b'{"v":1}', "envelope.bad_body"),
]


@pytest.mark.parametrize("qos", [0, 1])
async def test_malformed_payloads_are_quarantined_with_their_codes_and_raw_bytes(gateway, devices, client_factory, qos):
    secret = devices.add("boiler-1")
    c = client_factory(gateway.settings.broker.port, "boiler-1", secret)
    assert await asyncio.to_thread(c.connect)
    for topic, payload, _ in BAD:
        await asyncio.to_thread(c.publish, topic, payload, qos)
    # the same session still works: a valid message after all that is stored
    await asyncio.to_thread(c.publish, "pulse/boiler-1/telemetry", b'{"v":1,"seq":1,"metrics":{"t":21.5}}', 1)

    rows = list(reversed(await gateway.buffer.quarantined()))
    assert [(q.topic, q.raw, q.code) for q in rows] == BAD
    assert all(q.device_id == "boiler-1" and q.message for q in rows)
    assert [r.metrics for r in await gateway.buffer.read(Stream.TELEMETRY, 0, 10)] == [{"t": 21.5}]
    stats = await gateway.buffer.stats()
    assert stats.quarantine_count == len(BAD)
    assert [r["code"] for r in stats.last_reasons][-len(BAD):] == [code for _, _, code in BAD]


async def test_quarantine_keeps_the_newest_rows_within_its_limit(settings, devices, client_factory):
    import dataclasses

    from pulse.edge.app import Gateway

    gw = Gateway(dataclasses.replace(settings, buffer=dataclasses.replace(settings.buffer, quarantine_max_rows=5)))
    await gw.start()
    try:
        secret = devices.add("boiler-1")
        c = client_factory(settings.broker.port, "boiler-1", secret)
        assert await asyncio.to_thread(c.connect)
        for i in range(8):
            await asyncio.to_thread(c.publish, "pulse/boiler-1/telemetry", b"bad %d" % i, 1)
        rows = await gw.buffer.quarantined()
        assert [q.raw for q in rows] == [b"bad %d" % i for i in (7, 6, 5, 4, 3)]
        assert (await gw.buffer.stats()).quarantine_removed == 3
    finally:
        await gw.stop()
