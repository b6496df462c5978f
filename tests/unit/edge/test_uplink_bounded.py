"""``bounded`` (every await of the uplink and downlink goes through it) must never swallow a
cancellation: on Python 3.11 ``asyncio.wait_for`` returns the inner result when the task is
cancelled in the same loop turn as the inner awaitable finishes, so a stopped uplink went on
draining and whoever awaited its end waited forever (issue 14, item 4)."""

from __future__ import annotations

import asyncio

import pytest

from pulse.edge.errors import SyncError
from pulse.edge.uplink import bounded
from pulse.protocol.errors import Code


async def test_a_cancellation_that_arrives_as_the_bounded_step_finishes_is_kept() -> None:
    reached: list[str] = []
    answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def loop() -> None:
        await bounded(answer, 5, "a step")
        reached.append("past the step")  # a swallowed cancel: the loop would go on

    outer = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the task now waits for the answer
    answer.set_result(1)  # the step finishes ...
    outer.cancel()  # ... and in the same loop turn the task is stopped (the drain loop's race)
    done, _ = await asyncio.wait({outer}, timeout=30)
    assert done, "the task did not end"
    assert outer.cancelled()
    assert reached == []


async def test_a_step_that_takes_too_long_is_a_coded_error() -> None:
    with pytest.raises(SyncError) as info:
        await bounded(asyncio.sleep(3600), 0.01, "waiting for nothing")
    assert info.value.code is Code.GATEWAY_CLOUD_TIMEOUT
    assert "waiting for nothing" in info.value.message
