"""Chafon UHF gate end to end: simulated UHFReader288 (two antennas, outer/inner) on a
pty -> gatewayd process (pyserial, uhf_chafon driver, engine) -> mosquitto -> backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.uhf_chafon import UhfChafonSim
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from harness import GatewayProcess, Subscriber, wait_until, write_config

CHILD_EPC = "E2801160600002084F5B1B01"
OTHER_EPC = "E2801160600002084F5B1B02"
STRANGER = "300833B2DDD9014000000007"

Rig = tuple[VirtualSerial, UhfChafonSim, GatewayProcess, Subscriber]


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[Rig]:
    port = VirtualSerial(str(tmp_path / "ttyCF0"))
    port.plug()
    sim = UhfChafonSim(port, miss_rate=0.15, per_frame=2, seed=11).start()
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        readers=[{"id": "gate-cf", "kind": "uhf_chafon", "role": "gate", "port": port.path,
                  "antennas": [1, 2], "antenna_roles": {"1": "outer", "2": "inner"},
                  "reply_timeout_s": 0.5, "silence_s": 2.0,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=[{"id": CHILD_EPC, "child": "c-3001"}, {"id": OTHER_EPC.lower(), "child": "c-3002"}],
        gate_window_s=1.0, extra="[engine]\ngate_pair_s = 2.0\n",
    )
    configmod.load(cfg)
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-cf: online")
        gw.wait_log("connected (MQTT")
        yield port, sim, gw, sub
    finally:
        gw.stop()
        sub.stop()
        sim.stop()
        port.close()


def test_arrival_and_departure_through_a_two_antenna_gate(rig: Rig) -> None:
    _port, sim, gw, sub = rig
    sim.enter(STRANGER, antenna=1, hold_s=1.0)  # not enrolled: counted, never an event
    sim.walk_through(CHILD_EPC, "in", dwell_s=1.0)
    sim.garbage(50)
    sim.corrupt_next = 3
    sim.walk_through(OTHER_EPC, "out", dwell_s=1.0)
    wait_until(lambda: len(sub.events("gate")) >= 2, 20, "2 gate events")
    time.sleep(1.5)  # nothing else may trickle in
    events = sub.events("gate")
    assert [(e["child"], e["data"]["direction"]) for e in events] == [
        ("c-3001", "arrival"), ("c-3002", "departure")]
    assert all(e["reader"] == "gate-cf" and e["data"]["reads"] >= 2 for e in events)
    wait_until(lambda: any(h["counters"].get("unenrolled_reads", 0) > 0
                           and h["counters"].get("readings", 0) > 10
                           for h in sub.on("/health")), 10, "health counts the reads")
    h = sub.on("/health")[-1]
    assert h["readers"]["gate-cf"]["state"] == "online"
    assert h["readers"]["gate-cf"]["rejects"].get("checksum", 0) >= 1
    log = gw.log_text()
    assert STRANGER not in log and "Traceback" not in log


def test_antenna_error_and_unplug_reported(rig: Rig) -> None:
    port, sim, gw, sub = rig
    sim.antenna_missing(2)
    gw.wait_log("reader gate-cf: degraded")
    wait_until(lambda: any(h["readers"]["gate-cf"]["state"] == "degraded"
                           for h in sub.on("/health")), 10, "health shows degraded")
    sim.antenna_missing(2, False)
    port.unplug()
    gw.wait_log("reader gate-cf: offline")
    time.sleep(0.5)
    port.plug()
    gw.wait_log("reconnected")
    sim.walk_through(CHILD_EPC, "in", dwell_s=1.0)
    wait_until(lambda: len(sub.events("gate")) >= 1, 20, "gate event after replug")
    assert sub.events("gate")[0]["data"]["direction"] == "arrival"
    assert "Traceback" not in gw.log_text()
