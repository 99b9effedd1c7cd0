"""Every JSON example in the docs is valid against its schema (docs/schemas/).

Each fenced ```json block of README.md and docs/**/*.md is one example. Its schema is
named by a marker on one of the three lines above the fence, ``<!-- schema: NAME -->``
(NAME as under docs/schemas/ without ``.schema.json``, e.g. ``event`` or
``commands/locate``; ``none`` for a block that is no message), or else recognised by
its fields. A block that is neither marked nor recognised fails: an example nobody
checks is how a doc drifts from the contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import contract

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```json[ \t]*$")
MARKER = re.compile(r"<!--\s*schema:\s*(?P<name>[a-z0-9_/.-]+)\s*-->")


@dataclass(frozen=True)
class Example:
    where: str  # "docs/mqtt.md:47"
    text: str
    marked: str | None


def examples_in(path: Path, root: Path = ROOT) -> list[Example]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines))
                    if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path}:{i + 1}: a ```json fence is never closed")
        marks = [mk.group("name") for line in lines[max(0, i - 3):i]
                 for mk in [MARKER.search(line)] if mk]
        out.append(Example(f"{path.relative_to(root)}:{i + 1}",
                           "\n".join(lines[i + 1:end]), marks[-1] if marks else None))
        i = end + 1
    return out


def all_examples() -> list[Example]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [ex for f in files if f.exists() for ex in examples_in(f)]


def recognise(body: Any) -> str | None:
    """The schema an unmarked example is for, by the fields only that message has."""
    if not isinstance(body, dict):
        return None
    keys = set(body)
    if {"seq", "kind", "data"} <= keys:
        return "event"
    if {"state", "reason"} <= keys and "code" not in keys:
        return "status"
    if {"config_version", "schema", "last_seq"} <= keys:
        return "birth"
    if {"uptime_s", "buffer"} <= keys:
        return "health"
    if {"code", "reason"} <= keys:
        return "reply"
    if {"cmd", "issued", "expires"} <= keys:
        return "command"
    if {"unit", "ranges", "time"} <= keys and "seq" not in keys:
        return "receipt"
    return None


def problems(ex: Example) -> list[str]:
    if ex.marked == "none":
        return []
    try:
        body = json.loads(ex.text)
    except ValueError as e:
        return [f"{ex.where}: not JSON ({e}); mark it <!-- schema: none --> if on purpose"]
    name = ex.marked or recognise(body)
    if name is None:
        return [f"{ex.where}: which message is this? put <!-- schema: NAME --> above it"]
    if not (contract.SCHEMAS / f"{name}.schema.json").exists():
        return [f"{ex.where}: no schema docs/schemas/{name}.schema.json"]
    return contract.body_violations(name, body, f"{ex.where} ({name})")


EXAMPLES = all_examples()


def test_the_docs_have_examples_to_check() -> None:
    found = {ex.where.split(":")[0] for ex in EXAMPLES}
    assert "docs/mqtt.md" in found
    names = {ex.marked or recognise(json.loads(ex.text)) for ex in EXAMPLES
             if ex.marked != "none"}
    # at least one example of every message the unit sends, and of the receipt
    assert {"event", "status", "birth", "health", "receipt"} <= names, names


@pytest.mark.parametrize("ex", EXAMPLES, ids=[ex.where for ex in EXAMPLES])
def test_example_is_valid(ex: Example) -> None:
    assert problems(ex) == []


def test_an_invalid_example_fails(tmp_path: Path) -> None:
    """The check is not vacuous: the envelope's example as docs/mqtt.md had it in
    contract version 1 (an abbreviated id, gate data with one field) fails it."""
    old = ('{"id": "5f0c…", "seq": 1042, "unit": "gate-hanbit-01", "site": "s",'
           ' "kind": "gate", "lane": "routine", "time": "2026-11-23T08:31:12.415Z",'
           ' "recorded": "2026-11-23T08:31:12.418Z", "reader": "gate-main",'
           ' "child": "c-7f3a21", "data": {"direction": null}}')
    doc = tmp_path / "x.md"
    doc.write_text(f"text\n\n```json\n{old}\n```\n\n<!-- schema: status -->\n```json\n"
                   '{"unit": "u", "state": "online"}\n```\n\n```json\n{"what": 1}\n```\n'
                   "\n```json\n{not json\n```\n")
    found = examples_in(doc, tmp_path)
    assert [ex.marked for ex in found] == [None, "status", None, None]
    bad = [problems(ex) for ex in found]
    assert any("id" in p and "uuid" in p for p in bad[0]), bad[0]
    assert any("'gate' is a required property" in p for p in bad[0]), bad[0]
    assert any("'time' is a required property" in p for p in bad[1]), bad[1]
    assert "which message is this" in bad[2][0]
    assert "not JSON" in bad[3][0]

