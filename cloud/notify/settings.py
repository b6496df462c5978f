"""The notify settings group and the one place the shared send context is built from it.

``NotifySettings`` reads ``PULSE_NOTIFY_*`` from the environment when built on its own, and can be
nested into the cloud's settings object. Build it in main, pass it down; nothing reads it at import.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.inbound import AckLinks, link_key
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.ssrf import AddressGuard, SsrfPolicy, guarded_client


class NotifySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PULSE_NOTIFY_", frozen=True, extra="ignore")

    allow_networks: str = ""
    """Comma-separated networks the SSRF guard lets through although they are not public, e.g.
    ``127.0.0.0/8,::1/128`` for development and tests. Empty (the default) in production."""
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Per attempt: connect, each read and write, DNS (HTTP, SMTP, SNMP, MQTT)."""
    console_url: str = "http://127.0.0.1:8080"
    """Pulse's address as people reach it: notifications link to the console at ``<console_url>/app/alerts/<id>``."""
    workers: bool = True
    """Run the notification workers (fan-out, delivery, escalation) in this cloud process. Several
    processes may run them at once: they share the work through the database, never twice."""
    concurrency: int = Field(default=8, ge=1, le=256)
    """Deliveries sent at the same time by one process."""
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the workers look for due work when no database notification woke them."""
    max_attempts: int = Field(default=5, ge=1, le=20)
    """Attempts per delivery before it is dead-lettered (a manual retry gives it this many again)."""
    backoff_s: float = Field(default=10.0, gt=0, le=3600)
    """Wait after the first failed attempt; doubled after each further one (capped at an hour) unless
    the receiver's Retry-After says otherwise."""
    ack_link_ttl_s: int = Field(default=86400, ge=60, le=30 * 86400)
    """How long the one-click acknowledge link in an email works, from the notification's time."""
    claim_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    """A delivery still marked "sending" this long after it was claimed belongs to a process that
    stopped mid-send: PagerDuty deliveries are sent again (dedup_key), others are marked
    ``notify.outcome_unknown`` (no duplicate page) and dead-lettered for a manual retry."""

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        try:
            SsrfPolicy.allowing(n for n in value.split(",") if n.strip())
        except ConfigError as exc:
            raise ValueError(exc.message) from exc
        return value

    @property
    def policy(self) -> SsrfPolicy:
        return SsrfPolicy.allowing(n for n in self.allow_networks.split(",") if n.strip())


@contextlib.asynccontextmanager
async def send_context(
    settings: NotifySettings,
    *,
    verify: ssl.SSLContext | bool = True,
    tls_context: ssl.SSLContext | None = None,
    ack_links: AckLinks | None = None,
) -> AsyncIterator[SendContext]:
    """The shared context for every send of a worker's life: one guarded HTTP client, closed on exit."""
    guard = AddressGuard(settings.policy, resolve_timeout_s=settings.timeout_s)
    async with guarded_client(guard, timeout_s=settings.timeout_s, verify=verify) as http:
        yield SendContext(http=http, guard=guard, timeout_s=settings.timeout_s, tls_context=tls_context, ack_links=ack_links)


def ack_links(settings: NotifySettings, secret: str) -> AckLinks:
    """The email acknowledge links' signer: a key derived from the cloud's secret, links to ``console_url``."""
    return AckLinks(link_key(secret), settings.console_url, dt.timedelta(seconds=settings.ack_link_ttl_s))
