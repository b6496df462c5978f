"""PostgreSQL's refusals of a request's *data*, translated into coded API errors in one place.

Every API transaction (``Database.tenant``, ``.operator``, ``.identity``) runs inside
``refusals()``: whatever a route did not catch itself becomes a 4xx instead of a 500.

    asyncpg.DataError (SQLSTATE class 22, and asyncpg's own "invalid input for query argument")
        a NUL character (22021, 22P05)              -> 422 api.invalid
        a number out of range (22003, int64)        -> 422 api.invalid
        any other value PostgreSQL cannot take      -> 422 api.invalid
    asyncpg.NotNullViolationError (23502)           -> 422 api.invalid, naming the column
    asyncpg.CheckViolationError (23514)             -> 422 api.invalid, naming the constraint
    asyncpg.ForeignKeyViolationError (23503)        -> 422 api.invalid
    asyncpg.UniqueViolationError (23505)            -> 409 api.conflict

Routes that can say more (``a site named 'x' exists``) still catch the error themselves first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from pulse.cloud.errors import CloudError, ConflictError, InvalidError
from pulse.protocol.errors import Code

_NUL = frozenset({"22021", "22P05"})  # character_not_in_repertoire, untranslatable_character


def translate(exc: asyncpg.PostgresError) -> CloudError | None:
    """The API error for a refusal caused by the request's data; None for anything else (a bug or
    an outage, which stays a 5xx)."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.DataError):
        if state in _NUL:
            return InvalidError(Code.API_INVALID, "a text value holds a NUL character (\\u0000), which cannot be stored")
        if state == "22003" or isinstance(exc.__cause__, OverflowError):  # the server's check, or asyncpg's own
            return InvalidError(Code.API_INVALID, "a number in the request is out of range")
        return InvalidError(Code.API_INVALID, f"a value in the request cannot be stored: {_first_line(exc)}")
    if isinstance(exc, asyncpg.NotNullViolationError):
        column = getattr(exc, "column_name", None) or "a field"
        return InvalidError(Code.API_INVALID, f"{column} may not be null", field=column)
    if isinstance(exc, asyncpg.CheckViolationError):
        name = getattr(exc, "constraint_name", None) or "a rule of the data"
        return InvalidError(Code.API_INVALID, f"a value breaks {name}", constraint=name)
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return InvalidError(Code.API_INVALID, "the request names something that does not exist in your tenant")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return ConflictError(Code.API_CONFLICT, "this conflicts with existing data (a duplicate name or id)")
    return None


@contextmanager
def refusals() -> Iterator[None]:
    """Raise the coded API error for a data refusal that escapes the block (``raise … from``)."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        error = translate(exc)
        if error is None:
            raise
        raise error from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
