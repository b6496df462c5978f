"""Tenant user administration: invitations mailed to a real SMTP server on loopback and accepted
once, roles, disable (sessions stop at once), remove, reset links, the last-admin and self rules,
the audit trail, the operator path, and other tenants seeing none of it."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session
from fastapi import FastAPI

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings
from pulse.common.ports import free_port

pytestmark = pytest.mark.integration

Cloud = Any  # the conftest's Cloud
NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PASSWORD = "a-long-enough-password"


@dataclass
class Mailbox:
    messages: list[email.message.EmailMessage]

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        self.messages.append(email.message_from_bytes(raw, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"

    def link_to(self, address: str) -> str:
        mine = [m for m in self.messages if m["To"] == address]
        assert mine, f"no mail to {address}"
        text = mine[-1].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        found = re.search(r"(http://\S+/app/accept#(\S+))", text)
        assert found is not None, text
        return found.group(2)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox([])
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Served:
    """The app with a mail relay and a clock of the test's own, and ways to make signed-in users."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    async def tenant_user(self, role: str = "tenant-admin") -> tuple[uuid.UUID, dict[str, str]]:
        slug = "t-" + uuid.uuid4().hex[:10]
        tenant_id = await create_tenant(self.app.state.pulse.db, slug=slug, name=slug, actor="test")
        return tenant_id, await self.user(role, slug)

    async def user(self, role: str, tenant: str | None) -> dict[str, str]:
        address = f"{uuid.uuid4().hex[:10]}@example.com"
        await create_user(self.app.state.pulse.db, email=address, password=PASSWORD, roles=[role], tenant=tenant, actor="test")
        return await _sign_in(self, address)


@pytest.fixture
async def env(cloud_settings: Settings, smtp: tuple[Mailbox, int]) -> AsyncIterator[tuple[Served, Mailbox, Clock]]:
    box, port = smtp
    settings = cloud_settings.model_copy(update={"mail_host": "127.0.0.1", "mail_port": port, "mail_security": "none", "forgot_burst": 3})
    clock = Clock()
    app = create_app(settings, notify=NotifySettings(workers=False, console_url="http://console.test"), clock=clock, monotonic=lambda: 1000.0)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pulse.test") as client:
            yield Served(app=app, client=client, settings=settings), box, clock


