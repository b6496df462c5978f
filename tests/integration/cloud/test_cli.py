"""The operator's commands as real processes: migrate, admin create-tenant/create-user (audited),
maintain, and serve (which migrates a fresh database at start and answers /health), stopped with
SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from pulse.cloud.ca import CertificateAuthority
from pulse.cloud.db.embedded import free_port
from pulse.edge.identity import IdentityFiles, make_key_and_csr, store_certificate

pytestmark = pytest.mark.integration


def pulse(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulse.cli.main", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


def environment(dsn: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_") and k != "DATABASE_URL"}
    return {**env, "PULSE_DATABASE_URL": dsn, "PULSE_DB_ROLE_PREFIX": prefix, "PULSE_MODE": "development", **extra}


async def test_migrate_and_bootstrap_commands(fresh_database: tuple[str, str]) -> None:
    dsn, prefix = fresh_database
    env = environment(dsn, prefix)
    first = pulse(["cloud", "migrate"], env)
    assert first.returncode == 0, first.stderr
    # (a "notice:" line comes first where TimescaleDB is installed but not preloaded: docs/cloud.md)
    assert [line for line in first.stdout.splitlines() if not line.startswith("notice: ")][0].startswith("applied: 0001")
    assert pulse(["cloud", "migrate"], env).stdout.strip() == "the schema is up to date"

    tenant = pulse(["cloud", "admin", "create-tenant", "acme", "Acme Corp"], env)
    assert tenant.returncode == 0, tenant.stderr
    dup = pulse(["cloud", "admin", "create-tenant", "acme", "Again"], env)
    assert dup.returncode == 1 and "exists" in dup.stderr
    user = pulse(
        ["cloud", "admin", "create-user", "ops@acme.example", "--role", "tenant-admin", "--tenant", "acme", "--password-stdin"],
        env,
        stdin="a-very-long-password\n",
    )
    assert user.returncode == 0, user.stderr
    bad = pulse(["cloud", "admin", "create-user", "op@x.example", "--role", "operator", "--tenant", "acme", "--external"], env)
    assert bad.returncode == 1 and "operators belong to no tenant" in bad.stderr

    maintain = pulse(["cloud", "maintain"], env)
    assert maintain.returncode == 0, maintain.stderr
    # the archive pass first, then storage: native partitioning creates partitions; on a TimescaleDB
    # server it sets the retention policy
    first, *storage = maintain.stdout.splitlines()
    assert first == "archived 0 days, 0 rows", maintain.stdout
    assert any(line.startswith("created: telemetry_p") for line in storage) or "retention: 90 days" in storage, maintain.stdout
    assert any("system_metrics" in line for line in storage), maintain.stdout  # the platform's samples are kept the same way

    conn = await asyncpg.connect(dsn)
    try:
        audit = await conn.fetch("SELECT actor, action, target, bypass FROM audit_log ORDER BY id")
    finally:
        await conn.close()
    assert [(a["action"], a["target"]) for a in audit] == [
        ("tenant.create", "acme"),
        ("tenant.create", "acme"),  # the refused duplicate was attempted, and so audited
        ("user.create", "ops@acme.example"),
    ]
    assert all(a["bypass"] and a["actor"].startswith("cli:") for a in audit)


def test_placeholder_secret_refused_in_production(fresh_database: tuple[str, str]) -> None:
    dsn, prefix = fresh_database
    result = pulse(["cloud", "migrate"], environment(dsn, prefix, PULSE_MODE="production"))
    assert result.returncode != 0 and "PULSE_JWT_SECRET" in result.stderr


def test_serve_migrates_at_start_and_stops_on_sigterm(fresh_database: tuple[str, str], tmp_path: Path) -> None:
    dsn, prefix = fresh_database
    port, sync_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "cloud", "serve", "--port", str(port)],
        env=environment(dsn, prefix, PULSE_SYNC_PORT=str(sync_port), PULSE_DATA_DIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        healthy = None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    healthy = client.get("/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert healthy is not None and healthy.status_code == 200
            assert "pulse_writer_queue_rows" in client.get("/metrics").text
        # the gateway sync listener runs alongside, with a server certificate from the cloud's new CA
        assert oct((tmp_path / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
        # (with a gateway certificate of that CA: without one the listener refuses the handshake, and
        # whether the client notices before its side of a TLS 1.3 handshake ends is a race)
        ca = CertificateAuthority.load_or_create(tmp_path / "ca")
        files = IdentityFiles(tmp_path / "gw")
        cert = ca.sign_gateway_csr(make_key_and_csr(files, "gw-probe"), tenant_id="t", gateway_id="gw-probe")
        store_certificate(files, cert.public_bytes(serialization.Encoding.PEM), ca.cert_pem)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.crt"))
        ctx.load_cert_chain(files.cert, files.key)
        for _ in range(8):  # every handshake completes (under uvloop about one in four hung)
            with socket.create_connection(("127.0.0.1", sync_port), timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]
        assert asyncio.run(_migrations(dsn)) >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        output = proc.stdout.read().decode() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    # uvicorn shuts down gracefully (writer drained, pools closed), then re-raises the signal
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


async def _migrations(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM schema_migrations"))
    finally:
        await conn.close()
