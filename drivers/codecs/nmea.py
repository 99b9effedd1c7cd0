"""NMEA 0183 from GNSS receivers: stream decoder, fix assembler, GPS time sanity check.

Protocol: NMEA 0183 (sentences ``$<talker><type>,<fields>*<hh>``, hh = XOR of the
bytes between ``$`` and ``*``). This module owns the whole parse: framing,
checksum, field split and strict number conversion. It does not use pynmea2,
measured on the twelve receiver captures in ``../shared/data/captures/nmea``
(130 kB, 2294 frames, median of 5x20 runs, this 2-core box):

* pynmea2 only to split fields (as before): 101-111k frames/s; splitting here:
  125-127k frames/s (1.15-1.23x), identical output on the captures and on
  196,881 mutated sentences;
* pynmea2 used fully (``parse(check=True)`` + its typed attributes): 51k
  lines/s for the parse alone, before framing and rejects, and it hides
  receiver quirks: MediaTek's pre-fix placeholder ``8960.000000,N`` reads as
  latitude 90.0 (the North Pole), and a malformed altitude such as ``5a5.4``
  comes back as the raw string instead of an error.

Decoder rules (all learned from real captures, see tests/test_codec_nmea.py):

* any two-letter talker (GP, GN, GL, GA, GB, BD, QZ, IN, ...); proprietary
  ``$P...`` sentences are checked and returned as :class:`NmeaOther`;
* the checksum is required: a sentence without one is rejected ``no-checksum``
  (a receiver that omits it gives us no way to spot line noise);
* a sentence ends at CR, LF or the next ``$``. A ``$`` inside a line means the
  sentence before it was cut (overlapping output after a reset or buffer
  overrun); the cut part is rejected ``truncated`` unless it already carries
  a valid ``*hh`` (then only the line end was lost and it is kept);
* over-long lines are rejected ``too-long``: standard talker sentences over
  :data:`MAX_STANDARD` (100) bytes (the standard allows 82), anything over
  :data:`MAX_LINE` (512). Proprietary sentences get the larger cap because real
  ones are long and valid: MediaTek ``$PMTKCHN`` is 203 bytes, u-blox
  ``$PUBX,03`` 378;
* control or non-ASCII bytes inside a sentence: ``bad-char``; bytes outside any
  sentence: ``garbage``; a bad value in a decoded field: ``bad-field``.

:class:`FixAssembler` merges the sentences of one epoch (same UTC time of day)
into a :class:`Fix`. :func:`check_gps_time` says whether a fix time can be
trusted (GPS week rollover, far past/future, time going backwards).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import reduce
from operator import xor

from drivers.codecs._frames import Reject

KIND = "gps_nmea"
# ``gatewayd decode``: text lines; gpsd's regression logs start with ``#`` notes.
INPUT = "lines"
COMMENT = b"#"
REASONS = frozenset({"too-long", "bad-char", "truncated", "no-checksum", "malformed", "checksum",
                     "parse", "bad-field", "garbage"})
DERIVED: tuple[str, ...] = ()  # frame properties ``gatewayd decode`` prints beside the fields
MAX_LINE = 512
MAX_STANDARD = 100
KNOT_MPS = 1852.0 / 3600.0
UTC = dt.UTC

_END = re.compile(rb"[\r\n$]")
_BAD_CHAR = re.compile(rb"[^\x20-\x7e]")
_HEX2 = re.compile(rb"[0-9A-Fa-f]{2}")


# ---------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Gga:
    """Fix data: time, position, quality, satellites, HDOP, altitude."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    quality: int  # 0 invalid, 1 GPS, 2 DGPS, 4/5 RTK, 6 estimated
    satellites: int | None
    hdop: float | None
    altitude_m: float | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Rmc:
    """Recommended minimum: time, date, status, position, speed, course."""

    talker: str
    time: dt.time | None
    date: dt.date | None
    valid: bool  # status A
    lat: float | None
    lon: float | None
    speed_mps: float | None
    course_deg: float | None
    mode: str | None  # NMEA 2.3+ mode indicator (A, D, E, N, ...)
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gsa:
    """DOP and active satellites; one per constellation on multi-GNSS receivers."""

    talker: str
    fix_type: int | None  # 1 none, 2 2D, 3 3D
    prns: tuple[int, ...]
    pdop: float | None
    hdop: float | None
    vdop: float | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gns:
    """Multi-constellation fix data (NMEA 3.0+)."""

    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    mode: str  # one letter per constellation; N = no fix
    satellites: int | None
    hdop: float | None
    altitude_m: float | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Gll:
    talker: str
    time: dt.time | None
    lat: float | None
    lon: float | None
    valid: bool
    raw: bytes


