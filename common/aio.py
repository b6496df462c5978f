"""asyncio helpers that keep cancellation intact.

Python 3.11's ``asyncio.wait_for`` loses a cancellation when the awaited thing finishes in the same
turn of the loop as the cancel (python/cpython#86296, fixed in 3.12): the task goes on as if never
cancelled. A loop like ``while True: await asyncio.wait_for(event.wait(), t)`` then never ends, and
whoever cancelled it waits for ever (seen: the MQTT endpoint's spool drain, stopping with the CPU
busy). ``asyncio.timeout`` has no such window, so every wait with a time limit goes through here;
ruff's TID251 keeps ``asyncio.wait_for`` out of the product's code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109 (this is the timeout helper)
    """``await aw``, raising TimeoutError after ``timeout`` seconds (None: no limit); a cancellation
    from outside always propagates."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109 (this is the timeout helper)
    """Whether ``event`` was set within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
