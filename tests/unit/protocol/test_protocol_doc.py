"""docs/protocol.md says what the code does: generated examples are fresh, hand-written tables agree."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from pulse.protocol.errors import Code
from pulse.protocol.topics import TopicKind, build, device_may_publish, device_may_subscribe

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[3] / "docs"
PAGE = DOCS / "protocol.md"


@pytest.fixture(scope="module")
def examples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protocol_examples", DOCS / "protocol_examples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_examples_match_the_code(examples: ModuleType) -> None:
    stale = examples.stale_blocks(PAGE.read_text())
    assert stale == [], f"docs/protocol.md is stale in {stale}: run .venv/bin/python docs/protocol_examples.py"


def test_the_generator_notices_a_stale_page(examples: ModuleType) -> None:
    text = PAGE.read_text()
    tampered = text.replace("| 36 | `00 00 00 a2`", "| 36 | `00 00 00 a3`", 1)
    assert tampered != text
    assert examples.stale_blocks(tampered) == ["batch-example"]


def _error_table() -> dict[str, str]:
    """Section 4's table: code -> "meaning | what to do"."""
    section = PAGE.read_text().split("## 4. Error codes", 1)[1].split("\n---\n", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([a-z_]+\.[a-z_]+)` \| (.+) \|$", section, re.M)}


def _documented_anywhere() -> set[str]:
    """Codes with a table row in the docs: section 4 here, or their own section or page
    (twin, commands and rules below; notifications in docs/notifications.md)."""
    text = "\n".join(p.read_text() for p in PAGE.parent.glob("*.md"))
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, re.M))


def test_every_error_code_is_documented_with_what_to_do() -> None:
    rows = _error_table()
    missing = sorted(str(c) for c in Code if str(c) not in _documented_anywhere())
    assert missing == [], f"add a row to the table in section 4 of docs/protocol.md for {missing}"
    unknown = sorted(set(rows) - {str(c) for c in Code})
    assert unknown == [], f"docs/protocol.md documents codes that do not exist: {unknown}"
    for code, cells in rows.items():
        meaning, action = cells.split(" | ")
        assert meaning.strip() and action.strip(), code


def test_the_topic_table_lists_every_kind() -> None:
    text = PAGE.read_text()
    for kind in TopicKind:
        topic = build("DEVICE", kind, "ID").replace("DEVICE", "{device}").replace("ID", "{id}")
        assert f"| `{topic}` |" in text, f"{topic} is missing from section 2"


def test_the_acl_table_agrees_with_the_acl() -> None:
    section = PAGE.read_text().split("### ACL: what a device may do", 1)[1].split("\n---\n", 1)[0]
    rows = re.findall(r"^\| (publish|subscribe) (.+?) \| (yes|no) \|", section, re.M)
    assert len(rows) >= 8
    for action, topics_cell, verdict in rows:
        for topic in re.findall(r"`([^`]+)`", topics_cell):
            allowed = (device_may_publish if action == "publish" else device_may_subscribe)("boiler-7", topic)
            assert allowed is (verdict == "yes"), f"{action} {topic}: the doc says {verdict}"