@dataclass(frozen=True, slots=True)
class Zda:
    talker: str
    time: dt.time | None
    date: dt.date | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Vtg:
    talker: str
    course_deg: float | None
    speed_mps: float | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class NmeaOther:
    """A checksum-valid sentence of a type not decoded here (GSV, $PMTK, DPT, ...)."""

    talker: str  # "P" for proprietary
    sentence_type: str
    raw: bytes


NmeaFrame = Gga | Rmc | Gsa | Gns | Gll | Zda | Vtg | NmeaOther


# ---------------------------------------------------------------- fields


class _FieldError(ValueError):
    pass


def _float(v: str, name: str) -> float | None:
    if not v:
        return None
    try:
        x = float(v)
    except ValueError:
        raise _FieldError(name) from None
    if x != x or x in (float("inf"), float("-inf")):
        raise _FieldError(name)
    return x


def _int(v: str, name: str) -> int | None:
    if not v:
        return None
    if not v.isdigit():
        raise _FieldError(name)
    return int(v)


def _time(v: str) -> dt.time | None:
    """hhmmss[.sss] -> time (UTC)."""
    if not v:
        return None
    if len(v) < 6 or not v[:6].isdigit() or (len(v) > 6 and (v[6] != "." or not v[7:].isdigit())):
        raise _FieldError("time")
    h, m, s = int(v[0:2]), int(v[2:4]), int(v[4:6])
    frac = v[7:]
    us = int((frac + "000000")[:6]) if frac else 0
    if h > 23 or m > 59 or s > 60:
        raise _FieldError("time")
    s = min(s, 59)  # leap second: clamp, datetime cannot hold :60
    return dt.time(h, m, s, us, tzinfo=UTC)


def _date_ddmmyy(v: str) -> dt.date | None:
    """RMC date. Two-digit year pivot at 80 (GPS started in 1980)."""
    if not v:
        return None
    if len(v) != 6 or not v.isdigit():
        raise _FieldError("date")
    d, m, y = int(v[0:2]), int(v[2:4]), int(v[4:6])
    try:
        return dt.date(1900 + y if y >= 80 else 2000 + y, m, d)
    except ValueError:
        raise _FieldError("date") from None


def _latlon(v: str, hemi: str, deg_digits: int, name: str) -> float | None:
    if not v and not hemi:
        return None
    if not v or hemi not in ("N", "S", "E", "W"):
        raise _FieldError(name)
    dot = v.find(".")
    whole = v if dot < 0 else v[:dot]
    if len(whole) < 3 or not whole.isdigit():
        raise _FieldError(name)
    try:
        deg = int(whole[:-2])
        minutes = float(v[len(whole) - 2 :])
    except ValueError:
        raise _FieldError(name) from None
    if minutes >= 60.0:
        raise _FieldError(name)
    x = deg + minutes / 60.0
    if x > (90.0 if deg_digits == 2 else 180.0):
        raise _FieldError(name)
    return -x if hemi in ("S", "W") else x


def _f(data: list[str], i: int) -> str:
    return data[i] if i < len(data) else ""


