"""docs/configuration.md is the one configuration reference: every setting of the cloud, of the
notification workers and of the gateway appears there with its environment variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings
from pulse.edge.config import ENV_PREFIX, SECTIONS

pytestmark = pytest.mark.unit

DOC = (Path(__file__).resolve().parents[3] / "docs" / "configuration.md").read_text()


def test_every_cloud_and_notify_setting_is_in_the_reference() -> None:
    names = [f"PULSE_{n.upper()}" for n in Settings.model_fields] + [f"PULSE_NOTIFY_{n.upper()}" for n in NotifySettings.model_fields]
    missing = [n for n in names if f"`{n}`" not in DOC]
    assert missing == [], f"document these settings in docs/configuration.md: {missing}"


def test_every_gateway_option_is_in_the_reference_with_its_section() -> None:
    missing = []
    for section, cls in SECTIONS.items():
        body = DOC.split(f"#### `[{section}]`", 1)
        if len(body) == 1:
            missing.append(f"[{section}]")
            continue
        table = body[1].split("####", 1)[0]
        missing += [f"{section}.{f.name}" for f in dataclasses.fields(cls) if f"`{f.name}`" not in table]
    assert missing == [], f"document these gateway options in docs/configuration.md: {missing}"
    assert f"`{ENV_PREFIX}<SECTION>_<OPTION>`" in DOC
