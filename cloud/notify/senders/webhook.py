"""Generic HTTP webhook: the notification as JSON, custom headers, an optional HMAC-SHA256 signature.

Body: ``{"schema": "pulse.notification.v1", "event_id": ..., <every Notification field>}``.
Headers: ``X-Pulse-Event-Id`` (the same on every retry of one notification: receivers drop repeats
with it) and, when a secret is set, ``X-Signature-Timestamp`` (Unix seconds) and
``X-Signature-SHA256`` = lower-case hex HMAC-SHA256(secret, timestamp + "." + raw body). A receiver
recomputes it over the raw bytes it got, compares in constant time, and refuses timestamps older
than a few minutes, so a captured request cannot be replayed later (docs/notifications.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

from pydantic import Field, SecretStr, field_validator

from pulse.cloud.notify.model import Notification, Outcome
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, HttpUrl, SendContext
from pulse.cloud.notify.senders.http import HttpRequest, HttpResponse, deliver, status_outcome

RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "x-pulse-event-id", "x-signature-sha256", "x-signature-timestamp"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")


class Config(ChannelConfig):
    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    """Extra headers sent as they are (e.g. ``Authorization``); Pulse's own headers cannot be replaced."""
    secret: SecretStr | None = Field(default=None, min_length=16)
    """Signing secret: when set, every request is signed (X-Signature-SHA256, X-Signature-Timestamp)."""

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, content in value.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"{name} is set by Pulse and cannot be configured")
            if any(c in content for c in "\r\n\0") or len(content) > 4096:
                raise ValueError(f"the value of {name} has line breaks or is over 4096 characters")
        return value


def signature(secret: str, timestamp: int, raw_body: bytes) -> str:
    """hex HMAC-SHA256(secret, f"{timestamp}." + body): what a receiver recomputes."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + raw_body, hashlib.sha256).hexdigest()


def build(config: Config, n: Notification, now: dt.datetime) -> HttpRequest:
    raw = n.to_json()
    headers = [("Content-Type", "application/json"), ("X-Pulse-Event-Id", n.event_id), *config.headers.items()]
    if config.secret is not None:
        ts = int(now.timestamp())
        headers += [("X-Signature-Timestamp", str(ts)), ("X-Signature-SHA256", signature(config.secret.get_secret_value(), ts, raw))]
    return HttpRequest(url=config.url, body=raw, headers=tuple(headers))


def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
    return status_outcome(response, now, what="the webhook")


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    # Signed per attempt: a retry carries a fresh timestamp, so receivers' replay windows stay short.
    return await deliver(ctx, build(config, n, ctx.now()), interpret)


CHANNEL = Channel("webhook", Config, send, http=True)
