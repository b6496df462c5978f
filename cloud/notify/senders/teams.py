"""Microsoft Teams: a Workflows webhook with an Adaptive Card, or (for old endpoints) a connector MessageCard.

Workflows (Power Automate "When a Teams webhook request is received") answer 202 Accepted. The Office
365 connector format (``format: "messagecard"``) is being retired by Microsoft; old connectors answer
200 with body ``1``, and report failures as 200 with an error sentence, which is read here.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, SecretStr

from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Retry
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, HttpUrl, SendContext
from pulse.cloud.notify.senders.http import HttpRequest, HttpResponse, deliver, status_outcome
from pulse.protocol.errors import Code

COLOURS = {"critical": "attention", "major": "attention", "minor": "warning", "warning": "warning", "info": "accent"}
THEME = {"critical": "D13438", "major": "E8590C", "minor": "F2C80F", "warning": "F2C80F", "info": "0078D7"}


class Config(ChannelConfig):
    url: HttpUrl
    """The webhook URL of the Teams workflow (or of the old Office 365 connector)."""
    format: Literal["adaptive", "messagecard"] = "adaptive"
    action_secret: SecretStr | None = Field(default=None, min_length=24, max_length=256)
    """A shared secret for a workflow that posts people's responses to ``/hooks/v1/teams/<channel id>``
    (header ``X-Pulse-Secret``). When set, Adaptive Cards of an opened alert carry an **Acknowledge**
    ``Action.Submit`` (data ``{"pulse_action": "ack", "alert_id": ...}``) for such a workflow to forward."""


def facts(n: Notification) -> list[tuple[str, str]]:
    rows = [("Severity", n.severity.capitalize()), ("Device", n.device), ("Site", n.site or "-"), ("Value", n.reading() or "-")]
    return rows + [("Tenant", n.tenant), ("Alert", n.alert_id), ("When", f"{n.occurred_at:%Y-%m-%d %H:%M:%S} UTC")]


def adaptive_card(n: Notification, *, ack: bool = False) -> dict[str, object]:
    actions: list[dict[str, object]] = [{"type": "Action.OpenUrl", "title": "Open in Pulse", "url": n.console_url}]
    if ack and n.event == "opened":
        actions.append({"type": "Action.Submit", "title": "Acknowledge", "data": {"pulse_action": "ack", "alert_id": n.alert_id}})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": n.title, "weight": "Bolder", "size": "Medium", "wrap": True, "color": COLOURS[n.severity]},
            {"type": "TextBlock", "text": n.explanation, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts(n)]},
        ],
        "actions": actions,
    }
    return {
        "type": "message",
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}],
    }


def message_card(n: Notification) -> dict[str, object]:
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": n.title,
        "themeColor": THEME[n.severity],
        "title": n.title,
        "sections": [{"text": n.explanation, "facts": [{"name": k, "value": v} for k, v in facts(n)]}],
        "potentialAction": [{"@type": "OpenUri", "name": "Open in Pulse", "targets": [{"os": "default", "uri": n.console_url}]}],
    }


def build(config: Config, n: Notification) -> HttpRequest:
    card = adaptive_card(n, ack=config.action_secret is not None) if config.format == "adaptive" else message_card(n)
    return HttpRequest.json(config.url, card)


def interpret(response: HttpResponse, now: dt.datetime) -> Outcome:
    return status_outcome(response, now, what="Teams")


def interpret_connector(response: HttpResponse, now: dt.datetime) -> Outcome:
    outcome = status_outcome(response, now, what="Teams")
    body = response.text.strip()
    if isinstance(outcome, Delivered) and response.status == 200 and body not in ("", "1"):
        # Old connectors say "Webhook message delivery failed with error: ..." with a 200.
        if "429" in body:
            return Retry(Code.NOTIFY_RATE_LIMITED, f"Teams: {body[:300]}")
        return Failed(Code.NOTIFY_REJECTED, f"Teams: {body[:300]}")
    return outcome


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    return await deliver(ctx, build(config, n), interpret if config.format == "adaptive" else interpret_connector)


CHANNEL = Channel("teams", Config, send, http=True, secret_url=True)
