"""A simulated Impinj-R2000 ("0xA0" protocol) UHF reader on a pseudo-terminal.

It answers what the host sends, as the real module does (IND903 protocol
V2.2, see drivers.codecs.uhf_r2000): ``0x74`` set work antenna -> a one-byte
status; ``0x89`` real-time inventory -> one tag packet per tag read on the
work antenna, then the end-of-round summary, or ``0x22`` antenna missing when
that antenna is "unplugged"; ``0x8A`` fast-switch inventory -> a round on each
antenna it lists in turn (tag packets, or Ant_ID + ``0x22`` for a missing one),
repeated as asked, then V2.2's summary (Total_Read, Command_Duration). Tags in
the field of an antenna are read with RSSI jitter and random misses (real gates
miss reads all the time). Faults: an antenna missing, a reader that stops
answering (``mute``), garbage on the line, corrupted tag packets, and the whole
adapter unplugged (VirtualSerial).
"""

from __future__ import annotations

import time

from drivers.codecs import Reject
from drivers.codecs import uhf_r2000 as r2k
from firmware_sim._uhf import ACTIONS, UhfSim
from firmware_sim.simulator import Context, Settings, Simulator, Started, StepArgs, serial_where
from firmware_sim.vserial import VirtualSerial

BAUD = 115200
BYTE_S = 10 / BAUD


def dbm_to_raw(dbm: float) -> int:
    """Inverse of the protocol's RSSI table (-99..-41 -> 31..89, -39..-31 -> 90..98)."""
    d = round(dbm)
    if d <= -41:
        return max(31, d + 130)
    return min(98, max(90, d + 129))


