"""Channel senders, one module each, registered in ``CHANNELS`` (kind -> Channel): the one table of
channel kinds. Everything else that names kinds derives from it: ``KINDS``, ``IDEMPOTENT_KINDS``,
``HTTP_KINDS``, ``SECRET_URL_KINDS``, the API's ``ChannelKind`` enum and the console's generated ``kinds.ts``
(``render_console_kinds``; a unit test keeps the file equal to it).

Every module has the same shape (see ``base.py``): ``Config``, a pure ``build``, and ``send`` that
returns an ``Outcome``. ``validate(kind, raw)`` turns a customer's settings into a Config or a
``notify.bad_config`` error naming the field; ``send(kind, config, notification, ctx)`` sends once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.model import Notification, Outcome
from pulse.cloud.notify.senders import email, mqtt, pagerduty, slack, snmp, teams, webhook
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, SendContext
from pulse.protocol.errors import Code

CHANNELS: Mapping[str, Channel[Any]] = {
    m.CHANNEL.kind: m.CHANNEL for m in (slack, pagerduty, teams, webhook, email, snmp, mqtt)
}
KINDS: tuple[str, ...] = tuple(CHANNELS)
IDEMPOTENT_KINDS = frozenset(k for k, c in CHANNELS.items() if c.idempotent)
"""Channels whose receiver folds repeats: a send whose outcome is unknown is sent again."""
HTTP_KINDS = frozenset(k for k, c in CHANNELS.items() if c.http)
"""Channels whose receiver answers over HTTP (an attempt records the status code)."""
SECRET_URL_KINDS = frozenset(k for k, c in CHANNELS.items() if c.secret_url)
"""Channels whose webhook URL is itself the credential: the API shows only its scheme and host."""


def render_console_kinds() -> str:
    """The console's ``features/notify/kinds.ts``: the channel kinds and their properties, from ``CHANNELS``."""
    kinds = ", ".join(f'"{k}"' for k in KINDS)
    idempotent = ", ".join(f"{k}: {str(c.idempotent).lower()}" for k, c in CHANNELS.items())
    return (
        "// Generated from pulse.cloud.notify.senders.CHANNELS (the one table of channel kinds); do not edit.\n"
        "// Regenerate: .venv/bin/python -m pulse.cloud.notify.senders > cloud/console/src/features/notify/kinds.ts\n"
        f"export const KINDS = [{kinds}] as const;\n"
        "export type ChannelKind = (typeof KINDS)[number];\n"
        f"export const IDEMPOTENT: Record<ChannelKind, boolean> = {{ {idempotent} }};\n"
    )


def channel(kind: str) -> Channel[Any]:
    try:
        return CHANNELS[kind]
    except KeyError:
        raise ConfigError(
            Code.NOTIFY_UNKNOWN_CHANNEL, f"{kind!r} is not a channel; use one of {', '.join(CHANNELS)}", kind=kind
        ) from None


def validate(kind: str, raw: Mapping[str, Any]) -> ChannelConfig:
    """The channel's Config from raw settings, or ``notify.bad_config`` naming every bad field."""
    try:
        return channel(kind).config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        fields = ",".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        raise ConfigError(Code.NOTIFY_BAD_CONFIG, f"{kind} channel: {problems}", kind=kind, fields=fields) from None


async def send(kind: str, config: ChannelConfig, notification: Notification, ctx: SendContext) -> Outcome:
    """One attempt on one channel."""
    target = channel(kind)
    if not isinstance(config, target.config):
        raise ConfigError(Code.NOTIFY_BAD_CONFIG, f"a {type(config).__module__} config given to the {kind} channel", kind=kind)
    return await target.send(config, notification, ctx)


__all__ = ["CHANNELS", "HTTP_KINDS", "IDEMPOTENT_KINDS", "KINDS", "SECRET_URL_KINDS", "SendContext", "channel", "render_console_kinds", "send", "validate"]
