"""docs/notifications.md is kept true: every notify code is listed, its JSON examples parse."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pulse.cloud.notify import store
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
    """The examples are API documents: they convert to the pure Schedule and Policy without a refusal."""
    schedules = [store.schedule_of(b["name"], b["time_zone"], b["layers"], b["overrides"]) for b in JSON_BLOCKS if "time_zone" in b]
    policies = [store.pure_policy(b["name"], b["levels"], b["repeat"]) for b in JSON_BLOCKS if "levels" in b]
    assert len(schedules) == 1 and len(policies) == 1
    assert isinstance(schedules[0], Schedule) and isinstance(policies[0], Policy)
    assert schedules[0].layers[1].restrictions and len(policies[0].levels) == 3


def test_every_notify_setting_is_in_the_operator_guide_and_the_env_example() -> None:
    from pulse.cloud.notify.settings import NotifySettings

    root = Path(__file__).resolve().parents[3]
    guide = (root / "docs" / "cloud.md").read_text().split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    example = (root / "deploy" / ".env.example").read_text()
    for name in NotifySettings.model_fields:
        variable = f"PULSE_NOTIFY_{name.upper()}"
        assert f"`{variable}`" in guide, variable
        assert f"`{variable}`" in DOC, variable
        assert f"# {variable}=" in example, variable
