"""Shared fixtures for the pure protocol tests (no event loop, no I/O beyond reading /proc)."""

from __future__ import annotations

import math
import resource
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pulse.protocol.batch import Record

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakMemory:
    """The process's peak resident set size, measured from a starting point.

    On Linux the kernel's high-water mark is reset first (writing 5 to /proc/self/clear_refs), so
    the growth seen is this test's own, not an earlier test's peak. Elsewhere it falls back to
    ru_maxrss, which can only over-report the starting point (a bound checked against it stays
    honest, just looser)."""

    def __init__(self) -> None:
        self._resettable = False
        try:
            _CLEAR_REFS.write_text("5")
            self._resettable = _vm_hwm_bytes() is not None
        except OSError:
            self._resettable = False
        self.start = self._peak()

    def _peak(self) -> int:
        if self._resettable:
            value = _vm_hwm_bytes()
            assert value is not None
            return value
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def growth(self) -> int:
        return self._peak() - self.start


@pytest.fixture
def peak_memory() -> PeakMemory:
    return PeakMemory()


def _same_value(a: object, b: object) -> bool:
    """Equal and of the same type; floats bit for bit (so -0.0 is not 0.0, and True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack(">d", a) == struct.pack(">d", b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_records(got: Sequence[Record], want: Sequence[Record]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert type(g) is Record
        for field in Record._fields:
            gv, wv = getattr(g, field), getattr(w, field)
            assert _same_value(gv, wv), f"record {i} field {field}: decoded {gv!r}, sent {wv!r}"


@pytest.fixture(scope="session")
def same_records() -> Callable[[Sequence[Record], Sequence[Record]], None]:
    """Asserts two record lists are equal field by field, with exact types and float bits."""
    return assert_same_records


@pytest.fixture(scope="session")
def same_value() -> Callable[[object, object], bool]:
    return _same_value
