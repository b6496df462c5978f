"""What the console's browser tests share: whether the console and Chromium are there, and running
a driver script (node + playwright-core against Debian's /usr/bin/chromium) with its task on stdin
and its observations as JSON on stdout. Screenshots go to tests/artifacts/console/ (git-ignored)."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
CONSOLE = ROOT / "cloud" / "console"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"


def needs_build() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (CONSOLE / "dist" / "index.html").is_file() or not (CONSOLE / "node_modules" / "playwright-core").is_dir():
        return "the console is not built"
    if not Path("/usr/bin/chromium").is_file():
        return "Debian's chromium is not installed"
    return None


async def run_driver(driver: Path, task: dict[str, Any], timeout_s: float = 180) -> dict[str, Any]:
    """Run one driver; its stderr (step log, page errors) is in the assertion message on failure."""
    proc = await asyncio.create_subprocess_exec(
        "node", str(driver), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps({"console_dir": str(CONSOLE), **task}).encode()), timeout_s)
    assert proc.returncode == 0, f"browser driver {driver.name} failed:\n{err.decode()[-4000:]}"
    return json.loads(out)  # type: ignore[no-any-return]
