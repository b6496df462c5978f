"""Request body limits enforced while the body is read, for endpoints anyone can reach.

FastAPI reads a JSON body whole before validation refuses it, so without this a client with no
credentials could make the server buffer any size (issue 15: 256 MiB on ``/enroll/v1`` grew the
server by 900 MB). ``BodyLimit`` is a plain ASGI middleware in front of the app:

- a declared ``Content-Length`` over the path's limit is answered ``413 api.too_large`` at once,
  before a byte of the body is read;
- otherwise (chunked bodies, or a body longer than it declared) the bytes are counted as they
  arrive; past the limit the middleware answers 413 itself and tells the app the client went away,
  so nothing more is read and whatever the app would answer afterwards is dropped.

Endpoints with a body limit of their own (``read_limited``: ingest, sync batches) keep it; this
covers the ones whose bodies FastAPI parses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson

from pulse.protocol.errors import Code

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_BODY_LIMIT = 64 * 1024
"""Default for unauthenticated JSON endpoints: an enrollment (token + CSR) or a login is a few KiB."""


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """``BodyLimit(app, {"/enroll/v1": 65536, ...})``: exact paths and their limits in bytes."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, int]) -> None:
        self.app = app
        self.limits = dict(limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        state = {"read": 0, "refused": False, "started": False}

        async def limited_receive() -> Message:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    state["refused"] = True
                    if not state["started"]:
                        await _refuse(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["refused"]:
                return  # the 413 went out already; the app's answer to the "disconnect" is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def _refuse(send: Send, limit: int) -> None:
    body = orjson.dumps(
        {"code": str(Code.API_TOO_LARGE), "message": f"the request body is over this endpoint's limit of {limit} bytes", "limit": limit}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
