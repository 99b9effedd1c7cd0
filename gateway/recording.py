"""The readings file: its format, reading it, and the Recorder that writes it.

The live pipeline records through this module (``gatewayd run --record FILE``);
gateway/replay.py replays and locates from it. Nothing here runs the engine.

Readings file: JSON lines, one object per line, in the order the pipeline
received them. Every line has ``type`` and ``t`` (UTC epoch seconds: the
reading's own time; for GPS the fix time) and, written since the engine runs
on monotonic time, ``m`` (the unit's monotonic clock at that moment, the
engine time of the line; docs/architecture.md "Engine time"). Files without
``m`` still replay, on ``t``. Fields a reading does not have are left out.

    {"type": "tag", "t": 1.7e9, "m": 5012.25, "reader": "gate-1", "tag": "62E3086CED",
     "rssi": -61.0, "antenna": 1}
    {"type": "ble", "t": 1.7e9, "reader": "ble-1", "tag": "c0ffee000001", "rssi": -70,
     "battery_mv": 2950, "temperature_c": 21.5, "button": false}
    {"type": "gps", "t": 1.7e9, "reader": "gps", "lat": 37.56, "lon": 126.97,
     "fix_quality": 1, "fix_type": 3, "satellites": 9, "hdop": 0.9, "speed_mps": 3.2,
     "time_trusted": true}
    {"type": "tick", "t": 1.7e9}                           an explicit engine tick
    {"type": "start", "t": 1.7e9}                          the gateway (re)started here
    {"type": "roll_call_start", "t": 1.7e9, "alert_id": "quake-7"}
    {"type": "roll_call_end", "t": 1.7e9, "alert_id": "quake-7"}

A replay ticks the engine between lines (gateway/replay.py), but nothing follows
the last line: so the Recorder ends a recording with a ``tick`` line at the live
engine's last tick, and timeouts the live run decided after the last reading (a
gate passage closed by its window, a zone exit) are decided by the replay too.
Blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.model import BleSighting, GpsFix, Reading, TagRead, canonical_tag_id

_GPS_FIELDS = ("fix_quality", "fix_type", "satellites", "hdop", "speed_mps", "time_trusted")
_GPS_DEFAULTS = {"fix_quality": 0, "fix_type": 1, "satellites": None, "hdop": None,
                 "speed_mps": None, "time_trusted": True}


class ReadingsError(ValueError):
    """A line of a readings file is not a reading or control line (names file and line)."""


@dataclass(frozen=True, slots=True)
class Control:
    """A non-reading line: tick, start, roll_call_start, roll_call_end."""

    type: str
    t: float
    alert_id: str | None = None
    mono: float = math.nan  # the monotonic clock at ``t`` (NaN: not recorded)


Item = Reading | Control


def reading_to_dict(r: Reading) -> dict[str, Any]:
    if isinstance(r, TagRead):
        d: dict[str, Any] = {"type": "tag", "t": r.time, "reader": r.reader, "tag": r.tag}
        if r.rssi is not None:
            d["rssi"] = r.rssi
        if r.antenna is not None:
            d["antenna"] = r.antenna
    elif isinstance(r, BleSighting):
        d = {"type": "ble", "t": r.time, "reader": r.reader, "tag": r.tag, "rssi": r.rssi}
        if r.battery_mv is not None:
            d["battery_mv"] = r.battery_mv
        if r.temperature_c is not None:
            d["temperature_c"] = r.temperature_c
        if r.button:
            d["button"] = True
    else:
        d = {"type": "gps", "t": r.time, "reader": r.reader, "lat": r.lat, "lon": r.lon}
        for k in _GPS_FIELDS:
            v = getattr(r, k)
            if v != _GPS_DEFAULTS[k]:
                d[k] = v
    if r.mono == r.mono:  # not NaN
        d["m"] = r.mono
    return d


def _num(d: dict[str, Any], k: str, default: Any = None, kind: type = float) -> Any:
    v = d.get(k, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReadingsError(f"{k}: expected a number, got {v!r}")
    if kind is int:
        if v != int(v):
            raise ReadingsError(f"{k}: expected an integer, got {v!r}")
        return int(v)
    if not math.isfinite(v):
        raise ReadingsError(f"{k}: not a finite number")
    return float(v)


def _str(d: dict[str, Any], k: str) -> str:
    v = d.get(k)
    if not isinstance(v, str) or not v:
        raise ReadingsError(f"{k}: expected a non-empty string, got {v!r}")
    return v


def item_from_dict(d: dict[str, Any]) -> Item:
    if not isinstance(d, dict):
        raise ReadingsError("expected a JSON object")
    kind = d.get("type")
    t = _num(d, "t")
    if t is None:
        raise ReadingsError("t: missing")
    mono = _num(d, "m")
    if mono is None:  # older files: none, the engine runs on t
        mono = math.nan
    if kind == "tag":
        return TagRead(reader=_str(d, "reader"), tag=canonical_tag_id(_str(d, "tag")), time=t,
                       rssi=_num(d, "rssi"), antenna=_num(d, "antenna", kind=int), mono=mono)
    if kind == "ble":
        rssi = _num(d, "rssi", kind=int)
        if rssi is None:
            raise ReadingsError("rssi: missing")
        return BleSighting(reader=_str(d, "reader"), tag=canonical_tag_id(_str(d, "tag")),
                           time=t, rssi=rssi, battery_mv=_num(d, "battery_mv", kind=int),
                           temperature_c=_num(d, "temperature_c"),
                           button=bool(d.get("button", False)), mono=mono)
    if kind == "gps":
        return GpsFix(reader=_str(d, "reader"), time=t, lat=_num(d, "lat"), lon=_num(d, "lon"),
                      fix_quality=_num(d, "fix_quality", 0, int),
                      fix_type=_num(d, "fix_type", 1, int),
                      satellites=_num(d, "satellites", kind=int), hdop=_num(d, "hdop"),
                      speed_mps=_num(d, "speed_mps"),
                      time_trusted=bool(d.get("time_trusted", True)), mono=mono)
    if kind in ("tick", "start"):
        return Control(kind, t, mono=mono)
    if kind in ("roll_call_start", "roll_call_end"):
        aid = d.get("alert_id")
        if kind == "roll_call_start" or aid is not None:
            aid = _str(d, "alert_id")
        return Control(kind, t, aid, mono)
    raise ReadingsError(f"type: unknown {kind!r} (tag, ble, gps, tick, start, roll_call_start, "
                      "roll_call_end)")


def read_items(path: str | Path) -> Iterator[Item]:
    """The file's items in order; ReadingsError names the line of a bad one."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                yield item_from_dict(json.loads(s))
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                raise ReadingsError(f"{path}:{n}: {e}") from None


