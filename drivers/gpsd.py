"""The unit's position through a local gpsd (client mode), when gpsd owns the receiver.

Protocol: gpsd's JSON protocol over TCP (gpsd_json(5), "GPSD JSON protocol"):
the client sends ``?WATCH={"enable":true,"json":true};`` and gpsd streams one
JSON object per line: VERSION, DEVICES, WATCH, then per epoch a TPV
(time/position/velocity: ``mode`` 0/1 no fix, 2 = 2D, 3 = 3D; ``status`` 2 =
DGPS; ``time`` ISO 8601 UTC; ``lat``/``lon``/``speed`` m/s) and, less often,
a SKY (``hdop``, ``satellites`` with ``used`` flags; ``uSat`` from 3.23).

gpsd says nothing for a long time when the device disappears (checked with
3.22), so a "no fix for ``no_fix_s``" watchdog reports DEGRADED. gpsd itself
going away (connection refused or closed) is OFFLINE, and we reconnect with
back-off. Fix times go through the same :func:`check_gps_time` gate as the
NMEA driver. Parsing is :mod:`drivers.codecs.gpsd`; its rejects (malformed
lines, out-of-range values, over-long lines) are counted here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from drivers._base import Driver
from drivers._gps import GpsTimeGate, no_fix_s
from drivers.codecs import Reject
from drivers.codecs.gpsd import Decoder, GpsdError, GpsdFrame, Sky, Tpv
from gateway import backoff
from gateway.checker import non_empty, tcp_port
from gateway.model import ReaderState
from gateway.options import ReaderOptions, opt

log = logging.getLogger("gateway.driver")

WATCH = b'?WATCH={"enable":true,"json":true};\n'


@dataclass(frozen=True, slots=True, kw_only=True)
class GpsdOptions(ReaderOptions):
    host: str = opt("127.0.0.1", "where gpsd listens (host name or address)", check=non_empty)
    gpsd_port: int = opt(2947, "gpsd's TCP port", check=tcp_port)
    no_fix_s: float = no_fix_s(10.0)
    reconnect_initial_s: float = opt(0.5, "first back-off delay after gpsd goes away",
                                     gt=0, le=3600)
    reconnect_max_s: float = opt(30.0, "back-off cap while gpsd is away", gt=0, le=3600)

    def where(self) -> str:
        return f"{self.host}:{self.gpsd_port}"


class GpsdDriver(Driver[GpsdOptions]):
    Options = GpsdOptions

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        o = self.cfg.options
        self.host = o.host
        self.port = o.gpsd_port
        self.no_fix_s = o.no_fix_s
        self.gate = GpsTimeGate(self.cfg.id, self.sink)
        self._sky: tuple[int | None, float | None] = (None, None)  # satellites used, hdop

    def run(self, stop: threading.Event) -> None:
        where = f"gpsd {self.host}:{self.port}"
        initial = self.cfg.options.reconnect_initial_s
        cap = self.cfg.options.reconnect_max_s
        self._report(ReaderState.STARTING, where)
        was_online = False
        while not stop.is_set():
            retry = backoff.retrying(stop, log, f"reader {self.cfg.id}: connecting to {where}",
                                     initial, cap, self.clock)
            try:
                sock = retry(lambda: socket.create_connection((self.host, self.port), 5.0))
            except OSError:
                return  # stopped while retrying
            try:
                sock.settimeout(0.5)
                sock.sendall(WATCH)
                self._report(ReaderState.ONLINE, where)
                if was_online:
                    log.info("reader %s: reconnected to %s", self.cfg.id, where)
                was_online = True
                self._session(sock, stop)
            except OSError as e:
                log.warning("reader %s: lost %s (%s); reconnecting", self.cfg.id, where, e)
                self._report(ReaderState.OFFLINE, f"{where}: {e}")
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
        self._report(ReaderState.OFFLINE, "stopped")

    def _session(self, sock: socket.socket, stop: threading.Event) -> None:
        decoder = Decoder()
        last_fix = self.clock.monotonic()
        self._sky = (None, None)
        while not stop.is_set():
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                raise ConnectionResetError("gpsd closed the connection")
            if data:
                for frame in decoder.feed(data):
                    if self._frame(frame):
                        last_fix = self.clock.monotonic()
            quiet = self.clock.monotonic() - last_fix
            if quiet >= self.no_fix_s:
                self._report(ReaderState.DEGRADED, f"no fix from gpsd for {quiet:.0f} s")

    def _frame(self, frame: GpsdFrame | Reject) -> bool:
        """Handle one decoded object; True if it was a TPV with a position fix."""
        rid = self.cfg.id
        match frame:
            case Reject(reason=reason):
                self.sink.reject(rid, reason)
                return False
            case Sky():
                self._on_sky(frame)
                return False
            case GpsdError(message=message):
                log.warning("reader %s: gpsd says: %s", rid, message)
                return False
            case Tpv():
                return self._on_tpv(frame)
            case _:
                return False  # VERSION, DEVICES, WATCH, ATT, PPS, TOFF ...: not needed here

    def _on_tpv(self, tpv: Tpv) -> bool:
        sats, hdop = self._sky
        self.sink.reading(self.gate.fix(
            tpv.time, self.clock.now(), self.clock.monotonic(), lat=tpv.lat, lon=tpv.lon,
            fix_quality=tpv.fix_quality, fix_type=max(1, tpv.mode), satellites=sats, hdop=hdop,
            speed_mps=tpv.speed_mps))
        if tpv.has_fix:
            self._report(ReaderState.ONLINE, f"gpsd {self.host}:{self.port}")
        return tpv.has_fix

    def _on_sky(self, sky: Sky) -> None:
        """SKY comes less often than TPV: keep the last known values of each field."""
        old_sats, old_hdop = self._sky
        self._sky = (sky.satellites_used if sky.satellites_used is not None else old_sats,
                     sky.hdop if sky.hdop is not None else old_hdop)

DRIVER = GpsdDriver
