"""The BLE driver through bleak's real BlueZ backend, against python-dbusmock's bluez5
template on a private system bus: decoding, TLM attribution, button presses, the
adapter disappearing and coming back, and the silent-scan watchdog. The driver's
watchdog, adapter poll and back-off run on a FakeClock the tests move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blezmock import ALERT_UUID, TAG_UUID, ble_world
from drivers.ble import CHECK_S, BleDriver
from firmware_sim.ble import BleSim, SimTag
from gateway.clock import FakeClock
from gateway.config import reader_config
from gateway.model import BleSighting, ReaderState
from harness import CollectSink, advance_until, driver_running, wait_until

IBEACON_ID = f"ibeacon:{TAG_UUID}:10:1"
EDDY_ID = "eddystone:edd1ebeac04e5defa017:0000000000a2"


class Collect(CollectSink[BleSighting]):
    def __init__(self) -> None:
        super().__init__(BleSighting)
        self.seen = self.items

    def tags(self) -> set[str]:
        with self.lock:
            return {s.tag for s in self.seen}

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

Rig = tuple[BleSim, BleDriver, Collect, FakeClock]


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with ble_world(tmp_path, drop_rate=0.1, seed=4) as (bus, sim):
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)  # bleak and dbus_fast
        sim.add_tag(SimTag("C0:00:00:00:00:01", "ibeacon", uuid=TAG_UUID, major=10, minor=1,
                           rssi=-58, interval_s=0.15))
        sim.add_tag(SimTag("C0:00:00:00:00:02", "eddystone", namespace="edd1ebeac04e5defa017",
                           instance="0000000000a2", rssi=-70, interval_s=0.15, tlm_every=3,
                           battery_mv=2950, temperature_c=23.5))
        sim.add_tag(SimTag("C0:00:00:00:00:03", "other", interval_s=0.15))
        sink = Collect()
        cfg = reader_config({"id": "ble-1", "kind": "ble", "role": "zone",
                             "adapter": "hci0", "button_uuid": ALERT_UUID,
                             "silence_s": 1.0, "power_off_s": 0.3,
                             "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5})
        clock = FakeClock()
        drv = BleDriver(cfg, sink, clock)
        with driver_running(drv):
            wait_until(lambda: sink.last()[0] == ReaderState.ONLINE, 10, "scanning")
            sim.start()
            yield sim, drv, sink, clock


def test_ibeacon_eddystone_tlm_and_other_adverts(rig: Rig) -> None:
    sim, _drv, sink, _clock = rig
    wait_until(lambda: {IBEACON_ID, EDDY_ID} <= sink.tags(), 10, "both tags sighted")
    wait_until(lambda: any(s.battery_mv for s in sink.seen), 10, "a TLM attributed")
    with sink.lock:
        seen = list(sink.seen)
    assert sink.tags() == {IBEACON_ID, EDDY_ID}  # the phone-like advertiser is ignored
    tlm = [s for s in seen if s.battery_mv]
    assert all(s.tag == EDDY_ID and s.battery_mv == 2950 and s.temperature_c == 23.5
               for s in tlm)
    ib = [s.rssi for s in seen if s.tag == IBEACON_ID]
    assert -75 < sum(ib) / len(ib) < -45
    assert not any(s.button for s in seen)
    # A cut iBeacon frame from a tag: counted, never a sighting.
    sim.mock.advertise(sim.tags["C0:00:00:00:00:01"].path, -60, {0x004C: b"\x02\x15\x01\x02"}, {})
    wait_until(lambda: "truncated" in sink.rejects, 5, "cut frame rejected")


def test_button_press_is_attributed_to_the_tag(rig: Rig) -> None:
    sim, _drv, sink, _clock = rig
    wait_until(lambda: IBEACON_ID in sink.tags(), 10, "tag sighted")
    sim.press("C0:00:00:00:00:01", hold_s=0.6)
    wait_until(lambda: any(s.button for s in sink.seen), 10, "press seen")
    with sink.lock:
        pressed = [s for s in sink.seen if s.button]
    assert {s.tag for s in pressed} == {IBEACON_ID}


def test_adapter_removed_and_back(rig: Rig) -> None:
    sim, _drv, sink, clock = rig
    wait_until(lambda: sink.count() > 3, 10, "sightings")
    sim.remove_adapter()
    # A running scan raises nothing: the adapter's presence is polled every CHECK_S.
    advance_until(clock, lambda: sink.last()[0] == ReaderState.OFFLINE, CHECK_S, 10,
                  "offline without adapter")
    n = sink.count()
    for _ in range(3):  # a few failed restarts with back-off (cap 0.5 s)
        clock.advance(0.5)
        time.sleep(0.1)
    sim.add_adapter()
    # Past the back-off (cap 0.5 s): the next restart finds the adapter.
    advance_until(clock, lambda: sink.last()[0] == ReaderState.ONLINE, 0.5, 10,
                  "scanning again")
    wait_until(lambda: sink.count() > n + 3, 10, "sightings again")


def test_watchdog_restarts_scan_then_power_cycles_adapter(rig: Rig) -> None:
    sim, drv, sink, clock = rig
    wait_until(lambda: sink.count() > 3, 10, "sightings")
    sim.stall("until-scan-restart")
    # silence_s (1 s) without an advert; the watchdog looks every 0.1 s.
    advance_until(clock, lambda: "scan restarted" in sink.last()[1], 1.0, 10, "scan restarted",
                  settle=0.3)
    assert sink.last()[0] == ReaderState.DEGRADED
    # Healed: adverts again, later than the restart.
    advance_until(clock, lambda: sink.last()[0] == ReaderState.ONLINE, 0.1, 10,
                  "healed by the restart")
    assert drv.scan_restarts == 1 and drv.power_cycles == 0
    n = sink.count()
    wait_until(lambda: sink.count() > n, 10, "sightings after the restart")

    sim.stall("until-power-cycle")
    # A silent second restarts the scan (no help), another power-cycles the adapter.
    advance_until(clock, lambda: "power-cycled" in sink.last()[1], 1.0, 15,
                  "adapter power-cycled", settle=0.3)
    wait_until(lambda: not sim.mock.adapter_prop("hci0", "Powered"), 5, "adapter powered off")
    time.sleep(0.2)  # the simulated adapter notices a power cycle by polling every 0.1 s
    # Off for power_off_s (0.3 s), on, a pause, then scanning and adverts again.
    advance_until(clock, lambda: sink.last()[0] == ReaderState.ONLINE, 0.35, 10,
                  "healed by the power cycle", settle=0.3)
    assert drv.power_cycles == 1
    assert sim.mock.adapter_prop("hci0", "Powered")
