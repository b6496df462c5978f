"""Production deployment files pass the checks that run offline: compose structure, every cloud
setting documented for operators in .env.example, the gateway's systemd unit verified by
systemd itself, and the install scripts parse."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pulse.cloud.settings import Settings

pytestmark = pytest.mark.unit
DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def _compose() -> dict[str, object]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_runs_timescaledb_the_cloud_the_mqtt_endpoint_and_caddy_with_health_checks_and_volumes() -> None:
    doc = _compose()
    services = doc["services"]
    assert isinstance(services, dict)
    assert {n for n, svc in services.items() if not svc.get("profiles")} == {"db", "cloud", "mqtt", "caddy"}
    assert {n for n, svc in services.items() if svc.get("profiles")} == {"keycloak", "prometheus", "grafana", "nats"}
    assert services["nats"]["profiles"] == ["stream"] and "--jetstream" in services["nats"]["command"]
    assert services["keycloak"]["profiles"] == ["keycloak"]  # optional: only with --profile keycloak
    assert services["mqtt"]["command"] == ["pulse", "cloud", "mqtt"]
    assert services["mqtt"]["depends_on"]["cloud"]["condition"] == "service_healthy"  # migrated first
    assert services["mqtt"]["image"] == services["cloud"]["image"]
    assert "PULSE_MQTT_PLAIN_PORT" not in services["mqtt"]["environment"]  # TLS only
    assert str(services["db"]["image"]).startswith("timescale/timescaledb")
    declared = set(doc["volumes"])
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            assert source.startswith(".") or source in declared, (name, volume)
    assert services["cloud"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert services["cloud"]["environment"]["PULSE_STORAGE_ENGINE"] == "timescaledb"  # no silent fallback in production
    assert (DEPLOY / services["cloud"]["build"]["dockerfile"].split("/")[-1]).exists()
    assert (DEPLOY / "Caddyfile").exists()


def test_compose_sets_only_real_settings_and_env_example_documents_every_setting() -> None:
    fields = {f"PULSE_{name.upper()}" for name in Settings.model_fields}
    env = _compose()["services"]["cloud"]["environment"]  # type: ignore[index]
    assert set(env) <= fields, set(env) - fields
    example = (DEPLOY / ".env.example").read_text()
    missing = sorted(f for f in fields if f not in example and f not in env)
    assert missing == [], f"document these in deploy/.env.example: {missing}"
    for required in ("PULSE_JWT_SECRET=", "PULSE_DB_ROLE_PASSWORD=", "POSTGRES_PASSWORD=", "PULSE_DOMAIN="):
        assert f"\n{required}" in example, required


def test_keycloak_realm_gives_the_console_client_and_the_claims_pulse_reads() -> None:
    import json

    realm = json.loads((DEPLOY / "keycloak" / "pulse-realm.json").read_text())
    client = next(c for c in realm["clients"] if c["clientId"] == "pulse-console")
    assert client["standardFlowEnabled"] and client["attributes"]["pkce.code.challenge.method"] == "S256"
    assert any(uri.endswith("/auth/oidc/callback") for uri in client["redirectUris"])
    claims = {m["config"].get("claim.name") for m in client["protocolMappers"]}
    defaults = Settings(mode="development")
    assert {defaults.oidc_tenant_claim, defaults.oidc_roles_claim} <= claims
    assert {r["name"] for r in realm["roles"]["realm"]} == {"customer", "tenant-admin", "operator", "operator-admin"}


def test_gateway_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by deploy/install.sh"
    pulse = Path(sys.executable).with_name("pulse")
    unit = tmp_path / "pulse-gateway.service"
    unit.write_text((DEPLOY / "pulse-gateway.service").read_text().replace("/opt/pulse/.venv/bin/pulse", str(pulse)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace(str(pulse), "/nonexistent/pulse"))
    assert subprocess.run([analyze, "verify", str(broken)], capture_output=True).returncode != 0


@pytest.mark.parametrize("script", ["install.sh", "install-gateway.sh"])
def test_install_scripts_parse(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / script)], capture_output=True).returncode == 0


def test_journald_drop_in_sets_only_journald_size_options() -> None:
    import configparser

    conf = configparser.ConfigParser(strict=True)
    conf.optionxform = str  # type: ignore[assignment,method-assign]  # journald keys are case-sensitive
    conf.read_string((DEPLOY / "journald-pulse-gateway.conf").read_text())
    assert conf.sections() == ["Journal"]
    # keys from journald.conf(5); a misspelt key would be ignored by journald with only a log line
    known = {"SystemMaxUse", "SystemKeepFree", "SystemMaxFileSize", "SystemMaxFiles", "MaxRetentionSec", "MaxFileSec"}
    assert set(conf["Journal"]) <= known and "SystemMaxUse" in conf["Journal"]
    assert "journald-pulse-gateway.conf" in (DEPLOY / "install-gateway.sh").read_text()
