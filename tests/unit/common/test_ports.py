"""Loopback ports for servers Pulse starts (common/ports.py)."""

from __future__ import annotations

import socket

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
