"""The RDM6300 driver through pyserial on a pseudo-terminal, with line noise and a replug.
The driver's reconnect back-off runs on a FakeClock the tests move."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.rdm6300 import Rdm6300Driver
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway.clock import FakeClock
from gateway.config import reader_config
from gateway.model import ReaderState, TagRead
from harness import CollectSink, advance_until, driver_running, wait_until


class Collect(CollectSink[TagRead]):
    def __init__(self) -> None:
        super().__init__(TagRead)
        self.reads = self.items

    def tags(self) -> list[str]:
        with self.lock:
            return [r.tag for r in self.reads]

Rig = tuple[VirtualSerial, Rdm6300Sim, Collect, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    sink = Collect()
    cfg = reader_config({"id": "gate-a", "kind": "rdm6300", "role": "gate", "port": port.path,
                         "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3})
    clock = FakeClock()
    drv = Rdm6300Driver(cfg, sink, clock)
    try:
        with driver_running(drv):
            wait_until(lambda: sink.state_count(ReaderState.ONLINE) >= 1, 10, "driver online")
            time.sleep(0.2)  # pyserial flushes input on open
            yield port, Rdm6300Sim(port), sink, clock
    finally:
        port.close()


def test_frames_garbage_split_and_bad_checksums(rig: Rig) -> None:
    port, sim, sink, _clock = rig
    sim.present("62E3086CED", hold_s=0.0)
    sim.garbage(40)
    sim.bad_checksum("01000734E0")
    sim.split("01000734E0")
    port.write(b"\x0262E3086C")  # cut short by the next frame
    sim.present("67003B51C6", hold_s=0.0)
    port.write(b"\x03\x03\xff\x0262E3086CED09\x03")  # stray ETX, noise, checksum error
    sim.present("0F0079E2A4", hold_s=0.0)
    wait_until(lambda: len(sink.tags()) >= 4, 10, "4 good reads")
    time.sleep(0.3)
    assert sink.tags() == ["62E3086CED", "01000734E0", "67003B51C6", "0F0079E2A4"]
    assert sink.rejects.count("checksum") == 2
    assert "garbage" in sink.rejects and "truncated" in sink.rejects


def test_unplug_and_replug_reconnects(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    port, sim, sink, clock = rig
    caplog.set_level(logging.INFO, logger="gateway.driver")
    sim.present("62E3086CED", hold_s=0.0)
    wait_until(lambda: len(sink.tags()) == 1, 10, "first read")
    port.unplug()
    wait_until(lambda: sink.state_count(ReaderState.OFFLINE) >= 1, 10, "driver notices the unplug")
    for _ in range(3):  # a few failed re-opens with back-off (cap 0.3 s)
        clock.advance(0.3)
        time.sleep(0.05)
    port.plug()
    # Past the back-off (cap 0.3 s): the next attempt opens the port.
    advance_until(clock, lambda: sink.state_count(ReaderState.ONLINE) >= 2, 0.3, 10,
                  "driver reconnects")
    time.sleep(0.2)
    sim.present("01000734E0", hold_s=0.0)
    wait_until(lambda: len(sink.tags()) == 2, 10, "read after replug")
    assert sink.tags() == ["62E3086CED", "01000734E0"]
    text = caplog.text
    assert "lost" in text and "reconnected" in text
    # In words, not pyserial's "device reports readiness to read but returned no data".
    assert "the device went away: unplugged" in text and "returned no data" not in text
