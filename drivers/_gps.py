"""What the two GPS drivers share (``gps_nmea`` on a serial port, ``gpsd`` over TCP).

Kept apart so neither driver imports the other: each reader kind stays one module.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from drivers.codecs import nmea
from gateway.model import GpsFix
from gateway.options import opt

# The "no position for this long: degraded" watchdog, declared by both kinds with their
# own default (gpsd goes quiet when its device disappears, so it watches sooner).
NO_FIX_DOC = "no position fix for this long: reader degraded"


def no_fix_s(default: float) -> Any:
    return opt(default, NO_FIX_DOC, gt=0, le=3600)


class GpsTimeGate:
    """Turns receiver fixes into GpsFix readings, checking the receiver's clock."""

    def __init__(self, reader: str, sink: Any) -> None:
        self.reader = reader
        self.sink = sink
        self.last_trusted: dt.datetime | None = None

    def fix(self, when: dt.datetime | None, now: float, mono: float, **fields: Any) -> GpsFix:
        check = nmea.check_gps_time(when, dt.datetime.fromtimestamp(now, dt.UTC),
                                    self.last_trusted)
        if check.trusted and when is not None:
            self.last_trusted = when
        else:
            self.sink.reject(self.reader, f"untrusted-time:{check.reason}")
        t = when.timestamp() if when is not None else now
        return GpsFix(reader=self.reader, time=t, time_trusted=check.trusted, mono=mono,
                      **fields)
