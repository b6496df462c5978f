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
