"""gpsd's JSON protocol, one object per line (gpsd_json(5), "GPSD JSON protocol").

After ``?WATCH={"enable":true,"json":true};`` gpsd streams VERSION, DEVICES and
WATCH, then per epoch a TPV (time/position/velocity: ``mode`` 0/1 no fix, 2 =
2D, 3 = 3D; ``status`` 2 = DGPS; ``time`` ISO 8601 UTC; ``lat``/``lon``,
``speed`` m/s) and, less often, a SKY (``hdop``, ``satellites`` with ``used``
flags; ``uSat`` from 3.23). ``gpspipe -w`` logs are the same lines.

Decoder rules:

* a line ends at LF (CR and blanks around it are dropped, blank lines skipped);
  one longer than :data:`MAX_LINE` is rejected ``too-long`` and skipped up to
  its LF, whatever the chunking;
* a line that is not a JSON object (NMEA relayed with ``"nmea":true``, noise,
  invalid UTF-8, absurd nesting): ``bad-json``;
* a TPV with ``mode`` outside 0..3, a fix (mode >= 2) without a usable lat/lon,
  or a ``time`` that is not ISO 8601: ``bad-field``. Numbers must be finite JSON
  numbers in range; an out-of-range optional value (``speed``, SKY ``hdop``)
  reads as absent, as before this codec existed;
* VERSION, DEVICES, SKY, ERROR are decoded; any other class (WATCH, ATT, PPS,
  TOFF, GST, ...) is :class:`GpsdOther`, not an error.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

from drivers.codecs._frames import Reject

KIND = "gpsd"
# ``gatewayd decode``: text lines (``gpspipe -w`` logs); ``#`` lines are notes.
INPUT = "lines"
COMMENT = b"#"
MAX_LINE = 65536  # gpsd's longest objects (SKY with many satellites) are a few kB
REASONS = frozenset({"bad-json", "bad-field", "too-long"})
DERIVED = ("has_fix", "fix_quality")  # frame properties ``gatewayd decode`` prints too


@dataclass(frozen=True, slots=True)
class Tpv:
    """Time-position-velocity. ``lat``/``lon`` are set exactly when ``mode >= 2``."""

    mode: int  # 0 unknown, 1 no fix, 2 2D, 3 3D
    time: dt.datetime | None  # UTC
    lat: float | None
    lon: float | None
    status: int | None  # gpsd's fix status (2 = DGPS, ...), when 1..9
    speed_mps: float | None
    raw: bytes

    @property
    def has_fix(self) -> bool:
        return self.mode >= 2

    @property
    def fix_quality(self) -> int:
        """NMEA-style quality: 0 without a fix, gpsd's ``status`` (default 1) with one."""
        return (self.status or 1) if self.has_fix else 0


@dataclass(frozen=True, slots=True)
class Sky:
    satellites_used: int | None  # ``uSat``, else the count of ``used`` satellites
    hdop: float | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Version:
    release: str
    proto_major: int | None
    proto_minor: int | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Devices:
    paths: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class GpsdError:
    """gpsd's own ERROR object (a bad request, a device it cannot open)."""

    message: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class GpsdOther:
    """A well-formed object of a class not needed here (WATCH, PPS, GST, ...)."""

    cls: str  # "" when the object names no class
    raw: bytes


GpsdFrame = Tpv | Sky | Version | Devices | GpsdError | GpsdOther


def _finite(v: Any, lo: float, hi: float) -> float | None:
    """A JSON number in range, else None; NaN, strings and booleans are not numbers."""
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return float(v) if lo <= v <= hi else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _iso(v: Any) -> dt.datetime | None:
    if not isinstance(v, str):
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def _tpv(obj: dict[str, Any], raw: bytes) -> Tpv | Reject:
    mode = obj.get("mode", 0)
    if _int(mode) is None or not 0 <= mode <= 3:
        return Reject("bad-field", raw, "mode")
    lat = _finite(obj.get("lat"), -90, 90)
    lon = _finite(obj.get("lon"), -180, 180)
    if mode >= 2 and (lat is None or lon is None):
        return Reject("bad-field", raw, "a fix without a usable lat/lon")
    when = _iso(obj.get("time"))
    if "time" in obj and when is None:
        return Reject("bad-field", raw, "time")
    status = _int(obj.get("status"))
    fix = mode >= 2
    return Tpv(
        mode=mode,
        time=when,
        lat=lat if fix else None,
        lon=lon if fix else None,
        status=status if status is not None and 0 < status < 10 else None,
        speed_mps=_finite(obj.get("speed"), 0, 1000),
        raw=raw,
    )


def _sky(obj: dict[str, Any], raw: bytes) -> Sky:
    sats = _int(obj.get("uSat"))
    if sats is None:
        sl = obj.get("satellites")
        if isinstance(sl, list):
            sats = sum(1 for s in sl if isinstance(s, dict) and s.get("used") is True)
    return Sky(sats, _finite(obj.get("hdop"), 0, 100), raw)


def decode_line(line: bytes) -> GpsdFrame | Reject:
    """Decode one line (without its LF; surrounding blanks are allowed)."""
    if len(line) > MAX_LINE:  # measured as received, so chunking cannot change the verdict
        return Reject("too-long", line[:MAX_LINE], f"over {MAX_LINE} bytes")
    raw = line.strip()
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        detail = "an NMEA sentence" if raw[:1] in (b"$", b"!") else "not JSON"
        return Reject("bad-json", raw, detail)
    if not isinstance(obj, dict):
        return Reject("bad-json", raw, "not a JSON object")
    cls = obj.get("class")
    if cls == "TPV":
        return _tpv(obj, raw)
    if cls == "SKY":
        return _sky(obj, raw)
    if cls == "VERSION":
        release = obj.get("release")
        return Version(release if isinstance(release, str) else "",
                       _int(obj.get("proto_major")), _int(obj.get("proto_minor")), raw)
    if cls == "DEVICES":
        devs = obj.get("devices")
        paths = tuple(d["path"] for d in devs if isinstance(d, dict)
                      and isinstance(d.get("path"), str)) if isinstance(devs, list) else ()
        return Devices(paths, raw)
    if cls == "ERROR":
        return GpsdError(str(obj.get("message", ""))[:200], raw)
    return GpsdOther(cls if isinstance(cls, str) else "", raw)


class Decoder:
    """Stream decoder: bytes in any chunking -> objects and rejects; never raises."""

    KIND = KIND

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False  # inside a too-long line, dropping bytes up to its LF

    def feed(self, data: bytes) -> list[GpsdFrame | Reject]:
        buf = self._buf
        buf += data
        out: list[GpsdFrame | Reject] = []
        pos = 0
        while (nl := buf.find(b"\n", pos)) >= 0:
            if self._skipping:
                self._skipping = False
            else:
                self._line(bytes(buf[pos:nl]), out)
            pos = nl + 1
        del buf[:pos]
        if len(buf) > MAX_LINE:
            if not self._skipping:
                out.append(Reject("too-long", bytes(buf[:MAX_LINE]), f"over {MAX_LINE} bytes"))
                self._skipping = True
            buf.clear()
        return out

    @staticmethod
    def _line(line: bytes, out: list[GpsdFrame | Reject]) -> None:
        if line.strip():
            out.append(decode_line(line))

    def flush(self) -> list[GpsdFrame | Reject]:
        """End of input: a last line without LF is decoded as it stands."""
        rest, skipping = bytes(self._buf), self._skipping
        self._buf.clear()
        self._skipping = False
        out: list[GpsdFrame | Reject] = []
        if not skipping:
            self._line(rest, out)
        return out
