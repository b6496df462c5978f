"""The gateway's enrollment as kept on disk (``enrollment.json`` beside its certificate): read at
every start, written once by ``pulse gateway enroll``.

Its own small module so that ``pulse gateway run`` can tell whether it is enrolled without loading
the uplink's HTTP and TLS libraries (httpx, cryptography: ~17 MB of a gateway's memory); they are
imported only when it is (edge/app.py). ``pulse.edge.link`` re-exports these names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pulse.edge.errors import SyncError
from pulse.edge.identity import IdentityFiles
from pulse.protocol.errors import Code
from pulse.protocol.topics import valid_device_id

STATE_FILE = "enrollment.json"


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What the cloud told the gateway when it enrolled (kept next to the certificate)."""

    cloud_url: str
    sync_url: str
    tenant_id: str
    gateway_id: str
    gateway_name: str
    enrolled_ms: int


def load_enrollment(state_dir: Path) -> Enrollment | None:
    """The stored enrollment, or None when the gateway has not enrolled (or its files are incomplete)."""
    path = state_dir / STATE_FILE
    if not path.exists() or not IdentityFiles(state_dir).enrolled():
        return None
    try:
        doc = json.loads(path.read_text())
        enrollment = Enrollment(**{k: doc[k] for k in Enrollment.__dataclass_fields__})
        if not valid_device_id(enrollment.gateway_id) or not enrollment.sync_url.startswith("https://"):
            raise ValueError("gateway_id or sync_url is not valid")
        return enrollment
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncError(Code.GATEWAY_NOT_ENROLLED, f"{path} is damaged ({exc}); enroll again", path=str(path)) from exc


def save_enrollment(state_dir: Path, enrollment: Enrollment) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(enrollment), indent=2) + "\n")
    os.replace(tmp, path)
