"""RDM6300-class 125 kHz EM4100 readers on a serial port (9600 baud, read-only).

The reader needs no commands: it streams a frame per card read, repeated while
the card stays in the field. Repeats are folded into one presentation by the
engine, not here, so the driver stays a plain translator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from drivers._serial import SerialDriver, SerialOptions
from drivers.codecs import rdm6300
from gateway.model import Reading, TagRead
from gateway.options import opt


@dataclass(frozen=True, slots=True, kw_only=True)
class Rdm6300Options(SerialOptions):
    baud: int = opt(9600, "serial speed in baud (the RDM6300 only speaks 9600)", gt=0, le=4_000_000)


class Rdm6300Driver(SerialDriver[Rdm6300Options]):
    Options = Rdm6300Options

    def new_decoder(self) -> rdm6300.Decoder:
        return rdm6300.Decoder()

    def readings(self, frame: rdm6300.Em4100Frame, now: float, mono: float
                 ) -> Iterable[Reading]:
        return (TagRead(reader=self.cfg.id, tag=frame.tag, time=now, mono=mono),)


DRIVER = Rdm6300Driver
