"""create_app(settings): the cloud's FastAPI application, wired from one Settings object.

At start: apply pending migrations (PULSE_MIGRATE_ON_START), open the pools, start the telemetry
writer and the storage maintenance task. At stop: drain the writer, close the pools."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulse.cloud.alerts.runner import RuleRunner, RunnerConfig
from pulse.cloud.api import alerts as alerts_api
from pulse.cloud.api import auth as auth_api
from pulse.cloud.api import devices, fleet, live, operator, sites, telemetry
from pulse.cloud.api.console import mount_console
from pulse.cloud.api.deps import Components
from pulse.cloud.auth.accounts import Accounts
from pulse.cloud.auth.tokens import Authenticator, OidcVerifier, SessionTokens
from pulse.cloud.db.migrate import maintain_telemetry, migrate
from pulse.cloud.db.pool import Database, PoolSizes
from pulse.cloud.errors import CloudError
from pulse.cloud.ingest import http as ingest_http
from pulse.cloud.ingest.identity import CredentialRecord, DeviceTokenCache
from pulse.cloud.ingest.writer import TelemetryRow, Writer
from pulse.cloud.live import LiveHub
from pulse.cloud.metrics import Metrics
from pulse.cloud.settings import Settings
from pulse.protocol.errors import Code, PulseError

log = logging.getLogger("pulse.cloud")


def _error(status: int, code: Code | str, message: str, headers: dict[str, str] | None = None, **extra: object) -> JSONResponse:
    return JSONResponse({"code": str(code), "message": message, **extra}, status_code=status, headers=headers)


def app_from_environment() -> FastAPI:
    """The app with settings from the environment: the factory uvicorn's worker processes import."""
    return create_app(Settings())


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    password = settings.db_role_password.get_secret_value() if settings.db_role_password else None
    db = Database(
        settings.database_url,
        settings.roles,
        password=password,
        sizes=PoolSizes(app=settings.db_pool_size, operator=settings.db_operator_pool_size, writer=settings.writer_connections),
    )
    sessions = SessionTokens(
        settings.jwt_secret.get_secret_value(), issuer=settings.jwt_issuer, ttl_s=settings.access_token_ttl_s
    )
    oidc = None
    if settings.oidc_issuer:
        oidc = OidcVerifier(
            issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            jwks_url=settings.oidc_jwks_url,
            tenant_claim=settings.oidc_tenant_claim,
            roles_claim=settings.oidc_roles_claim,
            cache_s=settings.oidc_jwks_cache_s,
        )

    async def lookup(credential_id: object) -> CredentialRecord | None:
        async with db.identity() as conn:
            row = await conn.fetchrow("SELECT * FROM pulse_identity_device_credential($1)", credential_id)
        return None if row is None else CredentialRecord(**dict(row))

    tokens = DeviceTokenCache(lookup, ttl_s=settings.device_token_cache_s)
    hub = LiveHub()
    rules = RuleRunner(
        db, RunnerConfig(sweep_interval_s=settings.rules_sweep_interval_s, gateway_offline_after_s=settings.gateway_offline_after_s)
    )

    def committed(rows: Sequence[TelemetryRow]) -> None:
        """After-commit listeners: the console's live view and the rule runner, each on its own."""
        for listener in (hub.publish, rules.observe):
            try:
                listener(rows)
            except Exception:  # one listener's bug must not starve the other
                log.exception("after-commit listener %s failed; the rows are stored", listener)

    writer = Writer(settings.writer, retry_after_s=settings.retry_after_s, on_flush=metrics.on_flush, on_commit=committed)
    metrics.watch_queue(lambda: writer.queued_rows)
    ingest = ingest_http.IngestService(config=settings.ingest, tokens=tokens, writer=writer, metrics=metrics)

    async def maintenance() -> None:
        while True:
            try:
                actions = await maintain_telemetry(
                    settings.database_url,
                    ahead_days=settings.telemetry_partitions_ahead_days,
                    retention_days=settings.telemetry_retention_days,
                )
                for action, target in actions:
                    log.info("telemetry storage: %s %s", action, target)
            except Exception:  # keep maintaining; the next round may succeed
                log.exception("telemetry maintenance failed; retrying in %ss", settings.maintenance_interval_s)
            await asyncio.sleep(settings.maintenance_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            applied = await migrate(settings.database_url, settings.roles, role_password=password)
            if applied:
                log.info("applied migrations %s", ", ".join(applied))
        await db.open()
        writer.start(db.writer_pool)
        rules.start()
        task = asyncio.create_task(maintenance(), name="pulse-maintenance")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await writer.stop()
            await rules.stop()
            await db.close()

    app = FastAPI(
        title="Pulse cloud",
        version="1",
        description="Devices, sites, credentials, HTTP ingest. Errors are JSON: {code, message}; codes are listed in docs/protocol.md.",
        lifespan=lifespan,
    )
    app.state.pulse = Components(
        settings=settings, db=db, auth=Authenticator(sessions, oidc), device_tokens=tokens, ingest=ingest
    )
    app.state.accounts = Accounts(db, sessions, refresh_ttl_s=settings.refresh_token_ttl_s)
    app.state.metrics = metrics
    app.state.writer = writer
    app.state.live = hub
    app.state.rules = rules

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

    @app.get("/health", tags=["ops"], summary="Liveness and database reachability")
    async def health() -> JSONResponse:
        try:
            async with db.app_pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any failure means "database unreachable"
            return JSONResponse({"status": "degraded", "database": f"unreachable: {exc}"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "writer_queue_rows": writer.queued_rows})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        metrics.sample_pools(db.pools())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(ingest_http.router)
    app.include_router(auth_api.router)
    app.include_router(sites.router)
    app.include_router(devices.router)
    app.include_router(operator.router)
    app.include_router(fleet.router)
    app.include_router(telemetry.router)
    app.include_router(live.router)
    app.include_router(alerts_api.rules_router)
    app.include_router(alerts_api.alerts_router)
    app.include_router(alerts_api.states_router)
    mount_console(app, settings.console_dir)
    return app
