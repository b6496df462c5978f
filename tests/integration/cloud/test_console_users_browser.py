"""User administration in a real browser (Debian's Chromium through playwright-core) against a real
cloud under uvicorn with a real SMTP server on loopback: an operator admin creates a tenant and
invites its first admin, who accepts the link, signs in, invites and changes a customer, and signs
in again; the audit log shows it and a spent link says so. Screenshots: tests/artifacts/console/users-*.png."""

from __future__ import annotations

import email
import email.policy
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from console_browser_run import ARTIFACTS, needs_build, run_driver

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings
from pulse.common.ports import free_port

pytestmark = pytest.mark.e2e

DRIVER = Path(__file__).with_name("console_users_driver.mjs")
PASSWORD = "correct horse battery staple"


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


async def test_invite_accept_and_sign_in_in_a_browser(cloud_settings: Settings, serve: Any) -> None:
    missing = needs_build()
    assert missing is None, f"{missing}: run ./deploy/install.sh first"
    box, port = Mailbox(), free_port()
    smtp = Controller(box, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        settings = cloud_settings.model_copy(update={"mail_host": "127.0.0.1", "mail_port": port, "mail_security": "none"})
        app = create_app(settings, notify=NotifySettings(workers=False, console_url="https://pulse.example.com"))
        async with app.router.lifespan_context(app), serve(app, lifespan=False) as base:
            suffix = uuid.uuid4().hex[:6]
            operator_email = f"opadmin-{suffix}@example.com"
            await create_user(app.state.pulse.db, email=operator_email, password=PASSWORD, roles=["operator-admin"], tenant=None, actor="test")
            task = {
                "base": base, "artifacts": str(ARTIFACTS), "prefix": "users-", "password": PASSWORD, "operator_email": operator_email,
                "slug": f"harbour-{suffix}", "admin_email": f"lead-{suffix}@example.com", "customer_email": f"tech-{suffix}@example.com",
            }
            seen = await run_driver(DRIVER, task)
    finally:
        smtp.stop()
    # the only error a page logs is the spent link's 410 at the end
    assert seen["console_errors"] == ["admin: Failed to load resource: the server responded with a status of 410 (Gone)"], seen["console_errors"]
    assert seen["first_link"].startswith("https://pulse.example.com/app/accept#pul_")
    assert "It was mailed to them" in seen["first_dialog"] and seen["open_href"] == seen["first_link"]
    mailed = [m for m in box.messages if m["To"] == task["admin_email"] and "invited" in str(m["Subject"])]
    assert len(mailed) == 1 and seen["first_link"] in mailed[0].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "invited" in seen["operator_row"]
    assert seen["accept_email"] == task["admin_email"]
    assert "Users" in seen["admin_nav"] and "Audit log" in seen["admin_nav"]
    assert "disabled" in seen["customer_row"] and "Field Tech" in seen["customer_row"]
    assert "you" in seen["self_row"] and "active" in seen["self_row"]
    assert seen["signed_in_again"] is True
    assert "used" in seen["spent_link"] or "expired" in seen["spent_link"]
    assert "a link to set a new one is on its way" in seen["forgot_answer"]
    resets = [m for m in box.messages if m["To"] == task["admin_email"] and "Reset your Pulse password" in str(m["Subject"])]
    assert len(resets) == 1, [(m["To"], m["Subject"]) for m in box.messages]
