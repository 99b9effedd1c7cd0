"""Issue 3's end-to-end path: simulated RDM6300 on a pty -> gatewayd process -> mosquitto
-> a backend subscriber, with line noise, an unenrolled card and a replug."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from harness import GatewayProcess, Subscriber, wait_until, write_config

TAGS = [
    {"id": "62E3086CED", "child": "c-1001", "groups": ["3a"]},
    {"id": "01000734E0", "child": "c-1002", "groups": ["3a"]},
    {"id": "67003B51C6", "child": "c-1003", "groups": ["4b"]},
]
STRANGER = "1234567890"


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[tuple[VirtualSerial, GatewayProcess,
                                                                  Subscriber]]:
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": port.path,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=TAGS, gate_window_s=1.0,
    )
    configmod.load(cfg)  # the test's own config must be valid
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        yield port, gw, sub
    finally:
        gw.stop()
        sub.stop()
        port.close()


def test_gate_events_end_to_end(rig: tuple[VirtualSerial, GatewayProcess, Subscriber]) -> None:
    port, gw, sub = rig
    sim = Rdm6300Sim(port, repeat_s=0.1)
    sim.present("62E3086CED", hold_s=0.8)  # held: ~8 repeated frames, one passage
    sim.garbage(64)
    sim.present(STRANGER, hold_s=0.3)  # not enrolled: no event, not stored
    sim.bad_checksum("01000734E0")  # corrupted: no event
    sim.split("01000734E0")  # split across reads: still a good read
    sim.present("67003B51C6", hold_s=0.2)
    wait_until(lambda: len(sub.events("gate")) >= 3, 15, "3 gate events at the backend")
    # A second presentation of the first card after the window is a new passage.
    import time

    time.sleep(1.3)
    sim.present("62E3086CED", hold_s=0.2)
    wait_until(lambda: len(sub.events("gate")) >= 4, 15, "4th gate event")
    time.sleep(1.0)  # nothing else may trickle in
    events = sub.events("gate")
    assert [e["child"] for e in events] == ["c-1001", "c-1002", "c-1003", "c-1001"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert len({e["id"] for e in events}) == 4
    assert all(e["unit"] == "unit-t1" and e["reader"] == "gate-main" for e in events)
    assert all(e["kind"] == "gate" and e["lane"] == "routine" for e in events)
    log = gw.log_text()
    assert STRANGER not in log  # unenrolled ids are counted, never logged
    assert "Traceback" not in log
    health = sub.on("/health")
    wait_until(lambda: any(h["counters"].get("unenrolled_reads", 0) > 0 for h in sub.on("/health")),
               10, "health reporting the unenrolled reads")
    assert health  # published periodically
    status = sub.on("/status")
    assert status and status[0]["state"] == "online"
    assert sub.on("/birth")
    assert sub.violations == []  # every message matched docs/schemas


def test_reader_replug_while_running(rig: tuple[VirtualSerial, GatewayProcess,
                                                Subscriber]) -> None:
    port, gw, sub = rig
    sim = Rdm6300Sim(port, repeat_s=0.1)
    sim.present("62E3086CED", hold_s=0.2)
    wait_until(lambda: len(sub.events("gate")) == 1, 15, "first event")
    port.unplug()
    gw.wait_log("reader gate-main: offline")
    import time

    time.sleep(1.0)  # the driver retries with back-off while the device is gone
    port.plug()
    gw.wait_log("reconnected")
    time.sleep(0.3)
    sim.present("01000734E0", hold_s=0.2)
    wait_until(lambda: len(sub.events("gate")) == 2, 15, "event after replug")
    assert [e["child"] for e in sub.events("gate")] == ["c-1001", "c-1002"]
    assert "Traceback" not in gw.log_text()
