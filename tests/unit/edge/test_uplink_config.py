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


@pytest.mark.parametrize("text", ["records_per_batch = 0", "bandwidth_bytes_per_s = -1", "downlink_wait_s = 301", "window = 0", "window = 9", "probe_interval_s = -1", "batch_target_s = 0.1",
                                  'link_profile = "satellite"',
                                  "backoff_cap_s = 0.1", "retries = 3"])
def test_bad_sync_options_are_refused_by_name(tmp_path, text):
    path = tmp_path / "gateway.toml"
    path.write_text(f"[sync]\n{text}\n")
    with pytest.raises(ConfigError) as err:
        load(path, {})
    assert "sync" in err.value.message


def test_the_cellular_profile_sets_what_the_file_does_not(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[sync]\nlink_profile = "cellular"\nreport_interval_s = 600\n')
    s = load(path, {"PULSE_GW_SYNC_PROBE_INTERVAL_S": "10"}).sync
    assert (s.link_profile, s.downlink_wait_s, s.request_timeout_s, s.backoff_cap_s) == ("cellular", 240, 60.0, 300.0)
    assert (s.report_interval_s, s.probe_interval_s) == (600.0, 10.0)  # the file and the environment win
    d = load(None, {}).sync
    assert (d.link_profile, d.downlink_wait_s, d.report_interval_s, d.window) == ("default", 25, 300.0, 3)
