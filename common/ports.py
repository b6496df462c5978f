"""Loopback ports for processes that Pulse starts on one machine (`pulse up`, demos, benchmarks)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port`` now. SO_REUSEADDR as servers (PostgreSQL) set it:
    connections of a stopped server left in TIME_WAIT do not keep its port from it on restart."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(wanted: int) -> int:
    """``wanted`` when it is set and free, otherwise a free port."""
    return wanted if wanted and port_is_free(wanted) else free_port()
