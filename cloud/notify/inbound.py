"""Inbound acknowledgements, pure: verify a provider's signature, read its body into a small typed
action, sign and verify the one-click links in emails. No I/O; the routes (``cloud/api/acks.py``)
look up the channel, call these, then act through ``pulse.cloud.alerts.actions``.

- PagerDuty webhook v3: ``X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>`` with the
  subscription's secret; several signatures may be sent comma-separated (during a secret rotation):
  one match is enough. ``incident.acknowledged`` / ``incident.resolved`` name the incident's
  ``incident_key``, which is the ``dedup_key`` Pulse sent (senders/pagerduty.py).
- Slack interactivity: ``X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:{timestamp}:{raw body}">``
  with the app's signing secret; ``X-Slack-Request-Timestamp`` within 5 minutes of ``now`` (a
  replayed request is refused). The body is a form with one field, ``payload`` (JSON).
- Email links: ``<payload>.<signature>``, both url-safe base64; the payload is JSON
  ``{"t": tenant slug, "a": alert id, "r": recipient, "e": expiry (unix seconds)}``, the signature an
  HMAC-SHA256 of the payload with a key derived from the cloud's secret.

Every refusal is a ``Refused`` with an ``ack.*`` code and the HTTP status the route answers.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from pulse.cloud.errors import CloudError
from pulse.cloud.notify.model import Notification
from pulse.protocol.errors import Code

SLACK_MAX_AGE = dt.timedelta(minutes=5)
SLACK_ACTION_ID = "pulse_ack"
"""The Acknowledge button's action_id (senders/slack.py); its value is the alert id."""
_STATUS = {
    Code.ACK_BAD_SIGNATURE: 401,
    Code.ACK_EXPIRED: 401,
    Code.ACK_FORBIDDEN: 403,
    Code.ACK_UNKNOWN_ALERT: 404,
    Code.ACK_BAD_PAYLOAD: 400,
    Code.ACK_NOT_CONFIGURED: 404,
}


class Refused(CloudError):
    """An inbound acknowledgement refused; nothing changed."""

    def __init__(self, code: Code, message: str, *, status: int | None = None, **context: object) -> None:
        super().__init__(code, message, **context)
        self.status = status or _STATUS[code]


@dataclass(frozen=True, slots=True)
class ExternalAction:
    """What a provider says a person did: ``action`` on the alert the ``ref`` names."""

    action: Literal["ack", "close"]
    ref: str  # PagerDuty: the incident_key (our dedup_key); Slack: the alert id
    user_id: str  # the provider's id of the person
    user_name: str  # the provider's name of the person (what is recorded when they are not a user here)
    event_id: str  # the provider's id of this delivery (recorded with the action)


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# --- PagerDuty -----------------------------------------------------------------------------------

PAGERDUTY_EVENTS = {"incident.acknowledged": "ack", "incident.resolved": "close"}


def verify_pagerduty(secret: str, body: bytes, header: str | None) -> None:
    expected = "v1=" + _hmac_hex(secret, body)
    offered = [s.strip() for s in (header or "").split(",") if s.strip()]
    if not any(hmac.compare_digest(expected, s) for s in offered):
        raise Refused(Code.ACK_BAD_SIGNATURE, "X-PagerDuty-Signature does not match the body with the channel's webhook secret")


