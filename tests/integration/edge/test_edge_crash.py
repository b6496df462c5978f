"""Durability: a QoS 1 message the gateway acknowledged survives SIGKILL of the gateway, exactly once.

A publisher process streams numbered QoS 1 messages while the test kills `pulse gateway run` with
SIGKILL at random moments (at least 10 times) and starts it again on the same file. Afterwards
every number the publisher saw acknowledged is in the buffer, and no number is there twice
(paho resends unacknowledged messages after reconnecting; the buffer drops those it already has).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pulse.cloud.db.embedded import free_port
from pulse.edge.auth import DeviceRegistry

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

KILLS = 10


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"gateway not listening on {port}")


def test_acknowledged_messages_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "chaos"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {port}\n[status]\nport = 0\n'
    )
    registry = DeviceRegistry(tmp_path / "gateway.db")
    secret = registry.add("crash-1")
    registry.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_GW_")}
    log = tmp_path / "gateway.log"

    def start() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(config)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        _wait_listening(port, proc, log)
        return proc

    seed = int(os.environ.get("PULSE_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    acked_file = tmp_path / "acked.txt"
    gateway = start()
    publisher = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("publisher.py")), str(port), "crash-1", secret, str(acked_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            gateway.send_signal(signal.SIGKILL)
            gateway.wait()
            gateway = start()
        time.sleep(1.0)
        assert publisher.stdin is not None
        publisher.stdin.write("stop\n")
        publisher.stdin.flush()
        out, _ = publisher.communicate(timeout=90)
        assert out.startswith("done") and out.strip().endswith("unacknowledged 0"), out
    finally:
        if publisher.poll() is None:
            publisher.kill()
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)

    acked = [int(line) for line in acked_file.read_text().split()]
    last = int(out.split()[1])
    conn = sqlite3.connect(tmp_path / "gateway.db")
    stored = [row[0] for row in conn.execute("SELECT device_seq FROM records WHERE device_id = 'crash-1' ORDER BY seq")]
    dropped_duplicates = conn.execute("SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = 'duplicates'").fetchone()[0]
    conn.close()

    context = f"seed {seed}: {len(acked)} acknowledged, {len(stored)} stored, {dropped_duplicates} retransmissions dropped"
    print(context)
    assert len(acked) == last, context  # the publisher finished with everything acknowledged
    assert len(acked) > 500, context  # the stream really ran across the kills
    twice = [n for n, count in collections.Counter(stored).items() if count > 1]
    assert twice == [], context
    assert set(acked) - set(stored) == set(), context
    assert set(stored) <= set(range(1, last + 1)), context
