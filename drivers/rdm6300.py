"""RDM6300-class 125 kHz EM4100 readers on a serial port (9600 baud, read-only).

The reader needs no commands: it streams a frame per card read, repeated while
the card stays in the field. Repeats are folded into one presentation by the
engine, not here, so the driver stays a plain translator.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers._serial import SerialDriver
from drivers.codecs import rdm6300
from gateway.model import Reading, TagRead


class Rdm6300Driver(SerialDriver):
    default_baud = 9600

    def new_decoder(self) -> rdm6300.Decoder:
        return rdm6300.Decoder()

    def readings(self, frame: rdm6300.Em4100Frame, now: float) -> Iterable[Reading]:
        return (TagRead(reader=self.cfg.id, tag=frame.tag, time=now),)


DRIVER = Rdm6300Driver
