"""The command path without a broker: admission (gateway/commands/core.py), the handlers,
and the Commander with a real buffer (request ids, stored replies); fuzzed with hypothesis."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import cmdtool
from gateway.commander import Commander
from gateway.commands import core
from gateway.commands.core import Code, Command, Reply, Seen
from gateway.commands.registry import HANDLERS
from gateway.commands.unit import Location
from gateway.config import CommandsConfig, parse
from gateway.outbox import Outbox
from gateway.publisher import Incoming, OutgoingReply
from gateway.signing import TYP_COMMAND, TYP_RECEIPT, Keyring, b64url, sign
from harness import GOOD_CONFIG

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
RING = Keyring.of(KEY.public_key())
UNIT = "gate-01"
SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


class FakeUnit:
    """What the handlers may ask, answered from a dict: the handlers' own logic is tested."""

    def __init__(self) -> None:
        self.children = {"c-1": Location("c-1", True, True, "gate-a", "hall", ("hall",),
                                         "hall", 1_790_000_000.5, -61.2,
                                         {"lat": 52.1, "lon": 4.3, "source": "fixed"}),
                         "c-2": Location("c-2", True, False)}
        self.alert: tuple[str, float | None] | None = None
        self.rebirths = 0
        self.calls = 0

    @property
    def unit_id(self) -> str:
        return UNIT

    def info(self) -> dict[str, Any]:
        return {"software": "t", "config_version": "v", "uptime_s": 1.0, "buffer_depth": 0,
                "mqtt": "5"}

    def rebirth(self) -> None:
        self.rebirths += 1
        self.calls += 1

    def locate(self, children: Sequence[str]) -> list[Location]:
        return [self.children.get(c, Location(c, False, False)) for c in children]

    def start_alert(self, alert_id: str, interval_s: float | None) -> dict[str, Any]:
        self.alert = (alert_id, interval_s)
        self.calls += 1
        return {"alert_id": alert_id, "interval_s": interval_s or 60.0}

    def stop_alert(self, alert_id: str | None) -> bool:
        if self.alert is None or alert_id not in (None, self.alert[0]):
            return False
        self.alert = None
        self.calls += 1
        return True

    def config_trial(self, cmd: Command, args: Any) -> Reply:
        # The trial itself is tested on real files in test_config_cmd_core.py.
        self.calls += 1
        return core.refuse(cmd, Code.CONFLICT, "a config trial is in progress")


def token(name: str = "ping", args: dict[str, Any] | None = None, *, key: Any = KEY,
          unit: str = UNIT, now: float | None = None, lifetime: float = 60.0,
          rid: str | None = None, extra: dict[str, Any] | None = None,
          drop: str | None = None) -> tuple[str, bytes]:
    env = cmdtool.envelope(name, args or {}, unit, now=now, lifetime_s=lifetime, request_id=rid)
    env.update(extra or {})
    if drop:
        env.pop(drop)
    return env["id"], sign(json.dumps(env).encode(), key, TYP_COMMAND)


def admit(name: str, tok: bytes, seen: dict[str, Seen] | None = None,
          now: float | None = None) -> Command | Reply:
    return core.admit(name, tok, unit=UNIT, keys=RING, known=HANDLERS,
                      now=time.time() if now is None else now,
                      seen=(seen or {}).get)


def refused(name: str, tok: bytes, **kw: Any) -> tuple[int, str]:
    r = admit(name, tok, **kw)
    assert isinstance(r, Reply), r
    return r.code, r.reason


@pytest.fixture
def commander(tmp_path: Path) -> Iterator[tuple[Commander, FakeUnit, list[OutgoingReply]]]:
    cfg = dataclasses.replace(parse(_good_raw(), "t.toml", base=tmp_path),
                              commands=CommandsConfig(keyring=RING))
    ob = Outbox(str(tmp_path / "buf.db"), UNIT, "school")
    unit = FakeUnit()
    sent: list[OutgoingReply] = []
    from gateway.clock import SystemClock
    yield Commander(cfg, ob, unit, sent.append, SystemClock()), unit, sent
    ob.close()


def _good_raw() -> dict[str, Any]:
    import tomllib
    raw = tomllib.loads(GOOD_CONFIG)
    raw["readers"] = []
    return raw


# -- admission -----------------------------------------------------------------------------

def test_admitted() -> None:
    rid, tok = token("locate", {"child": "c-1"})
    cmd = admit("locate", tok)
    assert isinstance(cmd, Command)
    assert (cmd.id, cmd.unit, cmd.name, dict(cmd.args)) == (rid, UNIT, "locate", {"child": "c-1"})
    assert len(cmd.digest) == 64


