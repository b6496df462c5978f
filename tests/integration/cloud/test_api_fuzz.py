"""Schema-driven fuzz of the whole OpenAPI document (schemathesis): every operation gets valid and
invalid requests generated from its schema, sent over real HTTP to a real app (uvicorn on loopback)
on a real PostgreSQL, authenticated as a real user (a tenant-admin; an operator for the operator
API; a device for HTTP ingest). No answer may be a 5xx, and every 4xx must carry a code from the
taxonomy (protocol/errors.py).

Bounded and deterministic: a fixed number of examples per operation, derandomized (the same
requests on every run), no example database. One test per operation, so a failure names it."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from pulse.cloud.app import create_app
from pulse.cloud.auth.accounts import create_tenant, create_user
from pulse.cloud.notify.settings import NotifySettings
from pulse.cloud.settings import Settings
from pulse.protocol.errors import Code

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25
PASSWORD = "correct horse battery staple"


def _openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document; building the app opens no connection, so no database is needed."""
    offline = Settings(mode="development", database_url="postgresql://pulse@127.0.0.1/unused", jwt_secret="x" * 40)
    return create_app(offline, notify=NotifySettings(workers=False)).openapi()


SCHEMA = schemathesis.openapi.from_dict(_openapi_document())
LABELS = sorted(result.ok().label for result in SCHEMA.get_all_operations())


@dataclass
class Target:
    """The running app: its base URL and the credentials for each part of the API."""

    base_url: str = ""
    tenant_admin: dict[str, str] = field(default_factory=dict)
    operator: dict[str, str] = field(default_factory=dict)
    device: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    """Path parameter name -> the id of a real object in the tenant-admin's tenant."""

    def headers_for(self, label: str) -> dict[str, str]:
        path = label.split(" ", 1)[1]
        if path.startswith("/api/v1/operator/"):
            return self.operator
        if path.startswith("/ingest/"):
            return self.device
        return self.tenant_admin


async def _serve(settings: Settings, target: Target, ready: threading.Event, stop: asyncio.Event) -> None:
    import uvicorn

    app = create_app(settings, notify=NotifySettings(workers=False))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="on", ws="websockets-sansio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        target.base_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        db = app.state.pulse.db
        slug = "fuzz-" + uuid.uuid4().hex[:8]
        await create_tenant(db, slug=slug, name=slug, actor="test")
        async with httpx.AsyncClient(base_url=target.base_url) as client:

            async def login(roles: list[str], tenant: str | None) -> dict[str, str]:
                email = f"{uuid.uuid4().hex[:10]}@example.com"
                await create_user(db, email=email, password=PASSWORD, roles=roles, tenant=tenant, actor="test")
                r = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
                r.raise_for_status()
                return {"Authorization": f"Bearer {r.json()['access_token']}"}

            target.tenant_admin = await login(["tenant-admin"], slug)
            target.operator = await login(["operator"], None)
            target.ids = await _seed(client, target.tenant_admin)
            r = await client.post(f"/api/v1/devices/{target.ids['device']}/credentials", headers=target.tenant_admin)
            r.raise_for_status()
            target.device = {"Authorization": f"Bearer {r.json()['token']}"}
        ready.set()
        await stop.wait()
    finally:
        server.should_exit = True
        await task