def _pos(data: list[str], i: int, has_fix: bool = True) -> tuple[float | None, float | None]:
    """Position fields; a sentence that says "no fix" may carry placeholders.

    MediaTek chips report ``8960.000000,N`` (90 deg written as 89 deg 60 min)
    before their first fix: invalid, but harmless when the sentence itself says
    there is no fix, so only then is it read as "no position" instead of rejected.
    """
    try:
        return (
            _latlon(_f(data, i), _f(data, i + 1), 2, "lat"),
            _latlon(_f(data, i + 2), _f(data, i + 3), 3, "lon"),
        )
    except _FieldError:
        if has_fix:
            raise
        return None, None


def _knots(v: str, name: str) -> float | None:
    x = _float(v, name)
    return None if x is None else x * KNOT_MPS


def _build(talker: str, stype: str, data: list[str], raw: bytes) -> NmeaFrame:
    if stype == "GGA":
        q = _int(_f(data, 5), "quality")
        lat, lon = _pos(data, 1, bool(q))
        return Gga(
            talker,
            _time(_f(data, 0)),
            lat,
            lon,
            q or 0,
            _int(_f(data, 6), "satellites"),
            _float(_f(data, 7), "hdop"),
            _float(_f(data, 8), "altitude"),
            raw,
        )
    if stype == "RMC":
        lat, lon = _pos(data, 2, _f(data, 1) == "A")
        mode = _f(data, 11) or None
        return Rmc(
            talker,
            _time(_f(data, 0)),
            _date_ddmmyy(_f(data, 8)),
            _f(data, 1) == "A",
            lat,
            lon,
            _knots(_f(data, 6), "speed"),
            _float(_f(data, 7), "course"),
            mode,
            raw,
        )
    if stype == "GSA":
        prns = tuple(int(p) for p in data[2:14] if p.isdigit())
        ft = _int(_f(data, 1), "fix_type")
        return Gsa(
            talker,
            ft,
            prns,
            _float(_f(data, 14), "pdop"),
            _float(_f(data, 15), "hdop"),
            _float(_f(data, 16), "vdop"),
            raw,
        )
    if stype == "GNS":
        lat, lon = _pos(data, 1, _f(data, 5).strip("N") != "")
        return Gns(
            talker,
            _time(_f(data, 0)),
            lat,
            lon,
            _f(data, 5),
            _int(_f(data, 6), "satellites"),
            _float(_f(data, 7), "hdop"),
            _float(_f(data, 8), "altitude"),
            raw,
        )
    if stype == "GLL":
        lat, lon = _pos(data, 0, _f(data, 5) == "A")
        return Gll(talker, _time(_f(data, 4)), lat, lon, _f(data, 5) == "A", raw)
    if stype == "ZDA":
        t = _time(_f(data, 0))
        d, m, y = _int(_f(data, 1), "day"), _int(_f(data, 2), "month"), _int(_f(data, 3), "year")
        date = None
        if d is not None and m is not None and y is not None:
            try:
                date = dt.date(y, m, d)
            except ValueError:
                raise _FieldError("date") from None
        return Zda(talker, t, date, raw)
    if stype == "VTG":
        # NMEA 2.3+: course T, course M, knots N, km/h K (older: no unit letters).
        if _f(data, 1) == "T" or _f(data, 5) == "N" or _f(data, 7) == "K":
            kmh = _float(_f(data, 6), "speed")
            spd = kmh / 3.6 if kmh is not None else _knots(_f(data, 4), "speed")
        else:
            spd = _knots(_f(data, 2), "speed")
        return Vtg(talker, _float(_f(data, 0), "course"), spd, raw)
    return NmeaOther(talker, stype, raw)


_DECODED = frozenset({"GGA", "RMC", "GSA", "GNS", "GLL", "ZDA", "VTG"})


