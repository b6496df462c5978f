"""Loopback ports for processes that Pulse starts on one machine (`pulse up`, demos, benchmarks)."""

from __future__ import annotations

import random
import socket
from collections import deque
from pathlib import Path

_LOWEST = 15000
_handed_out: deque[int] = deque(maxlen=1024)
_random = random.Random()


def _ephemeral_start() -> int:
    """The first port of the kernel's range for outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a server that binds it a moment later.

    Taken from below the kernel's range for outgoing connections: a port the kernel picks (bind to
    port 0) is one an outgoing connection can take before the server binds it, which made busy test
    runs fail with "address already in use". Ports handed out recently in this process are not
    handed out again."""
    top = _ephemeral_start() - 1
    if top > _LOWEST + 1000:
        for _ in range(200):
            port = _random.randint(_LOWEST, top)
            if port not in _handed_out and port_is_free(port, host):
                _handed_out.append(port)
                return port
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
