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
NMEA driver; malformed lines and out-of-range values are rejected, counted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import socket
import threading
from typing import Any

from drivers._base import Driver
from drivers.gps_nmea import GpsTimeGate, check_watchdog_options
from gateway import backoff
from gateway.config import ReaderConfig
from gateway.model import ReaderState

log = logging.getLogger("gateway.driver")

WATCH = b'?WATCH={"enable":true,"json":true};\n'
MAX_LINE = 65536  # gpsd's longest objects (SKY with many satellites) are a few kB


def _finite(v: Any, lo: float, hi: float) -> float | None:
    """A JSON number in range, else None; NaN, strings and booleans are not numbers."""
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v) if lo <= v <= hi else None


def _iso(v: Any) -> dt.datetime | None:
    if not isinstance(v, str):
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


class GpsdDriver(Driver):
    @classmethod
    def check_options(cls, cfg: ReaderConfig) -> list[tuple[str, str]]:
        o = cfg.options
        problems = check_watchdog_options(
            cfg, ("no_fix_s", "reconnect_initial_s", "reconnect_max_s"))
        if "host" in o and (not isinstance(o["host"], str) or not o["host"]):
            problems.append(("host", "expected a host name or address"))
        p = o.get("gpsd_port")
        if p is not None and (not isinstance(p, int) or isinstance(p, bool) or not 0 < p < 65536):
            problems.append(("gpsd_port", "expected a TCP port between 1 and 65535"))
        return problems

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        o = self.cfg.options
        self.host = str(o.get("host", "127.0.0.1"))
        self.port = int(o.get("gpsd_port", 2947))
        self.no_fix_s = float(o.get("no_fix_s", 10.0))
        self.gate = GpsTimeGate(self.cfg.id, self.sink)
        self._sky: tuple[int | None, float | None] = (None, None)  # satellites used, hdop

    def run(self, stop: threading.Event) -> None:
        where = f"gpsd {self.host}:{self.port}"
        initial = float(self.cfg.options.get("reconnect_initial_s", 0.5))
        cap = float(self.cfg.options.get("reconnect_max_s", 30.0))
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
        buf = bytearray()
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
                buf += data
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl]).strip()
                    del buf[: nl + 1]
                    if line and self._line(line):
                        last_fix = self.clock.monotonic()
                if len(buf) > MAX_LINE:
                    self.sink.reject(self.cfg.id, "too-long")
                    buf.clear()
            quiet = self.clock.monotonic() - last_fix
            if quiet >= self.no_fix_s:
                self._report(ReaderState.DEGRADED, f"no fix from gpsd for {quiet:.0f} s")

    def _line(self, line: bytes) -> bool:
        """Handle one JSON object; True if it was a TPV with a position fix."""
        rid = self.cfg.id
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            self.sink.reject(rid, "bad-json")
            return False
        if not isinstance(obj, dict):
            self.sink.reject(rid, "bad-json")
            return False
        cls = obj.get("class")
        if cls == "SKY":
            self._on_sky(obj)
            return False
        if cls == "ERROR":
            log.warning("reader %s: gpsd says: %s", rid, str(obj.get("message"))[:200])
            return False
        if cls != "TPV":
            return False  # VERSION, DEVICES, WATCH, ATT, PPS, TOFF ...: not needed here
        mode = obj.get("mode", 0)
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 3:
            self.sink.reject(rid, "bad-field")
            return False
        lat = _finite(obj.get("lat"), -90, 90)
        lon = _finite(obj.get("lon"), -180, 180)
        has_fix = mode >= 2 and lat is not None and lon is not None
        if mode >= 2 and not has_fix:
            self.sink.reject(rid, "bad-field")  # a fix without a usable position
            return False
        when = _iso(obj.get("time"))
        if "time" in obj and when is None:
            self.sink.reject(rid, "bad-field")
            return False
        status = obj.get("status", 1)
        quality = (status if isinstance(status, int) and 0 < status < 10 else 1) if has_fix else 0
        sats, hdop = self._sky
        speed = _finite(obj.get("speed"), 0, 1000)
        self.sink.reading(self.gate.fix(
            when, self.clock.now(), lat=lat if has_fix else None, lon=lon if has_fix else None,
            fix_quality=quality, fix_type=max(1, mode), satellites=sats, hdop=hdop,
            speed_mps=speed))
        if has_fix:
            self._report(ReaderState.ONLINE, f"gpsd {self.host}:{self.port}")
        return has_fix

    def _on_sky(self, obj: dict[str, Any]) -> None:
        hdop = _finite(obj.get("hdop"), 0, 100)
        sats = obj.get("uSat")
        if not isinstance(sats, int) or isinstance(sats, bool):
            sl = obj.get("satellites")
            sats = (sum(1 for s in sl if isinstance(s, dict) and s.get("used") is True)
                    if isinstance(sl, list) else None)
        old_sats, old_hdop = self._sky
        self._sky = (sats if sats is not None else old_sats,
                     hdop if hdop is not None else old_hdop)


DRIVER = GpsdDriver
