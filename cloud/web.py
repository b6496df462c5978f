"""HTTP plumbing shared by every cloud app (the public app with its API and ingest, the gateway sync app): JSON error answers (every
error is ``{code, message, ...}`` with a stable code from protocol/errors.py) and bounded bodies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Network, IPv6Network

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulse.cloud.errors import CloudError
from pulse.protocol.errors import Code, PulseError

log = logging.getLogger("pulse.cloud")


def _error(status: int, code: Code | str, message: str, headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"code": str(code), "message": message, **extra}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        return JSONResponse(exc.as_dict(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(PulseError)
    async def pulse_error(request: Request, exc: PulseError) -> JSONResponse:
        return JSONResponse(exc.as_dict(), status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        sentence = "; ".join(f"{p['field'] or 'body'}: {p['problem']}" for p in problems[:5])
        return _error(422, Code.API_INVALID, f"the request is invalid: {sentence}", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = Code.API_NOT_FOUND if exc.status_code == 404 else Code.API_INVALID
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, Code.API_INTERNAL, "an unexpected error happened; the server log has details")


async def read_limited(request: Request, limit: int, refuse: Callable[[int | None], CloudError]) -> bytes:
    """The request body, refusing (``refuse(declared size or None)``) anything over ``limit`` bytes
    before it is buffered."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise refuse(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refuse(None)
        chunks.append(chunk)
    return b"".join(chunks)


def proxy_options(proxies: Sequence[IPv4Network | IPv6Network]) -> dict[str, object]:
    """uvicorn.Config keywords so that X-Forwarded-For/-Proto change the client's address only when
    the socket's peer is one of ``proxies``; with none, no header ever does. (uvicorn's own default
    believes these headers from 127.0.0.1 and ::1, which would let anyone on the host pick the
    address that per-address limits and the sync listener's trusted-proxy check see.)"""
    if not proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": [str(n) for n in proxies]}
