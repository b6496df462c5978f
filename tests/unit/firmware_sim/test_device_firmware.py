"""A simulated device's firmware update: it installs only the manifest's bytes, says why it refuses,
and its firmware faults fire once."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pulse.firmware_sim.device import Device, Fault, FaultKind
from pulse.firmware_sim.profiles import make_fleet
from pulse.protocol import firmware

pytestmark = pytest.mark.unit

IMAGE = b"new firmware " * 500


def _device() -> Device:
    return Device(make_fleet(1, seed=3)[0])


def _manifest(dev: Device, **kw: object) -> firmware.Manifest:
    params = {"artifact": "a1", "version": "2.0.0", "model": dev.sim.profile.name, "sha256": hashlib.sha256(IMAGE).hexdigest(),
              "size": len(IMAGE), **kw}
    return firmware.manifest_from_params(params)


def test_the_right_image_is_installed_and_the_version_changes() -> None:
    dev = _device()
    assert dev.install_firmware(_manifest(dev), IMAGE) == ("succeeded", None)
    assert dev.firmware_version == "2.0.0" and dev.installs == 1


def test_a_bad_hash_is_refused_with_the_reason_and_the_version_stays() -> None:
    dev = _device()
    status, reason = dev.install_firmware(_manifest(dev), IMAGE[:-1] + b"X")
    assert status == "failed" and reason is not None and reason.startswith("firmware.hash_mismatch")
    assert dev.firmware_version == "1.0.0"


def test_a_corrupt_download_fault_fires_once() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.FW_CORRUPT), 0)
    assert dev.install_firmware(_manifest(dev), IMAGE)[0] == "failed"
    assert dev.install_firmware(_manifest(dev), IMAGE) == ("succeeded", None)


def test_a_failing_install_says_why_and_keeps_the_old_version() -> None:
    dev = _device()
    dev.inject(Fault(FaultKind.FW_INSTALL_FAIL), 0)
    status, reason = dev.install_firmware(_manifest(dev), IMAGE)
    assert status == "failed" and "install failed" in (reason or "") and dev.firmware_version == "1.0.0"


def test_firmware_for_another_model_is_refused() -> None:
    dev = _device()
    status, reason = dev.install_firmware(_manifest(dev, model="other-model"), IMAGE)
    assert status == "failed" and "model" in (reason or "")


def test_a_device_with_the_tenant_key_installs_only_signed_firmware() -> None:
    key = Ed25519PrivateKey.generate()
    dev = _device()
    dev.firmware_key = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    unsigned = _manifest(dev)
    status, reason = dev.install_firmware(unsigned, IMAGE)
    assert status == "failed" and (reason or "").startswith("firmware.bad_signature")
    signed = _manifest(dev, signature=firmware.sign(unsigned, key))
    assert dev.install_firmware(signed, IMAGE) == ("succeeded", None)