async def _sign_in(c: Served | Cloud, address: str, password: str = PASSWORD) -> dict[str, str]:
    r = await c.client.post("/auth/login", json={"email": address, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _audit_actions(c: Cloud, headers: dict[str, str]) -> list[str]:
    r = await c.client.get("/api/v1/audit", headers=headers, params={"limit": 200})
    assert r.status_code == 200, r.text
    return [e["action"] for e in r.json()["items"]]


async def test_invite_is_mailed_accepted_once_and_signs_the_user_in(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, clock = env
    tenant, admin = await c.tenant_user()
    address = f"new-{uuid.uuid4().hex[:6]}@example.com"
    r = await c.client.post("/api/v1/users/invitations", json={"email": address, "roles": ["customer"], "display_name": "Ana"}, headers=admin)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["mailed"] is True and out["kind"] == "invite" and out["user"]["status"] == "invited"
    token = box.link_to(address)
    assert out["link"] == f"http://console.test/app/accept#{token}"
    assert "Ana" not in box.messages[-1]["Subject"] and address == box.messages[-1]["To"]

    # not signed in yet: no password works
    r = await c.client.post("/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 401 and r.json()["code"] == "auth.bad_login"

    r = await c.client.post("/auth/links/inspect", json={"token": token})
    assert r.status_code == 200 and r.json() == {"kind": "invite", "email": address}
    r = await c.client.post("/auth/links/accept", json={"token": token, "password": "short"})
    assert r.status_code == 422 and r.json()["code"] == "api.invalid"
    r = await c.client.post("/auth/links/accept", json={"token": token, "password": PASSWORD})
    assert r.status_code == 200, r.text
    me = await c.client.get("/api/v1/me", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert me.json()["tenant_id"] == str(tenant) and me.json()["roles"] == ["customer"]

    again = await c.client.post("/auth/links/accept", json={"token": token, "password": PASSWORD})
    assert again.status_code == 410 and again.json()["code"] == "users.link_invalid"
    assert (await c.client.post("/auth/links/inspect", json={"token": token})).status_code == 410

    await _sign_in(c, address)
    users = {u["email"]: u for u in (await c.client.get("/api/v1/users", headers=admin)).json()}
    assert users[address]["status"] == "active" and users[address]["last_sign_in_at"] is not None
    actions = await _audit_actions(c, admin)
    assert "user.invite" in actions and "user.invite_accepted" in actions


async def test_an_invitation_expires_by_the_clock_and_a_new_link_replaces_it(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, clock = env
    _, admin = await c.tenant_user()
    address = f"late-{uuid.uuid4().hex[:6]}@example.com"
    r = await c.client.post("/api/v1/users/invitations", json={"email": address}, headers=admin)
    user = r.json()["user"]["id"]
    first = box.link_to(address)
    clock.now = NOW + dt.timedelta(seconds=c.settings.invite_ttl_s + 1)
    r = await c.client.post("/auth/links/accept", json={"token": first, "password": PASSWORD})
    assert r.status_code == 410 and r.json()["code"] == "users.link_invalid"

    r = await c.client.post(f"/api/v1/users/{user}/link", headers=admin)
    assert r.status_code == 201 and r.json()["kind"] == "invite"
    second = box.link_to(address)
    assert second != first
    assert (await c.client.post("/auth/links/accept", json={"token": second, "password": PASSWORD})).status_code == 200


async def test_duplicate_email_and_bad_roles_are_refused_with_codes(env: tuple[Served, Mailbox, Clock]) -> None:
    c, _, _ = env
    _, admin = await c.tenant_user()
    address = f"dup-{uuid.uuid4().hex[:6]}@example.com"
    assert (await c.client.post("/api/v1/users/invitations", json={"email": address}, headers=admin)).status_code == 201
    r = await c.client.post("/api/v1/users/invitations", json={"email": address.upper()}, headers=admin)
    assert r.status_code == 409 and r.json()["code"] == "api.conflict"
    for body in ({"email": "not-an-address"}, {"email": f"x{uuid.uuid4().hex[:6]}@example.com", "roles": ["operator"]}):
        r = await c.client.post("/api/v1/users/invitations", json=body, headers=admin)
        assert r.status_code == 422 and r.json()["code"] == "api.invalid", body


async def test_disabling_a_user_ends_their_sessions_at_once_and_enabling_lets_them_sign_in(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, _ = env
    _, admin = await c.tenant_user()
    address = f"dis-{uuid.uuid4().hex[:6]}@example.com"
    r = await c.client.post("/api/v1/users/invitations", json={"email": address, "roles": ["customer"]}, headers=admin)
    user = r.json()["user"]["id"]
    accepted = await c.client.post("/auth/links/accept", json={"token": box.link_to(address), "password": PASSWORD})
    session = {"Authorization": f"Bearer {accepted.json()['access_token']}"}
    assert (await c.client.get("/api/v1/devices", headers=session)).status_code == 200

    r = await c.client.patch(f"/api/v1/users/{user}", json={"disabled": True}, headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "disabled"
    r = await c.client.get("/api/v1/devices", headers=session)
    assert r.status_code == 401 and r.json()["code"] == "auth.session_revoked"
    r = await c.client.post("/auth/refresh", json={"refresh_token": accepted.json()["refresh_token"]})
    assert r.status_code == 401 and r.json()["code"] == "auth.refresh_invalid"
    r = await c.client.post("/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 401 and r.json()["code"] == "auth.bad_login"

    assert (await c.client.patch(f"/api/v1/users/{user}", json={"disabled": False}, headers=admin)).json()["status"] == "active"
    await _sign_in(c, address)
    actions = await _audit_actions(c, admin)
    assert "user.disable" in actions and "user.enable" in actions


async def test_roles_change_reset_link_and_removal(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, _ = env
    _, admin = await c.tenant_user()
    address = f"role-{uuid.uuid4().hex[:6]}@example.com"
    user = (await c.client.post("/api/v1/users/invitations", json={"email": address}, headers=admin)).json()["user"]["id"]
    await c.client.post("/auth/links/accept", json={"token": box.link_to(address), "password": PASSWORD})
    old = await _sign_in(c, address)
    assert (await c.client.post("/api/v1/sites", json={"name": "s-" + uuid.uuid4().hex[:6]}, headers=old)).status_code == 403

    r = await c.client.patch(f"/api/v1/users/{user}", json={"roles": ["tenant-admin"], "display_name": "Lead"}, headers=admin)
    assert r.status_code == 200 and r.json()["roles"] == ["tenant-admin"] and r.json()["display_name"] == "Lead"
    r = await c.client.get("/api/v1/devices", headers=old)  # tokens with the old roles stop at once
    assert r.status_code == 401 and r.json()["code"] == "auth.session_revoked"
    promoted = await _sign_in(c, address)
    assert (await c.client.post("/api/v1/sites", json={"name": "s-" + uuid.uuid4().hex[:6]}, headers=promoted)).status_code == 201

    r = await c.client.post(f"/api/v1/users/{user}/link", headers=admin)
    assert r.status_code == 201 and r.json()["kind"] == "reset"
    reset = box.link_to(address)
    assert (await c.client.post("/auth/links/accept", json={"token": reset, "password": "another-long-password"})).status_code == 200
    r = await c.client.post("/auth/login", json={"email": address, "password": PASSWORD})
    assert r.status_code == 401
    await _sign_in(c, address, "another-long-password")

    assert (await c.client.delete(f"/api/v1/users/{user}", headers=admin)).status_code == 204
    r = await c.client.get("/api/v1/devices", headers=promoted)
    assert r.status_code == 401 and r.json()["code"] == "auth.session_revoked"
    assert (await c.client.delete(f"/api/v1/users/{user}", headers=admin)).status_code == 404
    actions = await _audit_actions(c, admin)
    assert {"user.update", "user.reset_link", "user.reset_accepted", "user.remove"} <= set(actions)


async def test_nobody_removes_disables_or_demotes_themselves_and_a_tenant_keeps_an_admin(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, _ = env
    _, admin = await c.tenant_user()
    me = (await c.client.get("/api/v1/me", headers=admin)).json()["subject"]
    for method, body in (("PATCH", {"disabled": True}), ("PATCH", {"roles": ["customer"]}), ("DELETE", None)):
        r = await c.client.request(method, f"/api/v1/users/{me}", json=body, headers=admin)
        assert r.status_code == 409 and r.json()["code"] == "users.self", (method, body)

    # an operator may act on the last admin, and is stopped by the last-admin rule instead
    tenant = (await c.client.get("/api/v1/me", headers=admin)).json()["tenant_id"]
    op = await c.user("operator-admin", None)
    r = await c.client.patch(f"/api/v1/operator/tenants/{tenant}/users/{me}", json={"disabled": True}, headers=op)
    assert r.status_code == 409 and r.json()["code"] == "users.last_admin"
    r = await c.client.delete(f"/api/v1/operator/tenants/{tenant}/users/{me}", headers=op)
    assert r.status_code == 409 and r.json()["code"] == "users.last_admin"
    assert (await c.client.get("/api/v1/devices", headers=admin)).status_code == 200


async def test_operator_creates_a_tenant_and_invites_its_first_admin(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, _ = env
    op = await c.user("operator-admin", None)
    slug = "t-" + uuid.uuid4().hex[:8]
    r = await c.client.post("/api/v1/operator/tenants", json={"slug": slug, "name": "Acme Water"}, headers=op)
    tenant = r.json()["id"]
    address = f"first-{uuid.uuid4().hex[:6]}@example.com"
    r = await c.client.post(f"/api/v1/operator/tenants/{tenant}/users/invitations", json={"email": address, "roles": ["tenant-admin"]}, headers=op)
    assert r.status_code == 201 and r.json()["mailed"] is True, r.text
    assert "Acme Water" in box.messages[-1]["Subject"]
    accepted = await c.client.post("/auth/links/accept", json={"token": box.link_to(address), "password": PASSWORD})
    first = {"Authorization": f"Bearer {accepted.json()['access_token']}"}
    users = (await c.client.get("/api/v1/users", headers=first)).json()
    assert [u["email"] for u in users] == [address]
    listed = (await c.client.get(f"/api/v1/operator/tenants/{tenant}/users", headers=op)).json()
    assert listed[0]["status"] == "active"

    plain_operator = await c.user("operator", None)
    assert (await c.client.get(f"/api/v1/operator/tenants/{tenant}/users", headers=plain_operator)).status_code == 200
    r = await c.client.post(f"/api/v1/operator/tenants/{tenant}/users/invitations", json={"email": "x" + address}, headers=plain_operator)
    assert r.status_code == 403
    r = await c.client.get(f"/api/v1/operator/tenants/{uuid.uuid4()}/users", headers=op)
    assert r.status_code == 404 and r.json()["code"] == "api.not_found"


async def test_other_tenants_see_and_change_none_of_it(env: tuple[Served, Mailbox, Clock]) -> None:
    c, box, _ = env
    tenant_a, admin_a = await c.tenant_user()
    _, admin_b = await c.tenant_user()
    _, customer_a = await c.tenant_user("customer")
    address = f"a-{uuid.uuid4().hex[:6]}@example.com"
    user = (await c.client.post("/api/v1/users/invitations", json={"email": address}, headers=admin_a)).json()["user"]["id"]

    assert address not in [u["email"] for u in (await c.client.get("/api/v1/users", headers=admin_b)).json()]
    for method, path, body in (
        ("PATCH", f"/api/v1/users/{user}", {"disabled": True}),
        ("DELETE", f"/api/v1/users/{user}", None),
        ("POST", f"/api/v1/users/{user}/link", None),
    ):
        r = await c.client.request(method, path, json=body, headers=admin_b)
        assert r.status_code == 404 and r.json()["code"] == "api.not_found", path
    # tenant users never reach the operator routes, even for their own tenant
    r = await c.client.get(f"/api/v1/operator/tenants/{tenant_a}/users", headers=admin_a)
    assert r.status_code == 403
    # customers do not manage users
    for method, path in (("GET", "/api/v1/users"), ("POST", "/api/v1/users/invitations")):
        r = await c.client.request(method, path, json={"email": "q@example.com"}, headers=customer_a)
        assert r.status_code == 403 and r.json()["code"] == "auth.forbidden"
    listed = (await c.client.get("/api/v1/users", headers=admin_a)).json()
    assert next(u for u in listed if u["id"] == user)["status"] == "invited"


async def test_sign_out_everywhere_ends_every_session_of_the_account(env: tuple[Served, Mailbox, Clock]) -> None:
    c, _, _ = env
    _, first = await c.tenant_user()
    assert (await c.client.post("/auth/logout-all", headers=first)).status_code == 204
    r = await c.client.get("/api/v1/devices", headers=first)
    assert r.status_code == 401 and r.json()["code"] == "auth.session_revoked"


async def test_without_a_mail_relay_the_link_is_returned_for_the_admin_to_hand_over(cloud: Cloud) -> None:
    _, admin = await cloud.tenant_user()
    r = await cloud.client.post("/api/v1/users/invitations", json={"email": f"n-{uuid.uuid4().hex[:6]}@example.com"}, headers=admin)
    assert r.status_code == 201 and r.json()["mailed"] is False and "PULSE_MAIL_HOST" in r.json()["mail_detail"]
    token = r.json()["link"].split("#", 1)[1]
    assert (await cloud.client.post("/auth/links/accept", json={"token": token, "password": PASSWORD})).status_code == 200



async def test_forgot_password_mails_a_reset_link_and_answers_alike_for_unknown_and_disabled_accounts(
    env: tuple[Served, Mailbox, Clock],
) -> None:
    c, box, _ = env
    _, admin = await c.tenant_user()
    address = f"forgot-{uuid.uuid4().hex[:6]}@example.com"
    user = (await c.client.post("/api/v1/users/invitations", json={"email": address}, headers=admin)).json()["user"]["id"]
    await c.client.post("/auth/links/accept", json={"token": box.link_to(address), "password": PASSWORD})
    before = len(box.messages)

    answers = []
    for who in (address.upper(), f"nobody-{uuid.uuid4().hex[:6]}@example.com"):
        r = await c.client.post("/auth/forgot", json={"email": who})
        assert r.status_code == 202
        answers.append(r.json())
    assert answers[0] == answers[1]  # nothing tells whether the account exists
    assert len(box.messages) == before + 1
    reset = box.link_to(address)
    assert (await c.client.post("/auth/links/inspect", json={"token": reset})).json() == {"kind": "reset", "email": address}
    assert (await c.client.post("/auth/links/accept", json={"token": reset, "password": "a-brand-new-password"})).status_code == 200
    assert (await c.client.post("/auth/login", json={"email": address, "password": PASSWORD})).status_code == 401
    await _sign_in(c, address, "a-brand-new-password")

    await c.client.patch(f"/api/v1/users/{user}", json={"disabled": True}, headers=admin)
    r = await c.client.post("/auth/forgot", json={"email": address})
    assert r.status_code == 202 and r.json() == answers[0] and len(box.messages) == before + 1  # disabled: nothing mailed
    assert "user.reset_link" in await _audit_actions(c, admin)

    # the fourth request from one address in the burst is one too many
    r = await c.client.post("/auth/forgot", json={"email": address})
    assert r.status_code == 429 and r.json()["code"] == "users.rate_limited" and int(r.headers["retry-after"]) >= 1


async def test_forgot_password_without_a_mail_relay_says_whom_to_ask(cloud: Cloud) -> None:
    r = await cloud.client.post("/auth/forgot", json={"email": "anyone@example.com"})
    assert r.status_code == 202 and "ask a tenant admin" in r.json()["message"]
