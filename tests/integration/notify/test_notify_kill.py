"""A real `pulse cloud serve` killed with SIGKILL while it is sending: after a restart nothing queued
is lost, PagerDuty gets the event again under the same dedup_key (one incident), and the webhook is
not sent twice (dead letter with notify.outcome_unknown, for a person to retry)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from notify_cloud import ACCEPTED, PD_KEY, fast_notify, notify_cloud, open_alert, setup_tenant
from notify_receivers import Receiver

from pulse.cloud.db.embedded import free_port
from pulse.cloud.settings import Settings

pytestmark = pytest.mark.integration


def _serve(settings: Settings, tmp: Path, log: Path, **notify: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PULSE_MODE": "development",
        "PULSE_DATABASE_URL": settings.database_url,
        "PULSE_DB_ROLE_PREFIX": settings.db_role_prefix,
        "PULSE_JWT_SECRET": settings.jwt_secret.get_secret_value(),
        "PULSE_SYNC_PORT": str(free_port()),
        "PULSE_DATA_DIR": str(tmp),
        "PULSE_NOTIFY_ALLOW_NETWORKS": "127.0.0.0/8",
        "PULSE_NOTIFY_POLL_INTERVAL_S": "0.1",
        **{f"PULSE_NOTIFY_{k.upper()}": v for k, v in notify.items()},
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, f"http://127.0.0.1:{port}"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, _tail(log)
            try:
                if (await client.get(url + "/health", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("pulse cloud serve did not become healthy")


async def _until(check: Any, what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_sigkill_mid_send_then_restart(cloud_settings: Settings, receiver: Receiver, tmp_path: Path) -> None:
    async with notify_cloud(cloud_settings, fast_notify(workers=False)) as c:
        _, h, _ = await setup_tenant(
            c,
            {"kind": "pagerduty", "config": {"routing_key": PD_KEY, "events_url": receiver.url("/pd")}},
            {"kind": "webhook", "config": {"url": receiver.url("/hook")}},
        )
        await open_alert(c, h)  # queued (outbox), not sent: no worker runs
    receiver.answer("/pd", (202, {"x-test-hang-s": "5"}, b""))
    receiver.answer("/hook", (200, {"x-test-hang-s": "5"}, b""))
    log = tmp_path / "cloud.log"
    proc, url = _serve(cloud_settings, tmp_path, log)
    try:
        await _healthy(proc, url, log)
        await _until(lambda: len(receiver.requests) == 2, "both sends to start")
    finally:
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
    receiver.answer("/pd", ACCEPTED)
    proc, url = _serve(cloud_settings, tmp_path, log, claim_timeout_s="1")
    try:
        await _healthy(proc, url, log)
        await _until(lambda: len([r for r in receiver.requests if r.path == "/pd"]) == 2, "PagerDuty to get the event again")
        async with httpx.AsyncClient(base_url=url) as client:

            async def statuses() -> list[tuple[str, str, str | None]]:
                items = (await client.get("/api/v1/notify/deliveries", headers=h)).json()["items"]
                return sorted((i["kind"], i["status"], i["last_code"]) for i in items)

            deadline = time.monotonic() + 30
            while (got := await statuses()) != [("pagerduty", "delivered", "notify.outcome_unknown"), ("webhook", "dead", "notify.outcome_unknown")]:
                assert time.monotonic() < deadline, got
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
    pd = [json.loads(r.body) for r in receiver.requests if r.path == "/pd"]
    assert [e["event_action"] for e in pd] == ["trigger", "trigger"] and pd[0]["dedup_key"] == pd[1]["dedup_key"]
    assert len([r for r in receiver.requests if r.path == "/hook"]) == 1
