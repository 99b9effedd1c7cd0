"""A simulated RDM6300 125 kHz reader on a pseudo-terminal.

While a card is held the real reader repeats its 14-byte frame; we do the
same every ``repeat_s`` and pace writes at the 9600-baud line rate (a pty
ignores the baud rate). Noise steps write what a bad cable or a half-read
card produces: garbage bytes, bad checksums, frames split across writes.
"""

from __future__ import annotations

import random
import threading
import time

from drivers.codecs.rdm6300 import encode
from firmware_sim.scenario import Scenario, Step
from firmware_sim.simulator import Context, Settings, Simulator, Started, StepArgs, serial_where
from firmware_sim.vserial import VirtualSerial

BYTE_S = 10 / 9600  # 8N1: ten bits a byte


class Rdm6300Sim:
    def __init__(self, port: VirtualSerial, repeat_s: float = 0.1, seed: int = 1) -> None:
        self.port = port
        self.repeat_s = repeat_s
        self.rng = random.Random(seed)
        self.frames_sent = 0

    def _send(self, data: bytes) -> None:
        self.port.write(data)
        time.sleep(len(data) * BYTE_S)

    def present(self, tag: str, hold_s: float = 0.5, stop: threading.Event | None = None) -> None:
        frame = encode(tag)
        end = time.monotonic() + hold_s
        while True:
            self._send(frame)
            self.frames_sent += 1
            if time.monotonic() + self.repeat_s > end or (stop and stop.is_set()):
                break
            time.sleep(self.repeat_s)

    def garbage(self, n: int = 16) -> None:
        # Anything but STX, so the garbage cannot fake the start of a frame.
        self._send(bytes(self.rng.choice([b for b in range(256) if b != 0x02]) for _ in range(n)))

    def bad_checksum(self, tag: str) -> None:
        frame = bytearray(encode(tag))
        frame[11] = ord("0") if frame[11] != ord("0") else ord("1")
        self._send(bytes(frame))

    def split(self, tag: str, pause_s: float = 0.05) -> None:
        frame = encode(tag)
        cut = self.rng.randint(1, len(frame) - 1)
        self._send(frame[:cut])
        time.sleep(pause_s)
        self._send(frame[cut:])

    def flood(self, tags: list[str], count: int, rate: float,
              stop: threading.Event | None = None, lossless: bool = True) -> int:
        """A stress source: ``count`` single reads, tags round robin, ``rate`` frames/s.

        Lossless waits for the driver to make room (up to 5 s) instead of dropping
        bytes like a UART overrun. Returns the number of frames written whole.
        """
        frames = [encode(t) for t in tags]
        t0 = time.monotonic()
        sent = 0
        while sent < count and not (stop and stop.is_set()):
            due = min(count, int((time.monotonic() - t0) * rate) + 1)
            if due <= sent:
                time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
                continue
            data = b"".join(frames[i % len(frames)] for i in range(sent, due))
            if lossless:
                deadline = time.monotonic() + 5.0
                while data and time.monotonic() < deadline and self.port.plugged:
                    n = self._write_some(data)
                    data = data[n:]
                    if data:
                        time.sleep(0.002)
                if data:
                    break
            else:
                self.port.write(data)
            sent = due
        self.frames_sent += sent
        return sent

    def _write_some(self, data: bytes) -> int:
        """Like VirtualSerial.write, but what did not fit is not counted as dropped."""
        before = self.port.dropped_bytes
        n = self.port.write(data)
        self.port.dropped_bytes = before
        return n

    def do(self, step: Step, stop: threading.Event | None = None) -> None:
        a = step.args
        if step.action == "present":
            self.present(a["tag"], float(a.get("hold_s", 0.5)), stop)
        elif step.action == "garbage":
            self.garbage(int(a.get("bytes", 16)))
        elif step.action == "bad_checksum":
            self.bad_checksum(a["tag"])
        elif step.action == "split":
            self.split(a["tag"])
        elif step.action == "unplug":
            self.port.unplug()
            if "for_s" in a:
                time.sleep(float(a["for_s"]))
                self.port.plug()
        elif step.action == "replug":
            self.port.plug()

    def run(self, scenario: Scenario, stop: threading.Event | None = None) -> None:
        self.repeat_s = scenario.repeat_s
        t0 = time.monotonic()
        for step in scenario.steps:
            delay = t0 + step.at - time.monotonic()
            if delay > 0 and stop is not None and stop.wait(delay):
                return
            if delay > 0 and stop is None:
                time.sleep(delay)
            self.do(step, stop)


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    port = ctx.serial_port(device_id, s)
    sim = Rdm6300Sim(port, float(s["repeat_s"]))

    def act(action: str, a: StepArgs, stop: threading.Event) -> None:
        sim.do(Step(0.0, action, dict(a)), stop)

    return Started({"kind": SIMULATOR.kind, "role": "gate", "port": port.path, "baud": 9600},
                   serial_where(port), act)


# The actions are also the single-reader scenario format's (firmware_sim.scenario.parse).
SIMULATOR = Simulator(
    kind="rdm6300",
    settings={"link": None, "repeat_s": 0.1},
    actions={"present": ("tag",), "garbage": (), "bad_checksum": ("tag",), "split": ("tag",),
             "unplug": (), "replug": ()},
    start=_start,
)
