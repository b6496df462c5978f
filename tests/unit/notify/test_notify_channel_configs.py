"""Channel settings: every channel validates its config with a coded error naming the field."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from pulse.cloud.notify import senders
from pulse.cloud.notify.errors import ConfigError
from pulse.cloud.notify.model import Notification, retry_after
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

GOOD: dict[str, dict[str, Any]] = {
    "slack": {"url": "https://hooks.slack.com/services/T/B/x"},
    "pagerduty": {"routing_key": "R" * 32},
    "teams": {"url": "https://x.example/workflows/1", "format": "messagecard"},
    "webhook": {"url": "https://hooks.example/pulse", "headers": {"Authorization": "Bearer t"}, "secret": "0123456789abcdef"},
    "email": {"host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"], "username": "u", "password": "p"},
    "snmp": {"host": "nms.example.com", "version": "v3", "user": "ops", "auth_key": "12345678", "priv_key": "12345678"},
    "mqtt": {"host": "broker.example.com", "topic": "x/{tenant}/{device}", "qos": 2},
}

BAD = [
    ("slack", {"url": "ftp://x/y"}, "url"),
    ("slack", {}, "url"),
    ("slack", {"url": "https://x/y", "extra": 1}, "extra"),
    ("pagerduty", {"routing_key": "short"}, "routing_key"),
    ("pagerduty", {"routing_key": "R" * 32, "events_url": "events.pagerduty.com"}, "events_url"),
    ("teams", {"url": "https://x/y", "format": "card"}, "format"),
    ("webhook", {"url": "https://x/y", "headers": {"Host": "evil"}}, "headers"),
    ("webhook", {"url": "https://x/y", "headers": {"X-A": "b\r\nX-B: c"}}, "headers"),
    ("webhook", {"url": "https://x/y", "headers": {"X-Signature-SHA256": "forged"}}, "headers"),
    ("webhook", {"url": "https://x/y", "secret": "short"}, "secret"),
    ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": []}, "to"),
    ("email", {"host": "smtp.example.com", "sender": "not-an-address", "to": ["b@example.com"]}, "sender"),
    ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"], "username": "u"}, "password"),
    ("email", {"host": "smtp.example.com", "sender": "a@example.com", "to": ["b@example.com"], "security": "ssl3"}, "security"),
    ("email", {"host": "h.example", "sender": "a@example.com", "to": ["b@example.com"], "security": "none", "username": "u", "password": "p"}, "TLS"),
    ("snmp", {"host": "nms", "version": "v2c"}, "community"),
    ("snmp", {"host": "nms", "version": "v3"}, "user"),
    ("snmp", {"host": "nms", "version": "v3", "user": "u", "priv_key": "12345678"}, "auth"),
    ("snmp", {"host": "nms", "community": "c", "enterprise_oid": "1.3.6.x"}, "enterprise_oid"),
    ("snmp", {"host": "nms", "community": "c", "engine_id": "zz"}, "engine_id"),
    ("mqtt", {"host": "b", "topic": "alerts/#"}, "topic"),
    ("mqtt", {"host": "b", "topic": "alerts/{secret}"}, "placeholder"),
    ("mqtt", {"host": "b", "qos": 3}, "qos"),
]


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_good_config_is_accepted(kind: str) -> None:
    assert isinstance(senders.validate(kind, GOOD[kind]), senders.channel(kind).config)


@pytest.mark.parametrize(("kind", "raw", "mentions"), BAD)
def test_a_bad_config_is_refused_naming_the_field(kind: str, raw: dict[str, Any], mentions: str) -> None:
    with pytest.raises(ConfigError) as caught:
        senders.validate(kind, raw)
    assert caught.value.code is Code.NOTIFY_BAD_CONFIG and mentions in caught.value.message


def test_an_unknown_channel_is_its_own_error() -> None:
    with pytest.raises(ConfigError) as caught:
        senders.validate("fax", {})
    assert caught.value.code is Code.NOTIFY_UNKNOWN_CHANNEL and "slack" in caught.value.message


def test_every_registered_channel_has_the_same_shape() -> None:
    assert set(senders.CHANNELS) == {"slack", "pagerduty", "teams", "webhook", "email", "snmp", "mqtt"}
    for kind, channel in senders.CHANNELS.items():
        assert channel.kind == kind and callable(channel.send) and channel.config.model_config.get("frozen")


def test_secrets_do_not_show_in_a_config_repr() -> None:
    text = repr(senders.validate("webhook", GOOD["webhook"])) + repr(senders.validate("pagerduty", GOOD["pagerduty"]))
    assert "0123456789abcdef" not in text and "R" * 32 not in text


def test_a_notification_needs_an_aware_time_and_known_kinds() -> None:
    base: dict[str, Any] = {
        "alert_id": "a",
        "fingerprint": "f",
        "event": "opened",
        "severity": "major",
        "tenant": "t",
        "device": "d",
        "explanation": "x",
        "console_url": "https://c",
        "occurred_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }
    assert Notification(**base).event_id == Notification(**base).event_id
    for bad in ({"occurred_at": dt.datetime(2026, 1, 1)}, {"event": "reopened"}, {"severity": "fatal"}):
        with pytest.raises(ValueError):
            Notification(**(base | bad))


NOW = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("12", 12.0), ("999999", 3600.0), ("Wed, 25 Nov 2026 08:00:30 GMT", 30.0), ("Wed, 25 Nov 2026 07:00:00 GMT", 0.0), ("soon", None)],
)
def test_retry_after_reads_seconds_and_dates_and_is_capped(header: str | None, seconds: float | None) -> None:
    assert retry_after(header, NOW) == seconds


def test_a_test_notification_says_so_everywhere() -> None:
    from pulse.cloud.notify.model import channel_test_notification
    from pulse.cloud.notify.senders import pagerduty, slack

    n = channel_test_notification(tenant="acme", console_url="https://pulse.example.com/channels/7", now=NOW, channel="ops-slack")
    assert n.event == "test" and n.severity == "info" and "No action is needed" in n.explanation
    assert n.title == "[INFO] test notification: pulse-test"
    pd = json.loads(pagerduty.build(senders.validate("pagerduty", GOOD["pagerduty"]), n).body)  # type: ignore[arg-type]
    assert pd["event_action"] == "trigger" and pd["dedup_key"] == f"pulse-test-{n.alert_id}"
    assert "alert test" in json.loads(slack.build(senders.validate("slack", GOOD["slack"]), n).body)["blocks"][0]["text"]["text"]  # type: ignore[arg-type]
