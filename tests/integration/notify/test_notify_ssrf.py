"""The SSRF guard against real sockets: names, odd IP spellings, redirects and DNS rebinding."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
from notify_receivers import Receiver

from pulse.cloud.notify import senders
from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.model import Delivered, Failed, Notification, Retry
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.ssrf import AddressGuard, SsrfPolicy, guarded_client
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration
Make = Callable[..., Notification]
STRICT = AddressGuard(SsrfPolicy())


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "2130706433",  # 127.0.0.1 as one decimal number
        "0x7f000001",  # ... as hex
        "0177.0.0.1",  # ... with an octal first part
        "127.1",  # ... shortened
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "10.0.0.8",
        "169.254.169.254",
        "fd00:ec2::254",
        "metadata.google.internal",
        "METADATA.google.internal.",
    ],
)
async def test_hosts_that_reach_inside_are_refused_by_default(host: str) -> None:
    with pytest.raises(AddressError) as caught:
        await STRICT.resolve(host, 80)
    assert caught.value.code is Code.NOTIFY_SSRF_BLOCKED


async def test_loopback_is_reached_only_with_the_allow_list() -> None:
    allowed = AddressGuard(SsrfPolicy.allowing(["127.0.0.0/8"]))
    assert [str(a) for a in await allowed.resolve("2130706433", 80)] == ["127.0.0.1"]


async def test_a_name_that_does_not_resolve_is_retried_not_refused(make_notification: Make) -> None:
    async def nxdomain(host: str, port: int) -> list[str]:  # what getaddrinfo raises for an unknown name
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    guard = AddressGuard(SsrfPolicy(), resolver=nxdomain)
    async with guarded_client(guard) as http:
        ctx = SendContext(http=http, guard=guard)
        outcome = await senders.send("webhook", senders.validate("webhook", {"url": "http://no-such-host.example/x"}), make_notification(), ctx)
    assert isinstance(outcome, Retry) and outcome.code is Code.NOTIFY_DNS_FAILED


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/x", "http://[::ffff:127.0.0.1]:{port}/x", "http://2130706433:{port}/x"])
async def test_the_shared_client_refuses_loopback_without_the_allow_list(receiver: Receiver, make_notification: Make, url: str) -> None:
    port = receiver.base.rsplit(":", 1)[1]
    async with guarded_client(STRICT) as http:
        ctx = SendContext(http=http, guard=STRICT)
        outcome = await senders.send("webhook", senders.validate("webhook", {"url": url.format(port=port)}), make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_SSRF_BLOCKED
    assert receiver.requests == [], "nothing reached the receiver"


@pytest.mark.parametrize(
    "location",
    ["http://10.0.0.8/", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[::ffff:192.168.0.1]/", "http://metadata.google.internal/"],
)
async def test_a_redirect_to_an_inside_address_is_refused(receiver: Receiver, ctx: SendContext, make_notification: Make, location: str) -> None:
    receiver.answer("/hook", (302, {"Location": location}, b""))
    outcome = await senders.send("slack", senders.validate("slack", {"url": receiver.url("/hook")}), make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_SSRF_BLOCKED
    assert len(receiver.requests) == 1


async def test_a_redirect_to_another_scheme_is_refused(receiver: Receiver, ctx: SendContext, make_notification: Make) -> None:
    receiver.answer("/hook", (301, {"Location": "file:///etc/passwd"}, b""))
    outcome = await senders.send("slack", senders.validate("slack", {"url": receiver.url("/hook")}), make_notification(), ctx)
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_BAD_URL


async def test_the_checked_answer_is_the_one_connected_to_so_rebinding_cannot_swap_it(receiver: Receiver, make_notification: Make) -> None:
    """A resolver that alternates a permitted and a private answer (what a rebinding attacker's DNS does)."""
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) % 2 else ["10.9.8.7"]

    guard = AddressGuard(SsrfPolicy.allowing(["127.0.0.1/32"]), resolver=rebinding)
    port = receiver.base.rsplit(":", 1)[1]
    config: Any = senders.validate("webhook", {"url": f"http://rebind.example:{port}/x"})
    async with guarded_client(guard) as http:
        first = await senders.send("webhook", config, make_notification(), SendContext(http=http, guard=guard))
    assert first == Delivered("HTTP 200") and calls == ["rebind.example"], "one resolution, checked and connected to"
    async with guarded_client(guard) as http:
        second = await senders.send("webhook", config, make_notification(), SendContext(http=http, guard=guard))
    assert isinstance(second, Failed) and second.code is Code.NOTIFY_SSRF_BLOCKED and "10.9.8.7" in second.reason
    assert len(receiver.requests) == 1


