"""The release version, read by packaging (pyproject's dynamic version), the CLI, the gateway's
status page and its sync client's User-Agent."""

from __future__ import annotations

__version__ = "0.1.0"
