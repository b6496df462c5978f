"""Secret hashing: generated secrets (sha256) and chosen ones (scrypt) verify; nothing else does."""

from __future__ import annotations

import pytest

from pulse.edge.auth import hash_secret, new_secret, verify_secret

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
