"""What the two GPS drivers share (``gps_nmea`` on a serial port, ``gpsd`` over TCP).

Kept apart so neither driver imports the other: each reader kind stays one module.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from drivers.codecs import nmea
from gateway.model import GpsFix
from gateway.options import opt

# The "no position for this long: degraded" watchdog, declared by both kinds with their
# own default (gpsd goes quiet when its device disappears, so it watches sooner).
NO_FIX_DOC = "no position fix for this long: reader degraded"
STEP_S = 5.0  # a jump this large between receiver and unit clock is logged as a step

log = logging.getLogger("gateway.driver")


def no_fix_s(default: float) -> Any:
    return opt(default, NO_FIX_DOC, gt=0, le=3600)


class GpsTimeGate:
    """Turns receiver fixes into GpsFix readings, checking the receiver's clock."""

    def __init__(self, reader: str, sink: Any) -> None:
        self.reader = reader
        self.sink = sink
        self.last_trusted: dt.datetime | None = None
        self._trusted: bool | None = None  # for the log: what the last fix said
        self._offset: float | None = None  # receiver minus unit clock at the last trusted fix

    def _log_trust(self, trusted: bool, reason: str, offset: float | None) -> None:
        """One line when GPS time becomes trusted, stops being trusted, or steps."""
        if trusted != self._trusted:
            if trusted:
                log.info("reader %s: GPS time trusted (receiver %+.1f s from the unit's "
                         "clock)", self.reader, offset or 0.0)
            else:
                log.warning("reader %s: GPS time not trusted (%s)", self.reader, reason)
        elif (trusted and offset is not None and self._offset is not None
              and abs(offset - self._offset) >= STEP_S):
            log.warning("reader %s: GPS time stepped by %+.1f s against the unit's clock "
                        "(receiver now %+.1f s from it)", self.reader, offset - self._offset,
                        offset)
        self._trusted = trusted
        if trusted:
            self._offset = offset

    def fix(self, when: dt.datetime | None, now: float, mono: float, **fields: Any) -> GpsFix:
        check = nmea.check_gps_time(when, dt.datetime.fromtimestamp(now, dt.UTC),
                                    self.last_trusted)
        if check.trusted and when is not None:
            self.last_trusted = when
        else:
            self.sink.reject(self.reader, f"untrusted-time:{check.reason}")
        self._log_trust(check.trusted, check.reason,
                        when.timestamp() - now if when is not None else None)
        t = when.timestamp() if when is not None else now
        return GpsFix(reader=self.reader, time=t, time_trusted=check.trusted, mono=mono,
                      **fields)