def decode_sentence(line: bytes, cut: bool = False) -> NmeaFrame | Reject:
    """Decode one sentence (``$`` up to, not including, the line end).

    ``cut``: the sentence was ended by a new ``$`` rather than CR/LF.
    """
    n = len(line)
    if n > MAX_LINE:
        return Reject("too-long", line, f"{n} bytes")
    if _BAD_CHAR.search(line):
        return Reject("bad-char", line)
    star = line.rfind(b"*")
    if star < 0 or star != n - 3 or not _HEX2.fullmatch(line, star + 1):
        if cut:
            return Reject("truncated", line)
        if star < 0:
            return Reject("no-checksum", line)
        return Reject("malformed", line, "checksum field is not *hh at the end")
    body = line[1:star]
    calc = reduce(xor, body, 0)
    given = int(line[star + 1 :], 16)
    if calc != given:
        return Reject("checksum", line, f"computed {calc:02X}, sentence says {given:02X}")
    comma = body.find(b",")
    addr = body if comma < 0 else body[:comma]
    if addr[:1] == b"P":
        return NmeaOther("P", addr[1:].decode("ascii"), line)
    if len(addr) != 5 or not addr.isalnum() or n > MAX_STANDARD:
        if n > MAX_STANDARD:
            return Reject("too-long", line, f"{n} bytes for a standard sentence")
        return NmeaOther(addr[:2].decode("ascii"), addr[2:].decode("ascii"), line)
    talker, stype = addr[:2].decode("ascii"), addr[2:].decode("ascii")
    if stype not in _DECODED:
        return NmeaOther(talker, stype, line)
    if comma < 0:
        return Reject("parse", line, "no fields after the address")
    if b"*" in body:
        return Reject("parse", line, "'*' inside the fields")
    try:
        return _build(talker, stype, body[comma + 1 :].decode("ascii").split(","), line)
    except _FieldError as e:
        return Reject("bad-field", line, str(e))


class Decoder:
    """Stream decoder: bytes in any chunking -> sentences and rejects; never raises."""

    KIND = KIND

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[NmeaFrame | Reject]:
        buf = self._buf
        buf += data
        out: list[NmeaFrame | Reject] = []
        pos = 0
        end = len(buf)
        while pos < end:
            s = buf.find(b"$", pos)
            if s < 0:
                self._garbage(buf[pos:end], out)
                pos = end
                break
            if s > pos:
                self._garbage(buf[pos:s], out)
            m = _END.search(buf, s + 1)
            if m is None:
                if end - s > MAX_LINE:
                    out.append(Reject("too-long", bytes(buf[s : s + MAX_LINE])))
                    pos = s + MAX_LINE  # the tail is garbage until the next '$'
                    continue
                pos = s
                break
            e = m.start()
            line = bytes(buf[s:e])
            if buf[e] == 0x24:  # '$'
                out.append(decode_sentence(line, cut=True))
                pos = e
            else:
                out.append(decode_sentence(line))
                pos = e + 1
        del buf[:pos]
        return out

    @staticmethod
    def _garbage(chunk: bytearray, out: list[NmeaFrame | Reject]) -> None:
        junk = bytes(chunk).strip(b"\r\n\t ")
        if junk:
            out.append(Reject("garbage", junk))

    def flush(self) -> list[NmeaFrame | Reject]:
        """End of input: an unterminated last sentence is kept only if its checksum is whole."""
        rest = bytes(self._buf)
        self._buf.clear()
        if not rest:
            return []
        if rest[:1] != b"$":
            junk = rest.strip(b"\r\n\t ")
            return [Reject("garbage", junk)] if junk else []
        return [decode_sentence(rest, cut=True)]


# ---------------------------------------------------------------- fixes


@dataclass(frozen=True, slots=True)
class Fix:
    """One epoch's merged navigation solution (becomes gateway.model.GpsFix).

    ``lat``/``lon`` are set only from a sentence that says it has a fix (GGA
    quality > 0, GNS mode not N, RMC/GLL status A). ``fix_type`` comes from
    GSA (best of the constellations); without GSA it is 3 with an altitude,
    2 with only a position, else 1.
    """

    time: dt.datetime | None  # UTC; None until a date is known (RMC or ZDA)
    time_of_day: dt.time | None
    lat: float | None
    lon: float | None
    fix_quality: int
    fix_type: int
    satellites: int | None
    hdop: float | None
    speed_mps: float | None
    course_deg: float | None
    altitude_m: float | None
    sentences: tuple[str, ...]

    @property
    def has_position(self) -> bool:
        return self.lat is not None and self.lon is not None


