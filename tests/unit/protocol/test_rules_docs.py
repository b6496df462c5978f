"""The "Rules" section of docs/protocol.md is run: its scenario tables, example sentences, field and
code tables must match what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rules_scenarios import MISSING, SWEEP, check, heartbeat_rule, play, threshold_rule

from pulse.protocol.errors import Code
from pulse.protocol.rules import FIELDS, RuleKind, parse_rule

pytestmark = pytest.mark.unit

DOC = Path(__file__).parents[3] / "docs" / "protocol.md"


def rules_section() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## Rules\n") if not text.startswith("## Rules\n") else 0
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def table_rows(table: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.strip().splitlines()]
    return rows[2:]  # after the header and the --- line


def scenarios() -> list[tuple[str, str]]:
    """(rule JSON, scenario table) pairs: a ```json block directly followed by a `| t (s) |` table."""
    pattern = re.compile(r"```json\n((?:(?!```).)*)```\n\n(\| t \(s\) \|.*?)\n\n", re.S)
    return pattern.findall(rules_section())


def value(cell: str) -> object:
    return {"—": MISSING, "sweep": SWEEP}.get(cell, None) if cell in ("—", "sweep") else json.loads(cell)


def test_the_section_has_scenarios() -> None:
    assert len(scenarios()) >= 3


@pytest.mark.parametrize(("rule_json", "table"), scenarios(), ids=[json.loads(rule)["id"] for rule, _ in scenarios()])
def test_scenario_table_is_what_the_code_does(rule_json: str, table: str) -> None:
    rule = parse_rule(json.loads(rule_json), tenant="acme")
    check(rule, [(float(t), value(cell), actions) for t, cell, actions, _why in table_rows(table)])


def test_example_sentences_are_the_ones_the_code_writes() -> None:
    quotes = [" ".join(q.replace("> ", "").split()) for q in re.findall(r"(?:^> .*\n)+", rules_section(), re.M)]
    hot = threshold_rule(id="boiler-hot", name="Boiler too hot", version=3, window_s=300)
    _, [*_, [opened]] = play(hot, [(0, 30.4), (100, 32.1), (200, 31.0), (300, 31.9)])
    _, [*_, [offline, _open]] = play(heartbeat_rule(), [(0, 1), (180, SWEEP)])
    assert quotes == [opened.explanation.text, offline.explanation.text]


def test_field_table_lists_every_field_the_parser_knows() -> None:
    section = rules_section()
    table = section[section.index("| field |") : section.index("\n\n", section.index("| field |"))]
    documented = {name for row in table_rows(table) for name in re.findall(r"`(\w+)`", row[0])}
    assert documented == FIELDS[RuleKind.THRESHOLD] | FIELDS[RuleKind.HEARTBEAT]


def test_code_table_lists_every_rule_code() -> None:
    section = rules_section()
    documented = set(re.findall(r"^\| `(rule\.\w+)` \|", section, re.M))
    assert documented == {str(c) for c in Code if c.startswith("rule.")}
