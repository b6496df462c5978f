"""Loopback ports for processes that Pulse starts on one machine (`pulse up`, demos, benchmarks).

A port handed out is free when it is chosen and is bound a moment later, perhaps released and
bound again (a gateway a test restarts on the same ports). Within a process, ports handed out
recently are not handed out again. Across processes, with ``PULSE_PORT_RESERVATIONS`` naming a
directory (the test suite sets it), each port handed out is also reserved there by a file holding
the process id, until that process ends: another process (another test run on the same machine,
or a server a test started) does not take it while it is free for a moment. A reservation whose
process is gone is taken over."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import socket
from collections import deque
from pathlib import Path

_LOWEST = 15000
_handed_out: deque[int] = deque(maxlen=1024)
_random = random.Random()
_reserved: list[Path] = []
RESERVATIONS_ENV = "PULSE_PORT_RESERVATIONS"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(port: int) -> bool:
    """Reserve ``port`` for this process (True), or False when a live process holds it."""
    directory = os.environ.get(RESERVATIONS_ENV)
    if not directory:
        return True
    path = Path(directory) / str(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = int(path.read_text())
            except (OSError, ValueError):
                return False  # being written, or unreadable: someone else's for now
            if owner == os.getpid():
                return True
            if _alive(owner):
                return False
            path.unlink(missing_ok=True)  # its process is gone: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        if not _reserved:
            atexit.register(_release_all)
        _reserved.append(path)
        return True
    return False


def _release_all() -> None:
    """At exit: remove this process's reservations (those it still holds)."""
    pid = str(os.getpid())
    for path in _reserved:
        with contextlib.suppress(OSError):
            if path.read_text() == pid:
                path.unlink()
    _reserved.clear()


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
    handed out again, nor (with ``PULSE_PORT_RESERVATIONS``) ports another live process reserved."""
    top = _ephemeral_start() - 1
    if top > _LOWEST + 1000:
        for _ in range(200):
            port = _random.randint(_LOWEST, top)
            if port not in _handed_out and port_is_free(port, host) and _reserve(port):
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