@dataclass(slots=True)
class _Epoch:
    tod: dt.time | None = None
    date: dt.date | None = None
    pos: tuple[float, float] | None = None
    pos_rank: int = 99
    quality: int = 0
    gsa_type: int | None = None
    satellites: int | None = None
    hdop: float | None = None
    speed: float | None = None
    course: float | None = None
    altitude: float | None = None
    types: list[str] = field(default_factory=list)


# Position source preference: the richest sentence wins inside one epoch.
_RANK = {"GGA": 0, "GNS": 1, "RMC": 2, "GLL": 3}


class FixAssembler:
    """Merge the sentences of one epoch into a :class:`Fix`; pure, feed-driven.

    An epoch is the run of sentences sharing one UTC time of day; GSA/VTG carry
    no time and join the current epoch. A fix is emitted when a sentence with a
    different time arrives, and by :meth:`flush`. The date comes from the
    epoch's RMC/ZDA or, failing that, the last date seen (advanced by a day
    when the time of day wraps past midnight).
    """

    def __init__(self) -> None:
        self._cur: _Epoch | None = None
        self._last_date: dt.date | None = None
        self._last_tod: dt.time | None = None

    def feed(self, frame: object) -> list[Fix]:
        if not isinstance(frame, Gga | Rmc | Gsa | Gns | Gll | Zda | Vtg):
            return []
        out: list[Fix] = []
        tod = getattr(frame, "time", None)
        cur = self._cur
        if tod is not None and (cur is None or (cur.tod is not None and cur.tod != tod)):
            if cur is not None:
                out.append(self._finish(cur))
            cur = self._cur = _Epoch(tod=tod)
        elif cur is None:
            cur = self._cur = _Epoch()
        if cur.tod is None and tod is not None:
            cur.tod = tod
        self._merge(cur, frame)
        return out

    def flush(self) -> list[Fix]:
        cur, self._cur = self._cur, None
        return [self._finish(cur)] if cur is not None else []

    @staticmethod
    def _merge(e: _Epoch, f: Gga | Rmc | Gsa | Gns | Gll | Zda | Vtg) -> None:
        name = type(f).__name__.upper()
        e.types.append(name)
        has_fix = False
        if isinstance(f, Gga):
            e.quality = max(e.quality, f.quality)
            e.satellites = f.satellites if f.satellites is not None else e.satellites
            e.hdop = f.hdop if f.hdop is not None else e.hdop
            has_fix = f.quality > 0
            if has_fix and f.altitude_m is not None:
                e.altitude = f.altitude_m
        elif isinstance(f, Gns):
            has_fix = bool(f.mode) and any(c not in "N" for c in f.mode)
            if e.satellites is None:
                e.satellites = f.satellites
            if e.hdop is None:
                e.hdop = f.hdop
            if has_fix and e.altitude is None:
                e.altitude = f.altitude_m
        elif isinstance(f, Rmc):
            has_fix = f.valid and f.mode != "N"
            e.date = f.date or e.date
            if f.valid:
                e.speed = f.speed_mps if f.speed_mps is not None else e.speed
                e.course = f.course_deg if f.course_deg is not None else e.course
        elif isinstance(f, Gll):
            has_fix = f.valid
        elif isinstance(f, Zda):
            e.date = e.date or f.date
        elif isinstance(f, Gsa):
            if f.fix_type is not None:
                e.gsa_type = max(e.gsa_type or 0, f.fix_type)
            if e.hdop is None:
                e.hdop = f.hdop
        elif isinstance(f, Vtg) and e.speed is None:
            e.speed = f.speed_mps
        lat = getattr(f, "lat", None)
        lon = getattr(f, "lon", None)
        if has_fix and lat is not None and lon is not None and _RANK[name] <= e.pos_rank:
            e.pos = (lat, lon)
            e.pos_rank = _RANK[name]

    def _finish(self, e: _Epoch) -> Fix:
        date = e.date
        if date is None and self._last_date is not None and e.tod is not None:
            date = self._last_date
            if self._last_tod is not None and e.tod < self._last_tod:
                # Wrapped past midnight (a small step back is a receiver glitch, keep the day).
                back = _seconds(self._last_tod) - _seconds(e.tod)
                if back > 12 * 3600:
                    date = date + dt.timedelta(days=1)
        if date is not None:
            self._last_date = date
        if e.tod is not None:
            self._last_tod = e.tod
        when = dt.datetime.combine(date, e.tod) if date is not None and e.tod is not None else None
        if e.gsa_type is not None:
            fix_type = e.gsa_type
        elif e.pos is not None:
            fix_type = 3 if e.altitude is not None else 2
        else:
            fix_type = 1
        lat, lon = e.pos if e.pos is not None else (None, None)
        return Fix(
            time=when,
            time_of_day=e.tod,
            lat=lat,
            lon=lon,
            fix_quality=e.quality,
            fix_type=fix_type,
            satellites=e.satellites,
            hdop=e.hdop,
            speed_mps=e.speed,
            course_deg=e.course,
            altitude_m=e.altitude,
            sentences=tuple(e.types),
        )


