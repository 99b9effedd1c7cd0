"""Record readings to a file and replay them through the engine (docs/zones.md).

Readings file: JSON lines, one object per line, in the order the pipeline
received them. Every line has ``type`` and ``t`` (UTC epoch seconds: the
reading's own time; for GPS the fix time). Fields a reading does not have
are left out.

    {"type": "tag", "t": 1.7e9, "reader": "gate-1", "tag": "62E3086CED", "rssi": -61.0,
     "antenna": 1}
    {"type": "ble", "t": 1.7e9, "reader": "ble-1", "tag": "c0ffee000001", "rssi": -70,
     "battery_mv": 2950, "temperature_c": 21.5, "button": false}
    {"type": "gps", "t": 1.7e9, "reader": "gps", "lat": 37.56, "lon": 126.97,
     "fix_quality": 1, "fix_type": 3, "satellites": 9, "hdop": 0.9, "speed_mps": 3.2,
     "time_trusted": true}
    {"type": "tick", "t": 1.7e9}                           an explicit engine tick
    {"type": "start", "t": 1.7e9}                          the gateway (re)started here
    {"type": "roll_call_start", "t": 1.7e9, "alert_id": "quake-7"}
    {"type": "roll_call_end", "t": 1.7e9, "alert_id": "quake-7"}

Implicit ticks: before each line that is not GPS, the replay ticks the engine
at every multiple of ``[engine] tick_s`` since the previous tick up to the
line's time, so timeouts fire at the same engine times on every run. A
``start`` line (written by the Recorder when the daemon starts) is not
bridged by ticks: the gap before it replays as downtime, as it happened.
Blank lines and lines starting with ``#`` are ignored.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigInvalid, engine_config, load
from gateway.engine import (
    Engine,
    EngineState,
    end_roll_call,
    locate,
    start_roll_call,
)
from gateway.model import BleSighting, Event, GpsFix, Lane, Reading, TagRead, canonical_tag_id

_GPS_FIELDS = ("fix_quality", "fix_type", "satellites", "hdop", "speed_mps", "time_trusted")
_GPS_DEFAULTS = {"fix_quality": 0, "fix_type": 1, "satellites": None, "hdop": None,
                 "speed_mps": None, "time_trusted": True}


class ReplayError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Control:
    """A non-reading line: tick, start, roll_call_start, roll_call_end."""

    type: str
    t: float
    alert_id: str | None = None


Item = Reading | Control


def reading_to_dict(r: Reading) -> dict[str, Any]:
    if isinstance(r, TagRead):
        d: dict[str, Any] = {"type": "tag", "t": r.time, "reader": r.reader, "tag": r.tag}
        if r.rssi is not None:
            d["rssi"] = r.rssi
        if r.antenna is not None:
            d["antenna"] = r.antenna
        return d
    if isinstance(r, BleSighting):
        d = {"type": "ble", "t": r.time, "reader": r.reader, "tag": r.tag, "rssi": r.rssi}
        if r.battery_mv is not None:
            d["battery_mv"] = r.battery_mv
        if r.temperature_c is not None:
            d["temperature_c"] = r.temperature_c
        if r.button:
            d["button"] = True
        return d
    d = {"type": "gps", "t": r.time, "reader": r.reader, "lat": r.lat, "lon": r.lon}
    for k in _GPS_FIELDS:
        v = getattr(r, k)
        if v != _GPS_DEFAULTS[k]:
            d[k] = v
    return d


def _num(d: dict[str, Any], k: str, default: Any = None, kind: type = float) -> Any:
    v = d.get(k, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ReplayError(f"{k}: expected a number, got {v!r}")
    if kind is int:
        if v != int(v):
            raise ReplayError(f"{k}: expected an integer, got {v!r}")
        return int(v)
    if not math.isfinite(v):
        raise ReplayError(f"{k}: not a finite number")
    return float(v)


def _str(d: dict[str, Any], k: str) -> str:
    v = d.get(k)
    if not isinstance(v, str) or not v:
        raise ReplayError(f"{k}: expected a non-empty string, got {v!r}")
    return v


def item_from_dict(d: dict[str, Any]) -> Item:
    if not isinstance(d, dict):
        raise ReplayError("expected a JSON object")
    kind = d.get("type")
    t = _num(d, "t")
    if t is None:
        raise ReplayError("t: missing")
    if kind == "tag":
        return TagRead(reader=_str(d, "reader"), tag=canonical_tag_id(_str(d, "tag")), time=t,
                       rssi=_num(d, "rssi"), antenna=_num(d, "antenna", kind=int))
    if kind == "ble":
        rssi = _num(d, "rssi", kind=int)
        if rssi is None:
            raise ReplayError("rssi: missing")
        return BleSighting(reader=_str(d, "reader"), tag=canonical_tag_id(_str(d, "tag")),
                           time=t, rssi=rssi, battery_mv=_num(d, "battery_mv", kind=int),
                           temperature_c=_num(d, "temperature_c"),
                           button=bool(d.get("button", False)))
    if kind == "gps":
        return GpsFix(reader=_str(d, "reader"), time=t, lat=_num(d, "lat"), lon=_num(d, "lon"),
                      fix_quality=_num(d, "fix_quality", 0, int),
                      fix_type=_num(d, "fix_type", 1, int),
                      satellites=_num(d, "satellites", kind=int), hdop=_num(d, "hdop"),
                      speed_mps=_num(d, "speed_mps"),
                      time_trusted=bool(d.get("time_trusted", True)))
    if kind in ("tick", "start"):
        return Control(kind, t)
    if kind in ("roll_call_start", "roll_call_end"):
        aid = d.get("alert_id")
        if kind == "roll_call_start" or aid is not None:
            aid = _str(d, "alert_id")
        return Control(kind, t, aid)
    raise ReplayError(f"type: unknown {kind!r} (tag, ble, gps, tick, start, roll_call_start, "
                      "roll_call_end)")


def read_items(path: str | Path) -> Iterator[Item]:
    """The file's items in order; ReplayError names the line of a bad one."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            try:
                yield item_from_dict(json.loads(s))
            except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
                raise ReplayError(f"{path}:{n}: {e}") from None


