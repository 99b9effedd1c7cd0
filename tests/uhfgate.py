"""What the UHF gate tests of both kinds (uhf_r2000, uhf_chafon) share: the driver
against its simulator on a pty, and gatewayd end to end behind a two-antenna gate.

Each kind keeps its test files (test_driver_uhf/chafon, test_e2e_uhf/chafon) and their
cases; what they do alike, with the same checks, is played here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from firmware_sim.broker import LocalBroker
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from gateway.clock import FakeClock
from gateway.model import ReaderState, TagRead
from harness import (
    CollectSink,
    GatewayProcess,
    Subscriber,
    advance_until,
    driver_running,
    unplug_and_replug,
    wait_until,
    write_config,
)


class GateSim(Protocol):
    """What the shared steps use of a UHF simulator (firmware_sim._uhf.UhfSim)."""

    corrupt_next: int

    def enter(self, epc: str, antenna: int = 1, *, hold_s: float | None = None) -> None: ...
    def walk_through(self, epc: str, direction: str = "in", dwell_s: float = 1.0) -> None: ...
    def antenna_missing(self, antenna: int, missing: bool = True) -> None: ...
    def mute(self, muted: bool = True) -> None: ...
    def garbage(self, n: int = 16) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=GateSim)


def plugged(path: Path) -> VirtualSerial:
    port = VirtualSerial(str(path))
    port.plug()
    return port


# -- the driver on a pty ---------------------------------------------------------------------

# Reader options of the driver tests: short time-outs and back-off (cap 0.3 s).
DRIVER_TIMES = {"reply_timeout_s": 0.3, "silence_s": 1.0,
                "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3}


class Collect(CollectSink[TagRead]):
    def __init__(self) -> None:
        super().__init__(TagRead)
        self.reads = self.items

    def epcs(self, antenna: int | None = None) -> set[str]:
        with self.lock:
            return {r.tag for r in self.reads if antenna is None or r.antenna == antenna}


@contextlib.contextmanager
def driver_rig(port: VirtualSerial, sim: S,
               make_driver: Callable[[Collect], Any]) -> Iterator[tuple[VirtualSerial, S, Collect]]:
    """The driver ``make_driver`` builds around a fresh sink, running against ``sim`` (started)
    on ``port`` until it is online; the simulator stopped and the port closed after."""
    sink = Collect()
    try:
        with driver_running(make_driver(sink)):
            wait_until(lambda: sink.state_count(ReaderState.ONLINE) >= 1, 10, "driver online")
            yield port, sim, sink
    finally:
        sim.stop()
        port.close()


DriverRig = tuple[VirtualSerial, GateSim, Collect]


def first_read(rig: DriverRig, epc: str) -> None:
    _port, sim, sink = rig
    sim.enter(epc, antenna=1)
    wait_until(lambda: epc in sink.epcs(), 10, "first read")


def hang_until_reopened(rig: DriverRig, clock: FakeClock, epc: str) -> tuple[ReaderState, str]:
    """A first read, then the reader stops answering: the clock moves until the driver gives
    the port up (offline). Returns the state it reported just before."""
    _port, sim, sink = rig
    first_read(rig, epc)
    sim.mute()
    advance_until(clock, lambda: ReaderState.OFFLINE in [s for s, _ in sink.states], 0.3, 10,
                  "offline after silence_s without replies")
    with sink.lock:
        i = [s for s, _ in sink.states].index(ReaderState.OFFLINE)
        return sink.states[i - 1]


def answers_again(rig: DriverRig, clock: FakeClock) -> None:
    """The hung reader answers again: online and reading on the reopened port."""
    _port, sim, sink = rig
    with sink.lock:
        before = len(sink.reads)
    sim.mute(False)
    # Past the reopen back-off (cap 0.3 s); the reader answers the new connection's command.
    advance_until(clock, lambda: sink.last_state() == ReaderState.ONLINE, 0.3, 10,
                  "answers again")
    wait_until(lambda: len(sink.reads) > before, 10, "reads again")


def reads_after_replug(rig: DriverRig, clock: FakeClock, epc: str) -> None:
    """A first read, the adapter unplugged and plugged back: online and reading again."""
    port, _sim, sink = rig
    first_read(rig, epc)
    unplug_and_replug(port, sink, clock)
    with sink.lock:
        before = len(sink.reads)
    wait_until(lambda: len(sink.reads) > before, 10, "reads after replug")
    assert sink.last_state() == ReaderState.ONLINE


# -- gatewayd end to end ---------------------------------------------------------------------

@contextlib.contextmanager
def gate_process(tmp_path: Path, broker: LocalBroker, port: VirtualSerial, sim: S,
                 reader: dict[str, Any], tags: list[dict[str, Any]]
                 ) -> Iterator[tuple[VirtualSerial, S, GatewayProcess, Subscriber]]:
    """gatewayd with ``reader`` (id, kind, ...) as a gate on ``port``, antenna 1 outer and
    2 inner, and a backend subscriber; up once the reader is online and MQTT connected."""
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        readers=[{**reader, "role": "gate", "port": port.path, "antennas": [1, 2],
                  "antenna_roles": {"1": "outer", "2": "inner"},
                  "reply_timeout_s": 0.5, "silence_s": 2.0,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=tags, gate_window_s=1.0, extra="[engine]\ngate_pair_s = 2.0\n",
    )
    configmod.load(cfg)
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log(f"reader {reader['id']}: online")
        gw.wait_log("connected (MQTT")
        yield port, sim, gw, sub
    finally:
        gw.stop()
        sub.stop()
        sim.stop()
        port.close()


GateRig = tuple[VirtualSerial, GateSim, GatewayProcess, Subscriber]


def check_in_and_out(rig: GateRig, reader: str, epcs: tuple[str, str], stranger: str,
                     children: tuple[str, str]) -> None:
    """A stranger's tag (not enrolled), the first child walking in, line noise and bad
    checks, the second walking out: an arrival and a departure, nothing else; health counts
    the reads and the bad checks; the stranger's tag is in no log line."""
    _port, sim, gw, sub = rig
    sim.enter(stranger, antenna=1, hold_s=1.0)  # not enrolled: counted, never an event
    sim.walk_through(epcs[0], "in", dwell_s=1.0)
    sim.garbage(50)
    sim.corrupt_next = 3
    sim.walk_through(epcs[1], "out", dwell_s=1.0)
    wait_until(lambda: len(sub.events("gate")) >= 2, 20, "2 gate events")
    time.sleep(1.5)  # nothing else may trickle in
    events = sub.events("gate")
    assert [(e["child"], e["data"]["direction"]) for e in events] == [
        (children[0], "arrival"), (children[1], "departure")]
    assert all(e["reader"] == reader and e["data"]["reads"] >= 2 for e in events)
    wait_until(lambda: any(h["counters"].get("unenrolled_reads", 0) > 0
                           and h["counters"].get("readings", 0) > 10
                           for h in sub.on("/health")), 10, "health counts the reads")
    h = sub.on("/health")[-1]
    assert h["readers"][reader]["state"] == "online"
    assert h["readers"][reader]["rejects"].get("checksum", 0) >= 1
    log = gw.log_text()
    assert stranger not in log and "Traceback" not in log


def check_antenna_missing_and_unplug(rig: GateRig, reader: str, epc: str) -> None:
    """Antenna 2 missing: degraded (log and health); the adapter unplugged: offline, then
    reconnected, and a child walking in is an arrival."""
    port, sim, gw, sub = rig
    sim.antenna_missing(2)
    gw.wait_log(f"reader {reader}: degraded")
    wait_until(lambda: any(h["readers"][reader]["state"] == "degraded"
                           for h in sub.on("/health")), 10, "health shows degraded")
    sim.antenna_missing(2, False)
    port.unplug()
    gw.wait_log(f"reader {reader}: offline")
    time.sleep(0.5)
    port.plug()
    gw.wait_log("reconnected")
    sim.walk_through(epc, "in", dwell_s=1.0)
    wait_until(lambda: len(sub.events("gate")) >= 1, 20, "gate event after replug")
    assert sub.events("gate")[0]["data"]["direction"] == "arrival"
    assert "Traceback" not in gw.log_text()
