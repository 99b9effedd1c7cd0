"""UHF EPC Gen2 readers of the Chafon family: UHFReader18, UHFReader288 and the
compatible CF-RU5xxx desktop/fixed readers, on a serial port.

Protocol facts (frames, CRC-16, inventory layouts and statuses) are in
:mod:`drivers.codecs.chafon`. The reader is polled: the host sends Inventory
(``0x01``) and the reader answers within the command's scan time with one or
more frames listing the EPCs it found; status ``0x03`` means more frames of the
same answer follow, ``0x01``/``0x02``/``0x04`` end it (done, scan time out,
reader memory full), ``0xF8`` reports an antenna error. A UHFReader288 is told
the antenna in each command (``Ant`` 0x80 + port - 1, with ``Target`` and
``ScanTime``; the UR-series manual v1.14 8.2.1) and names it back as a one-bit
mask, so the driver cycles through ``antennas`` and reads carry the antenna. A
UHFReader18 has one antenna and its inventory command has no data: reads carry
no antenna. The 288's RSSI byte has no unit the manuals define, so reads carry
no RSSI (``gatewayd decode`` shows the raw byte).

Sources: "ZK-RFID102 UHF RFID Reader User's Manual V2.0" (a UHFReader18
relabel: frame blocks, inventory 8.2.1, status table 5) and "UHF RFID Reader
UR-series User Manual v1.14" (the 288 family: inventory 8.2.1, Ant codes,
status 0xF8); chafon-rfid's test frames in ../shared/data/captures/uhf.

The protocol logic is :class:`ChafonPoller`, sans-I/O (frames, reads and
monotonic time in; bytes to send, rejects and health out); the driver only
passes them through SerialDriver's hooks. Health: the reader is online once it
answers; an antenna error makes it DEGRADED until a round on that antenna
succeeds; no answer within the scan time plus ``reply_timeout_s`` is resent and
makes it DEGRADED; an answer that arrives garbled (bad CRC, cut) is asked again
at once; no well-formed frame for ``silence_s`` reopens the port.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import serial

from drivers._serial import SerialDriver, SerialOptions
from drivers.codecs import Reject
from drivers.codecs import chafon as cf
from gateway.checker import non_empty
from gateway.model import ReaderState, Reading, TagRead
from gateway.options import opt

log = logging.getLogger("gateway.driver")

MORE_FRAMES = 0x03  # this answer continues in the next frame
ANTENNA_ERROR = 0xF8
# "No tag operable" in the family's status table: should a reader answer an empty
# field with it, that is a quiet gate, not a fault.
NO_TAG = 0xFB
# The reader sends an answer in one burst; bytes then this long a pause without the
# answer's last frame mean it was garbled (bad CRC, cut): ask again now, not at the
# time-out (57600 baud moves a 255-byte frame in 45 ms).
ANSWER_GAP_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class UhfChafonOptions(SerialOptions):
    baud: int = opt(57600, "serial speed in baud (the family's factory setting is 57600)",
                    gt=0, le=4_000_000)
    model: str = opt("288", "frame layout: 288 (UHFReader288/86, antenna + RSSI) or 18 "
                            "(UHFReader18, one antenna)", choices=("288", "18"))
    antennas: tuple[int, ...] = opt((1,), "antenna ports to cycle through, 1..8 (a model 18 "
                                          "reader has antenna 1 only)", ge=1, le=8,
                                    check=non_empty)
    address: int = opt(0xFF, "reader address in command frames (255: whichever reader "
                             "answers)", ge=0, le=255)
    q: int = opt(4, "initial Q of the Gen2 inventory, 2^Q about the tags in the field "
                    "(model 288)", ge=0, le=15)
    scan_time: int = opt(3, "longest inventory per command, in 100 ms (model 288)",
                         ge=3, le=255)
    reply_timeout_s: float = opt(0.5, "no answer this long after the scan time: resend, "
                                      "reader degraded", gt=0, le=3600)
    silence_s: float = opt(5.0, "no well-formed answer this long: reopen the port",
                           gt=0, le=3600)


def encode_inventory(o: UhfChafonOptions, antenna: int) -> bytes:
    """The Inventory command for one round on ``antenna`` (ignored by model 18)."""
    if o.model == "18":
        return cf.encode_command(cf.CMD_INVENTORY, b"", o.address)
    # QValue, Session S0 (tags answer every round: a gate wants repeats), MaskMem EPC with
    # an empty mask (every tag), Target A, Ant, ScanTime: the layout chafon-rfid sends.
    data = bytes([o.q, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x80 + antenna - 1, o.scan_time])
    return cf.encode_command(cf.CMD_INVENTORY, data, o.address)


@dataclass
class PollStep:
    """What the I/O side must do after an input to the poller."""

    send: bytes = b""
    rejects: list[str] = field(default_factory=list)
    health: tuple[ReaderState, str] | None = None
    reopen: str | None = None  # reason: close and reopen the port (SerialDriver back-off)


class ChafonPoller:
    """The polling protocol, sans-I/O: one Inventory command out, its answer in, next."""

    def __init__(self, options: UhfChafonOptions, where: str, mono: float) -> None:
        self.o = options
        self.where = where
        self.antennas = options.antennas if options.model == "288" else (1,)
        self.index = 0
        self.failing: dict[int, str] = {}  # antenna -> what went wrong on its last round
        self.answered = False  # online only once the reader has answered
        self.last_reply = mono  # last well-formed frame
        self.heard: float | None = None  # last bytes since the command, if any
        self.sent = mono  # when the command in flight went out
        self.deadline = mono
        self.wait_s = options.scan_time / 10 + options.reply_timeout_s

    @property
    def antenna(self) -> int:
        return self.antennas[self.index]

    def _send(self, mono: float, step: PollStep) -> PollStep:
        step.send = encode_inventory(self.o, self.antenna)
        self.sent = mono
        self.deadline = mono + self.wait_s
        self.heard = None
        return step

    def _health(self) -> tuple[ReaderState, str]:
        if self.failing:
            return ReaderState.DEGRADED, "; ".join(
                f"antenna {a}: {e}" for a, e in sorted(self.failing.items()))
        return ReaderState.ONLINE, self.where

    def _round_done(self, error: str | None, mono: float, step: PollStep) -> PollStep:
        if error is None:
            self.failing.pop(self.antenna, None)
        else:
            self.failing[self.antenna] = error
        self.index = (self.index + 1) % len(self.antennas)
        step.health = self._health()
        return self._send(mono, step)

    def opened(self, mono: float) -> PollStep:
        """The port is open: the first command."""
        self.last_reply = mono
        return self._send(mono, PollStep())

    def frame(self, frame: object, mono: float) -> PollStep:
        """A well-framed reply (its tags are already readings)."""
        step = PollStep()
        self.last_reply = mono
        if not self.answered:
            self.answered = True
            step.health = self._health()
        if isinstance(frame, cf.ChafonInventory) and frame.cmd == cf.CMD_INVENTORY:
            if frame.status == MORE_FRAMES:
                self.deadline = mono + self.wait_s  # the rest of this answer is coming
                return step
            return self._round_done(None, mono, step)
        if isinstance(frame, cf.ChafonReply) and frame.cmd == cf.CMD_INVENTORY:
            if frame.status == NO_TAG:
                return self._round_done(None, mono, step)
            name = "antenna-error" if frame.status == ANTENNA_ERROR else f"0x{frame.status:02X}"
            step.rejects.append(f"reader-error:{name}")
            return self._round_done(f"{name} (0x{frame.status:02X})", mono, step)
        return step  # an answer to something else: harmless, never tags

    def due(self, mono: float) -> bool:
        """The answer to the last command is overdue, or came garbled."""
        return mono >= self.deadline or (self.heard is not None
                                         and mono - self.heard >= ANSWER_GAP_S)

    def read(self, mono: float, got_data: bool) -> None:
        """A read finished (its frames already given to :meth:`frame`)."""
        if got_data and mono > self.sent:
            # Bytes since the command that did not end its answer (a frame that did would
            # have sent the next command at this very time).
            self.heard = mono

    def tick(self, mono: float) -> PollStep:
        """Time passed: time-outs (after :meth:`read`, every read)."""
        step = PollStep()
        if not self.due(mono):
            return step
        quiet = mono - self.last_reply
        garbled = self.heard is not None
        if not garbled:
            step.rejects.append("no-reply")  # a garbled answer is counted by the decoder
        if quiet >= self.o.silence_s:
            step.health = (ReaderState.DEGRADED, f"no reply for {quiet:.0f} s; reopening the port")
            step.reopen = f"reader not answering for {quiet:.0f} s"
            return step
        if not garbled:
            step.health = (ReaderState.DEGRADED, f"no reply for {quiet:.1f} s")
        return self._send(mono, step)  # the same command again: a lost reply must not stall


class UhfChafonDriver(SerialDriver[UhfChafonOptions]):
    Options = UhfChafonOptions
    online_when_open = False  # online once the reader answers a command
    read_timeout_s = 0.05  # short: the loop also drives the poller's time-outs
    _poller: ChafonPoller  # one per connection, made in on_open
    _decoder: cf.Decoder  # the connection's decoder, kept to settle a broken answer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        o = self.cfg.options
        if o.model == "18" and o.antennas != (1,):
            log.warning("reader %s: a UHFReader18 (model 18) has one antenna; antennas %s "
                        "ignored", self.cfg.id, list(o.antennas))

    # SerialDriver hooks: the polling protocol itself is the sans-I/O ChafonPoller.
    def new_decoder(self) -> cf.Decoder:
        self._decoder = cf.Decoder(self.cfg.options.model)
        return self._decoder

    def readings(self, frame: Any, now: float, mono: float) -> Iterable[Reading]:
        if not isinstance(frame, cf.ChafonInventory) or frame.cmd != cf.CMD_INVENTORY:
            return ()
        # The 18 layout names no antenna (the codec says 1): report none rather than guess.
        with_antenna = frame.antenna is not None
        return tuple(TagRead(reader=self.cfg.id, tag=t.epc, time=now, mono=mono,
                             antenna=t.antenna if with_antenna else None)
                     for t in frame.tags)

    def on_open(self, mono: float) -> bytes:
        self._poller = ChafonPoller(self.cfg.options, self.cfg.options.port, mono)
        return self._apply(self._poller.opened(mono))

    def on_frame(self, frame: Any, mono: float) -> bytes:
        return self._apply(self._poller.frame(frame, mono))

    def watch(self, mono: float, got_data: bool) -> bytes:
        poller = self._poller
        poller.read(mono, got_data)
        out = b""
        if poller.due(mono):
            # The reader answers a command in one burst: what the decoder still holds
            # when the answer is over is broken (the codec waits on a Len it cannot yet
            # judge), so settle it before the poller asks again.
            now = self.clock.now()
            for item in self._decoder.flush():
                if isinstance(item, Reject):
                    self.sink.reject(self.cfg.id, item.reason)
                    continue
                for r in self.readings(item, now, mono):
                    self.sink.reading(r)
                out += self.on_frame(item, mono)
        return out + self._apply(poller.tick(mono))

    def _apply(self, step: PollStep) -> bytes:
        """Carry out the poller's step; the bytes to send."""
        for reason in step.rejects:
            self.sink.reject(self.cfg.id, reason)
        if step.health is not None:
            self._report(*step.health)
        if step.reopen is not None:
            # OSError: run() closes the port, reports OFFLINE and reopens with back-off.
            raise serial.SerialException(step.reopen)
        return step.send


DRIVER = UhfChafonDriver
