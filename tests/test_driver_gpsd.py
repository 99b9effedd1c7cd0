"""The gpsd client driver against a real gpsd reading the simulated receiver's pty:
fixes, the no-fix watchdog when the receiver goes quiet, gpsd killed and back.
Malformed JSON is checked against a scripted TCP peer (gpsd never sends it).

The driver's watchdog and back-off run on a FakeClock the tests move; the receiver
sends 4 epochs a second (gpsd locks on to a 1 Hz receiver only after ~6 s)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_driver_gps import Collect

from drivers.gpsd import GpsdDriver
from firmware_sim.broker import free_port
from firmware_sim.gps_nmea import GpsSim, Track, Waypoint
from firmware_sim.vserial import VirtualSerial
from gateway.clock import Clock, FakeClock, SystemClock
from gateway.config import reader_config
from gateway.model import ReaderState
from gpsdproc import Gpsd, require_gpsd
from harness import advance_until, wait_until

HOME = (37.5665, 126.9780)


def start_driver(port: int, sink: Collect, no_fix_s: float = 3.0, clock: Clock | None = None
                 ) -> tuple[threading.Event, threading.Thread]:
    cfg = reader_config({"id": "gps", "kind": "gpsd", "role": "gps",
                         "host": "127.0.0.1", "gpsd_port": port, "no_fix_s": no_fix_s,
                         "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5})
    drv = GpsdDriver(cfg, sink, clock or SystemClock())
    stop = threading.Event()
    t = threading.Thread(target=drv.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


Rig = tuple[GpsSim, Gpsd, Collect, FakeClock]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    require_gpsd()
    port = VirtualSerial(str(tmp_path / "ttyGPS0"))
    port.plug()
    sim = GpsSim(port, Track([Waypoint(*HOME)]), rate_hz=4, seed=5).start()
    gpsd = Gpsd(port.device, tmp_path / "gpsd.log")
    sink = Collect()
    clock = FakeClock(time.time())  # fix times are checked against it
    stop: threading.Event | None = None
    t: threading.Thread | None = None
    try:
        gpsd.start()
        stop, t = start_driver(gpsd.port, sink, clock=clock)
        yield sim, gpsd, sink, clock
    finally:
        if stop is not None and t is not None:
            stop.set()
            t.join(5)
            assert not t.is_alive()
        gpsd.stop()
        sim.stop()
        port.close()


@pytest.mark.slow
def test_fixes_through_gpsd_and_reconnect_after_gpsd_dies(rig: Rig) -> None:
    _sim, gpsd, sink, clock = rig
    wait_until(lambda: len(sink.good()) >= 2, 20, "fixes through gpsd")
    f = sink.good()[-1]
    assert f.lat is not None and f.lon is not None
    assert abs(f.lat - HOME[0]) < 0.001 and abs(f.lon - HOME[1]) < 0.001
    assert f.fix_type in (2, 3) and f.fix_quality >= 1
    assert abs(f.time - time.time()) < 5
    assert sink.last_state() == ReaderState.ONLINE
    gpsd.stop(9)  # SIGKILL: gpsd crashed
    wait_until(lambda: sink.last_state() == ReaderState.OFFLINE, 10, "offline without gpsd")
    for _ in range(3):  # the driver retries with back-off meanwhile (cap 0.5 s), and fails
        clock.advance(0.5)
        time.sleep(0.05)
    gpsd.start()
    n = len(sink.good())
    # Past the back-off (cap 0.5 s): the next attempt finds gpsd.
    advance_until(clock, lambda: sink.last_state() == ReaderState.ONLINE, 0.5, 10,
                  "connected again")
    wait_until(lambda: len(sink.good()) > n, 20, "fixes after gpsd restarted")
    assert sink.last_state() == ReaderState.ONLINE


def test_no_fix_watchdog_when_receiver_goes_quiet(rig: Rig) -> None:
    sim, _gpsd, sink, clock = rig
    wait_until(lambda: len(sink.good()) >= 1, 20, "first fix")
    sim.stop()  # the receiver stops talking; gpsd just goes quiet
    # no_fix_s (3 s) passes without a fix; the driver looks every 0.5 s (socket timeout).
    advance_until(clock, lambda: sink.last_state() == ReaderState.DEGRADED, 3.0, 10,
                  "degraded", settle=0.6)
    with sink.lock:
        assert "no fix" in sink.states[-1][1]
    sim.start()
    wait_until(lambda: sink.last_state() == ReaderState.ONLINE, 20, "online again")


def test_bad_json_and_bad_fields_are_rejected() -> None:
    """A scripted peer speaking gpsd's protocol, with lines gpsd itself never sends."""
    srv = socket.create_server(("127.0.0.1", free_port()))
    port = srv.getsockname()[1]
    sink = Collect()
    got_watch = threading.Event()
    done = threading.Event()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if b"?WATCH" in conn.recv(1024):
                got_watch.set()
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            conn.sendall(
                b'{"class":"VERSION","release":"3.22"}\n'
                b'{"class":"SKY","hdop":0.8,"satellites":[{"PRN":1,"used":true},'
                b'{"PRN":2,"used":false},{"PRN":3,"used":true}]}\n'
                b"not json at all\n"
                b'["a list"]\n'
                b'{"class":"TPV","mode":3,"lat":"37.5","lon":126.9}\n'
                b'{"class":"TPV","mode":3,"lat":95.0,"lon":126.9}\n'
                b'{"class":"TPV","mode":3,"lat":37.5,"lon":126.9,"time":"yesterday"}\n'
                b'{"class":"TPV","mode":7}\n'
                + f'{{"class":"TPV","mode":3,"status":2,"lat":37.5,"lon":126.9,"speed":1.5,'
                  f'"time":"{now}"}}\n'.encode()
                + b'{"class":"TPV","mode":1,"time":"' + now.encode() + b'"}\n')
            done.wait(5)  # keep the connection open until the test has looked

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    stop, t = start_driver(port, sink, no_fix_s=30)
    try:
        wait_until(lambda: len(sink.fixes) >= 2, 10, "the two good TPVs")
        assert got_watch.is_set()
        with sink.lock:
            fixes = list(sink.fixes)
            rejects = list(sink.rejects)
        assert rejects.count("bad-json") == 2 and rejects.count("bad-field") == 4
        good, nofix = fixes
        assert (good.lat, good.lon, good.fix_quality, good.fix_type) == (37.5, 126.9, 2, 3)
        assert good.satellites == 2 and good.hdop == 0.8 and good.speed_mps == 1.5
        assert good.time_trusted
        assert nofix.lat is None and nofix.fix_quality == 0 and nofix.fix_type == 1
    finally:
        done.set()
        stop.set()
        t.join(5)
        srv.close()
        th.join(5)
