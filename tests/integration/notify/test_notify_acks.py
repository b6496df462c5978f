"""Acknowledging and resolving alerts from where people are paged, on a real cloud served by uvicorn
on loopback (requests are real HTTP with httpx), real PostgreSQL, the notify workers run one pass at
a time: who may act (a tenant permission), PagerDuty webhooks, Slack buttons, email links."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from notify_cloud import PD_KEY, NotifyCloud, fast_notify, notify_cloud, open_alert, setup_tenant
from notify_receivers import Receiver

from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify import inbound
from pulse.cloud.notify.worker import NotifyWorkers
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration


async def test_who_may_acknowledge_is_a_permission_the_tenant_admin_sets(ncloud: Any) -> None:
    c = ncloud
    tenant, admin, _ = await setup_tenant(c)
    slug = await c.slug(tenant)
    customer = await c.user("customer", slug)
    r = await c.client.get("/api/v1/permissions", headers=customer)
    assert r.status_code == 200
    assert r.json() == [
        {"permission": "alerts.ack", "roles": ["customer", "external", "tenant-admin"]},
        {"permission": "alerts.close", "roles": ["external", "tenant-admin"]},
    ]
    first = await open_alert(c, admin)
    # by default a customer may acknowledge, not close
    r = await c.client.post(f"/api/v1/alerts/{first}/ack", headers=customer)
    assert (r.status_code, r.json()["state"], r.json()["acknowledged_by"].startswith("local:")) == (200, "acknowledged", True)
    r = await c.client.post(f"/api/v1/alerts/{first}/close", headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "ack.forbidden")
    # only tenant admins change the permission; tenant-admin always keeps it
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": []}, headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "auth.forbidden")
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": ["operator"]}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (422, "api.invalid")
    r = await c.client.put("/api/v1/permissions/alerts.nope", json={"roles": []}, headers=admin)
    assert r.status_code == 422
    second = await open_alert(c, admin)  # opened once the first is no longer open (open_alert takes the open one)
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": []}, headers=admin)
    assert r.json() == {"permission": "alerts.ack", "roles": ["tenant-admin"]}
    r = await c.client.post(f"/api/v1/alerts/{second}/ack", headers=customer)
    assert (r.status_code, r.json()["code"]) == (403, "ack.forbidden")
    detail = (await c.client.get(f"/api/v1/alerts/{second}", headers=admin)).json()
    assert detail["state"] == "open" and [e["kind"] for e in detail["events"]] == ["opened"]
    r = await c.client.post(f"/api/v1/alerts/{second}/ack", headers=admin)
    assert r.json()["state"] == "acknowledged"
    audit = (await c.client.get("/api/v1/audit", params={"action": "permission.set"}, headers=admin)).json()["items"]
    assert [a["target"] for a in audit] == ["alerts.ack"]
    # another tenant's permissions are its own
    _, other = await c.tenant_user()
    r = await c.client.get("/api/v1/permissions", headers=other)
    assert r.json()[0]["roles"] == ["customer", "external", "tenant-admin"]


PD_SECRET = "pd-webhook-secret-" + "0123456789"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def pd_signature(secret: str, body: bytes) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pd_event(event_type: str, incident_key: str, *, user: str = "PUSER1", name: str = "Ana Lima") -> bytes:
    """A PagerDuty webhook v3 body, as PagerDuty documents it (trimmed to what matters)."""
    event = {
        "id": "01" + uuid.uuid4().hex[:10].upper(),
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": "2026-12-05T21:00:00.000Z",
        "agent": {"id": user, "type": "user_reference", "summary": name, "html_url": f"https://acme.pagerduty.com/users/{user}"},
        "client": None,
        "data": {"id": "Q0RIJJZL24RC6W", "type": "incident", "number": 7, "status": event_type.split(".")[1], "incident_key": incident_key, "title": "pump hot"},
    }
    return json.dumps({"event": event}).encode()


@dataclass
class Paged:
    """A tenant whose route pages a PagerDuty channel (events to a loopback receiver) and escalates to "/team"."""

    c: NotifyCloud
    tenant: uuid.UUID
    admin: dict[str, str]
    channel: str
    alert: int
    incident_key: str  # PagerDuty: the dedup_key of the trigger Pulse sent
    message: dict[str, Any]  # what the channel was sent when the alert opened
    step: Callable[[float], Any]


@pytest.fixture
async def served(cloud_settings: Settings, serve: Callable[..., AbstractAsyncContextManager[str]]) -> AsyncIterator[tuple[NotifyCloud, httpx.AsyncClient]]:
    """The cloud (workers run by the test, one pass at a time) served by uvicorn on loopback, and a
    client that talks to it over real HTTP: the "local sender" of the webhooks. The app's clock
    (Slack's 5-minute window, email links' expiry) is ``clock(c)``, frozen; the workers run on
    times derived from it, so nothing depends on the time of day."""
    now = [dt.datetime.now(dt.UTC).replace(microsecond=0)]  # frozen: the app's "now" moves only when a test moves it
    async with notify_cloud(cloud_settings, fast_notify(workers=False), clock=lambda: now[0]) as c, serve(c.app, lifespan=False) as url:
        async with httpx.AsyncClient(base_url=url) as sender:
            c.app.state.test_now = now
            yield c, sender


async def paged_tenant(
    c: NotifyCloud,
    receiver: Receiver,
    *,
    users: dict[str, str] | None = None,
    secret: str = PD_SECRET,
    kind: str = "pagerduty",
    config: dict[str, Any] | None = None,
) -> Paged:
    """A tenant with one alert paged on a ``kind`` channel (PagerDuty or Slack, posting to the
    receiver at ``/<kind>/<tenant>``, inbound secret ``secret``) whose escalation's level 2 is "/team"."""
    workers: NotifyWorkers = c.app.state.notify_workers
    tenant, admin = await c.tenant_user()
    url = receiver.url(f"/{kind}/{tenant}")
    if config is None:
        config = {
            "pagerduty": {"routing_key": PD_KEY, "events_url": url, "webhook_secret": secret, "users": users or {}},
            "slack": {"url": url, "signing_secret": secret, "users": users or {}},
            "teams": {"url": url, "action_secret": secret},
        }[kind]
    r = await c.client.post("/api/v1/notify/channels", json={"name": kind, "kind": kind, "config": config}, headers=admin)
    assert r.status_code == 201, r.text
    first = r.json()["id"]
    r = await c.client.post("/api/v1/notify/channels", json={"name": "team", "kind": "webhook", "config": {"url": receiver.url(f"/team/{tenant}")}}, headers=admin)
    team = r.json()["id"]
    policy = {"name": "p", "levels": [{"delay_s": 300, "targets": [{"channel": first}]}, {"delay_s": 600, "targets": [{"channel": team}]}]}
    r = await c.client.post("/api/v1/escalation-policies", json=policy, headers=admin)
    assert r.status_code == 201, r.text
    r = await c.client.post("/api/v1/notify/routes", json={"name": "r", "min_severity": "major", "channels": [first], "escalation_policy": r.json()["id"]}, headers=admin)
    assert r.status_code == 201, r.text
    assert (await c.client.post("/api/v1/rules", json={"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}, headers=admin)).status_code == 201
    alert = await open_alert(c, admin)
    t0 = clock(c)

    async def step(seconds: float) -> None:
        await workers.run_once(t0 + dt.timedelta(seconds=seconds), wait_sends=True)
        await workers.run_once(t0 + dt.timedelta(seconds=seconds), wait_sends=True)

    await step(0)
    [message] = sent(receiver, f"/{kind}/{tenant}") if kind != "email" else [{}]
    return Paged(c, tenant, admin, first, alert, message.get("dedup_key", ""), message, step)


def sent(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [json.loads(q.body) for q in receiver.requests if q.path == path]


async def test_signed_pagerduty_acknowledgement_acks_once_as_that_user_and_stops_escalation(
    served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver
) -> None:
    c, sender = served
    ana = f"ana-{uuid.uuid4().hex[:6]}@example.com"
    p = await paged_tenant(c, receiver, users={"PUSER1": ana})
    assert p.message["event_action"] == "trigger"
    await c.user("customer", await c.slug(p.tenant), email=ana)
    # the secret is stored with the channel and never read back
    channel = (await c.client.get(f"/api/v1/notify/channels/{p.channel}", headers=p.admin)).json()
    assert channel["config"]["webhook_secret"] == "***" and PD_SECRET not in json.dumps(channel)
    url = f"/hooks/v1/pagerduty/{p.channel}"
    body = pd_event("incident.acknowledged", p.incident_key)

    # a bad signature: refused with its code, nothing changes
    for headers in ({"X-PagerDuty-Signature": pd_signature("another-secret-0123", body)}, {}):
        r = await sender.post(url, content=body, headers={"Content-Type": "application/json", **headers})
        assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    tampered = body.replace(b"Ana Lima", b"Eve Lima")
    r = await sender.post(url, content=tampered, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert detail["state"] == "open" and [e["kind"] for e in detail["events"]] == ["opened"]

    # correctly signed (PagerDuty may send several signatures while a secret rotates), posted twice
    signature = pd_signature("old-secret-000000", body) + ", " + pd_signature(PD_SECRET, body)
    answers = [await sender.post(url, content=body, headers={"X-PagerDuty-Signature": signature}) for _ in range(2)]
    assert [(r.status_code, r.json()) for r in answers] == [
        (200, {"result": "acknowledged", "alert_id": p.alert}),
        (200, {"result": "unchanged", "alert_id": p.alert}),
    ]
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    ana_id = await c.db_scalar(p.tenant, "SELECT id FROM users WHERE email = $1", ana)
    assert detail["state"] == "acknowledged" and detail["acknowledged_by"] == f"local:{ana_id}"
    acks = [e for e in detail["events"] if e["kind"] == "acknowledged"]
    assert len(acks) == 1 and acks[0]["detail"]["via"] == "pagerduty" and acks[0]["detail"]["external_user"] == "PUSER1"
    audit = (await c.client.get("/api/v1/audit", params={"action": "alert."}, headers=p.admin)).json()["items"]
    assert [(a["action"], a["actor"], a["target"]) for a in audit] == [("alert.ack", f"local:{ana_id}", str(p.alert))]

    # escalation stops: level 2 ("/team") is never paged, however long the clock runs
    await p.step(301)
    await p.step(5000)
    assert sent(receiver, f"/team/{p.tenant}") == []
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert detail["escalation"]["stopped"] is True and detail["escalation"]["stop_reason"] == "acknowledged"
    assert [e["event_action"] for e in sent(receiver, f"/pagerduty/{p.tenant}")] == ["trigger", "acknowledge"]

    # resolved in PagerDuty by someone with no account here: closed, recorded by their PagerDuty name
    body = pd_event("incident.resolved", p.incident_key, user="PBOB", name="Bob Ops")
    r = await sender.post(url, content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert r.json() == {"result": "closed", "alert_id": p.alert}
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert (detail["state"], detail["closed_by"]) == ("closed", "pagerduty:Bob Ops")

    # other events are answered and ignored; a body of another shape is a coded 400
    body = pd_event("incident.triggered", p.incident_key)
    r = await sender.post(url, content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert r.json() == {"result": "ignored", "alert_id": None}
    body = pd_event("incident.resolved", f"pulse-test-{uuid.uuid4()}")  # the incident of a channel test
    r = await sender.post(url, content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert r.json() == {"result": "ignored", "alert_id": None}
    body = pd_event("incident.resolved", "pulse-0000000000000000000000000000000000000000")
    r = await sender.post(url, content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert (r.status_code, r.json()["code"]) == (404, "ack.unknown_alert")
    r = await sender.post(url, content=b"[]", headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, b"[]")})
    assert (r.status_code, r.json()["code"]) == (400, "ack.bad_payload")


async def test_a_pagerduty_webhook_of_tenant_a_cannot_act_on_tenant_b(served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver) -> None:
    c, sender = served
    a = await paged_tenant(c, receiver)
    b = await paged_tenant(c, receiver, secret="tenant-b-secret-0123456")
    # B's channel, B's secret, A's incident: B's tenant has no such alert
    body = pd_event("incident.acknowledged", a.incident_key)
    r = await sender.post(f"/hooks/v1/pagerduty/{b.channel}", content=body, headers={"X-PagerDuty-Signature": pd_signature("tenant-b-secret-0123456", body)})
    assert (r.status_code, r.json()["code"]) == (404, "ack.unknown_alert")
    # A's channel signed with B's secret: refused before anything is looked up
    r = await sender.post(f"/hooks/v1/pagerduty/{a.channel}", content=body, headers={"X-PagerDuty-Signature": pd_signature("tenant-b-secret-0123456", body)})
    assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    # a channel id that is not a PagerDuty channel with a secret
    r = await sender.post(f"/hooks/v1/pagerduty/{uuid.uuid4()}", content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert (r.status_code, r.json()["code"]) == (404, "ack.not_configured")
    for p in (a, b):
        assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "open"


async def test_external_people_may_act_only_while_the_tenant_grants_it(served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver) -> None:
    c, sender = served
    p = await paged_tenant(c, receiver)
    r = await c.client.put("/api/v1/permissions/alerts.ack", json={"roles": ["customer"]}, headers=p.admin)
    assert r.status_code == 200
    body = pd_event("incident.acknowledged", p.incident_key, user="PNOBODY", name="Someone")
    r = await sender.post(f"/hooks/v1/pagerduty/{p.channel}", content=body, headers={"X-PagerDuty-Signature": pd_signature(PD_SECRET, body)})
    assert (r.status_code, r.json()["code"]) == (403, "ack.forbidden")
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "open"


def clock(c: NotifyCloud) -> dt.datetime:
    return c.app.state.test_now[0]  # type: ignore[no-any-return]


def slack_request(secret: str, payload: dict[str, Any], *, at: dt.datetime) -> tuple[bytes, dict[str, str]]:
    """An interactivity request as Slack sends it: a form with ``payload``, signed with the timestamp."""
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(at.timestamp()))
    signature = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": signature}
    return body, headers


def slack_click(alert: str | int, *, user: str = "U024BE7LH", name: str = "ana") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": name, "name": name, "team_id": "T0CAG"},
        "team": {"id": "T0CAG", "domain": "acme"},
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "actions": [{"type": "button", "action_id": "pulse_ack", "block_id": "b1", "value": str(alert), "action_ts": "1548426417.840180"}],
    }


async def test_slack_acknowledge_button_acks_once_as_that_user_and_stops_escalation(
    served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver
) -> None:
    c, sender = served
    ana = f"ana-{uuid.uuid4().hex[:6]}@example.com"
    p = await paged_tenant(c, receiver, users={"U024BE7LH": ana}, secret=SLACK_SECRET, kind="slack")
    await c.user("customer", await c.slug(p.tenant), email=ana)
    # the message carries the button, valued with the alert id
    [actions] = [b for b in p.message["blocks"] if b["type"] == "actions"]
    [button] = [e for e in actions["elements"] if e.get("action_id") == "pulse_ack"]
    assert button["value"] == str(p.alert)
    channel = (await c.client.get(f"/api/v1/notify/channels/{p.channel}", headers=p.admin)).json()
    assert channel["config"]["signing_secret"] == "***"
    url = f"/hooks/v1/slack/{p.channel}"

    body, headers = slack_request("not-the-signing-secret-000", slack_click(p.alert), at=clock(c))
    r = await sender.post(url, content=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    body, headers = slack_request(SLACK_SECRET, slack_click(p.alert), at=clock(c) - dt.timedelta(minutes=5, seconds=1))
    r = await sender.post(url, content=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "ack.expired")  # a replay of an old, genuine request
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert detail["state"] == "open" and [e["kind"] for e in detail["events"]] == ["opened"]

    body, headers = slack_request(SLACK_SECRET, slack_click(p.alert), at=clock(c) - dt.timedelta(minutes=4))
    answers = [await sender.post(url, content=body, headers=headers) for _ in range(2)]
    assert [(r.status_code, r.json()) for r in answers] == [
        (200, {"result": "acknowledged", "alert_id": p.alert}),
        (200, {"result": "unchanged", "alert_id": p.alert}),
    ]
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    ana_id = await c.db_scalar(p.tenant, "SELECT id FROM users WHERE email = $1", ana)
    assert detail["acknowledged_by"] == f"local:{ana_id}"
    assert [e["detail"].get("via") for e in detail["events"] if e["kind"] == "acknowledged"] == ["slack"]
    await p.step(301)
    await p.step(5000)
    assert sent(receiver, f"/team/{p.tenant}") == []
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert detail["escalation"]["stopped"] is True and detail["escalation"]["stop_reason"] == "acknowledged"
    # the acknowledged message that follows has no button
    later = sent(receiver, f"/slack/{p.tenant}")[1:]
    assert later and all("pulse_ack" not in json.dumps(m) for m in later)

    # other interactions are ignored; a body that is no interactivity payload is a coded 400
    body, headers = slack_request(SLACK_SECRET, {"type": "view_submission", "user": {"id": "U1"}}, at=clock(c))
    assert (await sender.post(url, content=body, headers=headers)).json() == {"result": "ignored", "alert_id": None}
    body, headers = slack_request(SLACK_SECRET, slack_click("1" * 40), at=clock(c))
    r = await sender.post(url, content=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (400, "ack.bad_payload")


async def test_a_slack_app_of_tenant_b_cannot_acknowledge_tenant_a(served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver) -> None:
    c, sender = served
    a = await paged_tenant(c, receiver, secret=SLACK_SECRET, kind="slack")
    b = await paged_tenant(c, receiver, secret="tenant-b-slack-secret-01", kind="slack")
    body, headers = slack_request("tenant-b-slack-secret-01", slack_click(a.alert), at=clock(c))
    r = await sender.post(f"/hooks/v1/slack/{b.channel}", content=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (404, "ack.unknown_alert")
    r = await sender.post(f"/hooks/v1/slack/{a.channel}", content=body, headers=headers)
    assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    r = await sender.post(f"/hooks/v1/pagerduty/{a.channel}", content=body, headers=headers)  # a Slack channel is no PagerDuty one
    assert (r.status_code, r.json()["code"]) == (404, "ack.not_configured")
    assert (await c.client.get(f"/api/v1/alerts/{a.alert}", headers=a.admin)).json()["state"] == "open"


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    messages: list[email.message.EmailMessage]

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server on loopback (plain: the link, not the transport, is under test)."""
    box = Mailbox([])
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


def ack_links_in(message: email.message.EmailMessage) -> list[str]:
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    return re.findall(r"^Acknowledge[^:]*: (\S+)", text, re.MULTILINE)


async def test_email_link_confirms_on_get_acknowledges_on_post_once_and_expires(
    served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver, smtp: tuple[Mailbox, int]
) -> None:
    c, sender = served
    box, port = smtp
    ana = f"ana-{uuid.uuid4().hex[:6]}@example.com"
    config = {"host": "127.0.0.1", "port": port, "security": "none", "sender": "pulse@example.com", "to": [ana]}
    p = await paged_tenant(c, receiver, kind="email", config=config)
    await c.user("customer", await c.slug(p.tenant), email=ana)
    [mail] = box.messages
    [link] = ack_links_in(mail)
    assert link.startswith("https://pulse.example.com/hooks/v1/ack/")  # PULSE_NOTIFY_CONSOLE_URL: where people reach Pulse
    path = link.removeprefix("https://pulse.example.com")
    html_part = mail.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert link in html_part.replace("&amp;", "&")

    # a scanner (or the person) opening the link sees a confirmation page; nothing changes
    for _ in range(2):
        r = await sender.get(path)
        assert r.status_code == 200 and "Acknowledge this alert?" in r.text and '<form method="post"' in r.text
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "open"

    # a changed token: a coded error page, nothing changes
    head, sig = path.rsplit(".", 1)
    forged = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    for method in ("GET", "POST"):
        r = await sender.request(method, forged)
        assert r.status_code == 401 and "ack.bad_signature" in r.text
    # a link signed for tenant B only ever reaches tenant B's alerts, whatever alert id it names
    other, _ = await c.tenant_user()
    key = inbound.link_key(c.app.state.pulse.settings.jwt_secret.get_secret_value())
    claim = inbound.LinkClaim(await c.slug(other), p.alert, ana, clock(c) + dt.timedelta(hours=1))
    r = await sender.post(f"/hooks/v1/ack/{inbound.sign_link(key, claim)}")
    assert r.status_code == 404 and "ack.unknown_alert" in r.text
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "open"

    answers = [await sender.post(path) for _ in range(2)]
    assert [(r.status_code, "Acknowledged" in r.text, "Already acknowledged" in r.text) for r in answers] == [(200, True, False), (200, False, True)]
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    ana_id = await c.db_scalar(p.tenant, "SELECT id FROM users WHERE email = $1", ana)
    assert detail["acknowledged_by"] == f"local:{ana_id}"
    assert [e["detail"].get("via") for e in detail["events"] if e["kind"] == "acknowledged"] == ["email"]
    await p.step(301)
    await p.step(5000)
    assert sent(receiver, f"/team/{p.tenant}") == []
    detail = (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()
    assert detail["escalation"]["stopped"] is True and detail["escalation"]["stop_reason"] == "acknowledged"
    assert len(box.messages) == 2 and ack_links_in(box.messages[1]) == []  # the "acknowledged" mail offers no link

    # past its expiry (24 h from the notification, i.e. from the alert's "opened" event) the link answers a coded page
    [opened] = [dt.datetime.fromisoformat(e["at"]) for e in detail["events"] if e["kind"] == "opened"]
    c.app.state.test_now[0] = opened + dt.timedelta(hours=24) - dt.timedelta(seconds=1)
    assert (await sender.get(path)).status_code == 200  # still good a second before
    c.app.state.test_now[0] = opened + dt.timedelta(hours=24)
    for method in ("GET", "POST"):
        r = await sender.request(method, path)
        assert r.status_code == 410 and "ack.expired" in r.text


TEAMS_SECRET = "teams-workflow-shared-secret-0001"


def teams_response(alert: int | str, email: str, action: str = "ack") -> dict[str, Any]:
    """What a workflow forwards: the card's Action.Submit data and who responded."""
    return {"pulse_action": action, "alert_id": str(alert), "responder": {"email": email, "name": "Ana Lima"}}


async def test_a_teams_workflow_with_the_shared_secret_acks_once_as_the_responder(
    served: tuple[NotifyCloud, httpx.AsyncClient], receiver: Receiver
) -> None:
    c, sender = served
    ana = f"ana-{uuid.uuid4().hex[:6]}@example.com"
    p = await paged_tenant(c, receiver, secret=TEAMS_SECRET, kind="teams")
    await c.user("customer", await c.slug(p.tenant), email=ana)
    [card] = [a["content"] for a in p.message["attachments"]]
    assert {"type": "Action.Submit", "title": "Acknowledge", "data": {"pulse_action": "ack", "alert_id": str(p.alert)}} in card["actions"]
    assert (await c.client.get(f"/api/v1/notify/channels/{p.channel}", headers=p.admin)).json()["config"]["action_secret"] == "***"
    url = f"/hooks/v1/teams/{p.channel}"
    for headers in ({"X-Pulse-Secret": "not-the-shared-secret-at-all"}, {}):
        r = await sender.post(url, json=teams_response(p.alert, ana), headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "ack.bad_signature")
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "open"
    answers = [await sender.post(url, json=teams_response(p.alert, ana), headers={"X-Pulse-Secret": TEAMS_SECRET}) for _ in range(2)]
    assert [r.json()["result"] for r in answers] == ["acknowledged", "unchanged"]
    ana_id = await c.db_scalar(p.tenant, "SELECT id FROM users WHERE email = $1", ana)
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["acknowledged_by"] == f"local:{ana_id}"
    await p.step(301)
    await p.step(5000)
    assert sent(receiver, f"/team/{p.tenant}") == []
    r = await sender.post(url, json={"pulse_action": "delete", "alert_id": "1"}, headers={"X-Pulse-Secret": TEAMS_SECRET})
    assert (r.status_code, r.json()["code"]) == (400, "ack.bad_payload")
    # tenant B's workflow names tenant A's alert: not found in B
    b = await paged_tenant(c, receiver, secret="tenant-b-teams-secret-000001", kind="teams")
    r = await sender.post(f"/hooks/v1/teams/{b.channel}", json=teams_response(p.alert, ana, "close"), headers={"X-Pulse-Secret": "tenant-b-teams-secret-000001"})
    assert (r.status_code, r.json()["code"]) == (404, "ack.unknown_alert")
    assert (await c.client.get(f"/api/v1/alerts/{p.alert}", headers=p.admin)).json()["state"] == "acknowledged"