class UhfR2000Sim(UhfSim[r2k.R2000Command]):
    thread_name = "uhf-sim"
    walk_rssi = -55.0  # dBm

    def __init__(self, port: VirtualSerial, *, antennas: int = 4, miss_rate: float = 0.1,
                 rssi_jitter_db: float = 2.0, round_s: float = 0.03, address: int = 1,
                 seed: int = 1) -> None:
        # corrupt_next counts tag packets (sent with a wrong check byte).
        super().__init__(port, antennas=antennas, miss_rate=miss_rate, round_s=round_s,
                         address=address, seed=seed)
        self.rssi_jitter_db = rssi_jitter_db
        self.work_antenna = 1

    def enter(self, epc: str, antenna: int = 1, rssi_dbm: float = -60.0,
              hold_s: float | None = None) -> None:
        """Put a tag in an antenna's field (for ``hold_s`` seconds, or until :meth:`leave`)."""
        self._put(epc, antenna, rssi_dbm, hold_s)

    def garbage(self, n: int = 16) -> None:
        # No 0xA0, so it cannot fake the start of a frame.
        self.port.write(bytes(self.rng.choice([b for b in range(256) if b != r2k.HEAD])
                              for _ in range(n)))

    def _enter_step(self, a: StepArgs) -> None:
        self.enter(a["tag"], int(a.get("antenna", 1)), float(a.get("rssi_dbm", -60)),
                   float(a["hold_s"]) if "hold_s" in a else None)

    # -- the reader's side of the protocol ---------------------------------------------------

    def _commands(self) -> list[r2k.R2000Command]:
        out = []
        buf = self._buf
        while True:
            start = buf.find(r2k.HEAD)
            if start < 0:
                buf.clear()
                break
            del buf[:start]
            if len(buf) < 2 or len(buf) < buf[1] + 2:
                break
            raw = bytes(buf[: buf[1] + 2])
            parsed = r2k.parse_command(raw)
            if isinstance(parsed, Reject):
                del buf[:1]  # not a command: hunt for the next head
                continue
            del buf[: len(raw)]
            out.append(parsed)
        return out

    def _send(self, frame: bytes) -> None:
        self.port.write(frame)
        time.sleep(len(frame) * BYTE_S)  # a pty ignores the baud rate: pace like the UART

    def _answer(self, cmd: r2k.R2000Command) -> None:
        addr = self.address
        if cmd.cmd == r2k.CMD_SET_WORK_ANTENNA:
            ant = cmd.data[0] + 1 if cmd.data else 0
            if not 1 <= ant <= self.n_antennas:
                self._send(r2k.encode_status(cmd.cmd, 0x41, addr))  # parameter_invalid
                return
            self.work_antenna = ant
            self._send(r2k.encode_status(cmd.cmd, 0x10, addr))
        elif cmd.cmd == r2k.CMD_GET_FIRMWARE_VERSION:
            self._send(r2k.encode_frame(cmd.cmd, bytes([1, 8]), addr))
        elif cmd.cmd == r2k.CMD_REAL_TIME_INVENTORY:
            self._inventory(cmd)
        elif cmd.cmd == r2k.CMD_FAST_SWITCH_ANT_INVENTORY and len(cmd.data) == 5:
            self._fast_switch(cmd)
        else:
            self._send(r2k.encode_status(cmd.cmd, 0x11, addr))  # command_fail

    def _inventory(self, cmd: r2k.R2000Command) -> None:
        ant = self.work_antenna
        if ant in self.missing:
            time.sleep(self.round_s / 3)
            self._send(r2k.encode_status(cmd.cmd, 0x22, self.address))
            return
        # Repeat: the reader runs that many rounds, sending each tag packet as it reads
        # it, and one summary for the whole command; 0xFF ("as fast as possible") is one
        # round here.
        rounds = cmd.data[0] if cmd.data and 1 < cmd.data[0] < 0xFF else 1
        n = sum(self._round(ant, cmd.cmd) for _ in range(rounds))
        on_air = rounds * self.round_s
        rate = int(n / on_air) if on_air > 0 else 0
        self._send(r2k.encode_inventory_end(n, min(rate, 0xFFFF), ant, self.address))


    def _round(self, ant: int, cmd: int) -> int:
        """One inventory round on ``ant`` (``round_s`` on air): a packet per tag read."""
        present = self._in_field(ant)
        t0 = time.monotonic()
        n = 0
        for epc, f in present:
            if self.rng.random() < self.miss_rate:
                continue
            rssi = dbm_to_raw(f.rssi + self.rng.gauss(0, self.rssi_jitter_db))
            frame = bytearray(r2k.encode_tag(epc, rssi, ant, self.rng.randrange(50),
                                             addr=self.address, cmd=cmd))
            if self.corrupt_next > 0:
                self.corrupt_next -= 1
                frame[-1] ^= 0x5A
            self._send(bytes(frame))
            n += 1
            self.tags_sent += 1
        time.sleep(max(0.0, self.round_s - (time.monotonic() - t0)))
        return n

    def _fast_switch(self, cmd: r2k.R2000Command) -> None:
        """0x8A: a round on each listed antenna in turn (ids above 3 skipped), the whole
        sequence ``Repeat`` times; a missing antenna answers Ant_ID + 0x22 and is passed."""
        t0 = time.monotonic()
        ids, repeat = cmd.data[:4], max(1, cmd.data[4])
        n = 0
        for _ in range(repeat if repeat < 0xFF else 1):
            for i in ids:
                ant = i + 1
                if i > 3:
                    continue
                if ant in self.missing or ant > self.n_antennas:
                    time.sleep(self.round_s / 3)
                    self._send(r2k.encode_frame(cmd.cmd, bytes([i, 0x22]), self.address))
                    continue
                self.work_antenna = ant
                n += self._round(ant, cmd.cmd)
        ms = int((time.monotonic() - t0) * 1000)
        self._send(r2k.encode_fast_switch_end(n, ms, self.address))


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    port = ctx.serial_port(device_id, s)
    sim = UhfR2000Sim(port, antennas=int(s["antennas"]), miss_rate=float(s["miss_rate"]),
                      rssi_jitter_db=float(s["rssi_jitter_db"]), round_s=float(s["round_s"]),
                      seed=int(s["seed"])).start()
    ctx.stack.callback(sim.stop)
    return Started({"kind": SIMULATOR.kind, "role": "gate", "port": port.path, "baud": BAUD},
                   serial_where(port), sim.act)


SIMULATOR = Simulator(
    kind="uhf_r2000",
    settings={"link": None, "antennas": 4, "miss_rate": 0.1, "rssi_jitter_db": 2.0,
              "round_s": 0.03, "seed": 1},
    actions=ACTIONS,
    start=_start,
)
