"""Shared by the notify integration tests: the fixed clock and the capture receiver's record."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from pulse.cloud.ca import CertificateAuthority

NOW = dt.datetime(2026, 11, 25, 8, 0, 0, tzinfo=dt.UTC)


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Receiver:
    """An HTTP server that records every request and answers from a script (status, headers, body) per path."""

    base: str
    requests: list[Captured] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)

    def answer(self, path: str, *answers: tuple[int, dict[str, str], bytes]) -> None:
        self.script.setdefault(path, []).extend(answers)

    def url(self, path: str) -> str:
        return self.base + path


@dataclass(frozen=True)
class LocalCA:
    ca: CertificateAuthority
    dir: Path

    @property
    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.dir / "ca.crt"))

    def server_files(self, directory: Path, names: list[str]) -> tuple[Path, Path]:
        cert, key = self.ca.issue_server_cert(names)
        (directory / "server.crt").write_bytes(cert)
        (directory / "server.key").write_bytes(key)
        return directory / "server.crt", directory / "server.key"
