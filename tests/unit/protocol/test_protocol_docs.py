"""docs/protocol.md's twin and command examples are run: a rule the docs show is a rule the code keeps.

Each ```jsonc block is a script of ``// label`` lines, each followed by its JSON (if any):
``update at N``, ``refused: CODE``, ``twin``, ``change``, ``delta message at N``,
``document message at N``, ``limits {...}`` for twins; ``command``, ``event NAME at N``,
``ack at N``, ``command message``, ``stored`` for commands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pulse.protocol import commands, twin
from pulse.protocol.errors import Code, ProtocolError

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
_BLOCK = re.compile(r"^```jsonc\n(.*?)^```", re.MULTILINE | re.DOTALL)


def section(title: str) -> str:
    text = DOC.read_text()
    found = re.search(rf"^## {title}$", text, re.MULTILINE)
    assert found, f"docs/protocol.md has no '## {title}' section"
    end = text.find("\n## ", found.end())
    return text[found.start() : end if end != -1 else len(text)]


def scripts(title: str) -> list[list[tuple[str, Any]]]:
    """Every jsonc block of a section as (label, JSON or None) steps."""
    out = []
    for block in _BLOCK.findall(section(title)):
        steps: list[tuple[str, list[str]]] = []
        for line in block.splitlines():
            if line.startswith("//"):
                steps.append((line[2:].strip(), []))
            else:
                steps[-1][1].append(line)
        out.append([(label, json.loads("\n".join(body)) if "".join(body).strip() else None) for label, body in steps])
    return out


def at(label: str) -> int:
    return int(label.rsplit(" at ", 1)[1])


def run_twin(script: list[tuple[str, Any]]) -> None:
    doc, change, limits = twin.TwinDocument(), None, twin.DEFAULT_LIMITS
    refused: ProtocolError | None = None
    for label, value in script:
        if label.startswith("limits "):
            limits = twin.TwinLimits(**json.loads(label.removeprefix("limits ")))
        elif label.startswith("update at "):
            try:
                doc, change = twin.apply_update(doc, twin.update_from_obj(value), now_ms=at(label), limits=limits)
                refused = None
            except ProtocolError as exc:
                refused = exc
        elif label.startswith("refused: "):
            assert refused is not None and refused.code is Code(label.removeprefix("refused: "))
            refused = None
        elif label == "twin":
            wire = json.loads(twin.to_json(doc))
            wire["state"]["delta"] = doc.delta
            assert {k: wire[k] for k in value} == value
        elif label == "change":
            assert change is not None and change.to_json() == value
        elif label.startswith("delta message at "):
            assert json.loads(twin.delta_message(doc, now_ms=at(label)) or b"null") == value
        elif label.startswith("document message at "):
            assert json.loads(twin.document_message(doc, now_ms=at(label))) == value
        else:
            raise AssertionError(f"unknown step in docs/protocol.md: {label!r}")
        assert refused is None or label.startswith("update at "), "an update was refused without a 'refused' step"
    assert refused is None, "the last update was refused without a 'refused' step"


def run_command(script: list[tuple[str, Any]]) -> None:
    cmd: commands.Command | None = None
    for label, value in script:
        if label == "command":
            cmd = commands.new_command(
                id=value["id"],
                device_id=value["device"],
                name=value["name"],
                params=value["params"],
                now_ms=value["created"],
                expires_at_ms=value["expires"],
            )
            continue
        assert cmd is not None
        if label.startswith("event "):
            cmd = commands.transition(cmd, commands.CommandEvent(label.split()[1]), at(label))
        elif label.startswith("ack at "):
            ack = commands.parse_ack(value)
            cmd = commands.transition(cmd, ack.event, at(label), result=ack.result, error=ack.error)
        elif label == "command message":
            assert json.loads(commands.command_message(cmd)) == value
        elif label == "stored":
            assert json.loads(commands.to_json(cmd)) == value
        else:
            raise AssertionError(f"unknown step in docs/protocol.md: {label!r}")


TWIN_SCRIPTS = scripts("Device twin")
COMMAND_SCRIPTS = scripts("Commands")


def test_the_docs_have_examples_to_run() -> None:
    assert len(TWIN_SCRIPTS) >= 10 and len(COMMAND_SCRIPTS) >= 3


@pytest.mark.parametrize("script", TWIN_SCRIPTS, ids=lambda s: f"{s[0][0]}..{s[-1][0]}")
def test_twin_example_in_the_docs_holds(script: list[tuple[str, Any]]) -> None:
    run_twin(script)


@pytest.mark.parametrize("script", COMMAND_SCRIPTS, ids=lambda s: f"{s[0][0]}..{s[-1][0]}")
def test_command_example_in_the_docs_holds(script: list[tuple[str, Any]]) -> None:
    run_command(script)


def test_the_documented_state_table_is_the_code_table() -> None:
    rows = re.findall(r"^\| (\w+) \| (\w+) \| (\w+) \|$", section("Commands"), re.MULTILINE)
    table = {(commands.CommandState(s), commands.CommandEvent(e)): commands.CommandState(t) for s, e, t in rows if s != "state"}
    assert table == dict(commands.TRANSITIONS)


def test_every_twin_and_command_code_is_documented() -> None:
    text = section("Device twin") + section("Commands")
    for code in Code:
        if code.value.startswith(("twin.", "command.")):
            assert f"| `{code.value}` |" in text
