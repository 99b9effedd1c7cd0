"""What the UHF gate simulators (uhf_r2000, uhf_chafon) share: tags in the field of
antennas, the gate walk, the faults, the read loop on the pty, and their scenario steps.

Each kind's module keeps its own protocol (how commands are cut from the bytes and
answered, what a tag read looks like on the line) and declares its own SIMULATOR.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from firmware_sim.simulator import StepArgs, later, plug_action
from firmware_sim.vserial import VirtualSerial
from firmware_sim.worker import Worker

Command = TypeVar("Command")  # a kind's decoded host command

# Step actions (and the step keys they need) both UHF simulators play.
ACTIONS: dict[str, tuple[str, ...]] = {
    "enter": ("tag",), "leave": ("tag",), "walk": ("tag",), "garbage": (), "corrupt": (),
    "antenna_missing": ("antenna",), "mute": (), "unplug": (), "replug": ()}


@dataclass
class InField:
    rssi: float  # in the kind's unit (dBm for the R2000, the raw byte for the Chafon)
    until: float | None  # monotonic time it leaves the field, None = stays


class UhfSim(Worker, Generic[Command]):
    """A UHF reader on a pty: ``_run`` feeds the host's bytes to the kind's ``_commands``
    and hands each command to its ``_answer`` unless muted."""

    walk_rssi: float  # how strongly a tag walking through the gate is read

    def __init__(self, port: VirtualSerial, *, antennas: int, miss_rate: float,
                 round_s: float, address: int, seed: int) -> None:
        self.port = port
        self.n_antennas = antennas
        self.miss_rate = miss_rate
        self.round_s = round_s  # how long one inventory takes on air
        self.address = address
        self.rng = random.Random(seed)
        self.missing: set[int] = set()
        self.muted = False
        self.corrupt_next = 0  # frames to send with a wrong check (which ones: the kind says)
        self.field: dict[int, dict[str, InField]] = {a: {} for a in range(1, antennas + 1)}
        self.commands: list[Command] = []  # what the host sent (for tests)
        self.tags_sent = 0
        self._lock = threading.Lock()
        self._buf = bytearray()
        super().__init__()

    # -- the tags' world ---------------------------------------------------------------------

    def _put(self, epc: str, antenna: int, rssi: float, hold_s: float | None) -> None:
        """Put a tag in an antenna's field (for ``hold_s`` seconds, or until :meth:`leave`)."""
        until = time.monotonic() + hold_s if hold_s is not None else None
        with self._lock:
            self.field[antenna][epc.upper()] = InField(rssi, until)

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
        self._put(epc, first, self.walk_rssi, dwell_s)
        self._sleep(dwell_s - overlap_s, stop)
        self._put(epc, second, self.walk_rssi, dwell_s)
        self._sleep(dwell_s, stop)

    def antenna_missing(self, antenna: int, missing: bool = True) -> None:
        with self._lock:
            (self.missing.add if missing else self.missing.discard)(antenna)

    def mute(self, muted: bool = True) -> None:
        """Stop answering commands (a hung reader) while the port stays open."""
        self.muted = muted

    def garbage(self, n: int = 16) -> None:
        raise NotImplementedError

    def _in_field(self, antenna: int) -> list[tuple[str, InField]]:
        """The tags in an antenna's field now (those whose time is up leave it)."""
        now = time.monotonic()
        with self._lock:
            tags = self.field[antenna]
            for epc in [e for e, f in tags.items() if f.until is not None and f.until <= now]:
                del tags[epc]
            return list(tags.items())

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

    def _commands(self) -> list[Command]:
        """Whole commands cut from ``_buf`` (what is left stays for the next bytes)."""
        raise NotImplementedError

    def _answer(self, cmd: Command) -> None:
        raise NotImplementedError

    # -- in a scenario (kidsafe-sim run) -----------------------------------------------------

    def _enter_step(self, a: StepArgs) -> None:
        """The ``enter`` step, with the kind's RSSI key."""
        raise NotImplementedError

    def act(self, action: str, a: StepArgs, stop: threading.Event) -> None:
        """Play one of :data:`ACTIONS` (``for_s`` undoes antenna_missing, mute, unplug)."""
        if plug_action(self.port, action, a, stop):
            return
        if action == "enter":
            self._enter_step(a)
        elif action == "leave":
            self.leave(a["tag"], a.get("antenna"))
        elif action == "walk":
            self.walk_through(a["tag"], str(a.get("direction", "in")),
                              float(a.get("dwell_s", 1.0)), stop=stop)
        elif action == "garbage":
            self.garbage(int(a.get("bytes", 16)))
        elif action == "corrupt":
            self.corrupt_next = int(a.get("count", 1))
        elif action == "antenna_missing":
            self.antenna_missing(int(a["antenna"]))
            later(a, stop, lambda: self.antenna_missing(int(a["antenna"]), False))
        elif action == "mute":
            self.mute()
            later(a, stop, lambda: self.mute(False))
