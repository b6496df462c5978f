"""No loss, no duplicates from device to cloud while the gateway is killed with SIGKILL mid-drain.

A publisher process streams numbered QoS 1 messages into `pulse gateway run` (a real process,
enrolled with the test's receiver standing in for the cloud); the test kills the gateway with
SIGKILL at random moments while it is draining and starts it again on the same files. Afterwards
every number the publisher saw acknowledged is at the receiver, none twice. The receiver dedupes
by high-water mark, as the cloud does: when a kill lands between the receiver's commit and the
gateway's ack, the batch is sent again and acknowledged without a second write (the deterministic
version of that case is in test_uplink_sync.py).
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from edge_sync_receiver import Receiver

from pulse.cloud.db.embedded import free_port
from pulse.edge.auth import DeviceRegistry
from pulse.edge.config import load
from pulse.edge.enroll import enroll
from pulse.protocol.sync import Verdict

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

KILLS = 6


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    r = Receiver(tmp_path / "cloud")
    await r.start()
    yield r
    await r.close()


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _spawn_publisher(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"gateway exited with {proc.returncode}:\n{_tail(log)}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"gateway not listening on {port}")


async def test_acknowledged_messages_reach_the_cloud_exactly_once_across_sigkills_of_the_gateway(tmp_path, receiver):
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "chaos"\nlog_level = "warning"\n[broker]\nhost = "127.0.0.1"\nport = {port}\nconnectivity_events = false\n[status]\nport = 0\n'
        "[sync]\nrecords_per_batch = 100\nidle_poll_s = 0.05\nbackoff_base_s = 0.05\nbackoff_cap_s = 0.5\nrequest_timeout_s = 5\n"
        "downlink_wait_s = 2\n"
    )
    registry = DeviceRegistry(tmp_path / "gateway.db")
    secret = registry.add("crash-1")
    registry.close()
    await asyncio.to_thread(enroll, load(config, {}), receiver.public_url, "good-token", ca_file=receiver.ca_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_GW_")}
    log = tmp_path / "gateway.log"

    async def start() -> subprocess.Popen[bytes]:
        proc = await asyncio.to_thread(_spawn, [sys.executable, "-m", "pulse.cli.main", "gateway", "run", "--config", str(config)],
                                       log, env)
        await _wait_listening(port, proc, log)
        return proc

    seed = int(os.environ.get("PULSE_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    acked_file = tmp_path / "acked.txt"
    gateway = await start()
    publisher = await asyncio.to_thread(
        _spawn_publisher, [sys.executable, str(Path(__file__).with_name("publisher.py")), str(port), "crash-1", secret, str(acked_file)]
    )
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            gateway.send_signal(signal.SIGKILL)
            await asyncio.to_thread(gateway.wait)
            gateway = await start()
        await asyncio.sleep(0.5)
        assert publisher.stdin is not None
        publisher.stdin.write("stop\n")
        publisher.stdin.flush()
        out, _ = await asyncio.to_thread(publisher.communicate, timeout=90)
        assert out.startswith("done") and out.strip().endswith("unacknowledged 0"), out
        last = int(out.split()[1])
        acked = {int(line) for line in acked_file.read_text().split()}
        deadline = time.monotonic() + 60
        while not acked <= {r.device_seq for _, r in receiver.rows} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        if publisher.poll() is None:
            publisher.kill()
        gateway.send_signal(signal.SIGTERM)
        await asyncio.to_thread(gateway.wait, 30)

    at_cloud = [r.device_seq for _, r in receiver.rows]
    context = (f"seed {seed}: {len(acked)} acknowledged to the device, {len(at_cloud)} rows at the receiver, "
               f"{receiver.verdicts.count(Verdict.REPLAY)} replayed batches")
    print(context)
    assert len(acked) == last and len(acked) > 300, context
    assert [n for n, c in collections.Counter(at_cloud).items() if c > 1] == [], context
    assert acked - set(at_cloud) == set(), context
    assert set(at_cloud) <= set(range(1, last + 1)), context
    assert len({r.seq for _, r in receiver.rows}) == len(at_cloud), context  # no buffer record written twice
