"""create_app(settings): the cloud's FastAPI application, wired from one Settings object.

At start: apply pending migrations (PULSE_MIGRATE_ON_START), open the pools, start the telemetry
writer and the storage maintenance task. At stop: drain the writer, close the pools."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from pulse.cloud import jobs
from pulse.cloud.alerts.runner import RuleRunner, RunnerConfig
from pulse.cloud.api import acks as acks_api
from pulse.cloud.api import activation as activation_api
from pulse.cloud.api import alerts as alerts_api
from pulse.cloud.api import audit as audit_api
from pulse.cloud.api import auth as auth_api
from pulse.cloud.api import devices, fleet, gateways, live, operator, sites, system, telemetry
from pulse.cloud.api import jobs as jobs_api
from pulse.cloud.api import notify as notify_api
from pulse.cloud.api import quarantine as quarantine_api
from pulse.cloud.api import reports as reports_api
from pulse.cloud.api import subscriptions as subscriptions_api
from pulse.cloud.api import twin as twin_api
from pulse.cloud.api import users as users_api
from pulse.cloud.api.console import mount_console
from pulse.cloud.api.deps import Components
from pulse.cloud.archive.archiver import archiver_for
from pulse.cloud.auth.accounts import Accounts
from pulse.cloud.auth.oidc_login import OidcClient, OidcLogin
from pulse.cloud.auth.tokens import Authenticator, OidcVerifier, SessionTokens
from pulse.cloud.bodylimit import BodyLimit
from pulse.cloud.db.migrate import maintain_system_metrics, maintain_telemetry, migrate
from pulse.cloud.db.pool import Database, PoolSizes
from pulse.cloud.db.rows import TelemetryRow
from pulse.cloud.ingest import http as ingest_http
from pulse.cloud.ingest.identity import DeviceTokenCache, credential_lookup
from pulse.cloud.ingest.ratelimit import RateLimiter
from pulse.cloud.ingest.writer import Writer
from pulse.cloud.live import LiveHub
from pulse.cloud.metrics import HttpMetrics, Metrics, api_areas, route_paths
from pulse.cloud.notify.settings import NotifySettings, ack_links
from pulse.cloud.notify.worker import NotifyWorkers
from pulse.cloud.platform.health import HealthThresholds
from pulse.cloud.platform.sampler import Sampler
from pulse.cloud.replicas import Replica
from pulse.cloud.reports import worker as report_worker
from pulse.cloud.settings import Settings
from pulse.cloud.stream.client import StreamClient
from pulse.cloud.stream.consumer import PartitionWriters
from pulse.cloud.stream.publisher import StreamPublisher
from pulse.cloud.subscriptions import worker as subscription_worker
from pulse.cloud.subscriptions.store import Entitlements
from pulse.cloud.sync.app import SyncListener, create_sync_app
from pulse.cloud.sync.receive import Receiver
from pulse.cloud.sync.service import SyncService
from pulse.cloud.twins import sweep_forever as command_sweep
from pulse.cloud.twins import to_ms
from pulse.cloud.web import install_error_handlers
from pulse.common import logs
from pulse.protocol.activation import ACTIVATE_PATH
from pulse.protocol.sync import ENROLL_PATH
from pulse.protocol.twin import TwinLimits

log = logging.getLogger("pulse.cloud")


def app_from_environment() -> FastAPI:
    """The app with settings from the environment: the factory uvicorn's worker processes import."""
    logs.configure(logging.INFO)  # a worker process starts with no logging of its own
    app = create_app(Settings(), sync_listener=True)
    tune_gc()
    return app


