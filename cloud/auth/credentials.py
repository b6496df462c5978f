"""Random credentials and their stored forms (pure).

Device tokens and refresh tokens carry 256 random bits, so a plain SHA-256 is the right stored
form (a slow password hash would only make the per-request look-up slow, not the token safer).

    device token:   pdt_<credential id, 32 hex>_<secret, 43 url-safe chars>
    refresh token:  prt_<43 url-safe chars>
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

_DEVICE_TOKEN_RE = re.compile(r"pdt_([0-9a-f]{32})_([A-Za-z0-9_-]{43})")


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DeviceToken:
    credential_id: uuid.UUID
    secret: str

    def __str__(self) -> str:
        return f"pdt_{self.credential_id.hex}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return sha256_hex(self.secret)


def new_device_token(credential_id: uuid.UUID) -> DeviceToken:
    return DeviceToken(credential_id, secrets.token_urlsafe(32))


def parse_device_token(token: str) -> DeviceToken | None:
    m = _DEVICE_TOKEN_RE.fullmatch(token)
    if m is None:
        return None
    return DeviceToken(uuid.UUID(hex=m.group(1)), m.group(2))


def new_refresh_token() -> str:
    return "prt_" + secrets.token_urlsafe(32)


def secrets_equal(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())
