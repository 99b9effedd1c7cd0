"""The NMEA GPS driver through pyserial on a pty, against the simulated receiver:
fixes, checksum errors, split sentences, a week-rollover date, no fix, unplug.
The driver's watchdogs and back-off run on a FakeClock the tests move."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.gps_nmea import GpsNmeaDriver
from firmware_sim.gps_nmea import GpsSim, Track, Waypoint, offset, sentence
from firmware_sim.vserial import VirtualSerial
from gateway.clock import FakeClock
from gateway.config import reader_config
from gateway.model import GpsFix, ReaderState
from harness import CollectSink, advance_until, driver_running, unplug_and_replug, wait_until

HOME = (37.5665, 126.9780)


class Collect(CollectSink[GpsFix]):
    def __init__(self) -> None:
        super().__init__(GpsFix)
        self.fixes = self.items

    def good(self) -> list[GpsFix]:
        with self.lock:
            return [f for f in self.fixes if f.lat is not None and f.time_trusted]

Rig = tuple[VirtualSerial, GpsSim, Collect, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    port = VirtualSerial(str(tmp_path / "ttyGPS0"))
    port.plug()
    end = offset(*HOME, 0, 200)
    track = Track([Waypoint(*HOME), Waypoint(*end)], speed_mps=10)
    sim = GpsSim(port, track, rate_hz=4, talker="GN", seed=3)
    sink = Collect()
    cfg = reader_config({"id": "gps", "kind": "gps_nmea", "role": "gps", "port": port.path,
                         "silence_s": 2.0, "no_fix_s": 1.0,
                         "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3})
    clock = FakeClock(time.time())  # fix times are checked against it
    drv = GpsNmeaDriver(cfg, sink, clock)
    try:
        with driver_running(drv):
            wait_until(lambda: sink.state_count(ReaderState.ONLINE) >= 1, 10, "online")
            time.sleep(0.2)  # pyserial flushes input on open
            sim.start()
            yield port, sim, sink, clock
    finally:
        sim.stop()
        port.close()


def test_fixes_with_position_speed_and_trusted_time(rig: Rig) -> None:
    _port, _sim, sink, _clock = rig
    wait_until(lambda: len(sink.good()) >= 4, 10, "4 good fixes")
    fixes = sink.good()
    f = fixes[-1]
    assert f.fix_quality == 1 and f.fix_type == 3 and f.satellites == 9
    assert f.hdop is not None and 0.4 < f.hdop < 1.5
    assert f.lat is not None and f.lon is not None
    assert abs(f.lat - HOME[0]) < 0.001 and abs(f.lon - HOME[1]) < 0.003
    assert abs(f.time - time.time()) < 5
    assert [x.time for x in fixes] == sorted(x.time for x in fixes)
    assert any(x.speed_mps and 8 < x.speed_mps < 12 for x in fixes)
    assert sink.last_state() == ReaderState.ONLINE


def test_checksum_errors_and_split_sentences(rig: Rig) -> None:
    port, sim, sink, _clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 10, "first fix")
    sim.stop()
    time.sleep(0.3)
    with sink.lock:
        sink.fixes.clear()
    base = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=5)
    lines = []
    for i in range(4):
        lines += sim.epoch(base + dt.timedelta(seconds=i), 1.0)
    bad = bytearray(lines[3])  # the second epoch's GGA, one digit flipped
    bad[20] = ord("9") if bad[20] != ord("9") else ord("8")
    lines[3] = bytes(bad)
    blob = b"".join(lines)
    # Split at awkward places: inside a sentence, right after '$', between CR and LF.
    for a, b in ((0, 7), (7, 61), (61, 62), (62, 200), (200, len(blob))):
        port.write(blob[a:b])
        time.sleep(0.06)
    port.write(b"\x00\xffjunk\r\n$GPGGA,123519,48")  # garbage, then a sentence cut short
    port.write(b"$GPXYZ,no checksum here\r\n")
    wait_until(lambda: len(sink.good()) >= 3, 10, "fixes from the split sentences")
    wait_until(lambda: {"checksum", "garbage", "truncated", "no-checksum"} <= set(sink.rejects),
               5, "every kind of bad input rejected")
    with sink.lock:  # (the sim's last epoch was still open in the assembler: skip it)
        fixes = [f for f in sink.fixes if f.time >= base.timestamp()]
    # The epoch that lost its GGA still has RMC's position but no GGA quality/satellites.
    assert [f.time for f in fixes[:3]] == [(base + dt.timedelta(seconds=i)).timestamp()
                                           for i in range(3)]
    assert fixes[1].satellites is None and fixes[0].satellites == 9


def test_week_rollover_is_untrusted(rig: Rig) -> None:
    _port, sim, sink, _clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 10, "first fix")
    sim.week_rollover()
    wait_until(lambda: "untrusted-time:gps-week-rollover" in sink.rejects, 10, "rollover counted")
    with sink.lock:
        bad = [f for f in sink.fixes if not f.time_trusted]
    assert bad and all(f.time < time.time() - 7000 * 86400 for f in bad)  # dated ~19.6 years ago
    sim.week_rollover(False)
    n = len(sink.good())
    wait_until(lambda: len(sink.good()) > n, 10, "trusted again")


def test_time_going_backwards_is_untrusted(rig: Rig) -> None:
    port, sim, sink, _clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 10, "first fix")
    sim.stop()
    time.sleep(0.3)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    port.write(b"".join(sim.epoch(past, 1.0) + sim.epoch(past + dt.timedelta(seconds=1), 1.0)))
    wait_until(lambda: "untrusted-time:backwards" in sink.rejects, 10, "backwards counted")


def test_no_fix_degrades_and_silence_degrades(rig: Rig) -> None:
    _port, sim, sink, clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 10, "first fix")
    sim.fix = False
    wait_until(lambda: any(f.lat is None for f in sink.fixes[-2:]), 10, "fixes without position")
    # Sentences keep coming (silence_s is 2 s away), positions do not (no_fix_s is 1 s).
    advance_until(clock, lambda: sink.last_state() == ReaderState.DEGRADED, 1.0, 10,
                  "degraded without fix", settle=0.5)
    with sink.lock:
        assert "no position fix" in sink.states[-1][1]
        assert any(f.lat is None and f.fix_quality == 0 for f in sink.fixes)
    sim.fix = True
    wait_until(lambda: sink.last_state() == ReaderState.ONLINE, 10, "online with a fix")
    sim.stop()
    advance_until(clock, lambda: sink.last_state() == ReaderState.DEGRADED, 2.0, 10,
                  "degraded when silent", settle=0.5)
    with sink.lock:
        assert "no data" in sink.states[-1][1]


def test_unplug_and_replug(rig: Rig) -> None:
    port, _sim, sink, clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 10, "first fix")
    unplug_and_replug(port, sink, clock)  # back-off cap 0.3 s
    n = len(sink.good())
    wait_until(lambda: len(sink.good()) > n + 1, 10, "fixes after replug")
    assert sentence("GPTXT,01,01,02,hi").endswith(b"\r\n")
