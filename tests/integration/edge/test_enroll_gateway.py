"""`pulse gateway enroll` against a real HTTPS receiver implementing POST /enroll/v1."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from edge_sync_receiver import GATEWAY, TENANT, Receiver

from pulse.cli.main import main
from pulse.cloud.db.embedded import free_port
from pulse.edge.config import load
from pulse.edge.link import load_enrollment

pytestmark = pytest.mark.integration


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    r = Receiver(tmp_path / "cloud")
    await r.start()
    yield r
    await r.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "site" / "gateway.toml"
    path.parent.mkdir()
    path.write_text('[gateway]\nid = "site-7"\ndata_dir = "data"\n')
    return path


async def pulse(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_enroll_stores_key_certificate_ca_and_sync_url_and_tells_the_installer(receiver, config, capsys):
    code = await pulse("gateway", "enroll", "--cloud", receiver.public_url, "--token", "good-token",
                       "--ca-file", str(receiver.ca_file), "--config", str(config))
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"enrolled: this gateway is 'Test site' (id {GATEWAY}, tenant {TENANT})" in out
    assert "certificate valid until" in out and receiver.sync_url in out
    state = config.parent / "data" / "identity"
    assert stat.S_IMODE((state / "gateway.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((state / "gateway.crt").read_bytes())
    ident = receiver.ca.identify(cert)
    assert (ident.tenant_id, ident.gateway_id) == (TENANT, GATEWAY)
    assert (state / "ca.crt").read_bytes() == receiver.ca.cert_pem
    enrollment = load_enrollment(load(config, {}).state_dir)
    assert enrollment is not None and enrollment.sync_url == receiver.sync_url and enrollment.tenant_id == TENANT
    assert json.loads((state / "enrollment.json").read_text())["gateway_id"] == GATEWAY


async def test_enroll_refuses_a_used_token_with_a_clear_code(receiver, config, capsys):
    args = ("gateway", "enroll", "--cloud", receiver.public_url, "--token", "good-token", "--ca-file", str(receiver.ca_file),
            "--config", str(config))
    assert await pulse(*args) == 0
    capsys.readouterr()
    assert await pulse(*args) == 2
    err = capsys.readouterr().err
    assert "enroll.token_invalid" in err and "ask the operator for a new one" in err


async def test_enroll_says_when_the_cloud_is_unreachable(config, capsys):
    code = await pulse("gateway", "enroll", "--cloud", f"https://127.0.0.1:{free_port()}", "--token", "t", "--config", str(config))
    assert code == 2
    err = capsys.readouterr().err
    assert "gateway.cloud_unreachable" in err and "cannot reach" in err
    assert load_enrollment(load(config, {}).state_dir) is None


async def test_enroll_says_when_the_clouds_certificate_is_not_trusted(receiver, config, capsys):
    code = await pulse("gateway", "enroll", "--cloud", receiver.public_url, "--token", "good-token", "--config", str(config))
    assert code == 2
    err = capsys.readouterr().err
    assert "gateway.tls_failed" in err and "CERTIFICATE_VERIFY_FAILED" in err
    assert "good-token" in receiver.tokens  # nothing reached the cloud's token check


async def test_enroll_refuses_plain_http_unless_insecure_and_says_why(receiver, config, capsys):
    http_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: a refusal must come before any request
    code = await pulse("gateway", "enroll", "--cloud", http_url, "--token", "good-token", "--config", str(config))
    assert code == 2
    err = capsys.readouterr().err
    assert "gateway.insecure_url" in err and "trust anchor" in err and "--insecure" in err
    assert load_enrollment(load(config, {}).state_dir) is None
    # with --insecure the request is made (and here finds nothing listening)
    code = await pulse("gateway", "enroll", "--cloud", http_url, "--token", "good-token", "--insecure", "--config", str(config))
    assert code == 2
    assert "gateway.cloud_unreachable" in capsys.readouterr().err
