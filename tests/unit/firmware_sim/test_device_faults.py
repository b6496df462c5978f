"""Simulated devices send valid envelopes, and each injected fault changes what they send as documented."""

from __future__ import annotations

import json

import pytest

from pulse.firmware_sim.device import Device, Fault, FaultKind
from pulse.firmware_sim.profiles import make_fleet
from pulse.protocol import envelope
from pulse.protocol.errors import EnvelopeError

pytestmark = pytest.mark.unit
NOW_MS = 1_764_000_000_000


def _device(i: int = 0) -> Device:
    return Device(make_fleet(5, seed=3)[i])


def _parse(payload: bytes | None) -> envelope.Envelope:
    assert payload is not None
    return envelope.parse(payload, now_ms=NOW_MS, expected_type=envelope.MessageType.TELEMETRY)


def test_healthy_device_sends_valid_telemetry_with_increasing_sequence() -> None:
    dev = _device()
    envs = [_parse(dev.next_payload(t * 10.0, NOW_MS + t)) for t in range(50)]
    assert all(3 <= len(e.metrics) <= 6 for e in envs)
    assert [e.seq for e in envs] == list(range(1, 51))
    assert len({json.dumps(e.metrics, sort_keys=True) for e in envs}) > 1


def test_silent_device_sends_nothing_until_the_fault_expires() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.SILENT, until_s=30.0), sim_now_s=0.0)
    assert dev.next_payload(10.0, NOW_MS) is None
    assert dev.next_payload(29.0, NOW_MS) is None
    assert _parse(dev.next_payload(31.0, NOW_MS)).metrics


def test_stuck_device_repeats_its_last_reading() -> None:
    dev = _device()
    first = _parse(dev.next_payload(0.0, NOW_MS))
    dev.inject(Fault(FaultKind.STUCK), 0.0)
    later = [_parse(dev.next_payload(t * 10.0, NOW_MS)) for t in range(1, 6)]
    assert all(e.metrics == first.metrics for e in later)
    assert [e.seq for e in later] == [2, 3, 4, 5, 6]


def test_spike_multiplies_the_chosen_metric() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.STUCK), 0.0)
    base = _parse(dev.next_payload(0.0, NOW_MS)).metrics["temperature_c"]
    dev.inject(Fault(FaultKind.SPIKE, metric="temperature_c", factor=5.0), 0.0)
    spiked = _parse(dev.next_payload(10.0, NOW_MS)).metrics["temperature_c"]
    assert spiked == pytest.approx(float(base) * 5.0, rel=1e-3)


def test_flapping_alternates_around_the_threshold() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.FLAPPING, metric="temperature_c", threshold=30.0), 0.0)
    values = [float(_parse(dev.next_payload(t * 10.0, NOW_MS)).metrics["temperature_c"]) for t in range(6)]
    assert [v > 30.0 for v in values] == [True, False, True, False, True, False]


def test_clock_skew_shifts_timestamps() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.CLOCK_SKEW, offset_s=-3600), 0.0)
    assert _parse(dev.next_payload(0.0, NOW_MS)).ts_ms == NOW_MS - 3_600_000


def test_malformed_payloads_are_refused_by_the_envelope_parser() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.MALFORMED, count=4), 0.0)
    codes = set()
    for _ in range(4):
        with pytest.raises(EnvelopeError) as err:
            _parse(dev.next_payload(0.0, NOW_MS))
        codes.add(err.value.code)
    assert len(codes) >= 3
    assert _parse(dev.next_payload(0.0, NOW_MS)).metrics  # back to normal after `count`


@pytest.mark.parametrize(
    ("spec", "device", "kind", "attrs"),
    [
        ("dev-0003:spike:metric=power_w,factor=5", "dev-0003", FaultKind.SPIKE, {"metric": "power_w", "factor": 5.0}),
        ("dev-0001:silent:for_s=60", "dev-0001", FaultKind.SILENT, {"until_s": 60.0}),
        ("d:malformed:count=3", "d", FaultKind.MALFORMED, {"count": 3}),
    ],
)
def test_fault_flags_parse(spec: str, device: str, kind: FaultKind, attrs: dict[str, object]) -> None:
    name, fault = Fault.parse(spec)
    assert (name, fault.kind) == (device, kind)
    for key, value in attrs.items():
        assert getattr(fault, key) == value


@pytest.mark.parametrize("spec", ["dev:explode", ":spike", "dev:spike:colour=red"])
def test_bad_fault_flags_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        Fault.parse(spec)


def test_commands_and_desired_state() -> None:
    dev = _device()
    assert dev.handle_command("ping", {}) == ("succeeded", {"pong": True})
    status, result = dev.handle_command("set_interval", {"interval_s": 30})
    assert status == "succeeded" and dev.interval_s == 30.0 and result["interval_s"] == 30.0
    assert dev.apply_desired({"interval_s": 0})["interval_s"] == 30.0  # out of range: ignored
    assert dev.handle_command("self_destruct", {})[0] == "failed"


def test_device_applies_the_delta_message_and_reports_what_it_runs() -> None:
    dev = Device(make_fleet(1, seed=3)[0], interval_s=10.0)
    message = json.dumps({"version": 4, "timestamp": 1, "state": {"interval_s": 5}, "metadata": {"interval_s": {"timestamp": 1}}})
    reported = dev.on_delta(message.encode())
    assert reported is not None and reported["interval_s"] == 5.0 and dev.interval_s == 5.0
    assert dev.on_delta(b"") is None  # the gateway cleared the delta: nothing to do
    assert dev.on_delta(b"not json") is None