async def _seed(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    """One object of each kind, so that generated requests also reach real rows (a PATCH that
    matches nothing never meets a NOT NULL column)."""

    async def make(path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = await client.post(path, json=body, headers=headers)
        assert r.status_code == 201, (path, r.text)
        return r.json()  # type: ignore[no-any-return]

    ids = {"site_id": (await make("/api/v1/sites", {"name": "plant"}))["id"]}
    ids["device"] = (await make("/api/v1/devices", {"device_id": "fuzz-dev", "site_id": ids["site_id"]}))["id"]
    ids["credential"] = (await make(f"/api/v1/devices/{ids['device']}/credentials"))["id"]
    ids["gateway"] = (await make("/api/v1/gateways", {"name": "gw"}))["gateway"]["id"]
    rule = {"id": "hot", "severity": "major", "metric": "temp_c", "operator": "GT", "threshold": 30, "clear_threshold": 28}
    ids["rule_id"] = (await make("/api/v1/rules", rule))["id"]
    # an address that is never reached: the workers are off and the test-send operation gets no real id
    channel = await make("/api/v1/notify/channels", {"name": "hook", "kind": "webhook", "config": {"url": "https://hooks.example.com/pulse"}})
    ids["channel_id"] = channel["id"]
    layer = {"name": "primary", "rotation": "weekly", "start": "2026-11-02T00:00:00+01:00", "members": [{"name": "ana", "channel": channel["id"]}]}
    ids["schedule_id"] = (await make("/api/v1/oncall/schedules", {"name": "ops", "time_zone": "Europe/Berlin", "layers": [layer]}))["id"]
    policy = {"name": "p", "levels": [{"delay_s": 60, "targets": [{"schedule": ids["schedule_id"]}]}]}
    ids["policy_id"] = (await make("/api/v1/escalation-policies", policy))["id"]
    ids["route_id"] = (await make("/api/v1/notify/routes", {"name": "r", "channels": [channel["id"]], "escalation_policy": ids["policy_id"]}))["id"]
    window = {"device_id": "fuzz-dev", "starts_at": "2026-01-01T00:00:00+00:00", "ends_at": "2026-01-02T00:00:00+00:00"}
    ids["window_id"] = str((await make("/api/v1/maintenance-windows", window))["id"])
    ids["command_id"] = (await make("/api/v1/devices/fuzz-dev/commands", {"name": "ping"}))["id"]
    return ids


@pytest.fixture(scope="module")
def target(cloud_settings: Settings) -> Iterator[Target]:
    """The app under a real uvicorn in a thread of its own (the fuzz drives it with blocking
    requests from the test's thread); stopped and joined when the module ends."""
    found = Target()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(_serve(cloud_settings, found, ready, stop))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failure.append(exc)
        finally:
            loop.close()
            ready.set()

    thread = threading.Thread(target=run, name="fuzz-cloud")
    thread.start()
    try:
        ready.wait(120)
        if failure:
            raise failure[0]
        assert found.base_url, "the cloud did not start within 120 s"
        yield found
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "the fuzzed cloud did not stop"


KNOWN_CODES = frozenset(str(c) for c in Code)


def coded_client_error(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every refusal is JSON ``{"code": <a taxonomy code>, "message": ...}`` (pages for people, the
    email acknowledge links, show the code as ``<code>...</code>``)."""
    if 400 <= response.status_code < 500 and "text/html" in str(response.headers.get("content-type", "")):
        shown = re.findall(r"<code>([a-z_.]+)</code>", response.text)
        assert shown and shown[0] in KNOWN_CODES, f"a {response.status_code} page without a known code: {response.text[:300]!r}"
        return None
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict) and body.get("code") in KNOWN_CODES, f"a {response.status_code} without a known code: {body!r}"
        assert isinstance(body.get("message"), str) and body["message"], f"a {response.status_code} without a message: {body!r}"
    return None


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.mark.parametrize("label", LABELS)
def test_no_generated_request_gets_a_server_error_or_an_uncoded_refusal(label: str, target: Target, session: requests.Session) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    real = {name: target.ids[name] for name in re.findall(r"{(\w+)}", label) if name in target.ids}
    if "/twin" in label or "/commands" in label:
        real["device"] = "fuzz-dev"  # the twin and command routes name a device by its device id
    if real and not label.startswith("DELETE ") and not label.endswith("/test"):
        # the same requests on a real object (deletes and test sends keep to generated ids)
        strategies += [operation.as_strategy(mode, path_parameters=real) for mode in GenerationMode]
    cases = st.one_of(strategies)
    headers = target.headers_for(label)

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),  # schema-driven data: slow or filtered generation is expected, not a bug
    )
    @given(case=cases)
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(base_url=target.base_url, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, coded_client_error])

    fuzz()
