"""The channel-neutral notification every sender formats, and the typed outcome of one attempt."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from pulse.protocol.errors import Code

Event = Literal["opened", "acknowledged", "closed", "test", "notice"]
"""``notice``: not about an alert (a subscription's renewal notice); alert_id names what it is about."""
Severity = Literal["critical", "major", "minor", "warning", "info"]
SCHEMA = "pulse.notification.v1"
SEVERITIES: tuple[Severity, ...] = ("critical", "major", "minor", "warning", "info")
"""Most severe first."""


class Notification(BaseModel):
    """What happened to one alert, in the words every channel needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    fingerprint: str
    event: Event
    severity: Severity
    tenant: str
    device: str
    site: str | None = None
    metric: str | None = None
    value: float | bool | str | None = None
    threshold: float | None = None
    explanation: str
    console_url: str
    occurred_at: dt.datetime

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at needs a time zone")
        return value.astimezone(dt.UTC)

    @property
    def event_id(self) -> str:
        """Stable id of this (alert, event, time): the same on every retry, so receivers can drop repeats."""
        raw = f"{self.alert_id}|{self.event}|{self.occurred_at.isoformat()}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def to_json(self) -> bytes:
        """The JSON document webhooks and MQTT receive: ``{"schema": "pulse.notification.v1", "event_id", ...fields}``."""
        doc = {"schema": SCHEMA, "event_id": self.event_id, **self.model_dump(mode="json")}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    @property
    def title(self) -> str:
        """One line: ``[CRITICAL] opened: pump-7 temp 92.5 (threshold 80)``."""
        what = f"{self.device} {self.metric}" if self.metric else self.device
        if self.value is not None:
            what += f" {format_value(self.value)}"
        if self.threshold is not None:
            what += f" (threshold {format_value(self.threshold)})"
        return f"[{self.severity.upper()}] {EVENT_WORDS[self.event]}: {what}"

    def reading(self) -> str | None:
        """``temp = 92.5 (threshold 80)``, or None when the alert has no value."""
        if self.value is None:
            return None
        text = f"{self.metric} = {format_value(self.value)}" if self.metric else format_value(self.value)
        return text + (f" (threshold {format_value(self.threshold)})" if self.threshold is not None else "")


EVENT_WORDS: dict[Event, str] = {"opened": "opened", "acknowledged": "acknowledged", "closed": "closed", "test": "test notification", "notice": "notice"}


def format_value(value: float | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class Delivered:
    """The receiver took it. ``detail`` is what it said (an HTTP status, PagerDuty's dedup_key, ...)."""

    detail: str = ""


@dataclass(frozen=True)
class Retry:
    """Try again later: after ``after_s`` seconds when the receiver said so (Retry-After), else by backoff."""

    code: Code
    reason: str
    after_s: float | None = None


@dataclass(frozen=True)
class Failed:
    """Do not try again: the receiver refused it for good, or Pulse refuses to reach the receiver."""

    code: Code
    reason: str


Outcome = Delivered | Retry | Failed

MAX_RETRY_AFTER_S = 3600.0


def retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped at an hour; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def channel_test_notification(*, tenant: str, console_url: str, now: dt.datetime, channel: str = "") -> Notification:
    """What the "send test notification" action sends: plainly a test, severity info, its own alert id."""
    return Notification(
        alert_id=f"test-{int(now.timestamp())}",
        fingerprint=f"test/{channel or 'channel'}",
        event="test",
        severity="info",
        tenant=tenant,
        device="pulse-test",
        explanation=f"This is a test notification from Pulse{f' for channel {channel}' if channel else ''}. No action is needed.",
        console_url=console_url,
        occurred_at=now,
    )


def fingerprint(device_id: str, rule_id: str, alert_id: int) -> str:
    """``Notification.fingerprint`` of an alert (PagerDuty's dedup_key is made from it)."""
    return f"{device_id}/{rule_id}#{alert_id}"
