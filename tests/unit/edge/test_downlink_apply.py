"""Applying downlink items to the gateway's tables: credentials, kept items, the cursor, refusals."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from pulse.edge.auth import hash_secret, pdt_hash, verify_secret
from pulse.edge.downlink import apply_items, read_cursor
from pulse.edge.schema import SCHEMA

pytestmark = pytest.mark.unit

CRED = "0123456789abcdef0123456789abcdef"
SECRET = "s" * 43


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.executescript(SCHEMA)
    yield c
    c.close()


def cred_item(seq, device, action, cred=CRED, secret=SECRET):
    digest = hashlib.sha256(secret.encode()).hexdigest() if action == "set" else None
    return {"seq": seq, "kind": "credential",
            "payload": {"device_id": device, "credential_id": cred, "action": action, "secret_sha256": digest}}


def stored(conn, device):
    row = conn.execute("SELECT secret_hash FROM devices WHERE device_id = ?", (device,)).fetchone()
    return row[0] if row else None


def test_pdt_hash_verifies_only_the_token_with_that_credential_and_secret():
    s = pdt_hash(CRED, hashlib.sha256(SECRET.encode()).hexdigest())
    assert verify_secret(f"pdt_{CRED}_{SECRET}", s)
    assert not verify_secret(f"pdt_{'f' * 32}_{SECRET}", s)  # another credential id
    assert not verify_secret(f"pdt_{CRED}_{SECRET}x", s)
    assert not verify_secret(f"pdt_{CRED}_", s)
    assert not verify_secret(SECRET, s)


def test_set_then_revoke_a_credential_and_the_cursor_moves(conn):
    cursor, revoked = apply_items(conn, [cred_item(1, "dev-1", "set")], 1, 1000)
    assert (cursor, revoked, read_cursor(conn)) == (1, [], 1)
    assert verify_secret(f"pdt_{CRED}_{SECRET}", stored(conn, "dev-1"))
    cursor, revoked = apply_items(conn, [cred_item(2, "dev-1", "revoke")], 2, 2000)
    assert (cursor, revoked) == (2, ["dev-1"])
    assert stored(conn, "dev-1") is None


def test_revoking_another_credential_keeps_the_current_one(conn):
    apply_items(conn, [cred_item(1, "dev-1", "set")], 1, 1000)
    apply_items(conn, [cred_item(2, "dev-1", "revoke", cred="f" * 32)], 2, 2000)
    assert stored(conn, "dev-1") is not None
    status = conn.execute("SELECT status FROM downlink WHERE seq = 2").fetchone()[0]
    assert status == "applied (credential was not stored)"


def test_a_cloud_credential_replaces_a_local_secret(conn):
    conn.execute("INSERT INTO devices (device_id, secret_hash, created_ms) VALUES ('dev-1', ?, 0)", (hash_secret("x", generated=True),))
    apply_items(conn, [cred_item(1, "dev-1", "set")], 1, 1000)
    assert stored(conn, "dev-1").startswith("pdt-sha256$")


def test_items_at_or_below_the_cursor_are_not_applied_again(conn):
    apply_items(conn, [cred_item(1, "dev-1", "set"), cred_item(2, "dev-1", "revoke")], 2, 1000)
    cursor, revoked = apply_items(conn, [cred_item(1, "dev-1", "set")], 1, 2000)  # a late replay
    assert (cursor, revoked, stored(conn, "dev-1")) == (2, [], None)


def test_unreadable_items_are_kept_as_refused_and_do_not_block_the_rest(conn):
    items = [
        {"seq": 1, "kind": "teleport", "payload": {}},
        {"seq": 2, "kind": "credential", "payload": {"device_id": "dev-1", "credential_id": "short", "action": "set"}},
        {"seq": 3, "kind": "twin_desired", "payload": {"device_id": "dev-1", "desired": {"led": True}}},
        "garbage",
    ]
    cursor, _ = apply_items(conn, items, 3, 1000)
    assert cursor == 3
    rows = conn.execute("SELECT seq, kind, status FROM downlink ORDER BY seq").fetchall()
    assert [(s, k) for s, k, _ in rows] == [(1, "teleport"), (2, "credential"), (3, "twin_desired")]
    assert rows[0][2].startswith("refused") and rows[1][2].startswith("refused: credential change") and rows[2][2] == "pending"
