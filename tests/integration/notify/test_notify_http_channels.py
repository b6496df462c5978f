"""Slack, PagerDuty, Teams and webhook requests as a real HTTP receiver on loopback gets them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from notify_receivers import NOW, Receiver

from pulse.cloud.notify import senders
from pulse.cloud.notify.model import Delivered, Failed, Notification, Retry
from pulse.cloud.notify.senders.base import SendContext
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration

PD_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
Make = Callable[..., Notification]


async def send(kind: str, raw: dict[str, Any], n: Notification, ctx: SendContext) -> Any:
    return await senders.send(kind, senders.validate(kind, raw), n, ctx)


async def test_slack_gets_block_kit_with_severity_device_site_value_and_link(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    outcome = await send("slack", {"url": receiver.url("/services/T0/B0/xyz")}, make_notification(), ctx)
    assert outcome == Delivered("HTTP 200")
    [req] = receiver.requests
    assert req.method == "POST" and req.path == "/services/T0/B0/xyz"
    assert req.headers["content-type"] == "application/json"
    doc = json.loads(req.body)
    assert doc["text"] == "[CRITICAL] opened: pump-7 temp 92.5 (threshold 80)"
    header, section, actions, context = doc["blocks"]
    assert header["type"] == "header" and "CRITICAL" in header["text"]["text"]
    fields = [f["text"] for f in section["fields"]]
    assert fields == ["*Severity*\nCritical", "*Device*\npump-7", "*Site*\nPlant &lt;North&gt; &amp; Co", "*Value*\ntemp = 92.5 (threshold 80)"]
    assert actions["elements"][0]["url"] == "https://pulse.example.com/alerts/al-1001"
    assert "al-1001" in context["elements"][0]["text"]


async def test_slack_invalid_payload_is_final_and_rate_limit_is_retried_after_its_delay(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer("/hook", (400, {}, b"invalid_payload"), (429, {"Retry-After": "7"}, b"rate_limited"))
    first = await send("slack", {"url": receiver.url("/hook")}, make_notification(), ctx)
    second = await send("slack", {"url": receiver.url("/hook")}, make_notification(), ctx)
    assert isinstance(first, Failed) and first.code is Code.NOTIFY_REJECTED and "invalid_payload" in first.reason
    assert second == Retry(Code.NOTIFY_RATE_LIMITED, "Slack answered 429 (rate limited): rate_limited", 7.0)


@pytest.mark.parametrize(("event", "action"), [("opened", "trigger"), ("acknowledged", "acknowledge"), ("closed", "resolve")])
async def test_pagerduty_event_action_follows_the_alert_with_one_dedup_key(
    receiver: Receiver, ctx: SendContext, make_notification: Make, event: str, action: str
) -> None:
    receiver.answer("/v2/enqueue", (202, {"content-type": "application/json"}, b'{"status":"success","message":"Event processed","dedup_key":"k"}'))
    raw = {"routing_key": PD_KEY, "events_url": receiver.url("/v2/enqueue")}
    outcome = await send("pagerduty", raw, make_notification(event=event, severity="major"), ctx)
    assert outcome == Delivered("HTTP 202 dedup_key=k")
    doc = json.loads(receiver.requests[0].body)
    expected_key = "pulse-" + hashlib.sha256(b"tenant-a\x1ftenant-a/pump-7/rule-temp-high").hexdigest()[:40]
    assert doc["routing_key"] == PD_KEY and doc["event_action"] == action and doc["dedup_key"] == expected_key
    if action == "trigger":
        assert doc["payload"]["severity"] == "error"
        assert doc["payload"]["source"] == "pump-7" and doc["payload"]["summary"].startswith("[MAJOR] opened")
        assert doc["payload"]["timestamp"] == "2026-11-25T07:59:00+00:00"
        assert doc["links"] == [{"href": "https://pulse.example.com/alerts/al-1001", "text": "Open in Pulse"}]
    else:
        assert "payload" not in doc


@pytest.mark.parametrize(("severity", "pd"), [("critical", "critical"), ("major", "error"), ("minor", "warning"), ("warning", "warning"), ("info", "info")])
async def test_pagerduty_severity_map(receiver: Receiver, ctx: SendContext, make_notification: Make, severity: str, pd: str) -> None:
    await send("pagerduty", {"routing_key": PD_KEY, "events_url": receiver.url("/e")}, make_notification(severity=severity), ctx)
    assert json.loads(receiver.requests[0].body)["payload"]["severity"] == pd


async def test_pagerduty_400_is_not_retried_429_and_5xx_are(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer(
        "/e",
        (400, {}, b'{"status":"invalid event","message":"Event object is invalid","errors":["Length of \'routing_key\' is incorrect"]}'),
        (429, {"Retry-After": "30"}, b"{}"),
        (503, {}, b"busy"),
        (202, {}, b'{"status":"success","dedup_key":"x"}'),
    )
    raw = {"routing_key": PD_KEY, "events_url": receiver.url("/e")}
    outcomes = [await send("pagerduty", raw, make_notification(), ctx) for _ in range(4)]
    assert isinstance(outcomes[0], Failed) and outcomes[0].code is Code.NOTIFY_REJECTED
    assert "routing_key" in outcomes[0].reason
    assert isinstance(outcomes[1], Retry) and outcomes[1].code is Code.NOTIFY_RATE_LIMITED and outcomes[1].after_s == 30.0
    assert isinstance(outcomes[2], Retry) and outcomes[2].code is Code.NOTIFY_RECEIVER_ERROR and outcomes[2].after_s is None
    assert isinstance(outcomes[3], Delivered)
    assert len(receiver.requests) == 4, "each send is one attempt: the worker owns retries"


async def test_retry_after_as_an_http_date(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer("/e", (429, {"Retry-After": "Wed, 25 Nov 2026 08:02:00 GMT"}, b""))
    outcome = await send("pagerduty", {"routing_key": PD_KEY, "events_url": receiver.url("/e")}, make_notification(), ctx)
    assert isinstance(outcome, Retry) and outcome.after_s == 120.0


async def test_teams_workflow_gets_an_adaptive_card(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer("/workflows/x", (202, {}, b""))
    outcome = await send("teams", {"url": receiver.url("/workflows/x")}, make_notification(), ctx)
    assert outcome == Delivered("HTTP 202")
    doc = json.loads(receiver.requests[0].body)
    assert doc["type"] == "message"
    [attachment] = doc["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Device"] == "pump-7" and facts["Site"] == "Plant <North> & Co" and facts["Value"] == "temp = 92.5 (threshold 80)"
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open in Pulse", "url": "https://pulse.example.com/alerts/al-1001"}]


async def test_teams_legacy_connector_gets_a_message_card_and_its_200_errors_are_read(
    receiver: Receiver, ctx: SendContext, make_notification: Make
) -> None:
    receiver.answer(
        "/webhookb2/x",
        (200, {}, b"1"),
        (200, {}, b"Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429"),
        (200, {}, b"Summary or Text is required."),
    )
    raw = {"url": receiver.url("/webhookb2/x"), "format": "messagecard"}
    outcomes = [await send("teams", raw, make_notification(severity="minor"), ctx) for _ in range(3)]
    doc = json.loads(receiver.requests[0].body)
    assert doc["@type"] == "MessageCard" and doc["themeColor"] == "F2C80F"
    assert doc["potentialAction"][0]["targets"] == [{"os": "default", "uri": "https://pulse.example.com/alerts/al-1001"}]
    assert isinstance(outcomes[0], Delivered)
    assert isinstance(outcomes[1], Retry) and outcomes[1].code is Code.NOTIFY_RATE_LIMITED
    assert isinstance(outcomes[2], Failed) and "Summary or Text" in outcomes[2].reason


def docs_verify() -> Callable[..., bool]:
    """The receiver-side ``verify`` exactly as docs/notifications.md shows it to customers."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "notifications.md").read_text()
    [code] = re.findall(r"^```python\n(def verify.*?|import hashlib.*?)^```", doc, re.MULTILINE | re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/notifications.md", "exec"), namespace)
    return namespace["verify"]  # type: ignore[no-any-return]


async def test_webhook_body_headers_and_signature_verify_like_a_customer_would(
    receiver: Receiver, ctx: SendContext, make_notification: Make
) -> None:
    secret = "s3cret-s3cret-s3cret"
    raw = {"url": receiver.url("/pulse"), "headers": {"Authorization": "Bearer abc", "X-Team": "ops"}, "secret": secret}
    n = make_notification()
    assert await send("webhook", raw, n, ctx) == Delivered("HTTP 200")
    [req] = receiver.requests
    doc = json.loads(req.body)
    assert doc["schema"] == "pulse.notification.v1" and doc["event_id"] == n.event_id
    assert doc["alert_id"] == "al-1001" and doc["value"] == 92.5 and doc["occurred_at"] == "2026-11-25T07:59:00Z"
    assert req.headers["authorization"] == "Bearer abc" and req.headers["x-team"] == "ops"
    assert req.headers["x-pulse-event-id"] == n.event_id
    assert req.headers["x-signature-timestamp"] == str(int(NOW.timestamp()))
    verify = docs_verify()
    assert verify(secret.encode(), req.headers, req.body, now=NOW.timestamp())
    assert not verify(b"wrong-secret-wrong", req.headers, req.body, now=NOW.timestamp())
    assert not verify(secret.encode(), req.headers, req.body.replace(b"92.5", b"12.5"), now=NOW.timestamp())
    assert not verify(secret.encode(), req.headers, req.body, now=NOW.timestamp() + 3600), "a replay an hour later is refused"
    assert not verify(secret.encode(), {**req.headers, "x-signature-timestamp": str(int(NOW.timestamp()) + 1)}, req.body, now=NOW.timestamp())


async def test_unsigned_webhook_has_no_signature_headers(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    await send("webhook", {"url": receiver.url("/plain")}, make_notification(), ctx)
    assert "x-signature-sha256" not in receiver.requests[0].headers


async def test_redirects_are_followed_hop_by_hop_and_credentials_stay_with_their_origin(
    receiver: Receiver, ctx: SendContext, make_notification: Make
) -> None:
    other = receiver.base.replace("127.0.0.1", "localhost")
    receiver.answer("/a", (307, {"Location": "/b"}, b""))
    receiver.answer("/b", (308, {"Location": other + "/c"}, b""))
    raw = {"url": receiver.url("/a"), "headers": {"Authorization": "Bearer abc"}}
    assert await send("webhook", raw, make_notification(), ctx) == Delivered("HTTP 200")
    assert [(r.method, r.path) for r in receiver.requests] == [("POST", "/a"), ("POST", "/b"), ("POST", "/c")]
    assert receiver.requests[1].headers["authorization"] == "Bearer abc"
    assert "authorization" not in receiver.requests[2].headers and receiver.requests[2].host.startswith("localhost:")
    assert receiver.requests[2].body == receiver.requests[0].body


async def test_too_many_redirects_is_final(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer("/loop", *[(302, {"Location": "/loop"}, b"")] * 10)
    outcome = await send("webhook", {"url": receiver.url("/loop")}, make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_TOO_MANY_REDIRECTS
    assert len(receiver.requests) == 4


async def test_https_receiver_is_verified_by_name_while_connected_by_checked_address(
    tls_receiver: Receiver, ctx: SendContext, make_notification: Make
) -> None:
    assert await send("slack", {"url": tls_receiver.url("/tls")}, make_notification(), ctx) == Delivered("HTTP 200")
    assert tls_receiver.requests[0].host.startswith("localhost:")


async def test_receiver_down_is_retried_as_unreachable(ctx: SendContext, make_notification: Make) -> None:
    from pulse.cloud.db.embedded import free_port

    outcome = await send("webhook", {"url": f"http://127.0.0.1:{free_port()}/x"}, make_notification(), ctx)
    assert isinstance(outcome, Retry) and outcome.code is Code.NOTIFY_UNREACHABLE