def parse_pagerduty(body: bytes) -> ExternalAction | None:
    """The action a webhook v3 body asks for; None for events Pulse does not act on (triggered, ...)."""
    try:
        doc = json.loads(body)
        event = doc["event"]
        kind = event["event_type"]
    except (ValueError, TypeError, KeyError) as exc:
        raise Refused(Code.ACK_BAD_PAYLOAD, "not a PagerDuty webhook v3 body: {\"event\": {\"event_type\": ...}}") from exc
    if kind not in PAGERDUTY_EVENTS:
        return None
    data, agent = event.get("data"), event.get("agent")
    key = data.get("incident_key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise Refused(Code.ACK_BAD_PAYLOAD, f"{kind} without event.data.incident_key")
    agent = agent if isinstance(agent, dict) else {}
    return ExternalAction(
        action="ack" if PAGERDUTY_EVENTS[kind] == "ack" else "close",
        ref=key,
        user_id=str(agent.get("id") or ""),
        user_name=str(agent.get("summary") or agent.get("id") or "PagerDuty"),
        event_id=str(event.get("id") or ""),
    )


# --- Slack ---------------------------------------------------------------------------------------


def verify_slack(secret: str, body: bytes, timestamp: str | None, signature: str | None, now: dt.datetime) -> None:
    try:
        sent = dt.datetime.fromtimestamp(int(timestamp or ""), dt.UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise Refused(Code.ACK_BAD_SIGNATURE, "X-Slack-Request-Timestamp is missing or not unix seconds") from exc
    expected = "v0=" + _hmac_hex(secret, b"v0:" + (timestamp or "").encode() + b":" + body)
    if not hmac.compare_digest(expected, signature or ""):
        raise Refused(Code.ACK_BAD_SIGNATURE, "X-Slack-Signature does not match the request with the channel's signing secret")
    if abs(now - sent) > SLACK_MAX_AGE:
        raise Refused(Code.ACK_EXPIRED, "the Slack request is more than 5 minutes old (or the clocks differ): refused as a replay")


def parse_slack(body: bytes) -> ExternalAction | None:
    """The Acknowledge button's action from an interactivity body; None for other interactions."""
    try:
        [raw] = parse_qs(body.decode(), strict_parsing=True)["payload"]
        doc = json.loads(raw)
        user = doc["user"]
        actions = doc.get("actions") or []
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise Refused(Code.ACK_BAD_PAYLOAD, "not a Slack interactivity body: payload=<JSON with user and actions>") from exc
    if doc.get("type") != "block_actions" or not isinstance(user, dict) or not isinstance(actions, list):
        return None
    mine = [a for a in actions if isinstance(a, dict) and a.get("action_id") == SLACK_ACTION_ID]
    if not mine:
        return None
    value = mine[0].get("value")
    if not isinstance(value, str) or not re.fullmatch(r"[0-9]{1,18}", value):
        raise Refused(Code.ACK_BAD_PAYLOAD, "the Acknowledge button carries no alert id")
    return ExternalAction(
        action="ack",
        ref=value,
        user_id=str(user.get("id") or ""),
        user_name=str(user.get("username") or user.get("name") or user.get("id") or "Slack"),
        event_id=str(doc.get("trigger_id") or ""),
    )


# --- Teams (a workflow forwarding a card's action) ------------------------------------------------

TEAMS_ACTIONS = {"ack": "ack", "close": "close"}


def verify_shared_secret(secret: str, offered: str | None) -> None:
    """Teams workflows cannot compute an HMAC: they send the channel's secret itself (over TLS)."""
    if not hmac.compare_digest(secret.encode(), (offered or "").encode()):
        raise Refused(Code.ACK_BAD_SIGNATURE, "X-Pulse-Secret is not the channel's action secret")


def parse_teams(body: bytes) -> ExternalAction:
    """``{"pulse_action": "ack"|"close", "alert_id": "<id>", "responder": {"email", "name"}}``: the card's
    Action.Submit data plus who responded, as the workflow forwards them."""
    try:
        doc = json.loads(body)
        kind, alert, responder = doc["pulse_action"], str(doc["alert_id"]), doc.get("responder") or {}
        email, name = str(responder.get("email") or ""), str(responder.get("name") or responder.get("email") or "Teams")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise Refused(Code.ACK_BAD_PAYLOAD, 'not {"pulse_action": "ack"|"close", "alert_id": ..., "responder": {"email", "name"}}') from exc
    if kind not in TEAMS_ACTIONS or not re.fullmatch(r"[0-9]{1,18}", alert):
        raise Refused(Code.ACK_BAD_PAYLOAD, "pulse_action is ack or close, alert_id an alert id")
    return ExternalAction(action="ack" if kind == "ack" else "close", ref=alert, user_id=email, user_name=name, event_id="")


# --- email links ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkClaim:
    tenant: str  # the tenant's slug (what notifications carry)
    alert_id: int
    recipient: str
    expires: dt.datetime


@dataclass(frozen=True, slots=True)
class AckLinks:
    """Signs the acknowledge links emails carry: ``<base_url>/hooks/v1/ack/<token>``, valid for ``ttl``
    from the notification's time."""

    key: bytes
    base_url: str
    ttl: dt.timedelta

    def url(self, n: Notification, recipient: str) -> str | None:
        """The link for ``recipient``, for notifications that ask someone to act (an alert opened or escalated)."""
        if n.event != "opened" or not n.alert_id.isdigit():
            return None
        claim = LinkClaim(n.tenant, int(n.alert_id), recipient, n.occurred_at + self.ttl)
        return f"{self.base_url.rstrip('/')}/hooks/v1/ack/{sign_link(self.key, claim)}"


def link_key(secret: str) -> bytes:
    """The links' own key, derived from the cloud's secret (a link is no session token, and the reverse)."""
    return hmac.new(secret.encode(), b"pulse ack link v1", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(key: bytes, claim: LinkClaim) -> str:
    payload = json.dumps(
        {"t": claim.tenant, "a": claim.alert_id, "r": claim.recipient, "e": int(claim.expires.timestamp())},
        separators=(",", ":"),
    ).encode()
    return _b64(payload) + "." + _b64(hmac.new(key, payload, hashlib.sha256).digest())


def verify_link(key: bytes, token: str, now: dt.datetime) -> LinkClaim:
    try:
        head, _, sig = token.partition(".")
        payload, offered = _unb64(head), _unb64(sig)
    except (ValueError, binascii.Error) as exc:
        raise Refused(Code.ACK_BAD_SIGNATURE, "this acknowledge link is damaged") from exc
    if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), offered):
        raise Refused(Code.ACK_BAD_SIGNATURE, "this acknowledge link is not one Pulse signed (or it was changed)")
    try:
        doc = json.loads(payload)
        claim = LinkClaim(str(doc["t"]), int(doc["a"]), str(doc["r"]), dt.datetime.fromtimestamp(int(doc["e"]), dt.UTC))
    except (ValueError, TypeError, KeyError) as exc:  # signed by us, so only an older format would land here
        raise Refused(Code.ACK_BAD_PAYLOAD, "this acknowledge link's content is not understood") from exc
    if now >= claim.expires:
        raise Refused(Code.ACK_EXPIRED, "this acknowledge link has expired; acknowledge in the console", status=410)
    return claim
