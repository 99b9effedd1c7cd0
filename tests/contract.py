"""Validate what a unit publishes against the JSON Schemas of docs/schemas/.

Every message the tests receive is validated, tens of thousands in the delivery
tests, so validators are built once and, for events, once per ``kind``: the event
schema's ``allOf`` holds one ``if kind == X then ...`` branch per kind, and for a
given kind the outcome of every ``if`` is known in advance. The validator for a
kind keeps only the branches whose ``if`` holds, which gives the same errors as the
whole schema. Local ``#/$defs/...`` references are inlined into it too (the
referencing machinery costs more than the checks it leads to). Together this is
about a sixth of the cost of the whole schema per message.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@cache
def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return doc


# Formats the schemas use that must really be checked: jsonschema skips a format whose
# checker's optional package is missing (date-time needs rfc3339-validator), silently.
ENFORCED_FORMATS = ("date-time", "uuid")


def format_checker(cls: Any) -> jsonschema.FormatChecker:
    checker: jsonschema.FormatChecker = cls.FORMAT_CHECKER
    missing = [f for f in ENFORCED_FORMATS if f not in checker.checkers]
    if missing:
        raise RuntimeError(f"jsonschema cannot check format {missing} here: install the "
                           "test extras (./dev.sh setup; rfc3339-validator for date-time)")
    return checker


BASE_URI = "https://kidsafe.example/schemas/"


@cache
def registry() -> referencing.Registry[Any]:
    """Every schema file, under its ``$id`` and its path below BASE_URI, so a schema may
    refer to another by relative path (e.g. a command to commands/<name>.schema.json)."""
    resources = []
    for path in sorted(SCHEMAS.rglob("*.schema.json")):
        doc = json.loads(path.read_text())
        res = referencing.Resource.from_contents(doc, default_specification=DRAFT202012)
        uris = {BASE_URI + path.relative_to(SCHEMAS).as_posix(), doc.get("$id")}
        resources += [(uri, res) for uri in uris if isinstance(uri, str)]
    return referencing.Registry().with_resources(resources)


def _build(doc: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc, format_checker=format_checker(cls), registry=registry())


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """The validator for the whole schema ``name``."""
    return _build(schema(name))


def _only_on_kind(branch: Any) -> bool:
    """True for an ``allOf`` entry ``{"if": <constraints on "kind" only>, "then": ...}``."""
    return (isinstance(branch, dict) and set(branch) == {"if", "then"}
            and set(branch["if"]) == {"properties"}
            and set(branch["if"]["properties"]) == {"kind"})


ANNOTATIONS = frozenset({"description", "title", "$comment"})


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with each local ``{"$ref": "#/$defs/X"}`` replaced by X's content where that
    cannot change its meaning: the reference's other keys are only annotations that X does
    not also have, and X does not refer back to itself."""
    if isinstance(node, list):
        return [_inline(x, defs, seen) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        target = defs.get(name)
        others = set(node) - {"$ref"}
        if (isinstance(target, dict) and name not in seen and others <= ANNOTATIONS
                and not others & set(target)):
            return {**{k: node[k] for k in others}, **_inline(target, defs, (*seen, name))}
    return {k: (v if k in ("$defs", "const", "enum") else _inline(v, defs, seen))
            for k, v in node.items()}


@cache
def validator_for_kind(name: str, kind: str) -> jsonschema.protocols.Validator:
    """The schema ``name`` for objects whose "kind" is ``kind``: each ``allOf`` branch whose
    ``if`` looks at "kind" alone is decided here (its ``then`` kept or the branch dropped)."""
    doc = schema(name)
    if "allOf" not in doc:
        return validator(name)
    probe = {"kind": kind}
    kept = []
    for branch in doc["allOf"]:
        if not _only_on_kind(branch):
            kept.append(branch)
        elif _build({"$schema": doc["$schema"], **branch["if"]}).is_valid(probe):
            kept.append(branch["then"])
    rest = {k: v for k, v in doc.items() if k != "allOf"}
    return _build(_inline({**rest, "allOf": kept} if kept else rest, doc.get("$defs", {})))


def schema_for(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-2] == "event":
        return "event"
    if parts[-1] in ("status", "birth", "health"):
        return parts[-1]
    # command replies (plain JSON, under <prefix>/<unit>/reply/), once their schema exists
    if len(parts) >= 4 and "reply" in parts[2:-1] and (SCHEMAS / "reply.schema.json").exists():
        return "reply"
    return None


def body_violations(name: str, body: Any, topic: str) -> list[str]:
    """Empty when the decoded ``body`` matches the schema ``name``."""
    kind = body.get("kind") if isinstance(body, dict) else None
    check = validator_for_kind(name, kind) if isinstance(kind, str) else validator(name)
    return [f"{topic}: {'/'.join(map(str, err.path))}: {err.message}"
            for err in check.iter_errors(body)]


def violations(topic: str, payload: bytes) -> list[str]:
    """Empty when the message matches its schema (or is not one the unit publishes)."""
    name = schema_for(topic)
    if name is None:
        return []
    try:
        body: Any = json.loads(payload)
    except ValueError as e:
        return [f"{topic}: not JSON: {e}"]
    return body_violations(name, body, topic)


def gate_data(direction: str | None = None, gate: str = "gate-main") -> dict[str, Any]:
    """A gate event's data as the engine gives it, for tests that make events by hand."""
    return {"gate": gate, "direction": direction, "day": "2026-12-01",
            "first_arrival_today": direction == "arrival", "first_passage_today": True,
            "reads": 1}
