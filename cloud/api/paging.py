"""The one paging dialect of the API: every list answers ``{"items": [...], "next_cursor": str | null}``
(``Page[T]``) and takes ``?limit=&cursor=``; the cursor is in the body, never in a header.

A cursor is the keyset of the last row of the page (``(opened_at, id)``, ``(tenant slug, device
id)``, ``(twin history id,)``, ...): url-safe base64 of a JSON array, opaque to clients, stable under
inserts (a new row never shifts a page) and cheap on an index over the same keys. A list fetches
``limit + 1`` rows; ``page`` cuts them and makes the next cursor. A cursor that does not decode to
the keys the list expects answers 422 ``api.invalid`` instead of an empty page."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from pulse.cloud.errors import InvalidError
from pulse.protocol.errors import Code

T = TypeVar("T")
R = TypeVar("R")
Key = datetime | int | str

CursorQuery = Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


def encode(*keys: Key) -> str:
    """The cursor after a row whose sort keys are ``keys`` (datetimes must be aware)."""
    values = [{"t": k.isoformat()} if isinstance(k, datetime) else k for k in keys]
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str | None, *kinds: type[Key]) -> tuple[Key, ...] | None:
    """The sort keys in ``cursor`` (None for the first page), checked against ``kinds``."""
    if not cursor:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(kinds):
            raise ValueError("wrong number of keys")
        return tuple(_key(v, kind) for v, kind in zip(values, kinds, strict=True))
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidError(Code.API_INVALID, "cursor is not one this API handed out; start again without it") from exc


def _key(value: object, kind: type[Key]) -> Key:
    if kind is datetime:
        if not isinstance(value, dict) or not isinstance(value.get("t"), str):
            raise ValueError("not a time")
        when = datetime.fromisoformat(value["t"])
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError("not an integer")
    if kind is str and not isinstance(value, str):
        raise ValueError("not a string")
    return value  # type: ignore[return-value]


def page(rows: Sequence[R], limit: int, out: Callable[[R], T], key: Callable[[R], tuple[Key, ...]]) -> Page[T]:
    """A page from ``limit + 1`` fetched rows: the first ``limit`` as items, and the cursor after the
    last of them when a row follows."""
    items = [out(r) for r in rows[:limit]]
    return Page(items=items, next_cursor=encode(*key(rows[limit - 1])) if len(rows) > limit else None)


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
