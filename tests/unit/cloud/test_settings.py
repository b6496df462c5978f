from __future__ import annotations

import pytest
from pydantic import ValidationError

from pulse.cloud.db.migrate import MigrationError, load, render
from pulse.cloud.settings import RoleNames, Settings

pytestmark = pytest.mark.unit


def test_placeholder_secret_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="PULSE_JWT_SECRET"):
        Settings(mode="production")
    with pytest.raises(ValidationError, match="PULSE_JWT_SECRET"):
        Settings(mode="production", jwt_secret="short")
    assert Settings(mode="development").mode == "development"
    assert Settings(mode="production", jwt_secret="x" * 40).jwt_secret.get_secret_value() == "x" * 40


def test_settings_come_from_pulse_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_MODE", "development")
    monkeypatch.setenv("PULSE_INGEST_RATE_PER_S", "7.5")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h:1/d")
    monkeypatch.setenv("PULSE_DB_ROLE_PREFIX", "acme")
    s = Settings()
    assert s.ingest.rate_per_s == 7.5 and s.database_url == "postgresql://u@h:1/d"
    assert s.roles == RoleNames("acme_app", "acme_operator", "acme_writer", "acme_identity")
    monkeypatch.setenv("PULSE_DB_ROLE_PREFIX", "Bad-Prefix")
    with pytest.raises(ValidationError):
        Settings()


def test_migrations_render_role_names_quoted() -> None:
    roles = RoleNames.from_prefix("p")
    assert render("GRANT x TO {{app}}; SELECT {{writer_lit}}", roles) == "GRANT x TO \"p_app\"; SELECT 'p_writer'"
    with pytest.raises(MigrationError):
        render("{{nope}}", roles)
    versions = [m.version for m in load()]
    assert versions == sorted(versions) and versions[0] == "0001"
