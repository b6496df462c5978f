"""The gateway's errors. Everything the edge package raises on purpose derives from ``GatewayError``.

Tree::

    PulseError (pulse.protocol.errors)
    └── GatewayError                   code, message, context
        ├── ConfigError                gateway.config_invalid: bad TOML or PULSE_GW_* value
        ├── DeviceError                gateway.device_exists / gateway.device_unknown
        ├── StorageError               gateway.storage_failed: the SQLite file could not be written
        └── SyncError                  the link to the cloud: gateway.not_enrolled, gateway.cloud_unreachable,
                                       gateway.tls_failed, gateway.cloud_error, or the cloud's own code
                                       (enroll.token_invalid, identity.revoked, batch.*, ...)

sqlite3/aiosqlite, amqtt and httpx exceptions are translated at the adapter (buffer.py, broker.py, link.py) with
``raise ... from exc``; nothing above those modules sees them.
"""

from __future__ import annotations

from pulse.protocol.errors import Code, PulseError


class GatewayError(PulseError):
    """Anything the gateway refuses or cannot do, with a code and a sentence an installer can act on."""


class ConfigError(GatewayError):
    def __init__(self, message: str, **context: object) -> None:
        super().__init__(Code.GATEWAY_CONFIG_INVALID, message, **context)


class DeviceError(GatewayError):
    """A device credential operation that cannot be done (unknown id, id already present)."""


class StorageError(GatewayError):
    def __init__(self, message: str, **context: object) -> None:
        super().__init__(Code.GATEWAY_STORAGE_FAILED, message, **context)


class SyncError(GatewayError):
    """A request to the cloud that failed. ``status`` is the HTTP status when the cloud answered
    (None when it did not), ``retry_after_s`` its Retry-After when it asked the gateway to wait."""

    def __init__(self, code: Code, message: str, *, status: int | None = None, retry_after_s: float | None = None, **context: object) -> None:
        super().__init__(code, message, status=status, **context)
        self.status = status
        self.retry_after_s = retry_after_s
