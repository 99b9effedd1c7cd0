"""systemd's notify protocol on the real daemon: READY, periodic WATCHDOG=1 that stops
when a worker hangs, STATUS=. systemd is played by a unix datagram socket the test
binds and names in NOTIFY_SOCKET / WATCHDOG_USEC, as systemd does for Type=notify.

The hang is a real one, not a hook in production code: a UHF reader's serial port
whose output is flow-stopped (``tcflow(TCOOFF)``, what a held CTS line or a stray
XOFF does to a real port). pyserial's write has no timeout, so the reader's thread
stays inside ``write()`` for as long as the port is stopped, and shows no sign of life.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.vserial import VirtualSerial
from gateway import sdnotify
from harness import GatewayProcess, wait_until, write_config

WATCHDOG_S = 3.0


class FakeSystemd:
    """Collects what the daemon sends to NOTIFY_SOCKET, with the time it arrived."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._collect, daemon=True)
        self.thread.start()

    def _collect(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self.lock:
                self.messages.extend((now, line) for line in data.decode().splitlines())

    def lines(self, prefix: str, since: float = 0.0) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if m.startswith(prefix) and t >= since]

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


def test_notify_abstract_and_path_sockets(tmp_path: Path) -> None:
    name = f"kidsafe-test-{os.getpid()}"
    abstract = FakeSystemd("\0" + name)
    path = FakeSystemd(str(tmp_path / "notify.sock"))
    try:
        assert sdnotify.notify("READY=1", "STATUS=up", env={"NOTIFY_SOCKET": "@" + name})
        assert sdnotify.notify("WATCHDOG=1", env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
        assert not sdnotify.notify("READY=1", env={})  # not under systemd: nothing sent
        wait_until(lambda: bool(abstract.lines("STATUS=up") and path.lines("WATCHDOG=1")), 5,
                   "both datagrams")
        assert [m for _, m in abstract.lines("")] == ["READY=1", "STATUS=up"]
    finally:
        abstract.close()
        path.close()
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None


@pytest.fixture
def uhf_port(tmp_path: Path) -> Iterator[VirtualSerial]:
    port = VirtualSerial(str(tmp_path / "ttyUHF0"))
    port.plug()
    try:
        yield port
    finally:
        port.close()


def test_watchdog_stops_when_a_reader_hangs(tmp_path: Path, broker: LocalBroker,
                                            uhf_port: VirtualSerial) -> None:
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        # No reader answers on the pty: the driver resends its command every 0.2 s,
        # so it writes to the port all the time.
        readers=[{"id": "uhf1", "kind": "uhf_r2000", "role": "gate", "port": uhf_port.path,
                  "reply_timeout_s": 0.2, "silence_s": 60.0}],
        tags=[{"id": "E2000017221101441890ABCD", "child": "c-1"}])
    systemd = FakeSystemd(str(tmp_path / "notify.sock"))
    gw = GatewayProcess(cfg, tmp_path / "gateway.log", env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))})
    gw.start()
    stopped_fd: int | None = None
    try:
        wait_until(lambda: bool(systemd.lines("READY=1")), 20, "READY=1")
        gw.wait_log("connected (MQTT")
        # Healthy: WATCHDOG=1 about every WATCHDOG_S / 2.
        start = time.monotonic()
        wait_until(lambda: len(systemd.lines("WATCHDOG=1", start)) >= 3, 4 * WATCHDOG_S,
                   "three watchdog pings")
        pings = [t for t, _ in systemd.lines("WATCHDOG=1", start)]
        assert max(b - a for a, b in itertools.pairwise(pings)) < WATCHDOG_S
        assert any("readers online" in m for _, m in systemd.lines("STATUS="))

        # Hang the reader: stop the port's output, its next write never returns.
        stopped_fd = os.open(uhf_port.device, os.O_RDWR | os.O_NOCTTY)
        termios.tcflow(stopped_fd, termios.TCOOFF)
        hung = time.monotonic()
        gw.wait_log("worker reader-uhf1: no sign of life", timeout=3 * WATCHDOG_S)
        silent_from = time.monotonic()
        time.sleep(2 * WATCHDOG_S)  # longer than systemd would wait before killing us
        late = systemd.lines("WATCHDOG=1", silent_from)
        assert late == [], f"watchdog pinged with a hung reader: {late}"
        last_ping = max(t for t, _ in systemd.lines("WATCHDOG=1"))
        # The last ping came at most one watchdog interval (+ a turn) after the hang.
        assert last_ping - hung < WATCHDOG_S + 1.5
        assert any("hung: reader-uhf1" in m for _, m in systemd.lines("STATUS=", hung))
        assert "systemd's watchdog will restart the unit" in gw.log_text()
        # `gatewayd status` says it too (exit 3: running with a hung worker).
        r = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "workers   HUNG: reader-uhf1 (no sign of life for" in r.stdout

        # Released (under systemd the unit would have been restarted by now): pings resume.
        termios.tcflow(stopped_fd, termios.TCOON)
        again = time.monotonic()
        wait_until(lambda: bool(systemd.lines("WATCHDOG=1", again)), 4 * WATCHDOG_S,
                   "pings after the reader is going again")
        gw.wait_log("worker reader-uhf1: going again")

        # Hung again, and this time systemd's watchdog fires: it kills with SIGABRT, and
        # the log shows where each thread was, the reader's inside the serial write.
        termios.tcflow(stopped_fd, termios.TCOOFF)
        wait_until(lambda: gw.log_text().count("worker reader-uhf1: no sign of life") == 2,
                   3 * WATCHDOG_S, "the second hang noticed")
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGABRT)
        gw.proc.wait(10)
        log = gw.log_text()
        assert "Fatal Python error: Aborted" in log
        stack = log[log.index("Fatal Python error: Aborted"):]
        assert "serialposix.py" in stack and "in write" in stack, stack
    finally:
        if stopped_fd is not None:
            termios.tcflow(stopped_fd, termios.TCOON)
            os.close(stopped_fd)
        gw.stop()
        systemd.close()
    assert "Traceback" not in gw.log_text()


def test_heartbeats_count_reads_and_waits_as_signs_of_life() -> None:
    from gateway.clock import FakeClock

    beats = sdnotify.Heartbeats()
    clock = beats.clock("reader-a", FakeClock())
    beats.clock("pipeline", FakeClock())
    assert beats.late(0.05) == {}
    time.sleep(0.1)
    assert set(beats.late(0.05)) == {"reader-a", "pipeline"}
    clock.monotonic()  # a loop turn
    assert set(beats.late(0.05)) == {"pipeline"}

    # A wait declares a healthy idle of its length; while it lasts, nothing is late,
    # and a read from another coroutine of the worker does not shorten it.
    stop = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        clock.wait(stop, 30.0)  # a FakeClock nobody moves: waits until stop
        done.set()

    threading.Thread(target=waiter, daemon=True).start()
    time.sleep(0.1)
    clock.now()
    time.sleep(0.1)
    assert "reader-a" not in beats.late(0.05)
    stop.set()
    assert done.wait(2)
    time.sleep(0.1)
    assert "reader-a" in beats.late(0.05)  # woke up: it must turn again
