"""Secret hashing: generated secrets (sha256) and chosen ones (scrypt) verify; nothing else does.
The lookup the broker asks at CONNECT reads what the registry stored."""

from __future__ import annotations

import threading

import pytest

from pulse.edge.auth import Authenticator, DeviceRegistry, DeviceSecrets, hash_secret, new_secret, verify_secret

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("generated", [True, False])
def test_secret_verifies_and_others_do_not(generated):
    secret = new_secret() if generated else "correct horse"
    stored = hash_secret(secret, generated=generated)
    assert stored.startswith("sha256$" if generated else "scrypt$")
    assert secret not in stored
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret("", stored)


def test_same_secret_hashes_differently_each_time():
    assert hash_secret("s3cret", generated=True) != hash_secret("s3cret", generated=True)


@pytest.mark.parametrize("stored", ["", "plain", "sha256$", "sha256$!!$!!", "scrypt$x$8$1$AA$AA", "md5$a$b"])
def test_malformed_stored_hash_never_verifies(stored):
    assert not verify_secret("anything", stored)


def test_generated_secrets_are_long_and_distinct():
    a, b = new_secret(), new_secret()
    assert a != b and len(a) >= 43


async def test_device_secrets_answer_the_stored_hash_and_leave_no_thread(tmp_path):
    """What the broker asks at CONNECT: the hash the registry stored, None for an unknown device,
    and a device added while the lookup is open is found at once (same file, no cache)."""
    path = tmp_path / "gateway.db"
    registry = DeviceRegistry(path)
    secrets = DeviceSecrets(path)
    await secrets.open()
    try:
        secret = registry.add("dev-1")
        stored = await secrets("dev-1")
        assert stored is not None and verify_secret(secret, stored)
        assert await secrets("dev-2") is None
        registry.add("dev-2", note="added while running")
        assert await secrets("dev-2") is not None
        assert await Authenticator(secrets, allow_anonymous=False).check("dev-1", secret)
        assert not await Authenticator(secrets, allow_anonymous=False).check("dev-1", secret + "x")
    finally:
        await secrets.close()
        registry.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("device-secrets")]
