"""docs/notifications.md is kept true: every notify code is listed, its JSON examples parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pulse.cloud.notify.escalation import Policy
from pulse.cloud.notify.model import Notification
from pulse.cloud.notify.oncall import Schedule
from pulse.protocol.errors import Code

pytestmark = pytest.mark.unit

DOC = (Path(__file__).resolve().parents[3] / "docs" / "notifications.md").read_text()
JSON_BLOCKS = [json.loads(b) for b in re.findall(r"^```json\n(.*?)^```", DOC, re.MULTILINE | re.DOTALL)]


def test_every_notify_code_is_documented() -> None:
    codes = [c for c in Code if c.value.startswith("notify.")]
    assert len(codes) >= 10
    for code in codes:
        assert f"| `{code.value}` |" in DOC


def test_the_documented_webhook_body_has_exactly_the_fields_pulse_sends() -> None:
    [body] = [b for b in JSON_BLOCKS if b.get("schema") == "pulse.notification.v1"]
    assert set(body) == {"schema", "event_id", *Notification.model_fields}


def test_the_documented_schedule_and_policy_are_accepted() -> None:
    schedules = [Schedule.parse(b) for b in JSON_BLOCKS if "time_zone" in b]
    policies = [Policy.parse(b) for b in JSON_BLOCKS if "levels" in b]
    assert len(schedules) == 1 and len(policies) == 1
