"""Mutual TLS for the gateway listener: the verified client certificate reaches the app.

uvicorn does not put the TLS peer certificate in the ASGI scope. ``PeerCertH11Protocol`` is a small
subclass of uvicorn's h11 protocol, passed as ``uvicorn.Config(http=PeerCertH11Protocol)``: on each
connection it reads the certificate the TLS layer verified and adds it to every request's scope
under the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM strings).
The app reads it with ``peer_certificate(scope)``, never from a header.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.h11_impl import H11Protocol

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = tls
        await app(scope, receive, send)

    return wrapped


class PeerCertH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        der = ssl_object.getpeercert(binary_form=True)
        chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
        self.app = _with_tls(self.app, {"client_cert_chain": chain, "tls_version": ssl_object.version()})


def peer_certificate(scope: Scope) -> x509.Certificate | None:
    """The client certificate the TLS layer verified for this request, or None."""
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return x509.load_pem_x509_certificate(chain[0].encode()) if chain else None


def server_context(cert_file: str, key_file: str, ca_file: str) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for a listener that requires a client certificate from our CA."""
    return {
        "ssl_certfile": cert_file,
        "ssl_keyfile": key_file,
        "ssl_ca_certs": ca_file,
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "http": PeerCertH11Protocol,
    }


# --- refused handshakes --------------------------------------------------------------------------
# asyncio reports a failed server-side TLS handshake nowhere (ssl.SSLError is an OSError, which its
# SSL protocol only logs in debug mode) and never tells the HTTP protocol, whose connection_made
# comes only after a handshake succeeds. So the sync listener accepts plain TCP and runs the
# handshake itself with ``loop.start_tls``: a refusal is then an exception it holds, with the
# peer's address, and everything after a successful handshake is uvicorn's h11 protocol as before.

RefusalObserver = Callable[[str | None, str, BaseException], None]
"""Told (peer address, reason, exception) for every handshake the listener refused."""

_VERIFY_REASONS = {9: "certificate_not_yet_valid", 10: "certificate_expired", 23: "certificate_revoked"}
_NOT_TLS = {"HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"}


def refusal_reason(exc: BaseException) -> str:
    """A short, bounded label for why a handshake failed (a metric label and a log field)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate_untrusted")
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate"
        if reason in _NOT_TLS:
            return "not_tls"
        if "PROTOCOL" in reason or "VERSION" in reason:
            return "protocol_version"
        if "CERTIFICATE" in reason:
            return "certificate_untrusted"
        return "tls_error"
    if isinstance(exc, ConnectionAbortedError | TimeoutError):
        return "timeout"  # asyncio aborts a handshake that takes longer than its timeout
    if isinstance(exc, ConnectionError | EOFError):
        return "closed"
    return "other"


class TlsAcceptingH11Protocol(PeerCertH11Protocol):
    """uvicorn's h11 protocol behind a handshake this class runs itself (see above). Use
    ``accepting_protocol(context, on_refused)``, which makes a subclass bound to them, as
    ``uvicorn.Config(http=...)`` with no ``ssl_*`` settings."""

    ssl_context: ssl.SSLContext
    on_refused: RefusalObserver
    handshake_timeout_s: float = 60.0
    pending: set[asyncio.Task[None]]  # handshakes under way (cancelled when the listener stops)
    _tls_up = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if transport.get_extra_info("ssl_object") is not None:
            self._tls_up = True
            super().connection_made(transport)
            early, self._early = getattr(self, "_early", []), []
            for data in early:
                super().data_received(data)
            return
        transport.pause_reading()  # nothing is read as HTTP before the handshake
        task = asyncio.get_running_loop().create_task(self._handshake(transport))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    def data_received(self, data: bytes) -> None:
        # asyncio's TLS layer hands over application data that arrived with the end of the
        # handshake before start_tls() returns (a client that sends its request at once, seen
        # with a separate process); it waits here until connection_made() has set up HTTP.
        if not self._tls_up:
            self._early = [*getattr(self, "_early", []), data]
            return
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tls_up:  # before the handshake ended nothing of HTTP began
            super().connection_lost(exc)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        peer = raw.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else None
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw, self, self.ssl_context, server_side=True, ssl_handshake_timeout=self.handshake_timeout_s
            )
        except (OSError, EOFError) as exc:  # ssl.SSLError, resets, the handshake timeout
            raw.close()
            self.on_refused(host, refusal_reason(exc), exc)
            return
        if tls is None:
            raw.close()
            return
        self.connection_made(tls)


def accepting_protocol(context: ssl.SSLContext, on_refused: RefusalObserver) -> type[TlsAcceptingH11Protocol]:
    return type(
        "BoundTlsAcceptingH11Protocol",
        (TlsAcceptingH11Protocol,),
        {"ssl_context": context, "on_refused": staticmethod(on_refused), "pending": set()},
    )


class RateLimitedLog:
    """Whether to log an event now: once per key per ``every_s`` (time passed in). Keeps at most
    ``max_keys`` keys, dropping the oldest, so a flood of addresses cannot grow it without bound."""

    def __init__(self, every_s: float = 60.0, max_keys: int = 4096) -> None:
        self.every_s = every_s
        self.max_keys = max_keys
        self._last: dict[object, float] = {}

    def due(self, key: object, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        self._last.pop(key, None)
        self._last[key] = now
        while len(self._last) > self.max_keys:
            del self._last[next(iter(self._last))]
        return True
