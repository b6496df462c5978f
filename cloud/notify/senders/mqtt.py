"""MQTT publish to a customer's broker (aiomqtt): topic, QoS, retain, optional TLS and credentials.

Payload: the same JSON document as the webhook (``Notification.to_json``). The topic may use the
placeholders ``{tenant}``, ``{device}``, ``{site}``, ``{severity}``, ``{event}``. With QoS 1 or 2,
"delivered" means the broker acknowledged the publish. The broker's host goes through the SSRF
guard: Pulse connects to the checked address and TLS still verifies the broker's certificate against
the configured host name.
"""

from __future__ import annotations

import re
import ssl
import string
import uuid
from typing import Any, Literal

import aiomqtt
from pydantic import Field, SecretStr, field_validator, model_validator

from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Retry
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, SendContext
from pulse.cloud.notify.senders.http import address_outcome
from pulse.protocol.errors import Code

PLACEHOLDERS = frozenset({"tenant", "device", "site", "severity", "event"})
_AUTH_REFUSED = {4, 5, 134, 135}  # MQTT 3.1.1 bad credentials / not authorised; MQTT 5 the same
_TOPIC_SAFE = re.compile(r"[^A-Za-z0-9_.:-]")


class Config(ChannelConfig):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    topic: str = Field(default="pulse/alerts/{severity}/{device}", min_length=1, max_length=512)
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    client_id: str | None = Field(default=None, max_length=64)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if "#" in value or "+" in value or "\0" in value:
            raise ValueError("a publish topic cannot contain '#', '+' or NUL")
        for _, name, spec, conv in string.Formatter().parse(value):
            if name is not None and (name not in PLACEHOLDERS or spec or conv):
                raise ValueError(f"unknown placeholder {{{name}}}; use {', '.join(sorted(PLACEHOLDERS))}")
        return value

    @model_validator(mode="after")
    def _auth_pair(self) -> Config:
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self


def topic(config: Config, n: Notification) -> str:
    """The topic for n; placeholder values have MQTT's special characters replaced by '_'."""
    values = {"tenant": n.tenant, "device": n.device, "site": n.site or "-", "severity": n.severity, "event": n.event}
    return config.topic.format_map({k: _TOPIC_SAFE.sub("_", v) for k, v in values.items()})


def build(config: Config, n: Notification) -> tuple[str, bytes]:
    return topic(config, n), n.to_json()


class _NamedTLS:
    """An SSLContext stand-in that verifies the broker's name while paho connects to a checked IP."""

    def __init__(self, inner: ssl.SSLContext, name: str) -> None:
        self._inner, self._name = inner, name

    def wrap_socket(self, sock: Any, server_hostname: str | None = None, **kwargs: Any) -> ssl.SSLSocket:
        return self._inner.wrap_socket(sock, server_hostname=self._name, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    name, payload = build(config, n)
    try:
        address = (await ctx.guard.resolve(config.host.strip("[]"), config.port))[0]
    except AddressError as exc:
        return address_outcome(exc)
    tls: Any = None
    if config.tls:
        tls = _NamedTLS(ctx.tls_context or ssl.create_default_context(), config.host.strip("[]"))
    client = aiomqtt.Client(
        str(address),
        config.port,
        username=config.username,
        password=config.password.get_secret_value() if config.password else None,
        identifier=config.client_id or f"pulse-notify-{uuid.uuid4().hex[:12]}",
        timeout=ctx.timeout_s,
        tls_context=tls,
    )
    try:
        async with client:
            await client.publish(name, payload, qos=config.qos, retain=config.retain, timeout=ctx.timeout_s)
    except aiomqtt.MqttCodeError as exc:
        if exc.rc in _AUTH_REFUSED:
            return Failed(Code.NOTIFY_AUTH_FAILED, f"the MQTT broker at {config.host} refused the credentials: {exc}")
        return Retry(Code.NOTIFY_RECEIVER_ERROR, f"the MQTT broker at {config.host} refused: {exc}")
    except aiomqtt.MqttError as exc:
        return Retry(Code.NOTIFY_UNREACHABLE, f"MQTT with {config.host}:{config.port} failed: {exc}")
    return Delivered(f"published to {name} (QoS {config.qos})")


CHANNEL = Channel("mqtt", Config, send)
