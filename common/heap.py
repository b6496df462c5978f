"""The garbage collector, set for a long-running server process.

A server imports and builds most of what it will ever hold at start-up (modules, the app, its
routes and models), then allocates many short-lived containers per request: a gateway batch is
thousands of records and rows, each a tuple the cyclic collector tracks. With the defaults every
full collection walked the whole start-up heap again: in ``pulse bench sync`` the cloud process
spent about a quarter of its CPU in the collector (``gc.callbacks``, 2 cores). ``settle()``
moves what exists at start-up out of the collector's sight (``gc.freeze``) and makes the youngest
generation larger, so collections are fewer and each looks at the request's objects only. The
gateway does the same for its broker (``edge/app.py``, with older generations collected less often
too), and ``pulse bench sync`` for the gateway side it runs in its own process.

Call it once, from a process's entry point after start-up (never from library code or a test: a
frozen object is never collected, even once it is garbage).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def settle(gen0_threshold: int = GEN0_THRESHOLD, gen1_threshold: int | None = None, gen2_threshold: int | None = None) -> None:
    """Collect once, freeze what survives, and collect the youngest generation less often (the older
    generations' thresholds stay unless given)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(
        gen0_threshold, gen1 if gen1_threshold is None else gen1_threshold, gen2 if gen2_threshold is None else gen2_threshold
    )
