"""A simulated device's behaviour, without I/O: what it sends next, given its faults and the time.

Faults (inject with ``Device.inject``; several can be active at once):

| fault       | what the device does                                                              |
|-------------|-----------------------------------------------------------------------------------|
| silent      | sends nothing (a dead battery, a pulled cable) until cleared or ``until`` passes   |
| spike       | the next readings of ``metric`` (default: the first) are multiplied by ``factor``  |
| stuck       | repeats its last reading exactly                                                   |
| flapping    | ``metric`` alternates just above and just below ``threshold``                      |
| clock_skew  | its timestamps are off by ``offset_s`` seconds                                     |
| malformed   | sends garbage instead of an envelope (``count`` messages, default 1)              |
| fw_corrupt  | the next firmware download arrives with a flipped byte: the hash check refuses it  |
| fw_interrupt| the next firmware download breaks half-way; the device downloads it again          |
| fw_install_fail | the next firmware install fails (the device says why, keeps its version)      |
| fw_never_back | the device starts installing and never comes back (no answer: the job times it out) |
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from enum import StrEnum

from pulse.firmware_sim.profiles import SimDevice
from pulse.protocol import firmware
from pulse.protocol.envelope import Envelope, MessageType
from pulse.protocol.errors import FirmwareError


class FaultKind(StrEnum):
    SILENT = "silent"
    SPIKE = "spike"
    STUCK = "stuck"
    FLAPPING = "flapping"
    CLOCK_SKEW = "clock_skew"
    MALFORMED = "malformed"
    FW_CORRUPT = "fw_corrupt"
    FW_INTERRUPT = "fw_interrupt"
    FW_INSTALL_FAIL = "fw_install_fail"
    FW_NEVER_BACK = "fw_never_back"


@dataclass
class Fault:
    kind: FaultKind
    metric: str | None = None
    factor: float = 10.0
    threshold: float = 0.0
    offset_s: float = 0.0
    count: int = 1
    until_s: float | None = None  # sim-clock time when the fault clears by itself

    @classmethod
    def parse(cls, text: str) -> tuple[str, Fault]:
        """``device:kind[:key=value,...]``, e.g. ``dev-0003:spike:metric=temperature_c,factor=5``."""
        device, _, rest = text.partition(":")
        kind, _, params = rest.partition(":")
        fault = cls(FaultKind(kind))
        for item in filter(None, params.split(",")):
            key, _, value = item.partition("=")
            if key == "metric":
                fault.metric = value
            elif key in ("factor", "threshold", "offset_s"):
                setattr(fault, key, float(value))
            elif key == "count":
                fault.count = int(value)
            elif key == "for_s":
                fault.until_s = float(value)  # made absolute by Device.inject
            else:
                raise ValueError(f"unknown fault parameter {key!r}")
        if not device:
            raise ValueError("a fault names its device: DEVICE:KIND[:key=value,...]")
        return device, fault


GARBAGE = [b"\x00\xff\xfe not json", b'{"v": 99, "metrics": {}}', b'{"v": 1, "type": "telemetry", "metrics": {"t": "hot"}}', b"[1, 2, 3]"]


@dataclass
class Device:
    sim: SimDevice
    interval_s: float = 10.0
    faults: dict[FaultKind, Fault] = field(default_factory=dict)
    last: dict[str, float | bool] | None = None
    flap_high: bool = False
    sent: int = 0
    rejected_garbage: int = 0
    firmware_version: str = "1.0.0"
    firmware_key: bytes | None = None
    """The tenant's firmware public key (PEM): when set, the device installs only signed firmware."""
    installs: int = 0

    @property
    def device_id(self) -> str:
        return self.sim.device_id

    def inject(self, fault: Fault, sim_now_s: float) -> None:
        if fault.until_s is not None:
            fault.until_s = sim_now_s + fault.until_s
        self.faults[fault.kind] = fault

    def clear(self, kind: FaultKind | None = None) -> None:
        if kind is None:
            self.faults.clear()
        else:
            self.faults.pop(kind, None)

    def _expire(self, sim_now_s: float) -> None:
        for kind, fault in list(self.faults.items()):
            if fault.until_s is not None and sim_now_s >= fault.until_s:
                del self.faults[kind]

    def next_payload(self, sim_now_s: float, wall_ms: int | None = None) -> bytes | None:
        """The bytes to publish on the telemetry topic now, or None when the device is silent."""
        self._expire(sim_now_s)
        if FaultKind.SILENT in self.faults:
            return None
        if (bad := self.faults.get(FaultKind.MALFORMED)) is not None:
            payload = GARBAGE[self.sent % len(GARBAGE)]
            bad.count -= 1
            if bad.count <= 0:
                del self.faults[FaultKind.MALFORMED]
            self.sent += 1
            return payload
        if FaultKind.STUCK in self.faults and self.last is not None:
            metrics = dict(self.last)
            self.sim.seq += 1
        else:
            metrics = self.sim.reading(sim_now_s)
        if (spike := self.faults.get(FaultKind.SPIKE)) is not None:
            name = spike.metric or next(iter(metrics))
            value = metrics.get(name)
            if isinstance(value, float | int) and not isinstance(value, bool):
                metrics[name] = round(float(value) * spike.factor, 3)
        if (flap := self.faults.get(FaultKind.FLAPPING)) is not None:
            name = flap.metric or next(iter(metrics))
            self.flap_high = not self.flap_high
            margin = max(abs(flap.threshold) * 0.05, 0.5)
            metrics[name] = round(flap.threshold + (margin if self.flap_high else -margin), 3)
        self.last = metrics
        ts = wall_ms if wall_ms is not None else int(time.time() * 1000)
        if (skew := self.faults.get(FaultKind.CLOCK_SKEW)) is not None:
            ts += int(skew.offset_s * 1000)
        self.sent += 1
        env = Envelope(self.device_id, ts, MessageType.TELEMETRY, metrics, seq=self.sim.seq)
        return env.to_json()

    def heartbeat(self, wall_ms: int | None = None) -> bytes:
        ts = wall_ms if wall_ms is not None else int(time.time() * 1000)
        return Envelope(self.device_id, ts, MessageType.HEARTBEAT).to_json()

    def apply_desired(self, desired: dict[str, object]) -> dict[str, object]:
        """Apply what the device understands of its twin's desired state; returns what it now reports."""
        interval = desired.get("interval_s")
        if isinstance(interval, int | float) and not isinstance(interval, bool) and 1 <= interval <= 86_400:
            self.interval_s = float(interval)
        return {"interval_s": self.interval_s, "profile": self.sim.profile.name}

    def on_delta(self, payload: bytes) -> dict[str, object] | None:
        """A message on ``pulse/{device}/twin/desired`` (docs/protocol.md "What a device receives"):
        ``{"version", "timestamp", "state": {delta}, "metadata"}``, or an empty payload when the
        delta was cleared. Applies the delta; returns what to report, or None when there is nothing."""
        if not payload:
            return None
        try:
            doc = json.loads(payload)
        except ValueError:
            return None
        state = doc.get("state") if isinstance(doc, dict) else None
        return self.apply_desired(state) if isinstance(state, dict) and state else None

    def handle_command(self, name: str, params: dict[str, object]) -> tuple[str, dict[str, object]]:
        """(status, result) for a command: reboot, ping, set_interval."""
        if name == "ping":
            return "succeeded", {"pong": True}
        if name == "set_interval":
            before = self.interval_s
            reported = self.apply_desired({"interval_s": params.get("interval_s")})
            ok = reported["interval_s"] != before or params.get("interval_s") == before
            return ("succeeded" if ok else "failed"), reported
        if name == "reboot":
            self.last = None
            return "succeeded", {"rebooted": True}
        return "failed", {"error": f"unknown command {name!r}"}

    def take_fault(self, kind: FaultKind) -> bool:
        """True (once) when ``kind`` is injected; a one-shot firmware fault clears as it fires."""
        return self.faults.pop(kind, None) is not None

    def install_firmware(self, m: firmware.Manifest, data: bytes) -> tuple[str, str | None]:
        """Check and "install" downloaded firmware: ("succeeded", None) with the new version in
        ``firmware_version``, or ("failed", reason). Hash, size and signature (with ``firmware_key``)
        are checked before anything is installed."""
        if self.take_fault(FaultKind.FW_CORRUPT) and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if m.model not in (self.sim.profile.name, "any"):
            return "failed", f"firmware is for model {m.model!r}, this device is {self.sim.profile.name!r}"
        try:
            key = None if self.firmware_key is None else firmware.public_key_from_pem(self.firmware_key)
            firmware.check(m, hashlib.sha256(data).hexdigest(), len(data), key)
        except FirmwareError as exc:
            return "failed", f"{exc.code}: {exc.message}"
        if self.take_fault(FaultKind.FW_INSTALL_FAIL):
            return "failed", "install failed: flash write error at block 7; still running " + self.firmware_version
        self.firmware_version = m.version
        self.installs += 1
        return "succeeded", None

    def to_json(self) -> dict[str, object]:
        return {
            "firmware": self.firmware_version,
            "device_id": self.device_id,
            "profile": self.sim.profile.name,
            "interval_s": self.interval_s,
            "sent": self.sent,
            "faults": sorted(self.faults),
            "last": json.loads(json.dumps(self.last)) if self.last else None,
        }
