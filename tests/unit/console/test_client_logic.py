"""The console's client-side logic (chart bucketing of live readings, routing, query strings),
tested with vitest in node: cloud/console/src/*.test.ts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CONSOLE = Path(__file__).resolve().parents[3] / "cloud" / "console"


def test_console_client_logic_passes_its_vitest_suite() -> None:
    assert shutil.which("node"), "node is not installed: run ./deploy/install.sh"
    assert (CONSOLE / "node_modules" / "vitest").is_dir(), "the console's npm packages are missing: run ./deploy/install.sh"
    done = subprocess.run(
        ["node", "node_modules/vitest/vitest.mjs", "run", "--reporter=verbose"],
        cwd=CONSOLE,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CI": "1", "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def test_console_sources_typecheck() -> None:
    assert (CONSOLE / "node_modules" / "typescript").is_dir(), "the console's npm packages are missing: run ./deploy/install.sh"
    done = subprocess.run(
        ["node", "node_modules/typescript/bin/tsc", "--noEmit", "-p", "."], cwd=CONSOLE, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout[-4000:]