class Recorder:
    """Appends readings to a readings file (``gatewayd run --record FILE``).

    Call it with each reading (it is the pipeline's ``record`` hook). Opening
    writes a ``start`` line, so a replay sees restarts where they happened.
    Lines are buffered and flushed every ``flush_s`` of reading time and on close.
    """

    def __init__(self, path: str | Path, now: float | None = None, flush_s: float = 1.0,
                 mono: float = math.nan) -> None:
        self.path = str(path)
        self._f: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._flush_s = flush_s
        self._flushed = now if now is not None else 0.0
        if now is not None:
            self.control("start", now, mono=mono)
            self._f.flush()

    def _write(self, d: dict[str, Any]) -> None:
        self._f.write(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n")

    def __call__(self, reading: Reading) -> None:
        self._write(reading_to_dict(reading))
        t = reading.time
        if t - self._flushed >= self._flush_s or t < self._flushed:
            self._f.flush()
            self._flushed = t

    record = __call__

    def control(self, kind: str, t: float, alert_id: str | None = None,
                mono: float = math.nan) -> None:
        """Record a tick or roll-call start/end (wall ``t``, monotonic ``mono``) so a
        replay reproduces it."""
        d: dict[str, Any] = {"type": kind, "t": t}
        if mono == mono:  # not NaN
            d["m"] = mono
        if alert_id is not None:
            d["alert_id"] = alert_id
        self._write(d)

    def flush(self) -> None:
        self._f.flush()

    def close(self, last_tick: tuple[float, float] | None = None) -> None:
        """Close the file; ``last_tick`` (wall, monotonic time of the engine's last tick in
        the live run) is written as a closing ``tick`` line, so a replay decides what the
        live run decided by then."""
        if self._f.closed:
            return
        if last_tick is not None:
            self.control("tick", last_tick[0], mono=last_tick[1])
        self._f.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
