"""UHF EPC Gen2 multi-tag readers on the Impinj-R2000 "0xA0" serial protocol.

Protocol facts (frame layout, command codes, error codes, RSSI table) are in
:mod:`drivers.codecs.uhf_r2000` (source: "IND903 UHF RFID reader module
protocol V2.2"). Unlike the RDM6300 this reader is polled: the host sends
``0x89`` real-time inventory, the reader answers with one packet per tag read
and then an end-of-round summary (or a one-byte error such as ``0x22``
antenna missing). We send the next command when the round ends, or when no
reply came within ``reply_timeout_s``. With several antennas one ``0x8A`` fast-switch inventory
runs a round on each of ``antennas`` in turn, the reader switching itself
(``fast_switch``, the default: one exchange per cycle instead of two per
antenna, which is most of the driver's CPU at a gate); with ``fast_switch =
false`` we switch the work antenna (``0x74``) before each ``0x89`` round instead.

Health: an antenna answering with an error makes the reader DEGRADED until a
round on it succeeds again; no reply at all for ``silence_s`` reopens the port
(a wedged USB-serial adapter or a reader that lost power behind a powered hub
looks exactly like this). Timeouts and reader errors are counted through
``sink.reject`` so they show up in the health message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import serial

from drivers._serial import SerialDriver, SerialOptions
from drivers._uhf_poll import Action, Count, Poller, Reopen, Report, Send
from drivers.codecs import uhf_r2000 as r2k
from gateway.checker import non_empty
from gateway.model import Reading, TagRead
from gateway.options import opt


@dataclass(frozen=True, slots=True, kw_only=True)
class UhfR2000Options(SerialOptions):
    baud: int = opt(115200, "serial speed in baud", gt=0, le=4_000_000)
    antennas: tuple[int, ...] = opt((1,), "antenna ports to cycle through, 1..4", ge=1, le=4,
                                    check=non_empty)
    repeat: int = opt(1, "inventory rounds per 0x89 command, or cycles per 0x8A command",
                      ge=1, le=255)
    fast_switch: bool = opt(True, "several antennas: one 0x8A command cycles them all (the "
                                  "reader switches); false: 0x74 + 0x89 per antenna")
    address: int = opt(1, "the reader's bus address in command frames", ge=0, le=255)
    reply_timeout_s: float = opt(1.0, "no answer this long: resend, reader degraded", gt=0, le=3600)
    silence_s: float = opt(5.0, "no answer this long: reopen the port", gt=0, le=3600)


class UhfR2000Driver(SerialDriver[UhfR2000Options]):
    Options = UhfR2000Options
    online_when_open = False  # online once the reader answers a command
    read_timeout_s = 0.05  # short: the loop also drives the command timeouts
    _poller: Poller  # one per connection, made in on_open

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        o = self.cfg.options
        self.antennas = o.antennas
        self.repeat = o.repeat
        self.address = o.address
        self.reply_timeout_s = o.reply_timeout_s
        self.silence_s = o.silence_s

    # SerialDriver hooks: the polling protocol itself is the sans-I/O Poller.
    def new_decoder(self) -> r2k.Decoder:
        return r2k.Decoder()

    def readings(self, frame: Any, now: float, mono: float) -> Iterable[Reading]:
        if isinstance(frame, r2k.R2000Tag):
            return (TagRead(reader=self.cfg.id, tag=frame.epc, time=now,
                            rssi=frame.rssi_dbm, antenna=frame.antenna, mono=mono),)
        return ()

    def on_open(self, mono: float) -> bytes:
        self._poller = Poller(self.antennas, self.repeat, self.address, self.reply_timeout_s,
                              self.silence_s, where=self.cfg.options.port,
                              fast_switch=self.cfg.options.fast_switch)
        return self._act(self._poller.start(mono))

    def on_frame(self, frame: Any, mono: float) -> bytes:
        return self._act(self._poller.frame(frame, mono))

    def watch(self, mono: float, got_data: bool) -> bytes:
        return self._act(self._poller.tick(mono))

    def _act(self, actions: list[Action]) -> bytes:
        """Carry out the poller's actions; the bytes to send."""
        out = b""
        for a in actions:
            match a:
                case Send(data):
                    out += data
                case Count(reason):
                    self.sink.reject(self.cfg.id, reason)
                case Report(state, detail):
                    self._report(state, detail)
                case Reopen(reason):
                    # OSError: run() closes the port, reports OFFLINE and reopens with back-off.
                    raise serial.SerialException(reason)
        return out


DRIVER = UhfR2000Driver
