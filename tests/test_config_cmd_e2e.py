"""The `config` command end to end: a gatewayd process, a real mosquitto, gateway.cmdtool.

A good config is applied (the daemon restarts in place: same PID) and confirmed, a reader
added, events flowing, the buffer kept; a config that cannot reach the broker is rolled back
within its confirm_s, the unit back online on its previous config with every event
committed during the trial delivered; an invalid or stale push changes nothing; a kill -9
during a trial and a restart after its deadline roll back.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from firmware_sim.broker import LocalBroker, free_port
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import cmdtool, signing, trial, trialfiles
from gateway.cmdtool import Broker, Session
from gateway.trial import version_of
from harness import GatewayProcess, Subscriber, gatewayd, wait_until

UNIT = "unit-t1"
CARD_1, CARD_2, CARD_3 = "62E3086CED", "01000734E0", "0100073A2B"
CONFIRM_S = 10  # the shortest a push may ask for


@dataclass
class Rig:
    tmp: Path
    broker: LocalBroker
    ports: list[VirtualSerial]
    cfg: Path
    gw: GatewayProcess
    sub: Subscriber
    key: Any

    def doc(self, readers: int = 1, port: int | None = None) -> dict[str, Any]:
        return {
            "unit": {"id": UNIT, "site": "test-site", "config_version": "t-1"},
            "broker": {"host": "127.0.0.1", "port": port or self.broker.port,
                       "reconnect_max_s": 0.5},
            "buffer": {"path": str(self.tmp / "buf.db")},
            "gate": {"repeat_window_s": 1.0},
            "health": {"interval_s": 2},
            "commands": {"public_keys": [str(self.tmp / "backend.pub")]},
            "readers": [{"id": f"gate-{i}", "kind": "rdm6300", "role": "gate",
                         "port": self.ports[i].path, "reconnect_initial_s": 0.1,
                         "reconnect_max_s": 0.5} for i in range(readers)],
            "tags": [{"id": CARD_1, "child": "c-1"}, {"id": CARD_2, "child": "c-2"},
                     {"id": CARD_3, "child": "c-3"}],
        }

    def signed(self, text: str, expected: str | None = None, confirm_s: float = CONFIRM_S,
               mqtt: str = "5") -> tuple[bytes, str]:
        args = {"config": text, "expected_version": expected or self.version(),
                "confirm_s": confirm_s}
        rid = str(uuid.uuid4())
        # MQTT 3.1.1 has no response topic: the reply topic travels in the signed payload.
        env = cmdtool.envelope("config", args, UNIT, request_id=rid, reply_to=None if mqtt == "5"
                               else cmdtool.reply_topic("kidsafe/v1", UNIT, rid))
        return cmdtool.sign_command(env, self.key), rid

    def send(self, token: bytes, rid: str, timeout_s: float = 60, mqtt: str = "5"
             ) -> dict[str, Any]:
        with Session(Broker(port=self.broker.port, protocol=mqtt)) as s:
            return s.request("config", token, rid, UNIT, timeout_s=timeout_s)

    def push(self, text: str, expected: str | None = None, timeout_s: float = 60,
             mqtt: str = "5") -> dict[str, Any]:
        return self.send(*self.signed(text, expected, mqtt=mqtt), timeout_s=timeout_s,
                         mqtt=mqtt)

    def version(self) -> str:
        return version_of(self.cfg.read_bytes())

    def births(self) -> list[dict[str, Any]]:
        return self.sub.on("/birth")


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[Rig]:
    signing.generate_keypair(tmp_path / "backend.key", tmp_path / "backend.pub")
    key = signing.load_private_key(tmp_path / "backend.key")
    ports = [VirtualSerial(str(tmp_path / f"ttyRFID{i}")) for i in range(2)]
    for p in ports:
        p.plug()
    cfg = tmp_path / "gw.toml"
    r = Rig(tmp_path, broker, ports, cfg, GatewayProcess(cfg, tmp_path / "gateway.log"),
            Subscriber(broker.port).start(), key)
    cfg.write_text("# the unit's first config\n" + tomli_w.dumps(r.doc()))
    r.gw.start()
    try:
        r.gw.wait_log("reader gate-0: online", 20)
        r.gw.wait_log("connected (MQTT 5)", 20)
        yield r
    finally:
        r.gw.stop()
        r.sub.stop()
        for p in ports:
            p.close()


def present(port: VirtualSerial, card: str) -> None:
    Rdm6300Sim(port).present(card, 0.2)


def test_a_good_config_is_applied_in_place_and_confirmed(rig: Rig) -> None:
    present(rig.ports[0], CARD_1)
    wait_until(lambda: len(rig.sub.events("gate")) == 1, 15, "the first event")
    pid = rig.gw.proc.pid if rig.gw.proc else 0
    old, old_text = rig.version(), rig.cfg.read_text()
    new_text = "# a second reader\n" + tomli_w.dumps(rig.doc(readers=2))
    token, rid = rig.signed(new_text, confirm_s=60)  # a loaded test machine: no false alarm
    t0 = time.monotonic()
    reply = rig.send(token, rid)
    took = time.monotonic() - t0
    assert reply["code"] == 200, reply
    assert reply["data"]["outcome"] == "kept"
    assert reply["data"]["active_version"] == version_of(new_text.encode()) == rig.version()
    assert reply["data"]["previous_version"] == old
    assert took < 30, took  # confirmed by the reconnect (about 3 s), not by waiting 60 s
    # The same process (PID kept: systemd's main process), restarted on the new file.
    assert rig.gw.proc is not None and rig.gw.proc.poll() is None and rig.gw.proc.pid == pid
    assert "restarting in place" in rig.gw.log_text()
    assert trialfiles.previous_path(rig.cfg).read_text() == old_text
    assert not trialfiles.marker_path(rig.cfg).exists()
    # Birth carries the new version and the previous one.
    wait_until(lambda: any(b["config_version"] == rig.version() for b in rig.births()), 10,
               "birth with the new version")
    birth = rig.births()[-1]
    assert (birth["config_previous"], birth["config_label"]) == (old, "t-1")
    # The new reader works, the old one still does; the buffer and seqs carried on.
    rig.gw.wait_log("reader gate-1: online", 20)
    present(rig.ports[1], CARD_2)
    present(rig.ports[0], CARD_3)
    wait_until(lambda: len(rig.sub.events("gate")) == 3, 15, "events from both readers")
    evs = rig.sub.events("gate")
    assert [e["reader"] for e in evs] == ["gate-0", "gate-1", "gate-0"]
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)
    assert len({e["seq"] for e in evs}) == 3
    # `gatewayd status` shows both versions.
    status = gatewayd("status", "--config", str(rig.cfg), "--json")
    assert status.returncode == 0, status.stderr
    conf = json.loads(status.stdout)["config"]
    assert (conf["version"], conf["previous"], conf["trial"]) == (rig.version(), old, None)
    # A repeat of the request gets the stored reply and changes nothing.
    again = rig.send(token, rid)
    assert {k: again[k] for k in ("id", "code", "reason", "data")} == {
        k: reply[k] for k in ("id", "code", "reason", "data")}
    assert rig.gw.log_text().count("restarting in place") == 1
    assert rig.sub.violations == []


def test_a_config_that_cannot_reach_the_broker_rolls_back_and_loses_nothing(rig: Rig) -> None:
    old = rig.version()
    old_text = rig.cfg.read_text()
    bad_text = tomli_w.dumps(rig.doc(port=free_port()))  # nothing listens there
    result: dict[str, Any] = {}

    def push() -> None:
        t0 = time.monotonic()
        result["reply"] = rig.push(bad_text, timeout_s=90)
        result["took"] = time.monotonic() - t0

    pusher = threading.Thread(target=push)
    pusher.start()
    rig.gw.wait_log("on trial: kept only if the broker is reached", 20)
    # Events decided while the trial's config cannot reach the broker are buffered...
    before = len(rig.sub.events("gate"))
    wait_until(lambda: rig.gw.log_text().count("reader gate-0: online") == 2, 20,
               "the reader online in the restarted image")
    present(rig.ports[0], CARD_1)
    time.sleep(1.5)
    present(rig.ports[0], CARD_2)
    pusher.join(90)
    reply, took = result["reply"], result["took"]
    assert reply["code"] == 409, reply
    assert reply["data"]["outcome"] == "rolled-back"
    assert reply["data"]["active_version"] == old == rig.version()
    assert f"no broker connection within {CONFIRM_S} s" in reply["reason"]
    assert took < CONFIRM_S + 20, took  # the confirm time plus a restart and a reconnect
    assert rig.cfg.read_text() == old_text
    assert trialfiles.rejected_path(rig.cfg).read_text() == bad_text
    assert not trialfiles.marker_path(rig.cfg).exists()
    # ...and delivered once the unit is back on its previous config.
    wait_until(lambda: len(rig.sub.events("gate")) == before + 2, 15, "the buffered events")
    assert [e["child"] for e in rig.sub.events("gate")[before:]] == ["c-1", "c-2"]
    assert rig.births()[-1]["config_version"] == old
    assert rig.sub.on("/status")[-1]["state"] == "online"


def test_an_invalid_config_is_refused_with_nothing_changed(rig: Rig) -> None:
    text, version = rig.cfg.read_text(), rig.version()
    pid = rig.gw.proc.pid if rig.gw.proc else 0
    bad = rig.doc()
    bad["broker"]["port"] = 0
    bad["readers"][0]["kind"] = "rdm9999"
    reply = rig.push(tomli_w.dumps(bad))
    assert reply["code"] == 400, reply
    assert any("broker.port" in e for e in reply["data"]["errors"]), reply
    assert any("rdm9999" in e for e in reply["data"]["errors"]), reply
    reply = rig.push("not = [toml")
    assert reply["code"] == 400 and "not valid TOML" in reply["data"]["errors"][0]
    # A stale expected version: 409, nothing changed either.
    reply = rig.push(tomli_w.dumps(rig.doc(readers=2)), expected=version_of(b"stale"))
    assert reply["code"] == 409 and "stale expected_version" in reply["reason"]
    assert reply["data"]["active_version"] == version
    assert rig.cfg.read_text() == text
    assert sorted(p.name for p in rig.tmp.glob("gw.toml*")) == ["gw.toml"]
    assert rig.gw.proc is not None and rig.gw.proc.pid == pid
    assert "restarting in place" not in rig.gw.log_text()


@pytest.mark.slow  # fault injection: waits out a deadline with the unit down
def test_kill_9_during_a_trial_then_a_restart_after_its_deadline_rolls_back(rig: Rig) -> None:
    old = rig.version()
    bad_text = tomli_w.dumps(rig.doc(port=free_port()))
    got: dict[str, Any] = {}
    # Over MQTT 3.1.1: the reply topic from the payload survives the kill in the marker.
    pusher = threading.Thread(target=lambda: got.update(rig.push(bad_text, timeout_s=90,
                                                                 mqtt="3.1.1")))
    pusher.start()
    rig.gw.wait_log("on trial: kept only if the broker is reached", 20)
    rig.gw.kill(signal.SIGKILL)
    assert rig.version() == version_of(bad_text.encode())  # left on the unconfirmed config
    marker = trialfiles.read_marker(rig.cfg)
    assert marker is not None and marker.outcome is None
    time.sleep(max(0.0, marker.deadline - time.time()) + 0.5)
    rig.gw.start()  # the same command line, as systemd would restart it
    rig.gw.wait_log("deadline passed while the unit was down; rolling back", 20)
    pusher.join(60)
    assert got["code"] == 409 and "restarted during the trial" in got["reason"], got
    assert rig.version() == old
    wait_until(lambda: rig.births()[-1]["config_version"] == old, 10, "birth on the old config")
    assert not trialfiles.marker_path(rig.cfg).exists()


def test_a_config_on_trial_that_no_longer_loads_is_rolled_back_at_start(
        tmp_path: Path, broker: LocalBroker) -> None:
    """Not exit 2 (which systemd does not restart) on a config nobody confirmed."""
    good = tomli_w.dumps({"unit": {"id": UNIT, "site": "s"},
                          "broker": {"host": "127.0.0.1", "port": broker.port},
                          "buffer": {"path": str(tmp_path / "buf.db")}})
    cfg = tmp_path / "gw.toml"
    broken = good + f'\n[commands]\npublic_keys = ["{tmp_path}/gone.pub"]\n'
    cfg.write_text(broken)
    now = time.time()
    trialfiles.write_marker(cfg, trial.Trial(
        request=str(uuid.uuid4()), unit=UNIT, version=version_of(broken.encode()),
        previous=version_of(good.encode()), previous_text=good, started=now,
        deadline=now + 120, reply_topic=f"kidsafe/v1/{UNIT}/reply/x", expires=now + 300))
    sub = Subscriber(broker.port, topic=f"kidsafe/v1/{UNIT}/reply/#").start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("connected (MQTT 5)", 20)
        assert cfg.read_text() == good
        wait_until(lambda: len(sub.on("/reply/x")) == 1, 10, "the rollback's reply")
        reply = sub.on("/reply/x")[0]
        assert reply["code"] == 409 and "did not load at start" in reply["reason"], reply
        assert "gone.pub" in reply["reason"]
        assert not trialfiles.marker_path(cfg).exists()
    finally:
        gw.stop()
        sub.stop()