def test_every_refusal() -> None:
    now = time.time()
    rid, good = token()
    assert refused("ping", b'{"id": "x"}')[0] == Code.FORBIDDEN  # unsigned
    assert refused("ping", token(key=OTHER)[1]) == (Code.FORBIDDEN, "signature: unknown key id")
    assert refused("ping", token(lifetime=60, now=now - 600)[1]) == (Code.FORBIDDEN, "expired")
    assert refused("ping", token(now=now + 600)[1]) == (Code.FORBIDDEN, "not yet valid")
    assert refused("ping", token(unit="gate-02")[1]) == (Code.FORBIDDEN, "for another unit")
    assert refused("ping", b"x" * (256 * 1024 + 1))[0] == Code.BAD_REQUEST
    assert refused("nope", token("nope")[1]) == (Code.NOT_FOUND, "unknown command")
    assert refused("ping", token(extra={"extra": 1})[1]) == (Code.BAD_REQUEST,
                                                             "unknown field: extra")
    assert refused("ping", token(drop="expires")[1]) == (Code.BAD_REQUEST,
                                                         "missing field: expires")
    assert refused("ping", token(extra={"id": "not-a-uuid"})[1]) == (Code.BAD_REQUEST,
                                                                     "id: not a UUID")
    odd = admit("ping", token(extra={"id": "a/#", "x": 1})[1])  # names no topic
    assert isinstance(odd, Reply) and odd.id is None and odd.code == Code.BAD_REQUEST
    upper = admit("ping", token(extra={"id": str(uuid.uuid4()).upper()})[1])
    assert isinstance(upper, Reply) and upper.reason == "id: not a UUID"
    assert refused("ping", token(extra={"args": []})[1]) == (Code.BAD_REQUEST,
                                                             "args: not an object")
    assert refused("ping", token(extra={"issued": 17})[1])[0] == Code.BAD_REQUEST
    assert refused("ping", token(extra={"expires": "2026-13-01T00:00:00Z"})[1])[0] == 400
    assert refused("ping", token(extra={"reply_to": 5})[1])[0] == Code.BAD_REQUEST
    assert refused("ping", token(lifetime=10 * 86400)[1])[0] == Code.BAD_REQUEST
    assert refused("rebirth", good) == (Code.BAD_REQUEST, "cmd differs from the topic")
    # The payload must be JSON, an object, not too deep, no duplicate keys.
    for body in (b"not json", b"[1]", b"[" * 20 + b"]" * 20, b'{"id":1,"id":2}',
                 b'{"a": NaN}', b"\xff\xfe"):
        code, reason = refused("ping", sign(body, KEY, TYP_COMMAND))
        assert code == Code.BAD_REQUEST, (body, reason)
    deep: dict[str, Any] = {"id": rid, "unit": UNIT, "cmd": "ping", "issued": core.format_time(now),
            "expires": core.format_time(now + 60), "args": {}}
    node: dict[str, Any] = deep["args"]
    for _ in range(30):
        node["x"] = {}
        node = node["x"]
    assert refused("ping", sign(json.dumps(deep).encode(), KEY, TYP_COMMAND)) == (
        Code.BAD_REQUEST, "malformed JSON: nested too deep")
    # Signed for another use (a receipt) is not a command.
    receipt = sign(json.dumps(deep).encode(), KEY, TYP_RECEIPT)
    assert refused("ping", receipt) == (Code.FORBIDDEN, "signature: wrong typ")


def test_unsigned_refusal_routes_by_the_peeked_id_only_as_a_uuid() -> None:
    rid = str(uuid.uuid4())
    body = b64url(json.dumps({"id": rid}).encode())
    r = admit("ping", f"e30.{body}.AAAA".encode())
    assert isinstance(r, Reply) and r.code == Code.FORBIDDEN and r.id == rid
    r = admit("ping", f"e30.{b64url(b'{}')}.AAAA".encode())
    assert isinstance(r, Reply) and r.id is None


def test_repeat_and_conflict() -> None:
    rid, tok = token()
    cmd = admit("ping", tok)
    assert isinstance(cmd, Command)
    stored = core.ok(cmd, {"x": 1}, "pong")
    seen = {rid: Seen(cmd.digest, core.reply_from_record(core.reply_record(stored)))}
    again = admit("ping", tok, seen=seen)
    assert isinstance(again, Reply) and again.repeat and again == stored
    _, other = token(rid=rid, lifetime=61)
    assert refused("ping", other, seen=seen) == (Code.CONFLICT,
                                                 "request id re-used with other content")


