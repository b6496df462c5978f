"""The pure checks of inbound acknowledgements: signatures, Slack's replay window, email link tokens,
and reading the providers' bodies. Tables of inputs and the code each is refused with."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from urllib.parse import urlencode

import pytest

from pulse.cloud.notify import inbound
from pulse.cloud.notify.inbound import LinkClaim, Refused
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

SECRET = "s3cret-s3cret-s3cret"
BODY = b'{"event": {"event_type": "incident.acknowledged"}}'
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


def v1(secret: str, body: bytes = BODY) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (v1(SECRET), True),
        (f"{v1('old-secret')},{v1(SECRET)}", True),  # rotation: several signatures, one matches
        (f" {v1(SECRET)} , v1=00", True),
        (v1("other"), False),
        (v1(SECRET).upper(), False),
        (v1(SECRET)[3:], False),  # the bare hex without the version
        ("", False),
        (None, False),
    ],
)
def test_pagerduty_signature(header: str | None, ok: bool) -> None:
    if ok:
        inbound.verify_pagerduty(SECRET, BODY, header)
    else:
        with pytest.raises(Refused) as refused:
            inbound.verify_pagerduty(SECRET, BODY, header)
        assert (refused.value.code, refused.value.status) == (Code.ACK_BAD_SIGNATURE, 401)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"event": {"event_type": "incident.acknowledged", "agent": {"id": "P1", "summary": "Ana"}, "data": {"incident_key": "pulse-ab"}}}, ("ack", "pulse-ab", "P1", "Ana")),
        ({"event": {"event_type": "incident.resolved", "agent": None, "data": {"incident_key": "k"}}}, ("close", "k", "", "PagerDuty")),
        ({"event": {"event_type": "incident.triggered", "data": {}}}, None),
        ({"event": {"event_type": "incident.annotated"}}, None),
    ],
)
def test_pagerduty_bodies(body: dict[str, object], expected: tuple[str, str, str, str] | None) -> None:
    action = inbound.parse_pagerduty(json.dumps(body).encode())
    assert (None if action is None else (action.action, action.ref, action.user_id, action.user_name)) == expected


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"event": 1}', b'{"event": {"event_type": "incident.acknowledged", "data": {}}}'])
def test_pagerduty_bodies_of_another_shape_are_bad_payloads(body: bytes) -> None:
    with pytest.raises(Refused) as refused:
        inbound.parse_pagerduty(body)
    assert (refused.value.code, refused.value.status) == (Code.ACK_BAD_PAYLOAD, 400)


def slack(secret: str, body: bytes, at: dt.datetime) -> tuple[str, str]:
    ts = str(int(at.timestamp()))
    return ts, "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("sent", "secret", "code"),
    [
        (NOW, SECRET, None),
        (NOW - dt.timedelta(minutes=5), SECRET, None),
        (NOW + dt.timedelta(minutes=5), SECRET, None),
        (NOW - dt.timedelta(minutes=5, seconds=1), SECRET, Code.ACK_EXPIRED),
        (NOW + dt.timedelta(minutes=5, seconds=1), SECRET, Code.ACK_EXPIRED),
        (NOW, "another-secret", Code.ACK_BAD_SIGNATURE),
        (NOW - dt.timedelta(hours=1), "another-secret", Code.ACK_BAD_SIGNATURE),  # the signature is checked first
    ],
)
def test_slack_signature_and_window(sent: dt.datetime, secret: str, code: Code | None) -> None:
    body = b"payload=%7B%7D"
    ts, sig = slack(secret, body, sent)
    if code is None:
        inbound.verify_slack(SECRET, body, ts, sig, NOW)
    else:
        with pytest.raises(Refused) as refused:
            inbound.verify_slack(SECRET, body, ts, sig, NOW)
        assert refused.value.code == code


@pytest.mark.parametrize(("ts", "sig"), [(None, None), ("", "v0=00"), ("soon", "v0=00"), ("9" * 30, "v0=00")])
def test_slack_without_a_usable_timestamp_is_refused(ts: str | None, sig: str | None) -> None:
    with pytest.raises(Refused) as refused:
        inbound.verify_slack(SECRET, b"", ts, sig, NOW)
    assert refused.value.code == Code.ACK_BAD_SIGNATURE


def test_slack_button_and_other_interactions() -> None:
    click = {"type": "block_actions", "user": {"id": "U1", "username": "ana"}, "actions": [{"action_id": "pulse_ack", "value": "42"}]}
    action = inbound.parse_slack(urlencode({"payload": json.dumps(click)}).encode())
    assert action is not None and (action.action, action.ref, action.user_id, action.user_name) == ("ack", "42", "U1", "ana")
    other = click | {"actions": [{"action_id": "something_else", "value": "42"}]}
    assert inbound.parse_slack(urlencode({"payload": json.dumps(other)}).encode()) is None
    for bad in (b"", b"payload=not-json", urlencode({"payload": json.dumps(click | {"actions": [{"action_id": "pulse_ack", "value": "4e2"}]})}).encode()):
        with pytest.raises(Refused) as refused:
            inbound.parse_slack(bad)
        assert refused.value.code == Code.ACK_BAD_PAYLOAD


def test_email_link_round_trip_expiry_and_tampering() -> None:
    key = inbound.link_key("the-cloud-secret-0123456789abcdef")
    claim = LinkClaim("acme", 42, "ana@example.com", NOW + dt.timedelta(hours=1))
    token = inbound.sign_link(key, claim)
    assert inbound.verify_link(key, token, NOW) == claim
    with pytest.raises(Refused) as expired:
        inbound.verify_link(key, token, NOW + dt.timedelta(hours=1))
    assert (expired.value.code, expired.value.status) == (Code.ACK_EXPIRED, 410)
    other_key = inbound.link_key("another-cloud-secret-0123456789")
    head, sig = token.split(".")
    forged_payload = inbound.sign_link(key, LinkClaim("other", 42, "ana@example.com", claim.expires)).split(".")[0] + "." + sig
    for bad in (forged_payload, head, "", "!!!.???", token + "x"):
        with pytest.raises(Refused) as refused:
            inbound.verify_link(key, bad, NOW)
        assert refused.value.code == Code.ACK_BAD_SIGNATURE
    with pytest.raises(Refused):
        inbound.verify_link(other_key, token, NOW)


def test_teams_shared_secret_and_body() -> None:
    inbound.verify_shared_secret(SECRET, SECRET)
    for offered in (None, "", SECRET + "x", SECRET[:-1]):
        with pytest.raises(Refused):
            inbound.verify_shared_secret(SECRET, offered)
    action = inbound.parse_teams(b'{"pulse_action": "close", "alert_id": "7", "responder": {"email": "a@b.c", "name": "A"}}')
    assert (action.action, action.ref, action.user_id, action.user_name) == ("close", "7", "a@b.c", "A")
    for bad in (b"{}", b'{"pulse_action": "ack", "alert_id": "x"}', b'{"pulse_action": "drop", "alert_id": "1"}', b"[]"):
        with pytest.raises(Refused) as refused:
            inbound.parse_teams(bad)
        assert refused.value.code == Code.ACK_BAD_PAYLOAD
