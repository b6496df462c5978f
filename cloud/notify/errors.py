"""The notify package's errors.

Tree (codes from ``pulse.protocol.errors.Code``, area ``notify.``)::

    PulseError
    └── NotifyError
        ├── ConfigError        a channel config, schedule or policy that cannot be accepted
        │                      (notify.bad_config, notify.unknown_channel, notify.bad_schedule, notify.bad_policy)
        └── AddressError       a customer URL or host Pulse refuses to reach, or cannot resolve
                               (notify.bad_url, notify.ssrf_blocked, notify.dns_failed, notify.too_many_redirects)

A failed delivery attempt is not an exception: senders return an ``Outcome`` (delivered, retry,
failed) with a code, so the worker records it and decides what to do next.
"""

from __future__ import annotations

from pulse.protocol.errors import PulseError


class NotifyError(PulseError):
    """Anything the notify package refuses."""


class ConfigError(NotifyError):
    """A channel config, on-call schedule or escalation policy that breaks its rules."""


class AddressError(NotifyError):
    """A customer URL or host that is malformed, unresolvable, or outside the allowed networks."""