def test_skew_is_allowed() -> None:
    now = time.time()
    assert isinstance(admit("ping", token(now=now + 30)[1], now=now), Command)
    assert isinstance(admit("ping", token(now=now - 80, lifetime=60)[1], now=now), Command)


def test_reply_topics() -> None:
    base = "kidsafe/v1/u/reply/"
    assert core.reply_topic("kidsafe/v1", "u", "i", None, None) == base + "i"
    assert core.reply_topic("kidsafe/v1", "u", "i", base + "r5", base + "x") == base + "r5"
    assert core.reply_topic("kidsafe/v1", "u", "i", "elsewhere/x", base + "x") == base + "x"
    for bad in ("kidsafe/v1/other/reply/x", base, base + "#", base + "a/+", "x" * 600):
        assert core.reply_topic("kidsafe/v1", "u", "i", bad, bad) == base + "i"
    assert core.reply_topic("kidsafe/v1", "u", None, None, None) == base + "unknown"


# -- handlers ------------------------------------------------------------------------------

def run(name: str, args: dict[str, Any], unit: FakeUnit | None = None) -> Reply:
    cmd = admit(name, token(name, args)[1])
    assert isinstance(cmd, Command), cmd
    return core.dispatch(unit or FakeUnit(), cmd, HANDLERS)


def test_handlers() -> None:
    unit = FakeUnit()
    assert run("ping", {}).code == 200
    assert run("ping", {"x": 1}).code == 400
    assert run("rebirth", {}, unit).code == 200 and unit.rebirths == 1
    one = run("locate", {"child": "c-1"})
    assert one.code == 200
    (loc,) = one.data["children"]
    assert loc["reader"] == "gate-a" and loc["time"].endswith("Z") and loc["rssi"] == -61.2
    assert run("locate", {"child": "c-9"}).code == 404
    many = run("locate", {"children": ["c-1", "c-2", "c-9"]})
    assert [c["found"] for c in many.data["children"]] == [True, False, False]
    assert [c["enrolled"] for c in many.data["children"]] == [True, True, False]
    bad: dict[str, Any]
    for bad in ({}, {"child": 5}, {"child": ""}, {"children": []}, {"children": "c-1"},
                {"child": "c-1", "children": ["c-1"]}, {"who": "c-1"},
                {"children": ["c"] * 201}):
        assert run("locate", bad).code == 400, bad
    assert run("alert/start", {"alert_id": "quake-1", "interval_s": 30}, unit).code == 200
    assert unit.alert == ("quake-1", 30.0)
    for bad in ({}, {"alert_id": 1}, {"alert_id": "q", "interval_s": 1},
                {"alert_id": "q", "interval_s": True}, {"alert_id": "q", "interval_s": "30"}):
        assert run("alert/start", bad).code == 400, bad
    assert run("alert/stop", {"alert_id": "other"}, unit).code == 404
    assert run("alert/stop", {"alert_id": "quake-1"}, unit).code == 200
    assert unit.alert is None
    assert run("alert/stop", {}, unit).code == 404


# -- the commander (real buffer) -----------------------------------------------------------

def _msg(name: str, tok: bytes, response: str | None = None) -> Incoming:
    return Incoming(f"cmd/{name}", tok, response, b"corr" if response else None)


def test_commander_stores_and_repeats(
        commander: tuple[Commander, FakeUnit, list[OutgoingReply]]) -> None:
    c, unit, sent = commander
    rid, tok = token("alert/start", {"alert_id": "a-1"})
    first = c.handle(_msg("alert/start", tok))
    assert first.code == 200 and unit.calls == 1
    again = c.handle(_msg("alert/start", tok))
    assert again.repeat and again.code == 200 and unit.calls == 1  # not done again
    _, other = token("alert/start", {"alert_id": "a-2"}, rid=rid)
    assert c.handle(_msg("alert/start", other)).code == Code.CONFLICT and unit.calls == 1
    # The reply goes where it should, as JSON matching the schema.
    c._send(_msg("alert/start", tok, f"kidsafe/v1/{UNIT}/reply/x"), first)
    out = sent[-1]
    assert out.topic == f"kidsafe/v1/{UNIT}/reply/x" and out.correlation == b"corr"
    body = json.loads(out.body)
    _schema("reply").validate(body)
    assert body["id"] == rid and body["code"] == 200
    # Expired ids are purged.
    assert c.outbox.command_purge(time.time() + 3600) == 1
    assert c.outbox.command_seen(rid) is None


