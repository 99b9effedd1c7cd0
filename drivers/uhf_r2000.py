"""UHF EPC Gen2 multi-tag readers on the Impinj-R2000 "0xA0" serial protocol.

Protocol facts (frame layout, command codes, error codes, RSSI table) are in
:mod:`drivers.codecs.uhf_r2000` (source: "IND903 UHF RFID reader module
protocol V2.2"). Unlike the RDM6300 this reader is polled: the host sends
``0x89`` real-time inventory, the reader answers with one packet per tag read
and then an end-of-round summary (or a one-byte error such as ``0x22``
antenna missing). We send the next command when the round ends, or when no
reply came within ``reply_timeout_s``. With several antennas we switch the
work antenna (``0x74``) before each round, cycling through ``antennas``.

Health: an antenna answering with an error makes the reader DEGRADED until a
round on it succeeds again; no reply at all for ``silence_s`` reopens the port
(a wedged USB-serial adapter or a reader that lost power behind a powered hub
looks exactly like this). Timeouts and reader errors are counted through
``sink.reject`` so they show up in the health message.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import serial

from drivers._serial import SerialDriver, SerialOptions
from drivers.codecs import Reject
from drivers.codecs import uhf_r2000 as r2k
from gateway.checker import non_empty
from gateway.model import ReaderState, Reading, TagRead
from gateway.options import opt

log = logging.getLogger("gateway.driver")

_NO_TAG = 0x36  # "no tag": an empty round, not a fault


class _Phase(enum.Enum):
    SET_ANTENNA = 1
    INVENTORY = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class UhfR2000Options(SerialOptions):
    baud: int = opt(115200, "serial speed in baud", gt=0)
    antennas: tuple[int, ...] = opt((1,), "antenna ports to cycle through, 1..4", ge=1, le=4,
                                    check=non_empty)
    repeat: int = opt(1, "inventory rounds per 0x89 command (255: fastest)", ge=1, le=255)
    address: int = opt(1, "the reader's bus address in command frames", ge=0, le=255)
    reply_timeout_s: float = opt(1.0, "no answer this long: resend, reader degraded", gt=0)
    silence_s: float = opt(5.0, "no answer this long: reopen the port", gt=0)


class UhfR2000Driver(SerialDriver[UhfR2000Options]):
    Options = UhfR2000Options
    online_when_open = False  # online once the reader answers a command
    read_timeout_s = 0.05  # short: the loop also drives the command timeouts

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        o = self.cfg.options
        self.antennas = o.antennas
        self.repeat = o.repeat
        self.address = o.address
        self.reply_timeout_s = o.reply_timeout_s
        self.silence_s = o.silence_s

    # SerialDriver hooks (the read loop below replaces the streaming one).
    def new_decoder(self) -> r2k.Decoder:
        return r2k.Decoder()

    def readings(self, frame: Any, now: float) -> Iterable[Reading]:
        if isinstance(frame, r2k.R2000Tag):
            return (TagRead(reader=self.cfg.id, tag=frame.epc, time=now,
                            rssi=frame.rssi_dbm, antenna=frame.antenna),)
        return ()

    def _read_loop(self, port: serial.Serial, stop: threading.Event) -> None:
        decoder = self.new_decoder()
        rid, sink = self.cfg.id, self.sink
        failing: dict[int, str] = {}  # antenna -> last error name
        idx = 0
        current_ant: int | None = None  # the work antenna the reader confirmed
        last_reply = time.monotonic()
        phase = _Phase.SET_ANTENNA

        def send() -> float:
            ant = self.antennas[idx]
            if phase is _Phase.SET_ANTENNA:
                port.write(r2k.encode_set_work_antenna(ant, self.address))
            else:
                port.write(r2k.encode_real_time_inventory(self.repeat, self.address))
            return time.monotonic() + self.reply_timeout_s

        def health() -> None:
            if failing:
                self._report(ReaderState.DEGRADED, "; ".join(
                    f"antenna {a}: {e}" for a, e in sorted(failing.items())))
            else:
                self._report(ReaderState.ONLINE, self.cfg.options.port)

        def round_done(error: str | None) -> None:
            nonlocal idx, phase
            ant = self.antennas[idx]
            if error is None:
                failing.pop(ant, None)
            else:
                failing[ant] = error
            health()
            idx = (idx + 1) % len(self.antennas)
            phase = (_Phase.SET_ANTENNA if self.antennas[idx] != current_ant
                     else _Phase.INVENTORY)

        deadline = send()
        while not stop.is_set():
            data = port.read(port.in_waiting or 1)
            mono = time.monotonic()
            if data:
                now = self.clock.now()
                for item in decoder.feed(data):
                    if isinstance(item, Reject):
                        sink.reject(rid, item.reason)
                        continue
                    last_reply = mono
                    if self._reported and self._reported[0] is ReaderState.STARTING:
                        health()  # the first well-formed reply: the reader is there
                    if isinstance(item, r2k.R2000Tag):
                        for r in self.readings(item, now):
                            sink.reading(r)
                    elif isinstance(item, r2k.R2000InventoryEnd):
                        if phase is _Phase.INVENTORY:
                            round_done(None)
                            deadline = send()
                    elif isinstance(item, r2k.R2000Status):
                        if phase is _Phase.SET_ANTENNA and item.cmd == r2k.CMD_SET_WORK_ANTENNA:
                            if item.success:
                                current_ant = self.antennas[idx]
                                phase = _Phase.INVENTORY
                            else:
                                sink.reject(rid, f"reader-error:{item.error}")
                                round_done(f"set antenna failed ({item.error})")
                            deadline = send()
                        elif phase is _Phase.INVENTORY and item.cmd == r2k.CMD_REAL_TIME_INVENTORY:
                            if item.error_code == _NO_TAG:
                                round_done(None)
                            else:
                                sink.reject(rid, f"reader-error:{item.error}")
                                round_done(f"{item.error} (0x{item.error_code:02X})")
                            deadline = send()
                    # Firmware/other replies are well framed and harmless: ignored.
            if mono >= deadline:
                sink.reject(rid, "no-reply")
                if mono - last_reply >= self.silence_s:
                    self._report(ReaderState.DEGRADED,
                                 f"no reply for {mono - last_reply:.0f} s; reopening the port")
                    # OSError: run() closes the port, reports OFFLINE and reopens with back-off.
                    raise serial.SerialException(
                        f"reader not answering for {mono - last_reply:.0f} s")
                if mono - last_reply >= self.reply_timeout_s:
                    self._report(ReaderState.DEGRADED,
                                 f"no reply for {mono - last_reply:.1f} s")
                # Resend the same command: a lost reply must not stall the cycle.
                deadline = send()


DRIVER = UhfR2000Driver
