"""Email over SMTP to a real aiosmtpd server on loopback, with TLS certificates made by the test."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from notify_receivers import LocalCA

from pulse.cloud.db.embedded import free_port
from pulse.cloud.notify import senders
from pulse.cloud.notify.model import Delivered, Failed, Notification, Retry
from pulse.cloud.notify.senders.base import SendContext
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration
Make = Callable[..., Notification]


@dataclass
class Mailbox:
    """aiosmtpd handler: keeps what it accepted, refuses nobody@..., and can be told to fail DATA."""

    received: list[tuple[Envelope, Session]] = field(default_factory=list)
    data_reply: str = "250 OK"

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply.startswith("250"):
            self.received.append((envelope, session))
        return self.data_reply


def _authenticator(server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"pulse" and auth_data.password == b"right-password"
    return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int


def _server_context(ca: LocalCA, tmp_path: Path) -> ssl.SSLContext:
    cert, key = ca.server_files(tmp_path, ["localhost"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture
def starttls_server(test_ca: LocalCA, tmp_path: Path) -> Iterator[SmtpServer]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        tls_context=_server_context(test_ca, tmp_path),
        require_starttls=True,
        authenticator=_authenticator,
        auth_required=True,
    )
    controller.start()
    try:
        yield SmtpServer(mailbox, port)
    finally:
        controller.stop()


@pytest.fixture
def implicit_tls_server(test_ca: LocalCA, tmp_path: Path) -> Iterator[SmtpServer]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=_server_context(test_ca, tmp_path), server_hostname="localhost")
    controller.start()
    try:
        yield SmtpServer(mailbox, port)
    finally:
        controller.stop()


def config(port: int, **changes: Any) -> dict[str, Any]:
    return {
        "host": "localhost",
        "port": port,
        "security": "starttls",
        "username": "pulse",
        "password": "right-password",
        "sender": "alerts@pulse.example.com",
        "to": ["ops@example.com", "oncall@example.com"],
    } | changes


async def test_mail_goes_over_starttls_with_auth_to_every_recipient_as_html_and_text(
    starttls_server: SmtpServer, ctx: SendContext, make_notification: Make
) -> None:
    n = make_notification()
    outcome = await senders.send("email", senders.validate("email", config(starttls_server.port)), n, ctx)
    assert isinstance(outcome, Delivered) and "2 recipient(s)" in outcome.detail
    [(envelope, session)] = starttls_server.mailbox.received
    assert session.authenticated and session.ssl is not None, "AUTH happened inside STARTTLS"
    assert envelope.mail_from == "alerts@pulse.example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    message = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
    assert message["Subject"] == "[Pulse] [CRITICAL] opened: pump-7 temp 92.5 (threshold 80)"
    assert message["X-Pulse-Event-Id"] == n.event_id
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert "Site: Plant <North> & Co" in plain.get_content() and "https://pulse.example.com/alerts/al-1001" in plain.get_content()
    assert "Plant &lt;North&gt; &amp; Co" in html.get_content() and 'href="https://pulse.example.com/alerts/al-1001"' in html.get_content()


async def test_a_refused_recipient_does_not_stop_the_others(starttls_server: SmtpServer, ctx: SendContext, make_notification: Make) -> None:
    raw = config(starttls_server.port, to=["ops@example.com", "nobody@example.com"])
    outcome = await senders.send("email", senders.validate("email", raw), make_notification(), ctx)
    assert isinstance(outcome, Delivered) and "nobody@example.com (550" in outcome.detail
    assert starttls_server.mailbox.received[0][0].rcpt_tos == ["ops@example.com"]


async def test_every_recipient_refused_is_final(starttls_server: SmtpServer, ctx: SendContext, make_notification: Make) -> None:
    raw = config(starttls_server.port, to=["nobody@example.com"])
    outcome = await senders.send("email", senders.validate("email", raw), make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_REJECTED


async def test_a_wrong_password_is_final_and_says_so(starttls_server: SmtpServer, ctx: SendContext, make_notification: Make) -> None:
    raw = config(starttls_server.port, password="wrong-password")
    outcome = await senders.send("email", senders.validate("email", raw), make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_AUTH_FAILED
    assert starttls_server.mailbox.received == []


@pytest.mark.parametrize(("reply", "kind", "code"), [("451 4.3.0 try later", Retry, Code.NOTIFY_RECEIVER_ERROR), ("554 5.6.0 rejected", Failed, Code.NOTIFY_REJECTED)])
async def test_smtp_4xx_is_retried_and_5xx_is_final(
    starttls_server: SmtpServer, ctx: SendContext, make_notification: Make, reply: str, kind: type, code: Code
) -> None:
    starttls_server.mailbox.data_reply = reply
    outcome = await senders.send("email", senders.validate("email", config(starttls_server.port)), make_notification(), ctx)
    assert isinstance(outcome, kind) and outcome.code is code


async def test_implicit_tls_without_auth(implicit_tls_server: SmtpServer, ctx: SendContext, make_notification: Make) -> None:
    raw = config(implicit_tls_server.port, security="tls", username=None, password=None, to=["ops@example.com"])
    outcome = await senders.send("email", senders.validate("email", raw), make_notification(), ctx)
    assert isinstance(outcome, Delivered)
    [(envelope, session)] = implicit_tls_server.mailbox.received
    assert envelope.rcpt_tos == ["ops@example.com"]  # that port speaks only TLS


async def test_a_server_whose_certificate_is_not_trusted_is_not_sent_to(
    starttls_server: SmtpServer, ctx: SendContext, make_notification: Make
) -> None:
    system_trust = SendContext(http=ctx.http, guard=ctx.guard, now=ctx.now, timeout_s=5, tls_context=ssl.create_default_context())
    outcome = await senders.send("email", senders.validate("email", config(starttls_server.port)), make_notification(), system_trust)
    assert isinstance(outcome, Retry | Failed) and not isinstance(outcome, Delivered)
    assert starttls_server.mailbox.received == []
