"""pulse.common.aio: waits with a time limit that never lose a cancellation.

With Python 3.11's asyncio.wait_for, the first case below (event set, then cancel, in one turn of
the loop) leaves the task running for ever: the MQTT endpoint's stop() hung that way on a busy CPU."""

import asyncio
import contextlib

import pytest

from pulse.common import aio

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("turns_between", [0, 1, 2, 5])
async def test_a_cancel_in_the_turn_the_event_is_set_ends_the_waiting_loop(turns_between: int) -> None:
    event = asyncio.Event()
    woke = 0

    async def forever() -> None:
        nonlocal woke
        while True:
            with contextlib.suppress(TimeoutError):
                await aio.wait_for(event.wait(), 10)
                woke += 1
            event.clear()

    task = asyncio.create_task(forever())
    for _ in range(3):
        await asyncio.sleep(0)
    event.set()
    for _ in range(turns_between):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done == {task} and task.cancelled()
    assert woke <= 1


async def test_wait_for_returns_the_result_and_times_out() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await aio.wait_for(answer(), 1) == 42
    assert await aio.wait_for(answer(), None) == 42
    with pytest.raises(TimeoutError):
        await aio.wait_for(asyncio.Event().wait(), 0.01)


async def test_wait_event_says_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await aio.wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await aio.wait_event(event, 5) is True
    assert await aio.wait_event(event, 0) is True
