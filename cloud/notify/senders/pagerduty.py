"""PagerDuty Events API v2: trigger when an alert opens, acknowledge when acked, resolve when closed.

All three carry the same ``dedup_key``, derived from the tenant and the alert fingerprint, so
PagerDuty folds repeats (a retry after a crash between send and record) into one incident, and the
acknowledge and resolve find it. A test notification triggers its own incident (``pulse-test-...``).
PagerDuty answers 202 on success; 400 means the event is invalid and is never retried; 429 and 5xx
are retried (PagerDuty asks for backoff on both).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from pydantic import Field, SecretStr

from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Severity
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, HttpUrl, SendContext
from pulse.cloud.notify.senders.http import HttpRequest, HttpResponse, deliver, status_outcome
from pulse.protocol.errors import Code

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITY: dict[Severity, str] = {"critical": "critical", "major": "error", "minor": "warning", "warning": "warning", "info": "info"}
ACTION = {"opened": "trigger", "test": "trigger", "notice": "trigger", "acknowledged": "acknowledge", "closed": "resolve"}


class Config(ChannelConfig):
    routing_key: SecretStr = Field(min_length=32, max_length=32)
    """The integration key of a PagerDuty service's "Events API v2" integration (32 characters)."""
    events_url: HttpUrl = EVENTS_URL
    """Where events go; change only for PagerDuty's EU endpoint (https://events.eu.pagerduty.com/v2/enqueue)."""
    webhook_secret: SecretStr | None = Field(default=None, min_length=16, max_length=256)
    """The secret of a PagerDuty webhook v3 subscription posting to ``/hooks/v1/pagerduty/<channel id>``:
    incidents acknowledged or resolved in PagerDuty then acknowledge or close the alert (optional)."""
    users: dict[str, str] = Field(default_factory=dict, max_length=500)
    """PagerDuty user id -> email of a user of this tenant: their acknowledgements are recorded as that
    user (webhooks name the PagerDuty user, not an email). Others are recorded by their PagerDuty name."""


def incident_key(tenant: str, fingerprint: str) -> str:
    """The dedup_key of an alert (tenant slug, ``Notification.fingerprint``): PagerDuty's webhooks
    name it as the incident's ``incident_key``, which is how an acknowledgement finds the alert."""
    return "pulse-" + hashlib.sha256(f"{tenant}\x1f{fingerprint}".encode()).hexdigest()[:40]


def dedup_key(n: Notification) -> str:
    """Stable per alert fingerprint and tenant; test notifications get their own."""
    return f"pulse-test-{n.alert_id}"[:255] if n.event == "test" else incident_key(n.tenant, n.fingerprint)


def build(config: Config, n: Notification) -> HttpRequest:
    event: dict[str, object] = {
        "routing_key": config.routing_key.get_secret_value(),
        "event_action": ACTION[n.event],
        "dedup_key": dedup_key(n),
    }
    if event["event_action"] == "trigger":
        details: dict[str, object] = {"alert_id": n.alert_id, "tenant": n.tenant, "explanation": n.explanation}
        details |= {k: v for k, v in {"metric": n.metric, "value": n.value, "threshold": n.threshold}.items() if v is not None}
        event["payload"] = {
            "summary": n.title[:1024],
            "source": n.device,
            "severity": SEVERITY[n.severity],
            "timestamp": n.occurred_at.isoformat(),
            "component": n.metric or n.device,
            "group": n.site or n.tenant,
            "class": "test" if n.event == "test" else "threshold",
            "custom_details": details,
        }
        event["client"] = "Pulse"
        event["client_url"] = n.console_url
        event["links"] = [{"href": n.console_url, "text": "Open in Pulse"}]
    return HttpRequest.json(config.events_url, event)


def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
    outcome = status_outcome(response, now, what="PagerDuty")
    if isinstance(outcome, Delivered):
        return Delivered(f"HTTP {response.status} dedup_key={_field(response, 'dedup_key')}")
    if response.status == 400:
        errors = _field(response, "errors") or _field(response, "message") or response.text[:300]
        return Failed(Code.NOTIFY_REJECTED, f"PagerDuty refused the event as invalid (400): {errors}")
    return outcome


def _field(response: HttpResponse, name: str) -> str:
    try:
        value = json.loads(response.body).get(name)
    except (ValueError, AttributeError):
        return ""
    return "; ".join(map(str, value)) if isinstance(value, list) else str(value or "")


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    return await deliver(ctx, build(config, n), interpret)


CHANNEL = Channel("pagerduty", Config, send, idempotent=True, http=True)
