"""Keyset cursors for lists ordered newest first by (time, id): opaque to clients, stable under
inserts (a new row never shifts a page), and cheap on an index over (tenant_id, time DESC).

A cursor is url-safe base64 of ``"<iso time>|<id>"``; a cursor that does not decode answers
422 ``api.invalid`` instead of an empty page."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from pulse.cloud.errors import InvalidError
from pulse.protocol.errors import Code


class Where:
    """The WHERE clause of a list with optional filters: conditions joined by AND, their values as
    numbered arguments (``$1``, ``$2``, ...), never spliced into the SQL text."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[object] = []

    def arg(self, value: object) -> str:
        """The placeholder for ``value``."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str) -> None:
        self.conditions.append(condition)

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) or "true"


def like(text: str) -> str:
    """An ILIKE pattern matching ``text`` anywhere, its own % _ and \\ taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def encode(at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.rpartition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, int(row_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidError(Code.API_INVALID, "cursor is not one this API handed out; start again without it") from exc
