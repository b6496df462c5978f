"""The gateway buffer's threads (the SQLite writer and aiosqlite's reader) never outlive a
failed or cancelled open: one forgotten aiosqlite thread kept a whole test run alive for an hour."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from pulse.edge.buffer import Buffer
from pulse.edge.config import BufferSettings


def _threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()}


async def test_an_open_cancelled_at_any_step_leaves_no_thread(tmp_path: Path) -> None:
    before = _threads()
    for steps in range(40):  # cancel after 0, 1, 2, ... loop turns: every await point of open() is hit
        buffer = Buffer(tmp_path / f"b{steps}.db", BufferSettings(flush_interval_ms=0))
        opening = asyncio.ensure_future(buffer.open())
        for _ in range(steps):
            await asyncio.sleep(0)
        opening.cancel()
        try:
            await opening
        except asyncio.CancelledError:
            pass
        else:
            await buffer.close()
        for t in _threads() - before:
            t.join(5)
        assert not (_threads() - before), f"cancelled after {steps} steps: {sorted(t.name for t in _threads() - before)}"

