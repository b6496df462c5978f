"""Slack incoming webhook: a Block Kit message with severity, device, site, value and a console link.

Slack answers 200 ``ok``; 400 ``invalid_payload``, 403 ``action_prohibited``, 404 ``no_service``,
410 ``channel_is_archived`` are final; 429 (with Retry-After) and 5xx are retried.
"""

from __future__ import annotations

import datetime as dt

from pydantic import Field, SecretStr

from pulse.cloud.notify.inbound import SLACK_ACTION_ID
from pulse.cloud.notify.model import Notification, Outcome
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, HttpUrl, SendContext
from pulse.cloud.notify.senders.http import HttpRequest, HttpResponse, deliver, status_outcome

ICONS = {"critical": ":red_circle:", "major": ":large_orange_circle:", "minor": ":large_yellow_circle:", "warning": ":warning:", "info": ":information_source:"}


class Config(ChannelConfig):
    url: HttpUrl
    """The incoming webhook URL Slack gave (https://hooks.slack.com/services/...)."""
    signing_secret: SecretStr | None = Field(default=None, min_length=16, max_length=256)
    """The Slack app's signing secret (Basic Information → App Credentials). When set, alert messages
    carry an **Acknowledge** button, and the app's interactivity Request URL is
    ``/hooks/v1/slack/<channel id>`` (docs/notifications.md)."""
    users: dict[str, str] = Field(default_factory=dict, max_length=500)
    """Slack user id -> email of a user of this tenant: their button presses are recorded as that user."""


def escape(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped; nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build(config: Config, n: Notification) -> HttpRequest:
    fields = [
        {"type": "mrkdwn", "text": f"*Severity*\n{n.severity.capitalize()}"},
        {"type": "mrkdwn", "text": f"*Device*\n{escape(n.device)}"},
        {"type": "mrkdwn", "text": f"*Site*\n{escape(n.site or '-')}"},
        {"type": "mrkdwn", "text": f"*Value*\n{escape(n.reading() or '-')}"},
    ]
    header = f"{ICONS[n.severity]} {n.severity.upper()} · alert {'test' if n.event == 'test' else n.event}"
    blocks = [
        {"type": "header", "text": {"type": "plain_text", "text": header[:150], "emoji": True}},
        {"type": "section", "text": {"type": "mrkdwn", "text": escape(n.explanation)[:3000]}, "fields": fields},
        {"type": "actions", "elements": _buttons(config, n)},
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": escape(f"tenant {n.tenant} · alert {n.alert_id} · {n.occurred_at:%Y-%m-%d %H:%M:%S} UTC")}],
        },
    ]
    return HttpRequest.json(config.url, {"text": escape(n.title), "blocks": blocks})


def _buttons(config: Config, n: Notification) -> list[dict[str, object]]:
    buttons: list[dict[str, object]] = [{"type": "button", "text": {"type": "plain_text", "text": "Open in Pulse"}, "url": n.console_url}]
    if config.signing_secret is not None and n.event == "opened":  # Slack can call Pulse back: offer the action
        ack = {"type": "plain_text", "text": "Acknowledge"}
        buttons.append({"type": "button", "action_id": SLACK_ACTION_ID, "style": "primary", "text": ack, "value": n.alert_id})
    return buttons


def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
    return status_outcome(response, now, what="Slack")


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    return await deliver(ctx, build(config, n), interpret)


CHANNEL = Channel("slack", Config, send, http=True, secret_url=True)
