"""The [sync] section of the gateway's configuration: defaults, file, environment, refusals."""

from __future__ import annotations

import pytest

from pulse.edge.config import load
from pulse.edge.errors import ConfigError

pytestmark = pytest.mark.unit


def test_sync_defaults_file_and_environment(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text("[sync]\nrecords_per_batch = 500\nbandwidth_bytes_per_s = 4000\n")
    s = load(path, {"PULSE_GW_SYNC_REPORT_INTERVAL_S": "60", "PULSE_GW_SYNC_ENABLED": "false"})
    assert (s.sync.records_per_batch, s.sync.bandwidth_bytes_per_s, s.sync.report_interval_s, s.sync.enabled) == (500, 4000, 60.0, False)
    assert load(None, {}).sync.records_per_batch == 5000
    assert s.state_dir == tmp_path / "identity"


@pytest.mark.parametrize("text", ["records_per_batch = 0", "bandwidth_bytes_per_s = -1", "downlink_wait_s = 31",
                                  "backoff_cap_s = 0.1", "retries = 3"])
def test_bad_sync_options_are_refused_by_name(tmp_path, text):
    path = tmp_path / "gateway.toml"
    path.write_text(f"[sync]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load(path, {})
    assert "sync" in err.value.message
