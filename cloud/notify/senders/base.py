"""The shape every channel module has, and what a send gets to work with.

A channel module defines ``Config`` (a frozen pydantic model: the customer's settings), a pure
``build(config, notification, ...)`` (the request, message, trap or publish as data) and
``send(config, notification, ctx) -> Outcome``; it exports ``CHANNEL = Channel(kind, Config, send)``,
and ``senders/__init__.py`` registers it in ``CHANNELS``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Generic, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict

from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.inbound import AckLinks
from pulse.cloud.notify.model import Notification, Outcome
from pulse.cloud.notify.ssrf import AddressGuard, check_url


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class SendContext:
    """Shared by every send: the one guarded HTTP client, the guard for non-HTTP hosts, the clock, timeouts."""

    http: httpx.AsyncClient
    guard: AddressGuard
    now: Callable[[], dt.datetime] = _utcnow
    timeout_s: float = 10.0
    tls_context: ssl.SSLContext | None = None
    """Trust for TLS to SMTP and MQTT servers; None: the system's trust store. Certificates are always checked."""
    ack_links: AckLinks | None = None
    """Signs the one-click acknowledge links of emails; None: emails carry none."""


class ChannelConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


C = TypeVar("C", bound=ChannelConfig)


@dataclass(frozen=True)
class Channel(Generic[C]):
    """One channel kind and its properties; ``CHANNELS`` (senders/__init__.py) is the one table of them."""

    kind: str
    config: type[C]
    send: Callable[[C, Notification, SendContext], Awaitable[Outcome]] = field(repr=False)
    idempotent: bool = False
    """The receiver folds repeats (PagerDuty's dedup_key): a send whose outcome is unknown is sent again."""
    http: bool = False
    """The receiver answers over HTTP: an attempt records the status code it answered."""
    secret_url: bool = False
    """The config's ``url`` is itself the credential (whoever has a Slack or Teams webhook URL can post
    to the channel): the API shows only its scheme and host."""


def _http_url(value: str) -> str:
    try:
        check_url(value)
    except AddressError as exc:
        raise ValueError(exc.message) from exc
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]
"""An absolute http(s) URL with a host, kept exactly as given (no normalisation)."""
