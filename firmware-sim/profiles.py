"""Device profiles: what a simulated device measures and how its readings move.

Signals are built like real ones: a daily cycle, slow drift, sensor noise, and quantisation to the
sensor's resolution (which is what makes real telemetry full of repeated values). Everything is
driven by a seeded ``random.Random`` and the time passed in, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

DAY_S = 86_400.0


@dataclass
class Signal:
    """A quantised, noisy, drifting daily curve."""

    base: float
    amplitude: float
    noise: float
    resolution: float
    drift_per_day: float = 0.0
    phase: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    decimals: int = 1

    def at(self, t_s: float, rng: random.Random) -> float:
        v = (
            self.base
            + self.amplitude * math.sin(2 * math.pi * (t_s / DAY_S) + self.phase)
            + self.drift_per_day * (t_s / DAY_S)
            + rng.gauss(0.0, self.noise)
        )
        v = min(self.high, max(self.low, v))
        return round(round(v / self.resolution) * self.resolution, self.decimals)


@dataclass
class Profile:
    name: str
    make: Callable[[random.Random], dict[str, Signal]]
    flags: dict[str, float] = field(default_factory=dict)  # boolean metric -> probability of True


def _environment(rng: random.Random) -> dict[str, Signal]:
    return {
        "temperature_c": Signal(rng.uniform(18, 24), rng.uniform(1, 4), 0.05, 0.1, rng.uniform(-0.1, 0.1), rng.uniform(0, 6.28)),
        "humidity_pct": Signal(rng.uniform(35, 55), rng.uniform(3, 8), 0.3, 1.0, 0.0, rng.uniform(0, 6.28), 0, 100, 0),
        "pressure_hpa": Signal(rng.uniform(1005, 1020), 2.0, 0.05, 0.1, rng.uniform(-1, 1), rng.uniform(0, 6.28), 900, 1100),
    }


def _ups(rng: random.Random) -> dict[str, Signal]:
    return {
        "battery_pct": Signal(100.0, 0.0, 0.2, 1.0, 0.0, 0.0, 0, 100, 0),
        "load_pct": Signal(rng.uniform(20, 60), rng.uniform(5, 15), 1.0, 0.5, 0.0, rng.uniform(0, 6.28), 0, 100),
        "input_v": Signal(230.0, 2.0, 0.6, 0.1, 0.0, rng.uniform(0, 6.28)),
        "runtime_min": Signal(rng.uniform(25, 45), 2.0, 0.2, 1.0, 0.0, 0.0, 0, 240, 0),
    }


def _power_meter(rng: random.Random) -> dict[str, Signal]:
    return {
        "power_w": Signal(rng.uniform(800, 3000), rng.uniform(200, 800), 15.0, 0.1, 0.0, rng.uniform(0, 6.28), 0),
        "voltage_v": Signal(230.0, 2.0, 0.5, 0.1, 0.0, rng.uniform(0, 6.28)),
        "current_a": Signal(rng.uniform(3, 12), 1.0, 0.05, 0.01, 0.0, rng.uniform(0, 6.28), 0, decimals=2),
        "pf": Signal(0.95, 0.02, 0.005, 0.01, 0.0, 0.0, 0, 1, 2),
        "energy_kwh": Signal(rng.uniform(1000, 50000), 0.0, 0.0, 0.01, 30.0, 0.0, decimals=2),
    }


def _door(rng: random.Random) -> dict[str, Signal]:
    return {"battery_v": Signal(3.0, 0.0, 0.005, 0.01, -0.001, 0.0, 2.0, 3.3, 2)}


PROFILES: dict[str, Profile] = {
    "environment": Profile("environment", _environment),
    "ups": Profile("ups", _ups, {"on_battery": 0.01}),
    "power_meter": Profile("power_meter", _power_meter),
    "door": Profile("door", _door, {"open": 0.05, "tamper": 0.001}),
}


@dataclass
class SimDevice:
    device_id: str
    profile: Profile
    signals: dict[str, Signal]
    rng: random.Random
    seq: int = 0

    def reading(self, t_s: float) -> dict[str, float | bool]:
        metrics: dict[str, float | bool] = {name: sig.at(t_s, self.rng) for name, sig in self.signals.items()}
        for flag, p in self.profile.flags.items():
            metrics[flag] = self.rng.random() < p
        self.seq += 1
        return metrics


def make_fleet(count: int, seed: int = 7, prefix: str = "dev") -> list[SimDevice]:
    """``count`` devices cycling through the profiles (environment sensors most common)."""
    rng = random.Random(seed)
    order = ["environment", "environment", "ups", "power_meter", "door"]
    fleet = []
    for i in range(count):
        profile = PROFILES[order[i % len(order)]]
        dev_rng = random.Random(rng.getrandbits(64))
        fleet.append(SimDevice(f"{prefix}-{i:04d}", profile, profile.make(dev_rng), dev_rng))
    return fleet
