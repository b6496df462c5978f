"""A real OpenID provider process on loopback (the PyPI package oidc-provider-mock), for the console
sign-in tests: started with its own command, stopped with SIGTERM when the test ends."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx

from pulse.common.ports import free_port


@contextlib.contextmanager
def oidc_provider() -> Iterator[str]:
    """``with oidc_provider() as issuer:`` (``http://127.0.0.1:<port>``)."""
    port = free_port()
    exe = shutil.which("oidc-provider-mock", path=str(Path(sys.executable).parent))
    assert exe is not None, "oidc-provider-mock is not installed (pip install -e '.[test]')"
    proc = subprocess.Popen([exe, "--port", str(port), "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    issuer = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"oidc-provider-mock stopped: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("oidc-provider-mock did not start")
        yield issuer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def set_user(issuer: str, sub: str, claims: dict[str, object]) -> None:
    """The claims the provider puts in this subject's ID token."""
    r = httpx.put(f"{issuer}/users/{urllib.parse.quote(sub, safe='')}", json=claims, timeout=5)
    assert r.status_code == 204, r.text
