"""Gateway settings: TOML file, PULSE_GW_* overrides, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse.edge.config import load
from pulse.edge.errors import ConfigError

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file_keep_data_in_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load(None, {})
    assert (s.broker.port, s.broker.allow_anonymous, s.status.host, s.buffer.synchronous) == (1883, False, "127.0.0.1", "full")
    assert s.database == tmp_path / "gateway.db"
    assert s.gateway.id  # the host name


def test_file_values_and_environment_overrides(tmp_path):
    path = write(tmp_path, '[gateway]\nid = "site-7"\ndata_dir = "data"\n[broker]\nport = 1884\n[buffer]\nquota_mb = 64\n')
    s = load(path, {"PULSE_GW_BROKER_PORT": "1999", "PULSE_GW_BROKER_ALLOW_ANONYMOUS": "yes", "PULSE_GW_STATUS_PORT": "0"})
    assert s.gateway.id == "site-7"
    assert s.gateway.data_dir == tmp_path / "data"  # relative to the file
    assert (s.broker.port, s.broker.allow_anonymous, s.status.port) == (1999, True, 0)
    assert s.buffer.quota_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[broker]\nprot = 1\n", {}, "broker.prot"),
        ("[brokr]\n", {}, "brokr"),
        ('[broker]\nport = "x"\n', {}, "broker.port"),
        ("[broker]\nport = true\n", {}, "broker.port"),
        ("", {"PULSE_GW_BROKER_PORT": "eighteen"}, "PULSE_GW_BROKER_PORT"),
        ("", {"PULSE_GW_BROKER_PROT": "1"}, "PULSE_GW_BROKER_PROT"),
        ('[buffer]\nsynchronous = "off"\n', {}, "buffer.synchronous"),
        ("[broker]\ntls_port = 8883\n", {}, "broker.tls_port"),
        ("[buffer]\nquota_mb = 0\n", {}, "buffer"),
        ('[gateway]\nlog_level = "loud"\n', {}, "gateway.log_level"),
        ("[broker]\nsession_queue_max = 0\n", {}, "broker"),
        ("", {"PULSE_GW_BROKER_SESSION_QUEUE_MAX_AGE_S": "-1"}, "broker"),
        ('[broker]\nconnectivity_events = "maybe"\n', {}, "broker.connectivity_events"),
    ],
)
def test_mistakes_are_refused_naming_the_key(tmp_path, text, env, key):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, text), env)
    assert err.value.code == "gateway.config_invalid"
    assert err.value.context["key"] == key


def test_missing_file_and_bad_toml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no configuration file"):
        load(tmp_path / "absent.toml", {})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[broker\n"), {})


def test_tls_files_must_exist(tmp_path):
    path = write(tmp_path, '[broker]\ntls_port = 8883\ntls_certfile = "cert.pem"\ntls_keyfile = "key.pem"\n')
    with pytest.raises(ConfigError, match="no file at"):
        load(path, {})
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    assert load(path, {}).broker.tls_certfile == tmp_path / "cert.pem"
