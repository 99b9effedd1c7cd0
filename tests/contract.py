"""Validate what a unit publishes against the JSON Schemas of docs/schemas/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_for(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) >= 2 and parts[-2] == "event":
        return "event"
    if parts[-1] in ("status", "birth", "health"):
        return parts[-1]
    return None


def violations(topic: str, payload: bytes) -> list[str]:
    """Empty when the message matches its schema (or is not one the unit publishes)."""
    name = schema_for(topic)
    if name is None:
        return []
    try:
        body: Any = json.loads(payload)
    except ValueError as e:
        return [f"{topic}: not JSON: {e}"]
    return [f"{topic}: {'/'.join(map(str, err.path))}: {err.message}"
            for err in validator(name).iter_errors(body)]
