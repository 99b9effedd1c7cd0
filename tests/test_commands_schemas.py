"""docs/schemas for commands: every example (and a set of invalid args) agrees with the
parser the unit runs (hand-written, no jsonschema at run time), and the envelope and reply
examples with admit() and the reply builder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_commands_core import FakeUnit

from gateway.commands import core
from gateway.commands.core import BadArgs, Command, Reply
from gateway.commands.registry import HANDLERS
from gateway.signing import TYP_COMMAND, Keyring, sign

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"

INVALID: dict[str, list[dict[str, Any]]] = {
    "ping": [{"x": 1}],
    "rebirth": [{"now": True}],
    "locate": [{}, {"child": ""}, {"child": 7}, {"children": []}, {"children": ["c"] * 201},
               {"child": "c-1", "children": ["c-2"]}, {"tag": "62e3086ced"},
               {"children": [1]}, {"child": None}],
    "alert/start": [{}, {"alert_id": ""}, {"alert_id": "a", "interval_s": 1},
                    {"alert_id": "a", "interval_s": "60"}, {"alert_id": "a", "site": "x"},
                    {"alert_id": "a", "interval_s": True}, {"alert_id": "a" * 65}],
    "alert/stop": [{"alert_id": 5}, {"alert_id": ""}, {"all": True}],
}


def _validator(path: Path) -> Any:
    doc = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER), doc


def _parse(name: str, args: dict[str, Any]) -> int:
    """The handler's answer code for ``args`` (400: its parser refused them)."""
    cmd = Command("0b8f1f4e-9a38-4c1e-8d2f-6a1c2b3d4e5f", "gate-01", name, 0.0, 1.0, args)
    try:
        return core.dispatch(FakeUnit(), cmd, HANDLERS).code
    except BadArgs:
        return 400


def test_every_command_has_a_schema() -> None:
    names = {p.name.removesuffix(".schema.json") for p in (SCHEMAS / "commands").glob("*.json")}
    assert {n.replace("/", "-") for n in HANDLERS} <= names


@pytest.mark.parametrize("name", sorted(INVALID))
def test_args_schema_and_parser_agree(name: str) -> None:
    check, doc = _validator(SCHEMAS / "commands" / f"{name.replace('/', '-')}.schema.json")
    assert doc["examples"]
    for ok in doc["examples"]:
        check.validate(ok)
        assert _parse(name, ok) != 400, ok
    for bad in INVALID[name]:
        assert not check.is_valid(bad), bad
        assert _parse(name, bad) == 400, bad


def test_envelope_examples_are_admitted() -> None:
    check, doc = _validator(SCHEMAS / "command.schema.json")
    key = Ed25519PrivateKey.generate()
    for env in doc["examples"]:
        check.validate(env)
        now = core.parse_time(env["issued"])
        assert now is not None
        got = core.admit(env["cmd"], sign(json.dumps(env).encode(), key, TYP_COMMAND),
                         unit=env["unit"], keys=Keyring.of(key.public_key()), known=HANDLERS,
                         now=now, seen=lambda _id: None)
        assert isinstance(got, Command), got
    for bad in ({**doc["examples"][0], "x": 1}, {**doc["examples"][0], "id": "nope"}):
        assert not check.is_valid(bad)


def test_reply_examples_and_built_replies_match() -> None:
    check, doc = _validator(SCHEMAS / "reply.schema.json")
    for ex in doc["examples"]:
        check.validate(ex)
        rebuilt = core.reply_dict(Reply(ex["id"], ex["unit"], ex["cmd"], ex["code"],
                                        ex["reason"], ex["data"]),
                                  core.parse_time(ex["time"]) or 0.0)
        assert rebuilt == ex
