"""Single sign-on in a real browser (Debian's Chromium through playwright-core) against a real cloud
under uvicorn and a real OpenID provider process (oidc-provider-mock) on loopback: the sign-in page's
button, the provider's form, the console signed in with the claims' tenant and role and on the page
the person asked for; a person whose claims give no Pulse role is sent back with the reason.
Screenshots: tests/artifacts/console/sso-*.png."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from console_browser_run import ARTIFACTS, needs_build, run_driver
from oidc_provider import oidc_provider, set_user
from pydantic import SecretStr

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_sso_driver.mjs")


async def test_sign_in_through_the_identity_provider_in_a_browser(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    with oidc_provider() as issuer:
        settings = cloud_settings.model_copy(
            update={"oidc_issuer": issuer, "oidc_client_id": "pulse-console", "oidc_client_secret": SecretStr("console-secret"),
                    "oidc_login_label": "Sign in with Harbour SSO"}
        )
        app = create_app(settings, notify=NotifySettings(workers=False))
        async with app.router.lifespan_context(app), serve(app, lifespan=False) as base:
            tenant = await create_tenant(app.state.pulse.db, slug="sso-" + uuid.uuid4().hex[:6], name="Harbour", actor="test")
            sub, refused = f"ana-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
            set_user(issuer, sub, {"email": f"{sub}@example.com", "pulse_tenant": str(tenant), "pulse_roles": ["tenant-admin"]})
            set_user(issuer, refused, {"email": f"{refused}@example.com", "pulse_tenant": str(tenant), "pulse_roles": []})
            seen = await run_driver(DRIVER, {"base": base, "artifacts": str(ARTIFACTS), "prefix": "sso-", "sub": sub, "refused_sub": refused})
    assert seen["our_errors"] == [], seen["our_errors"]
    assert seen["button"] == "Sign in with Harbour SSO"
    assert seen["provider_url"].startswith(issuer + "/oauth2/authorize?") and "code_challenge=" in seen["provider_url"]
    assert seen["landed"] == base + "/app/devices"  # where the person was going, with no token left in the address
    assert "tenant-admin" in seen["who"] and seen["heading"] == "Devices"
    assert "no Pulse role" in seen["refused"]
