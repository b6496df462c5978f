"""Email over SMTP (aiosmtplib): STARTTLS, implicit TLS or plain, optional AUTH, HTML + plain text.

The SMTP host goes through the SSRF guard: Pulse resolves and checks it, opens the TCP connection to
the checked address itself and hands the socket to aiosmtplib, which keeps the host name for TLS (SNI
and certificate checks). Answers: 4xx and connection trouble are retried; 5xx and refused
credentials (535) are final; when some recipients are refused and others accepted, the message is
delivered (retrying would mail the others twice) and the refused ones are named in the detail.
"""

from __future__ import annotations

import contextlib
import html
import re
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal

import aiosmtplib
from pydantic import Field, SecretStr, field_validator, model_validator

from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.inbound import AckLinks
from pulse.cloud.notify.model import Delivered, Failed, Notification, Outcome, Retry
from pulse.cloud.notify.senders.base import Channel, ChannelConfig, SendContext
from pulse.cloud.notify.senders.http import address_outcome
from pulse.protocol.errors import Code

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^\[?[0-9A-Fa-f:.]+\]?$")


class Config(ChannelConfig):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    """``starttls`` (port 587), ``tls`` (implicit TLS, port 465) or ``none`` (only on a trusted network)."""
    username: str | None = None
    password: SecretStr | None = None
    sender: str
    """The From address."""
    to: list[str] = Field(min_length=1, max_length=50)
    subject_prefix: str = Field(default="[Pulse]", max_length=40)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not _HOST.match(value):
            raise ValueError("not a host name or IP address")
        return value

    @field_validator("sender", "to")
    @classmethod
    def _addresses(cls, value: str | list[str]) -> str | list[str]:
        for address in [value] if isinstance(value, str) else value:
            if not _ADDRESS.match(address):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @model_validator(mode="after")
    def _auth_pair(self) -> Config:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and self.security == "none":
            raise ValueError("a password is sent only over TLS: use security starttls or tls")
        return self


def build(config: Config, n: Notification, links: AckLinks | None = None) -> EmailMessage:
    """The message; with ``links``, an alert that opened carries a signed acknowledge link per recipient
    (it opens a confirmation page: a mail scanner that fetches links acknowledges nothing)."""
    msg = EmailMessage()
    msg["Subject"] = f"{config.subject_prefix} {n.title}".strip()
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.to)
    msg["Date"] = formatdate(n.occurred_at.timestamp(), usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=n.event_id, domain=config.sender.rsplit("@", 1)[1])
    msg["X-Pulse-Event-Id"] = n.event_id
    rows = [("Severity", n.severity.capitalize()), ("Device", n.device), ("Site", n.site or "-"), ("Value", n.reading() or "-")]
    rows += [("Tenant", n.tenant), ("Alert", n.alert_id), ("When", f"{n.occurred_at:%Y-%m-%d %H:%M:%S} UTC")]
    signed = [(to, url) for to in config.to if links is not None and (url := links.url(n, to)) is not None]
    acks = [("Acknowledge" if len(signed) == 1 else f"Acknowledge as {to}", url) for to, url in signed]
    text = "\n".join(
        [n.title, "", n.explanation, "", *(f"{k}: {v}" for k, v in rows), "", f"Open in Pulse: {n.console_url}"]
        + [f"{label}: {url}" for label, url in acks]
        + [""]
    )
    msg.set_content(text)
    cells = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    msg.add_alternative(
        f"<html><body><h2>{html.escape(n.title)}</h2><p>{html.escape(n.explanation)}</p>"
        f"<table>{cells}</table><p><a href=\"{html.escape(n.console_url, quote=True)}\">Open in Pulse</a></p>"
        + "".join(f"<p><a href=\"{html.escape(url, quote=True)}\">{html.escape(label)}</a></p>" for label, url in acks)
        + "</body></html>",
        subtype="html",
    )
    return msg


async def send(config: Config, n: Notification, ctx: SendContext) -> Outcome:
    message = build(config, n, ctx.ack_links)
    try:
        sock = await ctx.guard.open_socket(config.host.strip("[]"), config.port, ctx.timeout_s)
    except AddressError as exc:
        return address_outcome(exc)
    except OSError as exc:
        return Retry(Code.NOTIFY_UNREACHABLE, f"could not reach {config.host}:{config.port}: {exc}")
    smtp = aiosmtplib.SMTP(
        hostname=config.host.strip("[]"),
        sock=sock,
        use_tls=config.security == "tls",
        start_tls=config.security == "starttls",
        tls_context=ctx.tls_context,
        timeout=ctx.timeout_s,
    )
    return await _transmit(smtp, config, message, on_connect_failure=sock.close)


async def submit(config: Config, message: EmailMessage, *, timeout_s: float, tls_context: ssl.SSLContext | None = None) -> Outcome:
    """Mail from Pulse itself (invitations, password resets) through the operator's own relay
    (PULSE_MAIL_*): the relay is configuration, not tenant input, so it needs no SSRF guard."""
    smtp = aiosmtplib.SMTP(
        hostname=config.host.strip("[]"),
        port=config.port,
        use_tls=config.security == "tls",
        start_tls=config.security == "starttls",
        tls_context=tls_context,
        timeout=timeout_s,
    )
    return await _transmit(smtp, config, message, on_connect_failure=lambda: None)


async def _transmit(smtp: aiosmtplib.SMTP, config: Config, message: EmailMessage, *, on_connect_failure: Callable[[], None]) -> Outcome:
    try:
        await smtp.connect()  # greeting, EHLO and STARTTLS; a failure here leaves nothing open but the socket
    except (aiosmtplib.SMTPException, OSError) as exc:
        on_connect_failure()
        return _failure(exc, config)
    try:
        if config.username is not None and config.password is not None:
            await smtp.login(config.username, config.password.get_secret_value())
        refused, said = await smtp.send_message(message, sender=config.sender, recipients=config.to)
    except (aiosmtplib.SMTPException, OSError) as exc:
        return _failure(exc, config)
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await smtp.quit()  # a polite QUIT lets the server close its side (and TLS) cleanly
        smtp.close()
    detail = f"accepted for {len(config.to) - len(refused)} recipient(s): {said}"
    if refused:
        detail += "; refused: " + ", ".join(f"{rcpt} ({r.code} {r.message})" for rcpt, r in refused.items())
    return Delivered(detail)


def _failure(exc: Exception, config: Config) -> Outcome:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return Failed(Code.NOTIFY_AUTH_FAILED, f"the SMTP server refused the credentials: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return _by_reply(min(r.code for r in exc.recipients), f"the SMTP server refused every recipient: {exc}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_reply(exc.code, f"the SMTP server answered {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return Retry(Code.NOTIFY_TIMEOUT, f"the SMTP server at {config.host} did not answer in time: {exc}")
    return Retry(Code.NOTIFY_UNREACHABLE, f"SMTP with {config.host}:{config.port} failed: {exc}")


def _by_reply(code: int, reason: str) -> Outcome:
    if 400 <= code < 500 or code < 0:
        return Retry(Code.NOTIFY_RECEIVER_ERROR, reason)
    return Failed(Code.NOTIFY_REJECTED, reason)


CHANNEL = Channel("email", Config, send)
