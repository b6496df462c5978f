"""`pulse bench mqtt` on a short run: all three paths (bare amqtt, HTTP ingest, `pulse cloud mqtt`)
start, carry messages, and the endpoint's acknowledged messages are stored. (The bench once broke
when `_measure`, shared with `pulse bench edge`, grew an option this bench did not pass.)"""

from __future__ import annotations

import pytest

from pulse.bench.mqtt import run
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration


def test_bench_mqtt_runs_every_path_and_stores_what_the_endpoint_acknowledged(
    cloud_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", cloud_settings.database_url)
    monkeypatch.setenv("PULSE_DB_ROLE_PREFIX", cloud_settings.db_role_prefix)
    figures = run(["--devices", "2", "--seconds", "0.5", "--inflight", "2"])
    assert figures["database"] == "DATABASE_URL" and figures["devices"] == 2, figures
    for path in ("mqtt_msgs_per_s", "http_ingest_msgs_per_s", "bare_amqtt_msgs_per_s"):
        assert figures[path] > 0, (path, figures)  # type: ignore[operator]
    assert figures["http_transport_errors"] == 0, figures
    # every message the endpoint acknowledged in the measured half second (and the warm-up) is a row
    assert figures["mqtt_rows_stored"] >= figures["mqtt_msgs_per_s"] * 0.5, figures  # type: ignore[operator]
