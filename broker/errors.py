"""The shared broker's errors.

Tree::

    PulseError (pulse.protocol.errors)
    └── BrokerError                    code, message, context
        └── SessionStoreError          mqtt.session_store_failed: the persistent-session file could not be read or written

sqlite3 exceptions are translated in sessions.py with ``raise ... from exc``. An ``Intake`` signals
"not stored, do not acknowledge" by raising any ``PulseError`` (the gateway's ``StorageError``, the
cloud's ``StorageUnavailableError``): the handler then closes the connection without PUBACK.
"""

from __future__ import annotations

from pulse.protocol.errors import Code, PulseError


class BrokerError(PulseError):
    """Anything the shared broker code refuses or cannot do."""


class SessionStoreError(BrokerError):
    def __init__(self, message: str, **context: object) -> None:
        super().__init__(Code.MQTT_SESSION_STORE_FAILED, message, **context)
