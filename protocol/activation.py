"""Activation codes: short, human-typable codes an installer types on site to claim a device.

Ten characters from an alphabet without look-alikes (no 0/O, 1/I/L, no U), shown as two groups of
five (``K7XQ2-M9HTR``): 30**10, about 2**49 codes, guessed against a per-address rate limit.
Typing is forgiving: case, spaces and dashes do not matter. Pure: the caller supplies randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from pulse.protocol.errors import Code, ProtocolError

ALPHABET = "23456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 10
ACTIVATE_PATH = "/ingest/v1/activate"
"""Direct devices: ``POST {"code", "device_id", "name"?}`` -> 201 ``{"id", "device_id", "token"}`` (token shown once)."""
CLAIM_PATH = "/sync/v1/devices/claim"
"""Gateways (mutual TLS): the same body and answer; the device is served by the claiming gateway."""


def generate(choice: Callable[[str], str]) -> str:
    """A new code in display form; ``choice`` is ``secrets.choice`` outside tests."""
    raw = "".join(choice(ALPHABET) for _ in range(LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def normalize(typed: str) -> str:
    """The canonical form of what someone typed, or ``activation.code_invalid`` (same as an unknown code)."""
    code = "".join(ch for ch in typed.upper() if ch not in " -\t")
    if len(code) != LENGTH or any(ch not in ALPHABET for ch in code):
        raise ProtocolError(Code.ACTIVATION_CODE_INVALID, "an activation code is 10 letters and digits, like K7XQ2-M9HTR")
    return code


def code_hash(typed: str) -> str:
    """What the cloud stores and looks up: SHA-256 of the canonical form (codes expire within days
    and attempts are rate-limited, so a fast hash suffices)."""
    return hashlib.sha256(normalize(typed).encode()).hexdigest()
