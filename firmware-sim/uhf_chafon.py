"""A simulated Chafon UHF reader (UHFReader288 or UHFReader18) on a pseudo-terminal.

It answers what the host sends, as the real reader does (see
drivers.codecs.chafon): Inventory (``0x01``) -> the tags in the field of the
commanded antenna (the 288's ``Ant`` byte, 0x80 + port - 1; the 18 has one),
at most ``per_frame`` tags per frame, status ``0x03`` on every frame but the
last, ``0x01`` on the last (with no tags when the field is empty), or
``0xF8`` antenna error when that antenna is "unplugged". A command it does not
know gets reCmd ``0x00`` (as the manual says) with status ``0xFE``. Tags are
read with random misses, as real gates miss reads. Faults: an antenna missing,
a reader that stops answering (``mute``), garbage on the line, corrupted
frames, the adapter unplugged.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from drivers.codecs import Reject
from drivers.codecs import chafon as cf
from firmware_sim.simulator import (
    Context,
    Settings,
    Simulator,
    Started,
    StepArgs,
    later,
    plug_action,
    serial_where,
)
from firmware_sim.vserial import VirtualSerial
from firmware_sim.worker import Worker

BAUD = 57600
BYTE_S = 10 / BAUD
ILLEGAL_COMMAND = 0xFE


@dataclass
class _InField:
    rssi_raw: int
    until: float | None  # monotonic time it leaves the field, None = stays


class UhfChafonSim(Worker):
    thread_name = "chafon-sim"

    def __init__(self, port: VirtualSerial, *, model: str = "288", antennas: int = 4,
                 miss_rate: float = 0.1, round_s: float = 0.03, per_frame: int = 3,
                 address: int = 0x00, seed: int = 1) -> None:
        if model not in cf.MODELS:
            raise ValueError(f"model must be one of {cf.MODELS}")
        self.port = port
        self.model = model
        self.n_antennas = antennas if model == "288" else 1
        self.miss_rate = miss_rate
        self.round_s = round_s  # how long one inventory takes on air
        self.per_frame = per_frame  # tags per reply frame (a long answer spans frames)
        self.address = address
        self.rng = random.Random(seed)
        self.missing: set[int] = set()
        self.muted = False
        self.corrupt_next = 0  # reply frames to send with a wrong CRC
        self.field: dict[int, dict[str, _InField]] = {
            a: {} for a in range(1, self.n_antennas + 1)}
        self.commands: list[cf.ChafonCommand] = []  # what the host sent (for tests)
        self.tags_sent = 0
        self._lock = threading.Lock()
        self._buf = bytearray()
        super().__init__()

    # -- the tags' world ---------------------------------------------------------------------

    def enter(self, epc: str, antenna: int = 1, rssi_raw: int = 100,
              hold_s: float | None = None) -> None:
        """Put a tag in an antenna's field (for ``hold_s`` seconds, or until :meth:`leave`)."""
        until = time.monotonic() + hold_s if hold_s is not None else None
        with self._lock:
            self.field[antenna][epc.upper()] = _InField(rssi_raw, until)

    def leave(self, epc: str, antenna: int | None = None) -> None:
        with self._lock:
            for a, tags in self.field.items():
                if antenna is None or a == antenna:
                    tags.pop(epc.upper(), None)

    def walk_through(self, epc: str, direction: str = "in", dwell_s: float = 1.0,
                     overlap_s: float = 0.3, outer: int = 1, inner: int = 2,
                     stop: threading.Event | None = None) -> None:
        """A child walking through a two-antenna gate: one side, both, then the other."""
        first, second = (outer, inner) if direction == "in" else (inner, outer)
        self.enter(epc, first, hold_s=dwell_s)
        self._sleep(dwell_s - overlap_s, stop)
        self.enter(epc, second, hold_s=dwell_s)
        self._sleep(dwell_s, stop)

    def antenna_missing(self, antenna: int, missing: bool = True) -> None:
        with self._lock:
            (self.missing.add if missing else self.missing.discard)(antenna)

    def mute(self, muted: bool = True) -> None:
        """Stop answering commands (a hung reader) while the port stays open."""
        self.muted = muted

    def garbage(self, n: int = 16) -> None:
        self.port.write(self.rng.randbytes(n))

    # -- the reader's side of the protocol ---------------------------------------------------

    def _sleep(self, s: float, stop: threading.Event | None) -> None:
        if s > 0:
            (stop or self._stop).wait(s)

    def _run(self) -> None:
        while not self._stop.is_set():
            data = self.port.read()
            if not data:
                self._stop.wait(0.005)
                continue
            self._buf += data
            for cmd in self._commands():
                self.commands.append(cmd)
                if not self.muted:
                    self._answer(cmd)

    def _commands(self) -> list[cf.ChafonCommand]:
        """Whole commands from the bytes so far; no start byte, so hunt by Len and CRC."""
        out = []
        buf = self._buf
        while buf:
            size = buf[0] + 1
            if buf[0] < cf.MIN_COMMAND_LEN:
                del buf[:1]
                continue
            if len(buf) < size:
                break
            parsed = cf.decode_command(bytes(buf[:size]))
            if isinstance(parsed, Reject):
                del buf[:1]  # not a command here: try one byte on
                continue
            del buf[:size]
            out.append(parsed)
        return out

    def _send(self, frame: bytes) -> None:
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            frame = frame[:-1] + bytes([frame[-1] ^ 0x5A])
        self.port.write(frame)
        time.sleep(len(frame) * BYTE_S)  # a pty ignores the baud rate: pace like the UART

    def _answer(self, cmd: cf.ChafonCommand) -> None:
        if cmd.cmd != cf.CMD_INVENTORY:
            self._send(cf.encode_reply(0x00, ILLEGAL_COMMAND, b"", self.address))
            return
        antenna = 1
        if self.model == "288" and len(cmd.data) >= 3:  # Target, Ant, ScanTime end the data
            antenna = cmd.data[-2] - 0x80 + 1
        if not 1 <= antenna <= self.n_antennas or antenna in self.missing:
            time.sleep(self.round_s / 3)
            self._send(cf.encode_reply(cmd.cmd, 0xF8, b"", self.address))
            return
        self._inventory(antenna)

    def _inventory(self, antenna: int) -> None:
        now = time.monotonic()
        with self._lock:
            tags = self.field[antenna]
            for epc in [e for e, f in tags.items() if f.until is not None and f.until <= now]:
                del tags[epc]
            present = [(epc, f.rssi_raw) for epc, f in tags.items()
                       if self.rng.random() >= self.miss_rate]
        time.sleep(self.round_s)
        self.tags_sent += len(present)
        chunks = [present[i : i + self.per_frame]
                  for i in range(0, len(present), self.per_frame)] or [[]]
        for i, chunk in enumerate(chunks):
            status = 0x01 if i == len(chunks) - 1 else 0x03
            self._send(cf.encode_inventory(chunk, self.model, antenna, status, self.address))


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def _act(sim: UhfChafonSim, action: str, a: StepArgs, stop: threading.Event) -> None:
    if plug_action(sim.port, action, a, stop):
        return
    if action == "enter":
        sim.enter(a["tag"], int(a.get("antenna", 1)), int(a.get("rssi_raw", 100)),
                  float(a["hold_s"]) if "hold_s" in a else None)
    elif action == "leave":
        sim.leave(a["tag"], a.get("antenna"))
    elif action == "walk":
        sim.walk_through(a["tag"], str(a.get("direction", "in")), float(a.get("dwell_s", 1.0)),
                         stop=stop)
    elif action == "garbage":
        sim.garbage(int(a.get("bytes", 16)))
    elif action == "corrupt":
        sim.corrupt_next = int(a.get("count", 1))
    elif action == "antenna_missing":
        sim.antenna_missing(int(a["antenna"]))
        later(a, stop, lambda: sim.antenna_missing(int(a["antenna"]), False))
    elif action == "mute":
        sim.mute()
        later(a, stop, lambda: sim.mute(False))


def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    port = ctx.serial_port(device_id, s)
    model = str(s["model"])
    sim = UhfChafonSim(port, model=model, antennas=int(s["antennas"]),
                       miss_rate=float(s["miss_rate"]), round_s=float(s["round_s"]),
                       seed=int(s["seed"])).start()
    ctx.stack.callback(sim.stop)
    reader = {"kind": SIMULATOR.kind, "role": "gate", "port": port.path, "baud": BAUD,
              "model": model}
    return Started(reader, serial_where(port), lambda action, a, stop: _act(sim, action, a, stop))


def _check(s: Settings) -> list[tuple[str, str]]:
    if str(s["model"]) not in cf.MODELS:
        return [("model", f"expected one of {', '.join(cf.MODELS)}")]
    return []


SIMULATOR = Simulator(
    kind="uhf_chafon",
    settings={"link": None, "model": "288", "antennas": 4, "miss_rate": 0.1, "round_s": 0.03,
              "seed": 1},
    actions={"enter": ("tag",), "leave": ("tag",), "walk": ("tag",), "garbage": (),
             "corrupt": (), "antenna_missing": ("antenna",), "mute": (), "unplug": (),
             "replug": ()},
    start=_start,
    check=_check,
)