def tune_gc() -> None:
    """Collect garbage less often, in a serving process (``pulse cloud serve``; the gateway does the
    same in ``pulse gateway run``). Ingest allocates a few container objects per message (the
    decoded element, its row, its result) that live until the request's rows are committed, so with
    CPython's defaults (a young-generation pass every 700 allocations, and full passes over every
    object the process holds, the app's modules included, whenever the survivors reach a quarter of
    them) the collector took about 40 % of HTTP ingest's per-message work (3 of 7 us measured on a
    1,000-message body). What exists after start-up is frozen (never scanned again) and the young
    generation is collected every 10,000 allocations instead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: str = Field(description='"ok", or "unreachable: <why>"')
    writer_queue_rows: int | None = Field(default=None, description="rows waiting in the telemetry writer (when the database answers)")
    cluster_jobs: list[str] = Field(default_factory=list, description="the once-per-cluster jobs this replica runs now")
    stream: Literal["connected", "unreachable"] | None = Field(default=None, description="with PULSE_STREAM_URL: this replica's connection to the ingest stream")


def create_app(
    settings: Settings,
    *,
    sync_listener: bool = False,
    notify: NotifySettings | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> FastAPI:
    """``sync_listener``: also serve the gateway sync listener (mutual TLS, PULSE_SYNC_PORT) while
    the app runs; ``pulse cloud serve`` turns it on. ``notify``: the notification settings
    (default: PULSE_NOTIFY_* from the environment). ``clock``: what "now" is for endpoints that
    answer about the present (default: the system clock; tests fix it). ``monotonic``: the clock
    per-address rate limits count with (default: time.monotonic)."""
    notify_settings = notify if notify is not None else NotifySettings()
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

    tokens = DeviceTokenCache(credential_lookup(db), ttl_s=settings.device_token_cache_s)
    hub = LiveHub()
    rules = RuleRunner(
        db,
        RunnerConfig(sweep_interval_s=settings.rules_sweep_interval_s, gateway_offline_after_s=settings.gateway_offline_after_s),
    )

    notify_workers = NotifyWorkers(db, notify_settings, ack_links=ack_links(notify_settings, settings.jwt_secret.get_secret_value()))

    entitlements = Entitlements(db, ttl_s=settings.subscription_cache_s)
    replica = Replica(settings, db, hub, tokens, entitlements)  # the other processes sharing the database

    def committed(rows: Sequence[TelemetryRow]) -> None:
        """After-commit listeners: the console's live view (here and on the other replicas) and the rule runner, each on its own."""
        for listener in (hub.publish, replica.relay.publish, rules.observe):
            try:
                listener(rows)
            except Exception:  # one listener's bug must not starve the other
                log.exception("after-commit listener %s failed; the rows are stored", listener)

    writer = Writer(settings.writer, retry_after_s=settings.retry_after_s, on_flush=metrics.on_flush, on_commit=committed)
    # PULSE_STREAM_URL: ingest publishes to JetStream instead, and partition writers (cluster jobs) store from it
    stream_client = StreamClient(settings.stream, name=f"pulse-cloud {socket.gethostname()}:{os.getpid()}") if settings.stream else None
    publisher = StreamPublisher(stream_client, settings.stream) if stream_client and settings.stream else None
    partition_writers = PartitionWriters(stream_client, settings.stream, db, on_commit=committed) if stream_client and settings.stream else None
    metrics.watch_queue(lambda: writer.queued_rows)
    twin_limits = TwinLimits(max_state_bytes=settings.twin_max_state_bytes)
    ingest = ingest_http.IngestService(
        config=settings.ingest, tokens=tokens, writer=publisher or writer, metrics=metrics, db=db, twin_limits=twin_limits
    )
    ingest.firmware_files = jobs_api.files_of(settings)
    # gateway data reaches the live view and the rules
    sync = SyncService(settings.sync, db, Receiver(db, metrics, on_commit=committed, twin_limits=twin_limits))

    sync.receiver.stream = publisher  # PULSE_STREAM_URL: gateways' telemetry and events through the stream too
    sync.receiver.on_twin_change = hub.notify  # twin and command changes reach the console's live view (every replica's)
    ingest.shared, ingest.shared_tenant = replica.device_limits, replica.tenant_limits  # rate limits of the cluster
    replica.wake_gateway = sync.notifier.wake  # downlink queued through another replica
    ingest.entitlements = sync.receiver.entitlements = entitlements  # SUSPENDED/EXPIRED tenants: data refused
    sync.claims.limiter = RateLimiter(rate=settings.activation_rate_per_min / 60, burst=settings.activation_burst, max_keys=100_000)
    ingest.on_twin_change = hub.notify  # ... from direct devices too

    archiver = archiver_for(db, settings)
    now = clock or (lambda: dt.datetime.now(dt.UTC))
    sampler = Sampler(
        db,
        metrics,
        writer_depth=lambda: writer.queued_rows,
        clock=now,
        interval_s=settings.platform_sample_interval_s,
        offline_after_s=settings.gateway_offline_after_s,
        source=f"{socket.gethostname()}:{os.getpid()}",
        rules=rules,
        thresholds=HealthThresholds(
            evaluation_lag_s=settings.health_evaluation_lag_s,
            dead_letter_window_s=settings.health_dead_letter_window_s,
            writer_queue_rows=settings.health_writer_queue_rows,
            gateway_backlog_age_s=settings.health_gateway_backlog_age_s,
        )
        if settings.health_alerts
        else None,
    )

    maintained: dict[str, object] = {"running": False}

    async def maintenance() -> None:
        maintained["running"] = True
        while True:
            if settings.archive_enabled:  # what retention is about to drop goes to the archive first
                try:
                    await archiver.run_once(now())
                except Exception:  # retention still runs: a day older than it is lost only if the archive fails for days
                    log.exception("telemetry archive pass failed; retrying in %ss", settings.maintenance_interval_s)
            try:
                actions = await maintain_telemetry(
                    settings.database_url,
                    ahead_days=settings.telemetry_partitions_ahead_days,
                    retention_days=settings.telemetry_retention_days,
                )
                actions += await maintain_system_metrics(
                    settings.database_url,
                    ahead_days=settings.telemetry_partitions_ahead_days,
                    retention_days=settings.system_metrics_retention_days,
                )
                for action, target in actions:
                    log.info("storage: %s %s", action, target)
                maintained["last_run_at"] = now()
                maintained["detail"] = f"every {settings.maintenance_interval_s} s; last run: {len(actions)} action(s)"
            except Exception:  # keep maintaining; the next round may succeed
                log.exception("telemetry maintenance failed; retrying in %ss", settings.maintenance_interval_s)
            await asyncio.sleep(settings.maintenance_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            applied = await migrate(settings.database_url, settings.roles, role_password=password, engine=settings.storage_engine)
            if applied:
                log.info("applied migrations %s", ", ".join(applied))
        await db.open()
        writer.start(db.writer_pool)
        rules.start(sweep=False)
        if notify_settings.workers:
            notify_workers.start()  # safe on every replica: they claim work with SKIP LOCKED
        if settings.platform_sample_interval_s > 0:
            sampler.start()  # every replica samples its own figures
        now = clock or (lambda: dt.datetime.now(dt.UTC))
        # once per cluster: on the replica holding each job's lock (cluster/leader.py)
        replica.add_job("maintenance", maintenance)
        replica.add_job("rules-sweep", rules.sweep_forever)
        replica.add_job(
            "command-expiry",
            lambda: command_sweep(db, interval_s=settings.command_sweep_interval_s, grace_s=settings.command_expiry_grace_s),
        )
        if settings.reports_enabled:
            replica.add_job(
                "daily-reports",
                lambda: report_worker.run_forever(db, interval_s=settings.report_interval_s, clock=now, console_url=notify_settings.console_url),
            )
        replica.add_job(
            "subscriptions",
            lambda: subscription_worker.run_forever(
                db, interval_s=settings.subscription_interval_s, clock=now, console_url=notify_settings.console_url
            ),
        )
        replica.add_job(
            "jobs",
            lambda: jobs.run_forever(db, interval_s=settings.job_interval_s, clock=lambda: to_ms(now()), limits=twin_limits,
                                     wake=sync.notifier.wake),
        )
        if stream_client is not None and partition_writers is not None:
            stream_client.start()
            replica.share_jobs("stream", partition_writers.jobs())
        replica.start()
        listener = SyncListener(create_sync_app(sync, jobs_api.files_of(settings)), settings.sync, sync.ca, metrics) if sync_listener else None
        try:
            if listener is not None:
                await listener.start()
            app.state.sync_listener = listener
            yield
        finally:
            if listener is not None:
                await listener.stop()
            await replica.stop()
            if stream_client is not None:
                await stream_client.stop()
            await sampler.stop()
            await writer.stop()
            await rules.stop()
            await notify_workers.stop()
            await db.close()

    app = FastAPI(
        title="Pulse cloud",
        version="1",
        description="Devices, sites, credentials, HTTP ingest. Errors are JSON: {code, message}; codes are listed in docs/protocol.md.",
        lifespan=lifespan,
    )
    app.state.pulse = Components(
        settings=settings,
        db=db,
        auth=Authenticator(sessions, oidc),
        device_tokens=tokens,
        ingest=ingest,
        sync=sync,
        enroll_limiter=RateLimiter(rate=settings.enroll_rate_per_min / 60, burst=settings.enroll_burst, max_keys=100_000),
        entitlements=entitlements,
        activation_limiter=RateLimiter(rate=settings.activation_rate_per_min / 60, burst=settings.activation_burst, max_keys=100_000),
        archive=archiver.store,
        forgot_limiter=RateLimiter(rate=settings.forgot_rate_per_min / 60, burst=settings.forgot_burst, max_keys=100_000),
    )
    if monotonic is not None:
        app.state.pulse.monotonic = monotonic
    if clock is not None:
        app.state.pulse.clock = clock
    app.state.accounts = Accounts(db, sessions, refresh_ttl_s=settings.refresh_token_ttl_s)
    if settings.oidc_issuer and settings.oidc_client_id:  # console sign-in through the identity provider
        app.state.oidc_login = OidcLogin(
            OidcClient(
                issuer=settings.oidc_issuer,
                client_id=settings.oidc_client_id,
                client_secret=settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else None,
                scopes=settings.oidc_scopes,
                tenant_claim=settings.oidc_tenant_claim,
                roles_claim=settings.oidc_roles_claim,
            ),
            cookie_secret=settings.jwt_secret.get_secret_value() + ":oidc-login",
        )
    app.state.metrics = metrics
    app.state.writer = writer
    app.state.stream = partition_writers
    if stream_client is not None and partition_writers is not None:
        client, stats = stream_client, partition_writers.stats
        metrics.watch_stream(lambda: {"connected": float(client.connected), "partitions": len(stats.partitions),
                                      "stored_messages": stats.stored_messages, "skipped_messages": stats.skipped_messages,
                                      "takeovers": stats.takeovers, "releases": stats.releases,
                                      "replicas": replica.leadership.members.get("stream", 0)})
    app.state.live = hub
    app.state.replica = replica
    app.state.rules = rules
    app.state.notify_settings = notify_settings
    app.state.notify_workers = notify_workers
    app.state.sampler = sampler
    app.state.maintenance = maintained

    install_error_handlers(app)
    # unauthenticated endpoints whose JSON bodies FastAPI would otherwise read whole (ingest has its own limit)
    app.add_middleware(
        BodyLimit, limits=dict.fromkeys((ENROLL_PATH, ACTIVATE_PATH, "/auth/login", "/auth/refresh", "/auth/links/inspect", "/auth/links/accept", "/auth/forgot"), settings.public_max_body_bytes)
    )
    # outermost: every HTTP request is counted, by route group, with its latency
    # the areas from the routers' own paths: the OpenAPI document would do, but building it costs
    # about 0.6 s of CPU at the first request of every process (and of every app in the tests)
    app.add_middleware(HttpMetrics, metrics=metrics, areas=lambda: api_areas(route_paths(routers)))

    @app.get("/health", tags=["ops"], summary="Liveness and database reachability", responses={200: {"model": Health}, 503: {"model": Health}})
    async def health() -> JSONResponse:
        try:
            async with db.app_pool.acquire(timeout=5) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - any failure means "database unreachable"
            return JSONResponse({"status": "degraded", "database": f"unreachable: {exc}"}, status_code=503)
        body: dict[str, object] = {"status": "ok", "database": "ok", "writer_queue_rows": writer.queued_rows, "cluster_jobs": replica.leadership.held}
        if stream_client is not None:
            body["stream"] = "connected" if stream_client.connected else "unreachable"
        return JSONResponse(body)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        metrics.sample_pools(db.pools())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routers = (
        ingest_http.router,
        auth_api.router,
        sites.router,
        subscriptions_api.router,
        activation_api.router,
        devices.router,
        quarantine_api.router,
        gateways.router,
        gateways.enroll_router,
        system.router,  # before operator.router: /operator/alerts/heatmap, /operator/health/sparklines
        operator.router,
        users_api.router,
        users_api.operator_router,
        users_api.links_router,
        users_api.forgot_router,
        fleet.router,
        telemetry.router,
        live.router,
        alerts_api.rules_router,
        alerts_api.alerts_router,
        alerts_api.states_router,
        acks_api.permissions_router,
        acks_api.hooks_router,
        audit_api.router,
        twin_api.router,
        jobs_api.router,
        jobs_api.firmware_router,
        notify_api.router,
        notify_api.escalation_router,
        notify_api.oncall_router,
        reports_api.router,
        reports_api.exports_router,
    )
    for router in routers:
        app.include_router(router)
    app.state.api_routers = routers
    mount_console(app, settings.console_dir)
    return app