def test_a_failing_unit_is_a_500_and_nothing_stored(
        commander: tuple[Commander, FakeUnit, list[OutgoingReply]]) -> None:
    c, unit, _ = commander

    def boom(*_a: Any) -> list[Location]:
        raise TimeoutError("pipeline busy")

    unit.locate = boom  # type: ignore[method-assign,assignment]
    rid, tok = token("locate", {"child": "c-1"})
    r = c.handle(_msg("locate", tok))
    assert (r.code, r.reason) == (500, "failed: TimeoutError")
    assert c.outbox.command_seen(rid) is None


def _schema(name: str) -> Any:
    doc = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


# -- fuzz through the real path ------------------------------------------------------------

JSONV = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=10),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                          max_size=4),
                     max_leaves=20)
NAMES = st.sampled_from([*HANDLERS, "x", "alert", "alert/start/x", "", "é" * 70])
FIELDS = st.sampled_from(["id", "unit", "cmd", "issued", "expires", "args", "reply_to",
                          "other"])


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, args=st.dictionaries(st.sampled_from(["child", "children", "alert_id",
                                                         "interval_s", "x"]), JSONV,
                                        max_size=3),
       edits=st.dictionaries(FIELDS, JSONV, max_size=2), signed=st.booleans(),
       raw=st.binary(max_size=64))
def test_fuzz_signed_commands(commander: tuple[Commander, FakeUnit, list[OutgoingReply]],
                              name: str, args: dict[str, Any], edits: dict[str, Any],
                              signed: bool, raw: bytes) -> None:
    c, _, sent = commander
    env = cmdtool.envelope(name, args, UNIT)
    env.update(edits)
    payload = json.dumps(env).encode()
    tok = sign(payload, KEY, TYP_COMMAND) if signed else payload + raw
    reply = c.handle(_msg(name, tok, f"kidsafe/v1/{UNIT}/reply/f"))
    assert reply.code in (200, 400, 403, 404, 409, 500)
    if reply.code == 500:
        raise AssertionError(f"a handler failed: {reply}")
    c._send(_msg(name, tok), reply)
    body = json.loads(sent[-1].body)
    _schema("reply").validate(body)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAMES, tok=st.binary(max_size=300))
def test_fuzz_raw_bytes(commander: tuple[Commander, FakeUnit, list[OutgoingReply]],
                        name: str, tok: bytes) -> None:
    c, unit, _ = commander
    reply = c.handle(_msg(name, tok))
    assert reply.code in (400, 403) and unit.calls == 0


# -- [commands] in the config --------------------------------------------------------------

def test_commands_config(tmp_path: Path) -> None:
    from gateway import config as configmod
    from gateway import signing

    signing.generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    signing.generate_keypair(tmp_path / "b.key", tmp_path / "b.pub")
    (tmp_path / "junk.pub").write_text("not a key")

    def load(section: str) -> configmod.Config:
        f = tmp_path / "c.toml"
        f.write_text(GOOD_CONFIG + "\n" + section)
        return configmod.load(f)

    cfg = load('[commands]\npublic_keys = ["a.pub", "b.pub"]\nclock_skew_s = 5\n')
    assert len(cfg.commands.keyring) == 2 and cfg.commands.clock_skew_s == 5
    assert load("").commands.keyring.keys == {}
    for section, key, words in [
        ('[commands]\npublic_keys = ["junk.pub"]', "commands.public_keys", "not a PEM"),
        ('[commands]\npublic_keys = ["missing.pub"]', "commands.public_keys", "missing.pub"),
        ('[commands]\npublic_keys = "a.pub"', "commands.public_keys", "array"),
        ("[commands]\nmax_bytes = 10000000", "commands.max_bytes", "262144"),
        ("[commands]\nclock_skew_s = inf", "commands.clock_skew_s", "finite"),
        ("[commands]\nmax_lifetime_s = 0", "commands.max_lifetime_s", "greater than 0"),
        ("[commands]\nkeys = []", "commands", "keys"),
    ]:
        with pytest.raises(configmod.ConfigInvalid) as ei:
            load(section)
        found = {e.key: e.message for e in ei.value.errors}
        hit = [m for k, m in found.items() if k.startswith(key)]
        assert hit and any(words in m for m in hit), (section, found)
