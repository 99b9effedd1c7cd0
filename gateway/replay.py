"""Replay a readings file through the engine, and answer locate from it (docs/zones.md).

The file format and the Recorder live in gateway/recording.py; this module is
the replay tool: deterministic implicit ticks, and the ``gatewayd replay`` and
``gatewayd locate`` mains.

Times in their output: ``time`` stays epoch seconds (what scripts compare),
with ``time_utc`` and ``time_local`` beside it as RFC 3339 (local: the
config's ``[engine] timezone``, the site's clock), because people read those.

Implicit ticks: before each line that is not GPS, the replay ticks the engine
at every multiple of ``[engine] tick_s`` of engine time (the line's ``m``, its
monotonic stamp; ``t`` in files without it) since the previous tick up to the
line's, so timeouts fire at the same engine times on every run, whatever the
wall clock did. A
``start`` line (written by the Recorder when the daemon starts) is not
bridged by ticks: the gap before it replays as downtime, as it happened.
"""

from __future__ import annotations

import json
import math
import sys
import zoneinfo
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigInvalid, engine_config, load
from gateway.contract import iso_utc
from gateway.engine import (
    Engine,
    EngineState,
    end_roll_call,
    locate,
    start_roll_call,
)
from gateway.model import Event, GpsFix, Lane
from gateway.recording import Control, Item, ReadingsError, read_items


class Replayer:
    """Feeds items to an engine with deterministic implicit ticks."""

    def __init__(self, engine: Engine, state: EngineState | None = None) -> None:
        self.engine = engine
        self.state = state if state is not None else engine.initial_state()
        self.tick_s = engine.runtime.settings.tick_s
        self.last_tick: float | None = None

    def _ticks_until(self, t: float, monotonic: bool, out: list[Event]) -> None:
        """Implicit ticks up to engine time ``t`` (``monotonic``: the file has monos, and
        the ticks' wall times follow the engine's offset; else engine time is wall time)."""
        eng, step = self.engine, self.tick_s
        if self.last_tick is None:
            self.last_tick = math.floor(t / step) * step
        k = math.floor(self.last_tick / step) + 1
        while k * step <= t:
            if monotonic:
                self.state, evs = eng.tick(self.state, k * step + self.state.wall_offset,
                                           k * step)
            else:
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
            monotonic = item.mono == item.mono  # not NaN
            t = item.mono if monotonic else item.t
            self._ticks_until(t, monotonic, out)
            if item.type == "tick":
                self.state, evs = eng.tick(self.state, item.t, item.mono)
                out.extend(evs)
            elif item.type == "roll_call_start":
                self.state = start_roll_call(self.state, item.alert_id or "", t)
                self.state, evs = eng.tick(self.state, item.t, item.mono)
                out.extend(evs)
            else:
                self.state = end_roll_call(self.state, item.alert_id)
            return out
        if not isinstance(item, GpsFix):  # fix times are not engine time (docs/zones.md)
            monotonic = item.mono == item.mono
            self._ticks_until(item.mono if monotonic else item.time, monotonic, out)
        self.state, evs = eng.step(self.state, item)
        out.extend(evs)
        return out

    def run(self, items: Iterable[Item]) -> Iterator[Event]:
        for it in items:
            yield from self.feed(it)


def iso_local(t: float, timezone: str) -> str:
    """RFC 3339 in ``timezone`` with milliseconds and the offset, e.g. ...T08:01:02.000+09:00."""
    return datetime.fromtimestamp(t, zoneinfo.ZoneInfo(timezone)).isoformat(
        timespec="milliseconds")


def with_times(d: dict[str, Any], timezone: str) -> dict[str, Any]:
    """``d`` with ``time_utc`` and ``time_local`` beside its epoch ``time`` (if it has one)."""
    t = d.get("time")
    if isinstance(t, int | float) and not isinstance(t, bool):
        return {**d, "time_utc": iso_utc(t), "time_local": iso_local(t, timezone)}
    return d


def event_to_dict(ev: Event, timezone: str = "UTC") -> dict[str, Any]:
    return with_times({"kind": ev.kind, "time": ev.time, "lane": Lane(ev.lane).name.lower(),
                       "reader": ev.reader, "child": ev.child, "data": ev.data}, timezone)


def event_line(ev: Event, timezone: str = "UTC") -> str:
    return json.dumps(event_to_dict(ev, timezone), sort_keys=True, ensure_ascii=False)


def _engine(config_path: str) -> Engine:
    return Engine(engine_config(load(config_path)))


def replay(engine: Engine, readings_path: str | Path,
           out: TextIO | None = None) -> EngineState:
    """Replay a file; write each event as a JSON line to ``out``; return the final state."""
    rp = Replayer(engine)
    tz = engine.runtime.settings.timezone
    for ev in rp.run(read_items(readings_path)):
        if out is not None:
            out.write(event_line(ev, tz) + "\n")
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
    except (ReadingsError, OSError) as e:
        print(f"{verb}: {e}", file=sys.stderr)
        return 1


def main_replay(config_path: str, readings_path: str, out: TextIO) -> int:
    """`gatewayd replay`: events as JSON lines (sorted keys), identical on every run."""
    done = _replayed("replay", config_path, readings_path, out)
    return done if isinstance(done, int) else 0


def print_locate(answer: dict[str, Any], out: TextIO, timezone: str = "UTC") -> int:
    """One JSON line (times also as RFC 3339); exit code 0 when found, 1 when not."""
    out.write(json.dumps(with_times(answer, timezone), sort_keys=True, ensure_ascii=False)
              + "\n")
    return 0 if answer.get("found") else 1


def main_locate(config_path: str, readings_path: str, who: str, out: TextIO) -> int:
    """`gatewayd locate`: replay, then answer where ``who`` (child ref or tag id) was seen."""
    done = _replayed("locate", config_path, readings_path, None)
    if isinstance(done, int):
        return done
    engine, state = done
    return print_locate(locate(state, engine.runtime, who), out,
                        engine.runtime.settings.timezone)
