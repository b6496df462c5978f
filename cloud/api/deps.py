"""What every endpoint needs: the caller (from a verified token only) and the app's components."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from pulse.cloud.archive.store import ArchiveStore
from pulse.cloud.auth.tokens import OPERATOR, OPERATOR_ADMIN, TENANT_READ, TENANT_WRITE, Authenticator, Principal
from pulse.cloud.db.pool import Database
from pulse.cloud.errors import ForbiddenError
from pulse.cloud.ingest.http import IngestService
from pulse.cloud.ingest.identity import DeviceTokenCache
from pulse.cloud.ingest.ratelimit import RateLimiter
from pulse.cloud.settings import Settings
from pulse.cloud.subscriptions.store import Entitlements
from pulse.cloud.sync.service import SyncService
from pulse.common import logs
from pulse.protocol.errors import Code


@dataclass
class Components:
    """Everything built in create_app() that endpoints use (app.state.pulse)."""

    settings: Settings
    db: Database
    auth: Authenticator
    device_tokens: DeviceTokenCache
    ingest: IngestService
    sync: SyncService
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    """The time "now" means for endpoints that answer about the present (who is on call now);
    tests fix it (``create_app(..., clock=...)``)."""
    enroll_limiter: RateLimiter | None = None
    """Enrollment requests per source address (PULSE_ENROLL_RATE_PER_MIN, PULSE_ENROLL_BURST)."""
    monotonic: Callable[[], float] = time.monotonic
    """The clock rate limits count with; tests may pass their own."""
    entitlements: Entitlements | None = None
    """Whether a tenant's data is accepted (its subscriptions); operator changes invalidate it."""
    activation_limiter: RateLimiter | None = None
    """Activation attempts per source address (PULSE_ACTIVATION_RATE_PER_MIN, PULSE_ACTIVATION_BURST)."""
    archive: ArchiveStore | None = None
    """The telemetry archive's storage (local directory or S3), read for long chart ranges and exports."""
    forgot_limiter: RateLimiter | None = None
    """Forgotten-password requests per source address (PULSE_FORGOT_RATE_PER_MIN, PULSE_FORGOT_BURST)."""


def components(request: Request) -> Components:
    return request.app.state.pulse  # type: ignore[no-any-return]


async def principal(request: Request) -> Principal:
    p = await components(request).auth.authenticate(request.headers.get("authorization"))
    if p.via == "local":  # a disabled, removed or signed-out account's tokens stop at once
        await request.app.state.accounts.check_session(p)
    if p.tenant_id is not None:
        logs.bind(tenant=p.tenant_id)  # what this request logs names its tenant
    return p


@dataclass(frozen=True, slots=True)
class TenantCaller:
    principal: Principal
    tenant_id: uuid.UUID

    @property
    def actor(self) -> str:
        return self.principal.actor


def _tenant_caller(p: Principal, allowed: frozenset[str], what: str) -> TenantCaller:
    if p.tenant_id is None:
        raise ForbiddenError(Code.AUTH_FORBIDDEN, "this account belongs to no tenant; operators use /api/v1/operator")
    if not p.roles & allowed:
        raise ForbiddenError(Code.AUTH_FORBIDDEN, f"{what} needs one of the roles: {', '.join(sorted(allowed))}")
    return TenantCaller(p, p.tenant_id)


async def tenant_reader(p: Annotated[Principal, Depends(principal)]) -> TenantCaller:
    return _tenant_caller(p, TENANT_READ, "reading")


async def tenant_writer(p: Annotated[Principal, Depends(principal)]) -> TenantCaller:
    return _tenant_caller(p, TENANT_WRITE, "changing")


async def operator(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if not p.roles & OPERATOR:
        raise ForbiddenError(Code.AUTH_FORBIDDEN, "the operator API needs the operator or operator-admin role")
    return p


async def operator_admin(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if not p.roles & OPERATOR_ADMIN:
        raise ForbiddenError(Code.AUTH_FORBIDDEN, "this needs the operator-admin role")
    return p


Reader = Annotated[TenantCaller, Depends(tenant_reader)]
Writer = Annotated[TenantCaller, Depends(tenant_writer)]
Operator = Annotated[Principal, Depends(operator)]
OperatorAdmin = Annotated[Principal, Depends(operator_admin)]
Parts = Annotated[Components, Depends(components)]
