"""The contract's JSON Schemas (docs/schemas), compiled once at start.

Every message is validated, tens of thousands a second while a backlog drains, so the
schemas are compiled to Python code by fastjsonschema (about 3x jsonschema's speed on
the whole event schema, ~15x once specialised per kind). The event schema's ``allOf``
holds one ``if kind == X then ...`` branch per kind: for a given kind the outcome of every
such ``if`` is known in advance, so the validator for a kind keeps only the branches whose
``if`` holds (the same verdict as the whole schema, a fraction of the work).

fastjsonschema implements drafts 4-7. The contract is written in draft 2020-12; the one
2020-12 keyword it uses, ``prefixItems``, is translated to its draft-7 form (``items`` as
a list, the 2020-12 ``items`` then ``additionalItems``). A schema using any other keyword
fastjsonschema would silently ignore is validated by jsonschema instead (slower, exact):
a tightened contract can only make the backend slower, never laxer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastjsonschema

# Where the contract lives in a source checkout (the backend ships beside the gateway).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
NAMES = ("event", "status", "birth", "health")

UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# Keywords fastjsonschema's draft-7 compiler implements, plus annotations it may ignore.
_DRAFT7 = frozenset({
    "$schema", "$id", "$ref", "$defs", "definitions", "$comment", "title", "description",
    "default", "examples", "readOnly", "writeOnly", "type", "enum", "const", "multipleOf",
    "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
    "pattern", "items", "additionalItems", "maxItems", "minItems", "uniqueItems", "contains",
    "maxProperties", "minProperties", "required", "properties", "patternProperties",
    "additionalProperties", "dependencies", "propertyNames", "if", "then", "else", "allOf",
    "anyOf", "oneOf", "not", "format", "contentMediaType", "contentEncoding"})
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependencies")

Check = Callable[[Any], list[str]]  # a decoded body -> what is wrong with it (empty: valid)


def _draft7(node: Any) -> tuple[Any, set[str]]:
    """``node`` with prefixItems translated, and the keywords draft 7 lacks."""
    unknown: set[str] = set()
    if isinstance(node, list):
        out = []
        for x in node:
            y, u = _draft7(x)
            out.append(y)
            unknown |= u
        return out, unknown
    if not isinstance(node, dict):
        return node, unknown
    res: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("const", "enum", "examples", "default"):
            res[k] = v
        elif k in _MAPS and isinstance(v, dict):
            sub = {}
            for name, s in v.items():
                sub[name], u = _draft7(s)
                unknown |= u
            res[k] = sub
        else:
            if k == "$ref" and not (isinstance(v, str) and v.startswith("#")):
                # fastjsonschema would fetch it over the network: the unit-published
                # schemas refer only inside themselves, and must go on doing so.
                raise RuntimeError(f"schema refers to another document ({v!r}): only local "
                                   "#/... references are supported by the backend")
            res[k], u = _draft7(v)
            unknown |= u
            if k not in _DRAFT7 and k != "prefixItems":
                unknown.add(k)
    if "prefixItems" in res:
        rest = res.pop("items", None)
        res["items"] = res.pop("prefixItems")
        if rest is not None:
            res["additionalItems"] = rest
    return res, unknown


def _compile(doc: dict[str, Any]) -> Check:
    translated, unknown = _draft7(doc)
    if not unknown:
        fn = fastjsonschema.compile(translated, formats={"uuid": UUID})

        def check(body: Any) -> list[str]:
            try:
                fn(body)
            except fastjsonschema.JsonSchemaValueException as e:
                return [e.message]
            return []

        return check
    import jsonschema  # only for schemas using keywords fastjsonschema lacks

    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    validator = cls(doc, format_checker=cls.FORMAT_CHECKER)

    def check_js(body: Any) -> list[str]:
        return [f"{'.'.join(map(str, e.path)) or 'body'}: {e.message}"
                for e in validator.iter_errors(body)]

    return check_js


def _kind_if(branch: Any) -> bool:
    """True for an ``allOf`` entry ``{"if": <constraints on "kind" only>, "then": ...}``."""
    return (isinstance(branch, dict) and set(branch) == {"if", "then"}
            and isinstance(branch["if"], dict) and set(branch["if"]) == {"properties"}
            and set(branch["if"]["properties"]) == {"kind"})


@dataclass(frozen=True, eq=False)  # hashed by identity: the caches below are keyed by it
class Contract:
    """Validators for every message a unit publishes; ``check(name, body)``."""

    docs: dict[str, dict[str, Any]]
    plain: dict[str, Check]
    kind_ifs: dict[str, list[tuple[int, Check]]]  # schema -> (allOf index, its `if`)
    # (schema, kind) -> its specialised validator, for the kinds the contract names
    # (filled by load(): one dict look-up a message rather than two cached calls)
    known: dict[tuple[str, str], Check] = field(default_factory=dict)

    def check(self, name: str, body: Any) -> list[str]:
        kind = body.get("kind") if isinstance(body, dict) else None
        if isinstance(kind, str) and self.kind_ifs.get(name):
            fn = self.known.get((name, kind))
            if fn is None:
                fn = self._for_branches(name, self._branches(name, kind))
            return fn(body)
        return self.plain[name](body)

    def _branches(self, name: str, kind: str) -> tuple[int, ...]:
        return _branches_for(self, name, kind)

    def _for_branches(self, name: str, kept: tuple[int, ...]) -> Check:
        return _specialised(self, name, kept)


@lru_cache(maxsize=1024)  # kinds are few; an attacker's made-up kinds only evict entries
def _branches_for(contract: Contract, name: str, kind: str) -> tuple[int, ...]:
    return tuple(i for i, cond in contract.kind_ifs[name] if not cond({"kind": kind}))


@lru_cache(maxsize=256)  # keyed by the set of kept branches: bounded by the schema
def _specialised(contract: Contract, name: str, kept: tuple[int, ...]) -> Check:
    doc = contract.docs[name]
    branches = doc["allOf"]
    keep = [b["then"] if i in kept else b for i, b in enumerate(branches)
            if i in kept or not _kind_if(b)]
    rest = {k: v for k, v in doc.items() if k != "allOf"}
    return _compile({**rest, "allOf": keep} if keep else rest)


def load(directory: Path | None = None) -> Contract:
    """Read and compile docs/schemas/{event,status,birth,health}.schema.json."""
    d = directory or DEFAULT_DIR
    docs: dict[str, dict[str, Any]] = {}
    for name in NAMES:
        path = d / f"{name}.schema.json"
        try:
            docs[name] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"cannot read the contract's schema {path}: {e}") from e
    plain = {name: _compile(doc) for name, doc in docs.items()}
    kind_ifs: dict[str, list[tuple[int, Check]]] = {}
    for name, doc in docs.items():
        ifs = [(i, _compile({"$schema": doc.get("$schema", ""), **b["if"]}))
               for i, b in enumerate(doc.get("allOf", [])) if _kind_if(b)]
        if ifs:
            kind_ifs[name] = ifs
    contract = Contract(docs, plain, kind_ifs)
    for name in kind_ifs:  # compile every known kind now, not on its first message
        for b in docs[name]["allOf"]:
            const = b.get("if", {}).get("properties", {}).get("kind", {}).get("const") \
                if _kind_if(b) else None
            if isinstance(const, str):
                contract.known[name, const] = contract._for_branches(
                    name, contract._branches(name, const))
    return contract
