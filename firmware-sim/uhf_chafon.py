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

import time

from drivers.codecs import Reject
from drivers.codecs import chafon as cf
from firmware_sim._uhf import ACTIONS, UhfSim
from firmware_sim.simulator import Context, Settings, Simulator, Started, StepArgs, serial_where
from firmware_sim.vserial import VirtualSerial

BAUD = 57600
BYTE_S = 10 / BAUD
ILLEGAL_COMMAND = 0xFE


class UhfChafonSim(UhfSim[cf.ChafonCommand]):
    thread_name = "chafon-sim"
    walk_rssi = 100  # the raw RSSI byte

    def __init__(self, port: VirtualSerial, *, model: str = "288", antennas: int = 4,
                 miss_rate: float = 0.1, round_s: float = 0.03, per_frame: int = 3,
                 address: int = 0x00, seed: int = 1) -> None:
        if model not in cf.MODELS:
            raise ValueError(f"model must be one of {cf.MODELS}")
        # corrupt_next counts reply frames (sent with a wrong CRC).
        super().__init__(port, antennas=antennas if model == "288" else 1,
                         miss_rate=miss_rate, round_s=round_s, address=address, seed=seed)
        self.model = model
        self.per_frame = per_frame  # tags per reply frame (a long answer spans frames)

    def enter(self, epc: str, antenna: int = 1, rssi_raw: int = 100,
              hold_s: float | None = None) -> None:
        """Put a tag in an antenna's field (for ``hold_s`` seconds, or until :meth:`leave`)."""
        self._put(epc, antenna, rssi_raw, hold_s)

    def garbage(self, n: int = 16) -> None:
        self.port.write(self.rng.randbytes(n))

    def _enter_step(self, a: StepArgs) -> None:
        self.enter(a["tag"], int(a.get("antenna", 1)), int(a.get("rssi_raw", 100)),
                   float(a["hold_s"]) if "hold_s" in a else None)

    # -- the reader's side of the protocol ---------------------------------------------------

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
        present = [(epc, int(f.rssi)) for epc, f in self._in_field(antenna)
                   if self.rng.random() >= self.miss_rate]
        time.sleep(self.round_s)
        self.tags_sent += len(present)
        chunks = [present[i : i + self.per_frame]
                  for i in range(0, len(present), self.per_frame)] or [[]]
        for i, chunk in enumerate(chunks):
            status = 0x01 if i == len(chunks) - 1 else 0x03
            self._send(cf.encode_inventory(chunk, self.model, antenna, status, self.address))


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    port = ctx.serial_port(device_id, s)
    model = str(s["model"])
    sim = UhfChafonSim(port, model=model, antennas=int(s["antennas"]),
                       miss_rate=float(s["miss_rate"]), round_s=float(s["round_s"]),
                       seed=int(s["seed"])).start()
    ctx.stack.callback(sim.stop)
    reader = {"kind": SIMULATOR.kind, "role": "gate", "port": port.path, "baud": BAUD,
              "model": model}
    return Started(reader, serial_where(port), sim.act)


def _check(s: Settings) -> list[tuple[str, str]]:
    if str(s["model"]) not in cf.MODELS:
        return [("model", f"expected one of {', '.join(cf.MODELS)}")]
    return []


SIMULATOR = Simulator(
    kind="uhf_chafon",
    settings={"link": None, "model": "288", "antennas": 4, "miss_rate": 0.1, "round_s": 0.03,
              "seed": 1},
    actions=ACTIONS,
    start=_start,
    check=_check,
)