def _seconds(t: dt.time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6


# ---------------------------------------------------------------- time check

GPS_WEEK_ROLLOVER = dt.timedelta(weeks=1024)  # 7168 days, the 10-bit week counter
EARLIEST_PLAUSIBLE = dt.datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class TimeCheck:
    trusted: bool
    reason: (
        str  # "ok", "no-time", "gps-week-rollover", "too-old", "in-future", "in-past", "backwards"
    )
    corrected: dt.datetime | None = None  # rollover only: the time shifted by n*1024 weeks


def check_gps_time(
    fix_time: dt.datetime | None,
    reference_time: dt.datetime | None,
    last_fix_time: dt.datetime | None = None,
    *,
    max_skew: dt.timedelta = dt.timedelta(days=1),
    earliest: dt.datetime = EARLIEST_PLAUSIBLE,
) -> TimeCheck:
    """Should a GPS fix time be trusted? Pure; all times timezone-aware UTC.

    ``reference_time`` is the host clock; it is used only if it is itself
    plausible (not before ``earliest``: boxes without an RTC boot in 1970).
    A fix within ``max_skew`` of n*1024 weeks (n = 1, 2, or -1) from the
    reference or, with no usable reference, a fix before ``earliest`` that is
    after it once 1024 weeks are added, is a GPS week rollover (old receivers
    with a 10-bit week counter; see traccar#4965).
    """
    if fix_time is None:
        return TimeCheck(False, "no-time")
    ref = reference_time if reference_time is not None and reference_time >= earliest else None
    if ref is not None:
        delta = fix_time - ref
        if abs(delta) > max_skew:
            for n in (1, 2, -1):
                if abs(delta + n * GPS_WEEK_ROLLOVER) <= max_skew:
                    return TimeCheck(False, "gps-week-rollover", fix_time + n * GPS_WEEK_ROLLOVER)
            return TimeCheck(False, "in-future" if delta > dt.timedelta(0) else "in-past")
    elif fix_time < earliest:
        shifted = fix_time + GPS_WEEK_ROLLOVER
        if shifted >= earliest:
            return TimeCheck(False, "gps-week-rollover", shifted)
        return TimeCheck(False, "too-old")
    if last_fix_time is not None and fix_time < last_fix_time:
        return TimeCheck(False, "backwards")
    return TimeCheck(True, "ok")
