"""What the HTTP channels share: the request/response data, the guarded exchange, status -> outcome.

A channel's ``build`` returns an ``HttpRequest`` (pure data) and its ``interpret`` turns an
``HttpResponse`` into an ``Outcome``; ``deliver`` is the only part that does I/O. Redirects are
followed here, at most ``MAX_REDIRECTS`` hops, each hop's URL checked and each new connection checked
by the guard (see ssrf.py); credentials in ``Authorization``/``Cookie`` are not carried to another origin.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from pulse.cloud.notify.errors import AddressError
from pulse.cloud.notify.model import Delivered, Failed, Outcome, Retry, retry_after
from pulse.cloud.notify.senders.base import SendContext
from pulse.cloud.notify.ssrf import check_url
from pulse.protocol.errors import Code

MAX_REDIRECTS = 3
MAX_RESPONSE_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CROSS_ORIGIN_DROP = frozenset({"authorization", "cookie", "proxy-authorization"})


@dataclass(frozen=True)
class HttpRequest:
    url: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "POST"

    @classmethod
    def json(cls, url: str, obj: object, headers: tuple[tuple[str, str], ...] = ()) -> HttpRequest:
        body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(url=url, body=body, headers=(("Content-Type", "application/json"), *headers))


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


Interpret = Callable[[HttpResponse, dt.datetime], Outcome]


def status_outcome(response: HttpResponse, now: dt.datetime, *, what: str = "the receiver") -> Outcome:
    """The common reading of an HTTP answer: 2xx delivered; 429, 408 and 5xx retried; other 4xx failed."""
    status, said = response.status, _quote(response.text)
    if 200 <= status < 300:
        return Delivered(f"HTTP {status}")
    after = retry_after(response.headers.get("retry-after"), now)
    if status == 429:
        return Retry(Code.NOTIFY_RATE_LIMITED, f"{what} answered 429 (rate limited){said}", after)
    if status == 408 or status >= 500:
        return Retry(Code.NOTIFY_RECEIVER_ERROR, f"{what} answered {status}{said}", after)
    if status in (401, 403):
        return Failed(Code.NOTIFY_AUTH_FAILED, f"{what} refused the credentials with {status}{said}")
    if status in _REDIRECTS:
        return Failed(Code.NOTIFY_REJECTED, f"{what} answered {status} without a usable Location")
    return Failed(Code.NOTIFY_REJECTED, f"{what} answered {status}{said}")


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return f": {text[:300]}" if text else ""


async def exchange(ctx: SendContext, request: HttpRequest) -> HttpResponse:
    """Send request, following redirects hop by hop. Raises AddressError and httpx transport errors."""
    url = check_url(request.url)
    method, body, headers = request.method, request.body, list(request.headers)
    for _hop in range(MAX_REDIRECTS + 1):
        async with ctx.http.stream(method, url, content=body, headers=headers) as resp:
            data = bytearray()
            async for chunk in resp.aiter_bytes():
                data += chunk[: MAX_RESPONSE_BYTES - len(data)]
                if len(data) >= MAX_RESPONSE_BYTES:
                    break
        location = resp.headers.get("location")
        if resp.status_code not in _REDIRECTS or not location:
            return HttpResponse(resp.status_code, dict(resp.headers), bytes(data), str(url))
        try:
            target = check_url(url.join(location))
        except AddressError as exc:
            raise AddressError(Code.NOTIFY_BAD_URL, f"{url} redirected to {location!r}, which is not an http(s) URL", url=str(url)) from exc
        if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
            method, body = "GET", b""
            headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        if (target.scheme, target.host, target.port) != (url.scheme, url.host, url.port):
            headers = [(k, v) for k, v in headers if k.lower() not in _CROSS_ORIGIN_DROP]
        url = target
    raise AddressError(
        Code.NOTIFY_TOO_MANY_REDIRECTS, f"{request.url} redirected more than {MAX_REDIRECTS} times", url=request.url
    )


async def deliver(ctx: SendContext, request: HttpRequest, interpret: Interpret) -> Outcome:
    """One attempt: exchange, then the channel's reading of the answer; transport trouble becomes an outcome."""
    try:
        response = await exchange(ctx, request)
    except AddressError as exc:
        return address_outcome(exc)
    except httpx.TimeoutException as exc:
        return Retry(Code.NOTIFY_TIMEOUT, f"no answer from {_origin(request.url)} in time ({type(exc).__name__})")
    except httpx.RequestError as exc:  # connect, read, write, protocol and decoding trouble
        return Retry(Code.NOTIFY_UNREACHABLE, f"could not reach {_origin(request.url)}: {exc or type(exc).__name__}")
    return interpret(response, ctx.now())


def address_outcome(exc: AddressError) -> Outcome:
    """DNS failures are retried (often brief); refused or malformed addresses are not."""
    if exc.code is Code.NOTIFY_DNS_FAILED:
        return Retry(exc.code, exc.message)
    return Failed(exc.code, exc.message)


def _origin(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "the receiver"
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")
