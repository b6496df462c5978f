"""Firmware manifest, checks, ranges and local URL tokens: tables of inputs and expected outputs."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pulse.protocol import firmware
from pulse.protocol.errors import Code, FirmwareError

pytestmark = pytest.mark.unit

DATA = b"firmware image " * 100
SHA = hashlib.sha256(DATA).hexdigest()


def _manifest(**kw: object) -> firmware.Manifest:
    params = {"artifact": "a1", "version": "2.1.0", "model": "ups-x", "sha256": SHA, "size": len(DATA), **kw}
    return firmware.manifest_from_params(params)


def test_params_round_trip_with_the_gateway_url() -> None:
    m = _manifest()
    params = m.to_params(url="http://gw/firmware/a1?x")
    assert params["url"] == "http://gw/firmware/a1?x"
    assert firmware.manifest_from_params(params) == m


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"sha256": "abc"}, "sha256"),
        ({"version": ""}, "version"),
        ({"model": "bad model"}, "model"),
        ({"size": -1}, "size"),
        ({"artifact": "../x"}, "artifact"),
    ],
)
def test_a_malformed_manifest_is_refused(change: dict, fragment: str) -> None:
    with pytest.raises(FirmwareError) as err:
        _manifest(**change)
    assert err.value.code is Code.FIRMWARE_INVALID and fragment in err.value.message


def test_the_right_bytes_pass_and_wrong_ones_are_refused_with_a_reason() -> None:
    m = _manifest()
    firmware.check(m, SHA, len(DATA))
    with pytest.raises(FirmwareError) as err:
        firmware.check(m, hashlib.sha256(b"evil").hexdigest(), len(DATA))
    assert err.value.code is Code.FIRMWARE_HASH_MISMATCH
    with pytest.raises(FirmwareError) as err:
        firmware.check(m, SHA, len(DATA) - 1)
    assert "bytes" in err.value.message


def test_a_signed_manifest_verifies_with_the_tenant_key_and_a_forged_one_does_not() -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    public = firmware.public_key_from_pem(pem)
    unsigned = _manifest()
    signed = _manifest(signature=firmware.sign(unsigned, key))
    firmware.check(signed, SHA, len(DATA), public)
    other = _manifest(signature=firmware.sign(unsigned, Ed25519PrivateKey.generate()))
    for bad in (unsigned, other, _manifest(signature="not base64!"), _manifest(signature=signed.signature, version="9.9")):
        with pytest.raises(FirmwareError) as err:
            firmware.check(bad, SHA, len(DATA), public)
        assert err.value.code is Code.FIRMWARE_BAD_SIGNATURE


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-", 10, (0, 9)),
        ("bytes=4-", 10, (4, 9)),
        ("bytes=2-5", 10, (2, 5)),
        ("bytes=2-500", 10, (2, 9)),
    ],
)
def test_ranges_inside_the_artifact(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert firmware.parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=5-2", "bytes=-5", "bytes=0-1,3-4", "items=0-1"])
def test_ranges_outside_or_unsupported_are_refused(header: str) -> None:
    with pytest.raises(FirmwareError) as err:
        firmware.parse_range(header, 10)
    assert err.value.code is Code.FIRMWARE_BAD_RANGE


def test_a_local_token_is_good_for_one_device_one_artifact_until_it_expires() -> None:
    key = b"k" * 32
    token = firmware.local_token(key, "dev-1", "a1", 5000)
    assert firmware.local_token_valid(key, "dev-1", "a1", 5000, token, 4999)
    assert not firmware.local_token_valid(key, "dev-1", "a1", 5000, token, 5000)
    assert not firmware.local_token_valid(key, "dev-2", "a1", 5000, token, 0)
    assert not firmware.local_token_valid(key, "dev-1", "a2", 5000, token, 0)
    assert not firmware.local_token_valid(key, "dev-1", "a1", 6000, token, 0)
