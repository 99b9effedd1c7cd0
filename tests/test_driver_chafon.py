"""The Chafon UHF driver: its polling protocol without I/O (commands against the
shared capture, time-outs on a fake clock), then through pyserial on a pty against
the simulated reader: reads per antenna, answers split over frames, line noise,
bad CRCs, antenna errors, the 18 layout; the hung reader and the replug on a
FakeClock the test moves."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.codecs import Reject
from drivers.codecs import chafon as cf
from drivers.uhf_chafon import (
    ANSWER_GAP_S,
    ChafonPoller,
    PollStep,
    UhfChafonDriver,
    UhfChafonOptions,
    encode_inventory,
)
from firmware_sim import cli, simulator
from firmware_sim import scenario as scen
from firmware_sim.uhf_chafon import UhfChafonSim
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from gateway.clock import Clock, FakeClock, SystemClock
from gateway.config import reader_config
from gateway.model import ReaderState
from harness import driver_running, wait_until
from uhfgate import (
    DRIVER_TIMES,
    Collect,
    answers_again,
    driver_rig,
    hang_until_reopened,
    plugged,
    reads_after_replug,
)

EPC_A = "E2000017221101441890ABCD"
EPC_B = "3034257BF7194E4000000001"
EPC_C = "E28011606000020800000003"


# -- the poller, sans I/O -------------------------------------------------------------------

def _opts(**kw: object) -> UhfChafonOptions:
    return UhfChafonOptions(port="/dev/null", **kw)  # type: ignore[arg-type]


def test_inventory_commands_match_the_captured_frames() -> None:
    # ../shared/data/captures/uhf: chafon-rfid's 288 inventory (Q 15, Ant 0x80, ScanTime 20,
    # any address) and the UHFReader18 inventory to address 0 (no data).
    assert encode_inventory(_opts(q=15, scan_time=20), 1) == bytes.fromhex(
        "0dff010f0001000000008014c03a")
    assert encode_inventory(_opts(model="18", address=0), 1) == bytes.fromhex("040001db4b")
    ant3 = cf.decode_command(encode_inventory(_opts(), 3))
    assert not isinstance(ant3, Reject) and ant3.data[-2:] == bytes([0x82, 3])


def _inv(status: int, antenna: int = 1, tags: tuple[str, ...] = ()) -> cf.ChafonFrame:
    f = cf.decode_frame(cf.encode_inventory([(t, 100) for t in tags], "288", antenna, status))
    assert not isinstance(f, Reject)
    return f


def test_poller_cycles_antennas_and_waits_for_the_last_frame() -> None:
    p = ChafonPoller(_opts(antennas=(1, 2)), "/dev/x", 0.0)
    first = p.opened(0.0)
    assert first.send == encode_inventory(p.o, 1) and first.health is None  # not online yet
    more = p.frame(_inv(0x03, 1, (EPC_A,)), 0.1)
    assert more.send == b"" and more.health == (ReaderState.ONLINE, "/dev/x")
    last = p.frame(_inv(0x01, 1, (EPC_B,)), 0.2)
    assert last.send == encode_inventory(p.o, 2)
    assert p.frame(_inv(0x02, 2), 0.3).send == encode_inventory(p.o, 1)  # scan time out: done
    # An answer to another command is no round's end.
    other = cf.decode_frame(cf.encode_reply(0x21, 0x00, bytes(8)))
    assert p.frame(other, 0.4).send == b""


def test_poller_antenna_error_degrades_that_antenna_until_it_reads() -> None:
    p = ChafonPoller(_opts(antennas=(1, 2)), "/dev/x", 0.0)
    p.opened(0.0)
    p.frame(_inv(0x01, 1), 0.1)
    err = p.frame(cf.decode_frame(cf.encode_reply(cf.CMD_INVENTORY, 0xF8)), 0.2)
    assert err.rejects == ["reader-error:antenna-error"]
    assert err.health == (ReaderState.DEGRADED, "antenna 2: antenna-error (0xF8)")
    assert err.send == encode_inventory(p.o, 1)
    assert p.frame(_inv(0x01, 1), 0.3).health == err.health  # antenna 1 fine, 2 still failing
    assert p.frame(_inv(0x01, 2), 0.4).health == (ReaderState.ONLINE, "/dev/x")


def test_poller_resends_on_time_out_and_reopens_after_silence() -> None:
    o = _opts(scan_time=5, reply_timeout_s=0.5, silence_s=3.0)
    p = ChafonPoller(o, "/dev/x", 0.0)
    p.opened(0.0)
    assert p.tick(0.99) == PollStep()  # within scan time + reply time-out: nothing
    late = p.tick(1.0)
    assert late.rejects == ["no-reply"] and late.send == encode_inventory(o, 1)
    assert late.health == (ReaderState.DEGRADED, "no reply for 1.0 s") and late.reopen is None
    assert p.tick(1.5).send == b""  # the resend has its own deadline
    gone = p.tick(3.0)
    assert gone.reopen == "reader not answering for 3 s" and gone.send == b""


def test_poller_asks_again_soon_after_a_garbled_answer() -> None:
    o = _opts(scan_time=5, reply_timeout_s=0.5, silence_s=3.0)
    p = ChafonPoller(o, "/dev/x", 0.0)
    p.opened(0.0)
    p.read(0.2, got_data=True)  # an answer arrives, but no frame decodes from it (bad CRC)
    assert p.tick(0.2) == PollStep()
    assert p.tick(0.2 + ANSWER_GAP_S / 2) == PollStep()
    again = p.tick(0.21 + ANSWER_GAP_S)
    # The decoder counts the broken frame; the reader did answer, so it is not degraded.
    assert again.send == encode_inventory(o, 1) and again.rejects == [] and again.health is None
    p.frame(_inv(0x03, 1, (EPC_A,)), 0.4)  # a good first frame; the rest never comes
    p.read(0.4, got_data=True)
    assert p.tick(0.41 + ANSWER_GAP_S).send == encode_inventory(o, 1)
    # A read whose frame ended the answer is not a garbled one: no early resend.
    done = p.frame(_inv(0x01, 1), 0.6)
    p.read(0.6, got_data=True)
    assert done.send and p.tick(0.6) == PollStep()
    assert p.tick(0.6 + 2 * ANSWER_GAP_S) == PollStep()


# -- the driver on a pty ---------------------------------------------------------------------

Rig = tuple[VirtualSerial, UhfChafonSim, Collect]


@contextlib.contextmanager
def _rig(tmp_path: Path, model: str, antennas: list[int], clock: Clock | None = None,
         **sim_kw: object) -> Iterator[Rig]:
    port = plugged(tmp_path / "ttyCF0")
    sim = UhfChafonSim(port, model=model, miss_rate=0.2, seed=7, **sim_kw).start()  # type: ignore[arg-type]
    cfg = reader_config({"id": "gate-cf", "kind": "uhf_chafon", "role": "gate",
                         "port": port.path, "model": model, "antennas": antennas,
                         **DRIVER_TIMES})
    with driver_rig(port, sim,
                    lambda sink: UhfChafonDriver(cfg, sink, clock or SystemClock())) as rig:
        yield rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with _rig(tmp_path, "288", [1, 2], per_frame=2) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake_rig(tmp_path: Path, clock: FakeClock) -> Iterator[Rig]:
    # Time-outs on a clock the test moves (the other tests keep real time: line noise can
    # eat an answer, and the real-time gap after it is what recovers).
    with _rig(tmp_path, "288", [1, 2], clock) as running:
        yield running


def test_reads_per_antenna_across_split_answers(rig: Rig) -> None:
    _port, sim, sink = rig
    for epc in (EPC_A, EPC_B, EPC_C):  # three tags, two per frame: 0x03 then 0x01
        sim.enter(epc, antenna=1)
    sim.enter(EPC_B, antenna=2)
    wait_until(lambda: sink.epcs(1) == {EPC_A, EPC_B, EPC_C} and EPC_B in sink.epcs(2), 10,
               "reads on both antennas")
    assert sink.epcs(2) == {EPC_B}
    with sink.lock:
        assert all(r.rssi is None and r.reader == "gate-cf" for r in sink.reads)
    # The driver alternates the antenna in its inventory commands.
    assert {c.data[-2] for c in sim.commands if c.cmd == cf.CMD_INVENTORY} == {0x80, 0x81}
    assert sink.last_state() == ReaderState.ONLINE


def test_garbage_and_bad_crcs_never_become_reads(rig: Rig) -> None:
    port, sim, sink = rig
    sim.enter(EPC_A, antenna=1)
    wait_until(lambda: EPC_A in sink.epcs(), 10, "first read")
    sim.corrupt_next = 5
    sim.garbage(40)
    good = cf.encode_inventory([(EPC_B, 90)], "288", 1, 0x03)
    port.write(good[:9] + good)  # a frame cut short by a good one
    wait_until(lambda: sink.rejects.count("checksum") >= 3, 10, "bad CRCs rejected")
    with sink.lock:
        tags = {r.tag for r in sink.reads}
        after_noise = len(sink.reads)
    assert tags <= {EPC_A, EPC_B}  # nothing invented from noise
    wait_until(lambda: len(sink.reads) > after_noise, 10, "reads go on after the noise")
    assert sink.last_state() == ReaderState.ONLINE


def test_antenna_error_degrades_then_recovers(rig: Rig) -> None:
    _port, sim, sink = rig
    sim.enter(EPC_A, antenna=1)
    sim.antenna_missing(2)
    wait_until(lambda: sink.last_state() == ReaderState.DEGRADED, 10, "degraded")
    with sink.lock:
        detail = [d for s, d in sink.states if s == ReaderState.DEGRADED][-1]
    assert detail == "antenna 2: antenna-error (0xF8)"
    assert "reader-error:antenna-error" in sink.rejects
    # Antenna 1 keeps reading while 2 is missing (a round may miss the tag: wait for one).
    wait_until(lambda: sink.epcs(1) == {EPC_A}, 10, "reads on antenna 1")
    assert sink.last_state() == ReaderState.DEGRADED
    sim.antenna_missing(2, False)
    wait_until(lambda: sink.last_state() == ReaderState.ONLINE, 10, "online again")


def test_hung_reader_reopens_port(fake_rig: Rig, clock: FakeClock) -> None:
    _port, _sim, sink = fake_rig
    # Resent after scan time + reply_timeout_s (0.6 s) unanswered, reopened after silence_s (1 s).
    before_offline = hang_until_reopened(fake_rig, clock, EPC_A)
    assert sink.rejects.count("no-reply") >= 2
    assert before_offline == (ReaderState.DEGRADED, "no reply for 1 s; reopening the port")
    answers_again(fake_rig, clock)


def test_unplug_and_replug(fake_rig: Rig, clock: FakeClock) -> None:
    reads_after_replug(fake_rig, clock, EPC_A)


def test_uhfreader18_reads_without_antenna(tmp_path: Path) -> None:
    with _rig(tmp_path, "18", [1]) as (_port, sim, sink):
        sim.enter(EPC_A)
        sim.enter(EPC_C)
        wait_until(lambda: sink.epcs() == {EPC_A, EPC_C}, 10, "reads")
        with sink.lock:
            assert all(r.antenna is None for r in sink.reads)
        assert all(c.data == b"" for c in sim.commands)  # the 18's inventory has no data


def test_config_options_are_checked() -> None:
    with pytest.raises(configmod.ConfigInvalid) as bad:
        reader_config({"id": "u", "kind": "uhf_chafon", "role": "gate", "port": "/dev/null",
                       "model": "286", "antennas": [0, 9], "scan_time": 2, "q": 16,
                       "antenna": [1]})
    keys = {e.key for e in bad.value.errors}
    assert keys == {"readers[0].model", "readers[0].antennas", "readers[0].scan_time",
                    "readers[0].q", "readers[0].antenna"}
    ok = reader_config({"id": "u", "kind": "uhf_chafon", "role": "gate", "port": "/dev/x"})
    assert ok.options == UhfChafonOptions(port="/dev/x")


def test_a_scenario_device_feeds_the_driver(tmp_path: Path) -> None:
    # kidsafe-sim run finds the simulator through the registry; its [[readers]] snippet
    # is a valid reader table, and a step's action reaches the driver as a read.
    raw = {"duration_s": 5, "device": [{"id": "gate-cf", "kind": "uhf_chafon", "antennas": 2,
                                        "miss_rate": 0.0}],
           "step": [{"at": 0.5, "device": "gate-cf", "action": "enter", "tag": EPC_B,
                     "antenna": 2}]}
    sc = scen.parse_multi(raw, "chafon.toml")
    with contextlib.ExitStack() as stack:
        (running,) = cli._start_devices(sc, simulator.Context(tmp_path, stack))
        cfg = reader_config({**running.reader, "antennas": [1, 2]})
        assert cfg.options.model == "288" and cfg.options.baud == 57600
        sink = Collect()
        with driver_running(UhfChafonDriver(cfg, sink, SystemClock())):
            running.started.act("enter", sc.steps[0].args, threading.Event())
            wait_until(lambda: sink.epcs(2) == {EPC_B}, 10, "the scenario's tag read")
    bad = {**raw, "device": [{"id": "gate-cf", "kind": "uhf_chafon", "model": "286"}]}
    with pytest.raises(scen.ScenarioError, match=r"device\[0\]\.model"):
        scen.parse_multi(bad, "chafon.toml")
