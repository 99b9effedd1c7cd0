"""What a box saw can be replayed: `run --record`, `replay`, `locate`, and `--roll-call`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from harness import GatewayProcess, Subscriber, gatewayd, wait_until, write_config

TAGS = [{"id": "62E3086CED", "child": "c-1001", "groups": ["3a"]},
        {"id": "01000734E0", "child": "c-1002", "groups": ["3a"]}]


def test_record_then_replay_and_locate(tmp_path: Path, broker: LocalBroker) -> None:
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "b.db",
                       readers=[{"id": "gate-main", "kind": "rdm6300", "port": port.path}],
                       tags=TAGS, gate_window_s=0.5)
    rec = tmp_path / "readings.jsonl"
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log", args=["--record", str(rec)]).start()
    try:
        gw.wait_log("reader gate-main: online")
        time.sleep(0.3)
        sim = Rdm6300Sim(port)
        for tag in ("62E3086CED", "01000734E0", "1234567890", "62E3086CED"):
            sim.present(tag, 0.3)
            time.sleep(0.8)
        wait_until(lambda: len(sub.events("gate")) == 3, 15, "3 gate events")
    finally:
        gw.stop()
        sub.stop()
        port.close()
    live = [(e["child"], e["reader"], e["data"]["direction"]) for e in sub.events("gate")]
    lines = rec.read_text().splitlines()
    assert "1234567890" not in rec.read_text()  # unenrolled reads are not recorded either
    assert json.loads(lines[0])["type"] == "start"
    first = gatewayd("replay", "--config", str(cfg), str(rec))
    second = gatewayd("replay", "--config", str(cfg), str(rec))
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout  # byte-identical
    replayed = [json.loads(x) for x in first.stdout.splitlines()]
    assert [(e["child"], e["reader"], e["data"]["direction"]) for e in replayed
            if e["kind"] == "gate"] == live
    # locate from the daemon's saved state, and from the recording
    saved = gatewayd("locate", "--config", str(cfg), "c-1002")
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["reader"] == "gate-main"
    replay_locate = gatewayd("locate", "--config", str(cfg), "--readings", str(rec), "c-1001")
    assert json.loads(replay_locate.stdout)["tag"] == "62E3086CED"
    missing = gatewayd("locate", "--config", str(cfg), "c-9999")
    assert missing.returncode == 1 and json.loads(missing.stdout)["found"] is False


def test_roll_call_switch(tmp_path: Path, broker: LocalBroker) -> None:
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "b.db",
                       readers=[], tags=TAGS, extra="[roll_call]\ninterval_s = 1\n")
    sub = Subscriber(broker.port).start()
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log, args=["--roll-call", "quake-7"]).start()
    try:
        wait_until(lambda: len(sub.events("roll_call")) >= 2, 15, "roll-calls every second")
        rc = sub.events("roll_call")[0]
        assert rc["lane"] == "emergency" and rc["data"]["alert_id"] == "quake-7"
        assert sub.violations == []
    finally:
        gw.stop()
    gw = GatewayProcess(cfg, log).start()  # restarted without the switch: the roll-call ends
    try:
        gw.wait_log("roll-call for alert quake-7 ended")
        n = len(sub.events("roll_call"))
        time.sleep(2.5)
        assert len(sub.events("roll_call")) == n
    finally:
        gw.stop()
        sub.stop()


def test_a_recorded_run_replays_to_the_events_it_published(tmp_path: Path,
                                                            broker: LocalBroker) -> None:
    """A two-sided gate decides a passage at a tick after its last read, so the last
    passage comes after the last recorded reading: the recording's closing tick (the live
    engine's last tick) makes the replay decide it too. Live events == replayed events."""
    outer, inner = VirtualSerial(str(tmp_path / "ttyOUT")), VirtualSerial(str(tmp_path / "ttyIN"))
    outer.plug()
    inner.plug()
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "b.db",
                       readers=[{"id": "gate-out", "kind": "rdm6300", "role": "gate_outer",
                                 "port": outer.path},
                                {"id": "gate-in", "kind": "rdm6300", "role": "gate_inner",
                                 "port": inner.path}],
                       tags=TAGS, gate_window_s=0.5)
    rec = tmp_path / "readings.jsonl"
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log", args=["--record", str(rec)]).start()
    try:
        gw.wait_log("reader gate-in: online")
        gw.wait_log("reader gate-out: online")
        for tag, first, then in (("62E3086CED", outer, inner), ("01000734E0", inner, outer),
                                 ("62E3086CED", inner, outer)):
            Rdm6300Sim(first).present(tag, 0.3)
            Rdm6300Sim(then).present(tag, 0.3)
            time.sleep(0.2)
        wait_until(lambda: len(sub.events("gate")) == 3, 15, "3 gate passages")
        time.sleep(1.0)  # ticks after the last passage, with nothing more to decide
    finally:
        gw.stop()
        sub.stop()
        outer.close()
        inner.close()
    live = sorted((e["kind"], e["child"], e["reader"], json.dumps(e["data"], sort_keys=True))
                  for e in sub.events())
    assert json.loads(rec.read_text().splitlines()[-1])["type"] == "tick"  # the closing tick
    done = gatewayd("replay", "--config", str(cfg), str(rec))
    assert done.returncode == 0, done.stderr
    replayed = sorted((e["kind"], e["child"], e["reader"], json.dumps(e["data"], sort_keys=True))
                      for e in map(json.loads, done.stdout.splitlines()))
    assert len(live) == 3 and replayed == live
