"""The BLE simulator (BlueZ's bus) goes away, then the gateway stops: "gatewayd stopped" is
the last word, with no asyncio EOFError traceback after it (issue 11)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from blezmock import TAG_UUID, require_ble_tools
from firmware_sim.ble import BleSim, BluezMock, PrivateSystemBus, SimTag
from firmware_sim.broker import LocalBroker
from harness import GatewayProcess, write_config


@pytest.mark.timeout(90)
def test_bus_gone_then_stop_leaves_no_traceback(tmp_path: Path, broker: LocalBroker) -> None:
    require_ble_tools()
    bus = PrivateSystemBus(str(tmp_path / "dbus")).start()
    mock = BluezMock(bus).start()
    sim = BleSim(mock, "hci0", seed=3)
    sim.add_adapter()
    sim.add_tag(SimTag("C0:00:00:00:01:01", "ibeacon", uuid=TAG_UUID, major=7, minor=42,
                       interval_s=0.2))
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        readers=[{"id": "ble-park", "kind": "ble", "role": "zone", "adapter": "hci0",
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=[{"id": f"ibeacon:{TAG_UUID}:7:42", "child": "c-3001"}])
    gw = GatewayProcess(cfg, tmp_path / "gateway.log",
                        env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    try:
        gw.start()
        gw.wait_log("reader ble-park: online")
        sim.start()
        time.sleep(1.0)
        sim.stop()  # the simulator and its bus go away under the running gateway
        mock.stop()
        bus.stop()
        gw.wait_log("reader ble-park: offline")
        time.sleep(1.0)
    finally:
        gw.stop()
    log = gw.log_text()
    assert "gatewayd stopped" in log
    after = log.split("gatewayd stopped", 1)[1]
    assert "Traceback" not in log and "EOFError" not in after, after
