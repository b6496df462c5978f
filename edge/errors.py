"""The gateway's errors. Everything the edge package raises on purpose derives from ``GatewayError``.

Tree::

    PulseError (pulse.protocol.errors)
    └── GatewayError                   code, message, context
        ├── ConfigError                gateway.config_invalid: bad TOML or PULSE_GW_* value
        ├── DeviceError                gateway.device_exists / gateway.device_unknown
        └── StorageError               gateway.storage_failed: the SQLite file could not be written

sqlite3/aiosqlite and amqtt exceptions are translated at the adapter (buffer.py, broker.py) with
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
