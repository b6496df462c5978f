"""The fleet part of `pulse up`: `pulse sim run` against the demo gateway, as a child process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pulse.firmware_sim.profiles import make_fleet

PREFIX = "dev"


def device_ids(count: int) -> list[str]:
    return [d.device_id for d in make_fleet(count, prefix=PREFIX)]


@dataclass
class FleetProcess:
    process: subprocess.Popen[bytes]
    log: Path
    control_url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_fleet(
    root: Path, *, mqtt_port: int, credentials: Path, count: int, interval_s: float, faults: list[str], control_port: int
) -> FleetProcess:
    log = root / "fleet.log"
    control = f"127.0.0.1:{control_port}"
    args = [
        sys.executable, "-m", "pulse.cli.main", "sim", "run",
        "--mqtt", f"127.0.0.1:{mqtt_port}", "--credentials", str(credentials),
        "--devices", str(count), "--prefix", PREFIX, "--interval", str(interval_s), "--report-every", "60", "--control", control,
    ]  # fmt: skip
    for fault in faults:
        args += ["--fault", fault]
    return FleetProcess(subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT), log, f"http://{control}")


def start_equipment(root: Path, *, modbus_port: int, snmp_port: int) -> FleetProcess:
    """`pulse sim equipment` (a power meter on Modbus TCP, a UPS on SNMP) for the demo gateway to poll."""
    log = root / "equipment.log"
    args = [sys.executable, "-m", "pulse.cli.main", "sim", "equipment", "--modbus-port", str(modbus_port), "--snmp-port", str(snmp_port)]
    return FleetProcess(subprocess.Popen(args, stdout=log.open("ab"), stderr=subprocess.STDOUT), log, "")
