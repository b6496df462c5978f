"""`pulse sim run --control` lets a fault be injected into a running fleet and cleared again, from
`pulse sim fault` or over HTTP, with coded errors for unknown devices and unreadable faults."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import aiomqtt
import httpx
import pytest

from pulse.cloud.db.embedded import free_port
from pulse.protocol import envelope

pytestmark = pytest.mark.integration

BROKER = """
import asyncio, sys
from amqtt.broker import Broker

async def main():
    broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{sys.argv[1]}"}},
                     "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
    await broker.start()
    print("listening", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _pulse(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pulse.cli.main", *args], capture_output=True, text=True, timeout=60)


def _wait_listening(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "pulse sim run exited"
        try:
            if httpx.get(url + "/devices", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the control API never answered")


def _temperature_until(port: int, ok: Callable[[float], bool], timeout_s: float = 20) -> float:
    """Watch dev-0000's readings on the broker until one satisfies ``ok``; returns it."""

    async def watch() -> float:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"observer-{time.monotonic_ns()}") as observer:
            await observer.subscribe("pulse/dev-0000/telemetry", qos=1)
            async for msg in observer.messages:
                assert isinstance(msg.payload, bytes)
                env = envelope.parse(
                    msg.payload, now_ms=int(time.time() * 1000), device_id="dev-0000", expected_type=envelope.MessageType.TELEMETRY
                )
                t = float(env.metrics["temperature_c"])
                if ok(t):
                    return t
        raise AssertionError("the observer's connection ended")

    return asyncio.run(asyncio.wait_for(watch(), timeout_s))


def test_a_fault_injected_through_the_control_api_changes_what_the_device_sends_until_cleared() -> None:
    port, control_port = free_port(), free_port()
    # a real amqtt broker in its own process; it and the simulator are stopped with real signals
    broker = subprocess.Popen([sys.executable, "-c", BROKER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert broker.stdout is not None and broker.stdout.readline() == b"listening\n"
    sim = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "sim", "run", "--mqtt", f"127.0.0.1:{port}", "--devices", "2",
         "--interval", "0.2", "--control", f"127.0.0.1:{control_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{control_port}"
    try:
        _wait_listening(url, sim)
        assert _temperature_until(port, lambda t: True) < 60  # an environment sensor's room temperature

        done = _pulse("sim", "fault", "dev-0000", "spike", "metric=temperature_c", "factor=100", "--control", url)
        assert done.returncode == 0, done.stderr
        assert '"spike"' in done.stdout
        state = {d["device_id"]: d for d in httpx.get(url + "/devices", timeout=5).json()}
        assert [f["kind"] for f in state["dev-0000"]["faults"]] == ["spike"] and state["dev-0001"]["faults"] == []
        assert _temperature_until(port, lambda t: t > 600) > 600  # ~20 °C x 100

        assert _pulse("sim", "fault", "dev-0000", "clear", "--control", url).returncode == 0
        assert _temperature_until(port, lambda t: t < 60) < 60

        # bad input: coded errors, and nothing changes
        r = httpx.post(url + "/devices/nope/faults", json={"kind": "spike"}, timeout=5)
        assert r.status_code == 404 and r.json()["code"] == "api.not_found"
        for bad in ({"kind": "meltdown"}, {"kind": "spike", "factor": "big"}, {"kind": "spike", "colour": 1}, [1]):
            r = httpx.post(url + "/devices/dev-0001/faults", json=bad, timeout=5)
            assert r.status_code == 422 and r.json()["code"] == "api.invalid", bad
        refused = _pulse("sim", "fault", "dev-9999", "silent", "--control", url)
        assert refused.returncode == 1 and "api.not_found" in refused.stderr
        assert all(d["faults"] == [] for d in httpx.get(url + "/devices", timeout=5).json())
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=30)
        broker.kill()
        broker.wait(timeout=10)
        broker.stdout.close()
    assert sim.returncode == 0
