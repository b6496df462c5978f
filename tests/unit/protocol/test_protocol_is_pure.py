"""protocol/ stays sans-IO even when only pytest runs (ruff enforces the same list in ./pulse.sh test).

The banned modules are read from protocol/ruff.toml, so there is one list; this test scans the
source's imports (including imports inside functions and ``importlib``/``__import__`` calls).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

import pulse.protocol

pytestmark = pytest.mark.unit

PROTOCOL = Path(pulse.protocol.__file__).parent
BANNED = frozenset(tomllib.loads((PROTOCOL / "ruff.toml").read_text())["lint"]["flake8-tidy-imports"]["banned-api"])


def banned_imports(source: str, banned: frozenset[str] = BANNED) -> list[tuple[int, str]]:
    """(line, module) for every import of a banned module or of anything under one."""

    def is_banned(module: str) -> bool:
        return any(module == b or module.startswith(b + ".") for b in banned)

    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, name) for name in names if is_banned(name)]
    return found


def test_the_banned_list_is_the_one_ruff_uses() -> None:
    assert {"asyncio", "socket", "sqlite3", "asyncpg", "amqtt", "httpx", "time"} <= BANNED


@pytest.mark.parametrize("path", sorted(PROTOCOL.rglob("*.py")), ids=lambda p: p.name)
def test_protocol_modules_import_nothing_that_does_io(path: Path) -> None:
    assert banned_imports(path.read_text()) == [], f"{path.name} imports I/O; protocol/ is sans-IO (see protocol/ruff.toml)"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import socket as s",
        "from asyncio import Queue",
        "import asyncio.subprocess",
        "from amqtt.broker import Broker",
        "def f():\n    import time\n    return time",
        "import importlib\nimportlib.import_module('sqlite3')",
        "__import__('httpx')",
        "from os import path\nimport ssl",
    ],
)
def test_the_scan_finds_banned_imports_wherever_they_hide(source: str) -> None:
    assert banned_imports(source)


@pytest.mark.parametrize("source", ["import json", "from . import errors", "import timeit", "from pulse.protocol import topics"])
def test_the_scan_leaves_pure_imports_alone(source: str) -> None:
    assert banned_imports(source) == []