class Replayer:
    """Feeds items to an engine with deterministic implicit ticks."""

    def __init__(self, engine: Engine, state: EngineState | None = None) -> None:
        self.engine = engine
        self.state = state if state is not None else engine.initial_state()
        self.tick_s = engine.runtime.settings.tick_s
        self.last_tick: float | None = None

    def _ticks_until(self, t: float, out: list[Event]) -> None:
        eng, step = self.engine, self.tick_s
        if self.last_tick is None:
            self.last_tick = math.floor(t / step) * step
        k = math.floor(self.last_tick / step) + 1
        while k * step <= t:
            self.state, evs = eng.tick(self.state, k * step)
            out.extend(evs)
            k += 1
        self.last_tick = max(self.last_tick, t)

    def feed(self, item: Item) -> list[Event]:
        out: list[Event] = []
        eng = self.engine
        if isinstance(item, Control):
            if item.type == "start":
                self.last_tick = None  # do not bridge downtime with ticks
                return out
            self._ticks_until(item.t, out)
            if item.type == "tick":
                self.state, evs = eng.tick(self.state, item.t)
                out.extend(evs)
            elif item.type == "roll_call_start":
                self.state = start_roll_call(self.state, item.alert_id or "", item.t)
                self.state, evs = eng.tick(self.state, item.t)
                out.extend(evs)
            else:
                self.state = end_roll_call(self.state, item.alert_id)
            return out
        if not isinstance(item, GpsFix):  # fix times are not engine time (docs/zones.md)
            self._ticks_until(item.time, out)
        self.state, evs = eng.step(self.state, item)
        out.extend(evs)
        return out

    def run(self, items: Iterable[Item]) -> Iterator[Event]:
        for it in items:
            yield from self.feed(it)


def event_to_dict(ev: Event) -> dict[str, Any]:
    return {"kind": ev.kind, "time": ev.time, "lane": Lane(ev.lane).name.lower(),
            "reader": ev.reader, "child": ev.child, "data": ev.data}


def event_line(ev: Event) -> str:
    return json.dumps(event_to_dict(ev), sort_keys=True, ensure_ascii=False)


class Recorder:
    """Appends readings to a readings file (``gatewayd run --record FILE``).

    Call it with each reading (it is the pipeline's ``record`` hook). Opening
    writes a ``start`` line, so a replay sees restarts where they happened.
    Lines are buffered and flushed every ``flush_s`` of reading time and on close.
    """

    def __init__(self, path: str | Path, now: float | None = None, flush_s: float = 1.0) -> None:
        self.path = str(path)
        self._f: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._flush_s = flush_s
        self._flushed = now if now is not None else 0.0
        if now is not None:
            self._write({"type": "start", "t": now})
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

    def control(self, kind: str, t: float, alert_id: str | None = None) -> None:
        """Record a tick or roll-call start/end so a replay reproduces it."""
        d: dict[str, Any] = {"type": kind, "t": t}
        if alert_id is not None:
            d["alert_id"] = alert_id
        self._write(d)

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _engine(config_path: str) -> Engine:
    return Engine(engine_config(load(config_path)))


def replay(engine: Engine, readings_path: str | Path,
           out: TextIO | None = None) -> EngineState:
    """Replay a file; write each event as a JSON line to ``out``; return the final state."""
    rp = Replayer(engine)
    for ev in rp.run(read_items(readings_path)):
        if out is not None:
            out.write(event_line(ev) + "\n")
    return rp.state


def _replayed(verb: str, config_path: str, readings_path: str,
              out: TextIO | None) -> tuple[Engine, EngineState] | int:
    """Load the config and replay the file; an exit code (message on stderr) on failure."""
    try:
        engine = _engine(config_path)
        return engine, replay(engine, readings_path, out)
    except ConfigInvalid as e:
        print(f"config invalid:\n{e}", file=sys.stderr)
        return 2
    except (ReplayError, OSError) as e:
        print(f"{verb}: {e}", file=sys.stderr)
        return 1


def main_replay(config_path: str, readings_path: str, out: TextIO) -> int:
    """`gatewayd replay`: events as JSON lines (sorted keys), identical on every run."""
    done = _replayed("replay", config_path, readings_path, out)
    return done if isinstance(done, int) else 0


def print_locate(answer: dict[str, Any], out: TextIO) -> int:
    """One JSON line; exit code 0 when found, 1 when not."""
    out.write(json.dumps(answer, sort_keys=True, ensure_ascii=False) + "\n")
    return 0 if answer.get("found") else 1


def main_locate(config_path: str, readings_path: str, who: str, out: TextIO) -> int:
    """`gatewayd locate`: replay, then answer where ``who`` (child ref or tag id) was seen."""
    done = _replayed("locate", config_path, readings_path, None)
    if isinstance(done, int):
        return done
    engine, state = done
    return print_locate(locate(state, engine.runtime, who), out)
