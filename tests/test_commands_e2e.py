"""Signed commands end to end: gatewayd process <-> real mosquitto <-> gateway.cmdtool.

Each command, each refusal (an error reply, nothing changed), a key change with two keys
valid at once, the MQTT 3.1.1 fallback (reply_to), hostile payloads that leave the unit
online and answering, and the `gatewayd cmd` / `gatewayd keygen` command lines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import cmdtool, signing
from gateway.cmdtool import Broker, Session
from gateway.signing import TYP_COMMAND, sign
from gateway.trial import version_of
from harness import GatewayProcess, Subscriber, wait_until, write_config

TAGS = [{"id": "62E3086CED", "child": "c-1001", "groups": ["3a"]},
        {"id": "01000734E0", "child": "c-1002", "groups": ["3a"]}]
UNIT = "unit-t1"
REPLY_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schemas"
                           / "reply.schema.json").read_text())


@dataclass
class Rig:
    tmp: Path
    broker: LocalBroker
    port: VirtualSerial
    cfg: Path
    gw: GatewayProcess
    sub: Subscriber
    key: Any
    pub: Path

    def session(self, protocol: str = "5") -> Session:
        return Session(Broker(port=self.broker.port, protocol=protocol))

    def restart(self) -> None:
        self.gw.stop()
        self.gw = GatewayProcess(self.cfg, self.tmp / "gateway.log").start()
        self.gw.wait_log("reader gate-main: online", 20)


def _config(tmp: Path, broker: LocalBroker, port: VirtualSerial, keys: list[Path]) -> Path:
    listed = ", ".join(json.dumps(str(k)) for k in keys)
    return write_config(
        tmp / "gw.toml", broker_port=broker.port, buffer=tmp / "buf.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": port.path,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=TAGS, extra=f"[commands]\npublic_keys = [{listed}]\n")


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[Rig]:
    signing.generate_keypair(tmp_path / "backend.key", tmp_path / "backend.pub")
    key = signing.load_private_key(tmp_path / "backend.key")
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cfg = _config(tmp_path, broker, port, [tmp_path / "backend.pub"])
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    r = Rig(tmp_path, broker, port, cfg, gw, sub, key, tmp_path / "backend.pub")
    try:
        gw.wait_log("reader gate-main: online", 20)
        gw.wait_log("connected (MQTT 5)", 20)
        yield r
    finally:
        r.gw.stop()
        sub.stop()
        port.close()
    log = r.gw.log_text()
    assert "Traceback" not in log
    assert "62E3086CED" not in log.upper()  # tag ids are never logged


def _check(reply: dict[str, Any]) -> dict[str, Any]:
    jsonschema.validate(reply, REPLY_SCHEMA, format_checker=jsonschema.FormatChecker())
    return reply


def test_each_command(rig: Rig) -> None:
    sim = Rdm6300Sim(rig.port, repeat_s=0.1)
    sim.present("62E3086CED", hold_s=0.3)
    wait_until(lambda: len(rig.sub.events("gate")) >= 1, 15, "a gate event")
    with rig.session() as s:
        pong = _check(s.command("ping", {}, UNIT, rig.key))
        assert (pong["code"], pong["cmd"], pong["unit"]) == (200, "ping", UNIT)
        assert pong["data"]["config_version"] == version_of(rig.cfg.read_bytes())  # SHA-256
        assert pong["data"]["config_label"] == "t-1" and pong["data"]["mqtt"] == "5"

        births = len(rig.sub.on("/birth"))
        assert _check(s.command("rebirth", {}, UNIT, rig.key))["code"] == 200
        assert len(rig.sub.on("/birth")) == births + 1  # published before the reply

        where = _check(s.command("locate", {"child": "c-1001"}, UNIT, rig.key))
        (loc,) = where["data"]["children"]
        assert where["code"] == 200 and loc["found"] and loc["reader"] == "gate-main"
        assert loc["time"].endswith("Z") and "tag" not in loc
        both = _check(s.command("locate", {"children": ["c-1001", "c-1002", "c-9"]}, UNIT,
                                rig.key))
        assert [(c["enrolled"], c["found"]) for c in both["data"]["children"]] == [
            (True, True), (True, False), (False, False)]
        assert _check(s.command("locate", {"child": "c-9"}, UNIT, rig.key))["code"] == 404
        # A tag id is not a child reference: never resolved (no tag -> child mapping leaks).
        assert s.command("locate", {"child": "62E3086CED"}, UNIT, rig.key)["code"] == 404

        start = _check(s.command("alert/start", {"alert_id": "quake-9", "interval_s": 5},
                                 UNIT, rig.key))
        assert start["code"] == 200 and start["data"] == {"alert_id": "quake-9",
                                                          "interval_s": 5}
        wait_until(lambda: any(e["data"]["alert_id"] == "quake-9"
                               for e in rig.sub.events("roll_call")), 10, "a roll-call")
    # Survives a restart (without --roll-call, unlike a roll-call the switch started).
    rig.restart()
    n = len(rig.sub.events("roll_call"))
    wait_until(lambda: len(rig.sub.events("roll_call")) > n, 15, "roll-calls after a restart")
    with rig.session() as s:
        assert s.command("alert/stop", {"alert_id": "other"}, UNIT, rig.key)["code"] == 404
        assert _check(s.command("alert/stop", {"alert_id": "quake-9"}, UNIT,
                                rig.key))["code"] == 200
        time.sleep(0.5)
        n = len(rig.sub.events("roll_call"))
        assert s.command("alert/stop", {}, UNIT, rig.key)["code"] == 404
    time.sleep(6)
    assert len(rig.sub.events("roll_call")) == n


def _send(s: Session, name: str, env: dict[str, Any] | None, token: bytes | None = None,
          key: Any = None) -> dict[str, Any]:
    rid = env["id"] if env else str(uuid.uuid4())
    tok = token if token is not None else cmdtool.sign_command(env or {}, key)
    return _check(s.request(name, tok, rid, UNIT, timeout_s=10))


def test_each_refusal_changes_nothing(rig: Rig) -> None:
    other = signing.load_private_key(_other_key(rig.tmp))
    now = time.time()

    def env(name: str = "alert/start", **kw: Any) -> dict[str, Any]:
        e = cmdtool.envelope(name, {"alert_id": "evil"}, UNIT, now=kw.pop("now", now),
                             lifetime_s=kw.pop("lifetime", 60))
        e.update(kw)
        return e

    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    with rig.session() as s:
        cases: list[tuple[str, bytes, int, str]] = [
            ("unsigned", json.dumps(env()).encode(), 403, "signature"),
            ("wrong key", cmdtool.sign_command(env(), other), 403, "unknown key id"),
            ("expired", cmdtool.sign_command(env(now=now - 3600), rig.key), 403, "expired"),
            ("not yet valid", cmdtool.sign_command(env(now=now + 3600), rig.key), 403,
             "not yet valid"),
            ("other unit", cmdtool.sign_command(env(unit="unit-t2"), rig.key), 403,
             "another unit"),
            ("oversized", b"x" * (256 * 1024 + 10), 400, "too large"),
            ("malformed", sign(b"{not json", rig.key, TYP_COMMAND), 400, "malformed"),
            ("deep", cmdtool.sign_command(env(args={"alert_id": "a", "x": deep}), rig.key), 400,
             "nested too deep"),
            ("unknown field", cmdtool.sign_command(env(priority=1), rig.key), 400,
             "unknown field"),
            ("unknown arg", cmdtool.sign_command(env(args={"alert_id": "a", "all": 1}),
                                                 rig.key), 400, "unknown argument"),
            ("wrong types", cmdtool.sign_command(env(args={"alert_id": 5}), rig.key), 400,
             "alert_id"),
            ("wrong envelope type", cmdtool.sign_command(env(expires=5), rig.key), 400,
             "expires"),
        ]
        for what, token, code, words in cases:
            reply = _send(s, "alert/start", None, token)
            assert reply["code"] == code and words in reply["reason"], (what, reply)
        unknown = env("self-destruct")
        reply = _send(s, "self-destruct", unknown, key=rig.key)
        assert (reply["code"], reply["id"]) == (404, unknown["id"])
        # A repeated id gets the stored reply; the same id with other content is a conflict.
        first = env("locate", args={"child": "c-1001"})
        r1 = _send(s, "locate", first, key=rig.key)
        r2 = _send(s, "locate", first, key=rig.key)
        assert r1["code"] == r2["code"] == 200 and r1["data"] == r2["data"]
        changed = {**first, "args": {"child": "c-1002"}}
        assert _send(s, "locate", changed, key=rig.key)["code"] == 409
        # Nothing changed: no roll-call runs.
        assert s.command("alert/stop", {}, UNIT, rig.key)["code"] == 404
    assert rig.sub.events("roll_call") == []
    log = rig.gw.log_text()
    assert log.count("refused") >= len(cases)
    assert "evil" not in log  # args are never logged


def _other_key(tmp: Path) -> Path:
    signing.generate_keypair(tmp / "other.key", tmp / "other.pub")
    return tmp / "other.key"


def test_key_change_two_keys_at_once(rig: Rig) -> None:
    new_key_path = _other_key(rig.tmp)
    new_key = signing.load_private_key(new_key_path)
    with rig.session() as s:
        assert s.command("ping", {}, UNIT, new_key)["code"] == 403
    # Step 1: the units get the new public key beside the old one.
    _config(rig.tmp, rig.broker, rig.port, [rig.pub, rig.tmp / "other.pub"])
    rig.restart()
    with rig.session() as s:
        assert s.command("ping", {}, UNIT, rig.key)["code"] == 200
        assert s.command("ping", {}, UNIT, new_key)["code"] == 200
    # Step 2: the old key is retired.
    _config(rig.tmp, rig.broker, rig.port, [rig.tmp / "other.pub"])
    rig.restart()
    with rig.session() as s:
        assert s.command("ping", {}, UNIT, rig.key)["code"] == 403
        assert s.command("ping", {}, UNIT, new_key)["code"] == 200


def test_mqtt311_fallback_reply_to(rig: Rig) -> None:
    with rig.session("3.1.1") as s:
        assert not s.v5
        rid = str(uuid.uuid4())
        env = cmdtool.envelope("ping", {}, UNIT, request_id=rid,
                               reply_to=cmdtool.reply_topic("kidsafe/v1", UNIT, rid))
        assert _send(s, "ping", env, key=rig.key)["code"] == 200
        # A reply_to outside the unit's reply subtree is not used: the default is.
        rid = str(uuid.uuid4())
        env = cmdtool.envelope("ping", {}, UNIT, request_id=rid, reply_to="kidsafe/v1/x/y")
        assert _send(s, "ping", env, key=rig.key)["code"] == 200


def test_hostile_payloads_leave_the_unit_online(rig: Rig) -> None:
    flood = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile",
                        protocol=mqtt.MQTTv5)
    flood.connect("127.0.0.1", rig.broker.port)
    flood.loop_start()
    try:
        payloads = [b"", b"\x00" * 1000, b"[" * 100_000, b"x" * 300_000, b"a.b.c",
                    b'{"id": "x"}', b"e30.e30." + b"A" * 86,
                    cmdtool.sign_command({"id": "nope"}, rig.key)]
        for i in range(400):
            name = ["ping", "locate", "alert/start", "x" * 500, "config"][i % 5]
            flood.publish(f"kidsafe/v1/{UNIT}/cmd/{name}", payloads[i % len(payloads)], qos=0)
        time.sleep(1.0)
    finally:
        flood.loop_stop()
        flood.disconnect()
    with rig.session() as s:
        wait_until(lambda: s.command("ping", {}, UNIT, rig.key, timeout_s=5)["code"] == 200,
                   30, "the unit answering after the flood")
    assert rig.sub.on("/status")[-1]["state"] == "online"
    log = rig.gw.log_text()
    assert max(len(line) for line in log.splitlines()) < 1200


def test_command_line(rig: Rig) -> None:
    def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                              text=True, timeout=60)

    made = gatewayd("keygen", str(rig.tmp / "k2.key"), str(rig.tmp / "k2.pub"))
    assert made.returncode == 0 and "key id" in made.stdout
    assert gatewayd("keygen", str(rig.tmp / "k2.key"), str(rig.tmp / "k3.pub")).returncode == 1
    base = ["cmd", "--key", str(rig.tmp / "backend.key"), "--port", str(rig.broker.port),
            "--unit", UNIT]
    out = gatewayd(*base, "locate", "--arg", "child=c-1001", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["code"] == 200
    out = gatewayd(*base, "locate", "--args", '{"children": ["c-1001"]}')
    assert out.returncode == 0 and out.stdout.startswith("200 done"), out
    out = gatewayd(*base, "locate", "--arg", "child=c-404", "--json")
    assert out.returncode == 44 and json.loads(out.stdout)["code"] == 404
    out = gatewayd("cmd", "--key", str(rig.tmp / "k2.key"), "--config", str(rig.cfg), "ping")
    assert out.returncode == 43, out  # a key the unit does not hold
    out = gatewayd(*base, "--mqtt", "3.1.1", "ping", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["code"] == 200
    out = gatewayd(*base[:-1], "unit-nobody", "ping", "--timeout", "1")
    assert out.returncode == cmdtool.NO_REPLY
