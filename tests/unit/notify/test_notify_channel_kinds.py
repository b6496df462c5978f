"""Channel kinds are named once, in ``senders.CHANNELS``: the API's enum, the recovery rule for
unknown outcomes and the console's generated kinds file all follow that table."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.cloud.api.notify import ChannelIn, ChannelKind
from pulse.cloud.notify import recovery, senders

pytestmark = pytest.mark.unit

KINDS_TS = Path(__file__).resolve().parents[3] / "cloud" / "console" / "src" / "features" / "notify" / "kinds.ts"


def test_console_kinds_file_is_generated_from_the_channels_table() -> None:
    assert KINDS_TS.read_text() == senders.render_console_kinds(), (
        "cloud/console/src/features/notify/kinds.ts is stale: "
        "regenerate it with .venv/bin/python -m pulse.cloud.notify.senders > cloud/console/src/features/notify/kinds.ts"
    )


def test_the_api_accepts_exactly_the_registered_kinds() -> None:
    assert [k.value for k in ChannelKind] == list(senders.CHANNELS)
    schema = ChannelIn.model_json_schema()
    assert schema["$defs"]["ChannelKind"]["enum"] == list(senders.CHANNELS)


@pytest.mark.parametrize("kind", list(senders.CHANNELS))
def test_a_stale_claim_is_sent_again_only_where_the_channel_folds_repeats(kind: str) -> None:
    status, _ = recovery.verdict(kind, attempts=1, budget=5)
    assert status == ("pending" if senders.CHANNELS[kind].idempotent else "dead")
    assert recovery.verdict(kind, attempts=5, budget=5)[0] == "dead"


def test_pagerduty_is_the_one_idempotent_channel_and_http_kinds_are_the_http_senders() -> None:
    assert senders.IDEMPOTENT_KINDS == {"pagerduty"}
    assert senders.HTTP_KINDS == {"slack", "pagerduty", "teams", "webhook"}


@pytest.mark.parametrize("kind", list(senders.CHANNELS))
def test_the_api_hides_a_webhook_url_exactly_where_the_channel_says_the_url_is_the_credential(kind: str) -> None:
    from pulse.cloud.notify.store import redact

    channel = senders.CHANNELS[kind]
    if channel.secret_url:
        assert "url" in channel.config.model_fields
    shown = redact(kind, {"url": "https://hooks.example.test/services/T000/B000/secret-token"})
    assert (shown["url"] == "https://hooks.example.test/***") is channel.secret_url
    assert senders.SECRET_URL_KINDS == {"slack", "teams"}
