"""Loopback ports for servers Pulse starts (common/ports.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pulse.common import ports
from pulse.common.ports import _ephemeral_start, free_port, port_is_free


def test_free_ports_come_from_below_the_range_outgoing_connections_use_and_are_not_handed_out_twice() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 < p < _ephemeral_start() for p in ports)


def test_a_port_someone_listens_on_is_not_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        taken = s.getsockname()[1]
        assert not port_is_free(taken)
    assert port_is_free(taken)


def test_a_port_another_live_process_reserved_is_not_handed_out_and_a_dead_ones_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.RESERVATIONS_ENV, str(tmp_path))
    monkeypatch.setattr(ports, "_reserved", [])  # this test's reservations only (the suite's own stay)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "20001").write_text(str(other.pid))
        assert not ports._reserve(20001)  # another test run holds it while it is free for a moment
        assert (tmp_path / "20001").read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    assert ports._reserve(20001)  # its process is gone: taken over
    assert (tmp_path / "20001").read_text() == str(os.getpid())
    assert ports._reserve(20001)  # this process's own, again
    (tmp_path / "20002").write_text("")  # being written by someone else right now
    assert not ports._reserve(20002)

    # free_port reserves what it hands out, and skips what a live process reserved
    held, wanted = [p for p in range(20003, 21000) if port_is_free(p) and p not in ports._handed_out][:2]
    monkeypatch.setattr(ports, "_random", _Scripted([held, wanted]))
    (tmp_path / str(held)).write_text(str(os.getppid()))
    assert free_port() == wanted
    assert (tmp_path / str(wanted)).read_text() == str(os.getpid())
    ports._release_all()  # what runs at exit: this process's reservations go, the others stay
    assert not (tmp_path / "20001").exists() and not (tmp_path / str(wanted)).exists()
    assert (tmp_path / str(held)).exists()


class _Scripted:
    def __init__(self, values: list[int]) -> None:
        self._values = values

    def randint(self, low: int, high: int) -> int:
        return self._values.pop(0)
