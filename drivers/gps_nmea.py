"""The unit's own GNSS receiver on a serial port, speaking NMEA 0183.

Decoding is :mod:`drivers.codecs.nmea` (its own parser; any talker, checksum
required, GGA/RMC/GSA and more merged per epoch by its FixAssembler). Each
finished epoch becomes a :class:`GpsFix`. An epoch is finished when the next
one starts, so a fix reaches the engine one epoch (1 s at 1 Hz) late: the
price of not guessing which sentences a given receiver sends.

GPS time is checked with :func:`check_gps_time` against the host clock before
it is trusted; a fix with a week-rollover date, a time far off the host clock
or going backwards is still passed on, with ``time_trusted = False``, and the
reason is counted (``untrusted-time:<reason>`` in the reader's rejects).

Health: ONLINE while sentences arrive; DEGRADED when the port is silent for
``silence_s`` (a receiver always streams, even without a fix) or has no
position for ``no_fix_s``; OFFLINE when the port goes away (reconnect with
back-off, in :class:`SerialDriver`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from drivers._gps import GpsTimeGate, no_fix_s
from drivers._serial import SerialDriver, SerialOptions
from drivers.codecs import Reject, nmea
from gateway.model import ReaderState, Reading
from gateway.options import opt


class _FixStream:
    """NMEA bytes -> rejects and merged fixes (one decoder state per connection)."""

    def __init__(self) -> None:
        self.decoder = nmea.Decoder()
        self.assembler = nmea.FixAssembler()

    def feed(self, data: bytes) -> list[nmea.Fix | Reject]:
        out: list[nmea.Fix | Reject] = []
        for item in self.decoder.feed(data):
            if isinstance(item, Reject):
                out.append(item)
            else:
                out.extend(self.assembler.feed(item))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GpsNmeaOptions(SerialOptions):
    baud: int = opt(9600, "serial speed in baud", gt=0, le=4_000_000)
    silence_s: float = opt(5.0, "no data from the receiver this long: reader degraded",
                           gt=0, le=3600)
    no_fix_s: float = no_fix_s(30.0)


class GpsNmeaDriver(SerialDriver[GpsNmeaOptions]):
    Options = GpsNmeaOptions

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.silence_s = self.cfg.options.silence_s
        self.no_fix_s = self.cfg.options.no_fix_s
        self.gate = GpsTimeGate(self.cfg.id, self.sink)
        self._last_data = self._last_fix = self.clock.monotonic()

    def new_decoder(self) -> _FixStream:
        return _FixStream()

    def readings(self, frame: nmea.Fix, now: float, mono: float) -> Iterable[Reading]:
        if frame.has_position:
            self._last_fix = mono
        return (self.gate.fix(frame.time, now, mono, lat=frame.lat, lon=frame.lon,
                              fix_quality=frame.fix_quality, fix_type=frame.fix_type,
                              satellites=frame.satellites, hdop=frame.hdop,
                              speed_mps=frame.speed_mps),)

    def on_open(self, mono: float) -> bytes:
        self._last_data = self._last_fix = mono
        return b""

    def watch(self, mono: float, got_data: bool) -> bytes:
        if got_data:
            self._last_data = mono
        if mono - self._last_data >= self.silence_s:
            self._report(ReaderState.DEGRADED,
                         f"no data from the receiver for {self.silence_s:g} s")
        elif mono - self._last_fix >= self.no_fix_s:
            self._report(ReaderState.DEGRADED, f"no position fix for {self.no_fix_s:g} s")
        else:
            self._report(ReaderState.ONLINE, self.cfg.options.port)
        return b""  # a receiver streams: nothing to send


DRIVER = GpsNmeaDriver