async def test_the_allow_list_setting_comes_from_the_environment(
    receiver: Receiver, make_notification: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pulse.cloud.notify.settings import NotifySettings, send_context

    config: Any = senders.validate("webhook", {"url": receiver.url("/dev")})
    async with send_context(NotifySettings()) as strict:
        assert isinstance(await senders.send("webhook", config, make_notification(), strict), Failed)
    monkeypatch.setenv("PULSE_NOTIFY_ALLOW_NETWORKS", "127.0.0.0/8, ::1/128")
    async with send_context(NotifySettings()) as dev:
        assert await senders.send("webhook", config, make_notification(), dev) == Delivered("HTTP 200")
    assert len(receiver.requests) == 1
    monkeypatch.setenv("PULSE_NOTIFY_ALLOW_NETWORKS", "127.0.0.0/8,localhost")
    with pytest.raises(ValueError, match="'localhost' in the SSRF allow-list is not a network"):
        NotifySettings()


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("email", {"host": "169.254.169.254", "sender": "a@example.com", "to": ["b@example.com"]}),
        ("snmp", {"host": "10.1.2.3", "community": "public"}),
        ("mqtt", {"host": "::ffff:192.168.1.20"}),
        ("mqtt", {"host": "127.0.0.1"}),
    ],
)
async def test_hosts_of_non_http_channels_go_through_the_same_guard(kind: str, raw: dict[str, Any], make_notification: Make) -> None:
    async with guarded_client(STRICT) as http:
        outcome = await senders.send(kind, senders.validate(kind, raw), make_notification(), SendContext(http=http, guard=STRICT))
    assert isinstance(outcome, Failed) and outcome.code is Code.NOTIFY_SSRF_BLOCKED


async def test_a_receiver_that_never_answers_is_retried_as_a_timeout(make_notification: Make) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)  # takes the request, never answers
        await done.wait()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    guard = AddressGuard(SsrfPolicy.allowing(["127.0.0.0/8"]))
    try:
        async with guarded_client(guard, timeout_s=0.3) as http:
            ctx = SendContext(http=http, guard=guard, timeout_s=0.3)
            outcome = await senders.send("webhook", senders.validate("webhook", {"url": f"http://127.0.0.1:{port}/"}), make_notification(), ctx)
    finally:
        done.set()
        server.close()
        await server.wait_closed()
    assert isinstance(outcome, Retry) and outcome.code is Code.NOTIFY_TIMEOUT


async def test_a_receivers_cookie_is_not_sent_with_later_requests(
    receiver: Receiver, ctx: SendContext, make_notification: Make
) -> None:
    # receivers of different tenants can share a host: what one sets must not reach the next request
    receiver.answer("/hook", (200, {"set-cookie": "session=tenant-a; Path=/"}, b"ok"))
    config = senders.validate("webhook", {"url": receiver.url("/hook")})
    for _ in range(2):
        assert isinstance(await senders.send("webhook", config, make_notification(), ctx), Delivered)
    assert [r.headers.get("cookie") for r in receiver.requests] == [None, None]


async def test_a_kept_alive_connection_the_receiver_closed_is_not_reused(make_notification: Make) -> None:
    """Each connection answers one request whole and is then closed by the receiver while idle: the next
    send sees it closed and connects again (through the guard), and every request arrives whole."""
    bodies: list[bytes] = []
    closed = asyncio.Event()

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        bodies.append(await reader.readexactly(length))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive, as HTTP/1.1 is by default
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    guard = AddressGuard(SsrfPolicy.allowing(["127.0.0.0/8"]))
    config = senders.validate("webhook", {"url": f"http://127.0.0.1:{port}/hook"})
    try:
        async with guarded_client(guard) as http:
            ctx = SendContext(http=http, guard=guard)
            for n in range(3):
                closed.clear()
                notification = make_notification(alert_id=f"al-{n}")
                assert isinstance(await senders.send("webhook", config, notification, ctx), Delivered)
                await closed.wait()
    finally:
        server.close()
        await server.wait_closed()
    assert [json.loads(b)["alert_id"] for b in bodies] == ["al-0", "al-1", "al-2"]
