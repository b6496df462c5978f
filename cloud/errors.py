"""The cloud's error tree. Everything that reaches an API user is a ``CloudError`` with a stable
``Code`` from protocol/errors.py, an HTTP status, and a sentence a person can act on.

    PulseError (protocol/errors.py)
    └── CloudError                      code, message, status, headers
        ├── BadRequestError             400: a request that can never be accepted (a bad sync batch)
        ├── AuthError                   401: missing, invalid or expired credentials
        ├── ForbiddenError              403: authenticated but not allowed
        ├── NotFoundError               404: no such object in your tenant
        ├── InvalidError                422: request fails validation
        ├── ConflictError               409: duplicate or conflicting data
        ├── GoneError                   410: a one-time link that was used, expired or never existed
        ├── TooLargeError               413: body over the limit
        ├── RateLimitedError            429: slow down, Retry-After
        ├── OverloadedError             503: writer full or storage unavailable, Retry-After
        │   ├── StorageUnavailableError the database refused or dropped the write
        │   └── StreamUnavailableError  the ingest stream did not acknowledge the publish
        └── UnavailableError            503: a store behind the request failed (its own code), Retry-After

Database driver errors are translated at the adapter (db/, ingest/writer.py) with ``raise … from``.
"""

from __future__ import annotations

from pulse.protocol.errors import Code, PulseError


class CloudError(PulseError):
    status: int = 500

    def __init__(self, code: Code, message: str, *, headers: dict[str, str] | None = None, **context: object) -> None:
        super().__init__(code, message, **context)
        self.headers = headers or {}


class BadRequestError(CloudError):
    status = 400


class AuthError(CloudError):
    status = 401

    def __init__(self, code: Code, message: str, **context: object) -> None:
        super().__init__(code, message, headers={"WWW-Authenticate": "Bearer"}, **context)


class ForbiddenError(CloudError):
    status = 403


class NotFoundError(CloudError):
    status = 404

    def __init__(self, what: str, **context: object) -> None:
        super().__init__(Code.API_NOT_FOUND, f"no such {what} in your tenant", **context)


class InvalidError(CloudError):
    status = 422


class ConflictError(CloudError):
    status = 409


class GoneError(CloudError):
    status = 410


class TooLargeError(CloudError):
    status = 413


class RateLimitedError(CloudError):
    status = 429

    def __init__(self, message: str, *, retry_after_s: int, code: Code = Code.INGEST_RATE_LIMITED, **context: object) -> None:
        super().__init__(code, message, headers={"Retry-After": str(retry_after_s)}, **context)


class OverloadedError(CloudError):
    status = 503

    def __init__(self, message: str, *, retry_after_s: int, code: Code = Code.INGEST_OVERLOADED, **context: object) -> None:
        super().__init__(code, message, headers={"Retry-After": str(retry_after_s)}, **context)


class UnavailableError(CloudError):
    status = 503

    def __init__(self, code: Code, message: str, *, retry_after_s: int = 30, **context: object) -> None:
        super().__init__(code, message, headers={"Retry-After": str(retry_after_s)}, **context)


class StorageUnavailableError(OverloadedError):
    """The database refused or dropped a write; nothing from the batch was committed."""


class StreamUnavailableError(OverloadedError):
    """The ingest stream did not acknowledge a publish (down, unreachable, full, too slow): nothing was accepted
    (``ingest.stream_unavailable``; for a gateway's batch ``sync.stream_unavailable``)."""

    def __init__(self, message: str, *, retry_after_s: int, code: Code = Code.INGEST_STREAM_UNAVAILABLE, **context: object) -> None:
        super().__init__(message, retry_after_s=retry_after_s, code=code, **context)
