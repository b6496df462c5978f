"""Firmware: the manifest that travels with an update, and the checks every tier makes on it
(docs/protocol.md, "Firmware").

An artifact is uploaded to the cloud with its version, the device model it is for, its SHA-256 and
size, and optionally a signature made with the tenant's firmware key (Ed25519 over
``signing_message``). A firmware job sends each device a ``firmware.update`` command whose params
are the manifest (``Manifest.to_params``). A gateway that publishes such a command adds ``url``: its
own local, per-device, expiring download URL (``local_token``); it fetches the artifact from the
cloud once, with ranged, resumable requests, and checks the hash before it serves a byte. The
device downloads from ``url``, checks size, SHA-256 and (when it holds the tenant's public key) the
signature, "installs", reports ``reported.firmware = {"version": ...}`` on its twin and answers
the command ``succeeded`` — or ``failed`` with the reason (``check`` gives it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from pulse.protocol.envelope import JsonObject, JsonValue
from pulse.protocol.errors import Code, FirmwareError

COMMAND_NAME = "firmware.update"
SYNC_PATH = "/sync/v1/firmware/{artifact}"
"""The gateway's ranged download of an artifact (mutual TLS, its tenant's artifacts only)."""
DIRECT_PATH = "/ingest/v1/firmware/{artifact}"
"""A direct device's download (its device token; Range supported); its command's ``url`` is this path."""
LOCAL_PATH = "/firmware/{artifact}"
"""The gateway's local download for its devices: ``?device=&expires=&token=``."""

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,99}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_RANGE_RE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})")


def _bad(message: str, **context: object) -> FirmwareError:
    return FirmwareError(Code.FIRMWARE_INVALID, message, **context)


@dataclass(frozen=True, slots=True)
class Manifest:
    artifact: str
    version: str
    model: str
    sha256: str
    size: int
    signature: str | None = None
    """Base64 Ed25519 signature of ``signing_message`` by the tenant's firmware key, or None."""

    def to_params(self, url: str | None = None) -> JsonObject:
        doc: dict[str, JsonValue] = {
            "artifact": self.artifact,
            "version": self.version,
            "model": self.model,
            "sha256": self.sha256,
            "size": self.size,
        }
        if self.signature is not None:
            doc["signature"] = self.signature
        if url is not None:
            doc["url"] = url
        return doc


def check_version(version: object) -> str:
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise _bad("version is 1-64 letters, digits, '_', '.', '+', '-' starting with a letter or digit")
    return version


def check_model(model: object) -> str:
    if not isinstance(model, str) or not _MODEL_RE.fullmatch(model):
        raise _bad("model is 1-100 letters, digits, '_', '.', ':', '/', '-'")
    return model


def check_sha256(value: object) -> str:
    if not isinstance(value, str) or not _SHA_RE.fullmatch(value.lower()):
        raise _bad("sha256 is 64 hexadecimal digits")
    return value.lower()


def manifest_from_params(params: Mapping[str, object]) -> Manifest:
    """Read a ``firmware.update`` command's params (what a device or gateway received)."""
    artifact, size, signature = params.get("artifact"), params.get("size"), params.get("signature")
    if not isinstance(artifact, str) or not _ID_RE.fullmatch(artifact):
        raise _bad("artifact is the artifact's id")
    if type(size) is not int or size < 0:
        raise _bad("size is the artifact's length in bytes")
    if signature is not None and not isinstance(signature, str):
        raise _bad("signature is base64 text")
    return Manifest(artifact, check_version(params.get("version")), check_model(params.get("model")),
                    check_sha256(params.get("sha256")), size, signature)


def signing_message(m: Manifest) -> bytes:
    """What the tenant's key signs: model, version, SHA-256 and size, one per line, after a tag."""
    return f"pulse-firmware-v1\n{m.model}\n{m.version}\n{m.sha256}\n{m.size}\n".encode()


def sign(m: Manifest, private_key: Ed25519PrivateKey) -> str:
    return base64.b64encode(private_key.sign(signing_message(m))).decode()


def public_key_from_pem(pem: bytes) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise _bad(f"the firmware key is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise _bad("the firmware key is an Ed25519 public key")
    return key


def signature_valid(m: Manifest, key: Ed25519PublicKey) -> bool:
    if m.signature is None:
        return False
    try:
        key.verify(base64.b64decode(m.signature, validate=True), signing_message(m))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def check(m: Manifest, data_sha256: str, size: int, key: Ed25519PublicKey | None = None) -> None:
    """Refuse bytes that are not the manifest's artifact: size, then SHA-256, then (with ``key``)
    the signature. The error's message is the reason a device reports."""
    if size != m.size:
        raise FirmwareError(Code.FIRMWARE_HASH_MISMATCH, f"got {size} bytes, the manifest says {m.size}", artifact=m.artifact)
    if not hmac.compare_digest(data_sha256.lower(), m.sha256):
        raise FirmwareError(Code.FIRMWARE_HASH_MISMATCH, f"SHA-256 {data_sha256[:16]}… is not the manifest's {m.sha256[:16]}…",
                            artifact=m.artifact)
    if key is not None and not signature_valid(m, key):
        raise FirmwareError(Code.FIRMWARE_BAD_SIGNATURE, "the signature does not verify with the tenant's firmware key",
                            artifact=m.artifact)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=start-[end]`` -> (start, end) inclusive, clamped to the artifact; None for no
    header. One range only; ``FIRMWARE_BAD_RANGE`` for anything else or a start past the end."""
    if header is None:
        return None
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        raise FirmwareError(Code.FIRMWARE_BAD_RANGE, "Range is one 'bytes=start-[end]'", range=header[:60])
    start = int(match[1])
    end = int(match[2]) if match[2] else size - 1
    if start >= size or end < start:
        raise FirmwareError(Code.FIRMWARE_BAD_RANGE, f"the range starts past the artifact's {size} bytes", range=header[:60])
    return start, min(end, size - 1)


def local_token(key: bytes, device_id: str, artifact: str, expires_ms: int) -> str:
    """HMAC-SHA256 that makes a gateway's local URL good for one device, one artifact, until ``expires_ms``."""
    return hmac.new(key, f"{device_id}\n{artifact}\n{expires_ms}".encode(), hashlib.sha256).hexdigest()


def local_token_valid(key: bytes, device_id: str, artifact: str, expires_ms: int, token: str, now_ms: int) -> bool:
    return now_ms < expires_ms and hmac.compare_digest(local_token(key, device_id, artifact, expires_ms), token)
