"""The edge decision engine: a pure function of (state, reading, time).

``Engine.step(state, reading) -> (state, events)`` (at the reading's own time)
and ``Engine.tick(state, now, mono) -> (state, events)`` (time-driven decisions such
as absence timeouts and roll-calls) do no I/O and read no clock, so a recorded
field log replays to the same events every time. State is a plain dataclass
the caller owns; the engine updates it in place for speed and returns it.
``state_to_dict`` / ``state_from_dict`` make it JSON for the daemon to persist.
Readings reach the engine only for enrolled tags (the pipeline filters and
counts the rest; the engine ignores any that slip through).

Engine time (``state.clock``) runs on the monotonic clock: a reading's
``mono`` stamp (its wall ``time`` where it has none), so every timer (dwell,
absence, gate windows, debounces, roll-call cadence) is immune to wall-clock
steps. ``state.wall_offset`` is wall minus engine time of the newest reading
or tick; event times (and the times in event data) are converted to wall time
with it at the boundary, and local-day logic (stay hours, first passage today)
reads engine time plus it. A change of the offset by more than CLOCK_STEP_S is a
wall-clock step (NTP after a boot without an RTC, a GPS correction): it neither
freezes nor fires decisions and is reported once, as a ``clock_step`` telemetry
event.
GPS fixes never move engine time (their geofence logic uses the receiver's own
times, which are true UTC). A jump in engine time longer than ``resume_gap_s``
means the unit was down: zone timers are moved over the gap so a restart does
not turn into false exits (state.shift_times); across a restart the daemon
continues engine time from the saved state's (gateway/daemon.py). The caller
must tick more often than that (the pipeline ticks every 0.5 s).
"""

from __future__ import annotations

import math
from typing import Any

from gateway.contract import iso_utc
from gateway.engine import battery, gate, geofence, zones
from gateway.engine.locate import (
    cameras_near,
    end_roll_call,
    locate,
    roll_call,
    start_roll_call,
    unit_position,
    zones_of,
)
from gateway.engine.rssi import level
from gateway.engine.runtime import EngineConfig, Runtime
from gateway.engine.settings import EngineSettings
from gateway.engine.state import (
    EngineState,
    Sighting,
    Window,
    resume,
    shift_times,
    state_from_dict,
    state_to_dict,
)
from gateway.model import BleSighting, Event, GpsFix, Lane, Reading, TagRead

# A change of wall minus monotonic time larger than this is a step of the wall clock
# (NTP slews by at most 0.5 ms/s; the two clocks are read microseconds apart).
CLOCK_STEP_S = 2.0
# Event data fields that hold engine times, also inside lists of objects (roll_call's
# present/missing): converted to wall time with the events, as RFC 3339 UTC text like the
# envelope's (the contract has one time format). A position's fix_time is the receiver's
# own (true UTC, not engine) time: only formatted.
WALL_KEYS = frozenset({"last_seen", "started", "decided"})

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineSettings",
    "EngineState",
    "end_roll_call",
    "locate",
    "resume",
    "start_roll_call",
    "state_from_dict",
    "state_to_dict",
]


class Engine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.runtime = Runtime(cfg)

    def initial_state(self) -> EngineState:
        return EngineState()

    def _advance(self, state: EngineState, wall: float, t: float, reader: str | None
                 ) -> Event | None:
        """Move engine time to ``t`` (>= state.clock), stamped ``wall`` on the wall clock;
        a step of the wall clock is returned as a clock_step event."""
        clock = state.clock
        offset = wall - t
        step = None
        if offset != state.wall_offset:
            if clock and abs(offset - state.wall_offset) > CLOCK_STEP_S:
                step = Event(kind="clock_step", time=wall, lane=Lane.TELEMETRY, reader=reader,
                             data={"step_s": round(offset - state.wall_offset, 3)})
            state.wall_offset = self.runtime.wall_offset = offset
        if clock and t - clock > self.runtime.settings.resume_gap_s:
            shift_times(state, t - clock)
        state.clock = t
        return step

    def _walled(self, state: EngineState, events: list[Event]) -> list[Event]:
        """Events with their engine times turned into wall times (the current offset)."""
        offset = state.wall_offset
        out = []
        for ev in events:
            if ev.kind == "clock_step":  # stamped in wall time already
                out.append(ev)
                continue
            out.append(Event(kind=ev.kind, time=ev.time + offset, lane=ev.lane, reader=ev.reader,
                             child=ev.child, data=_walled_data(ev.data, offset)))
        return out

    def step(self, state: EngineState, reading: Reading) -> tuple[EngineState, list[Event]]:
        """Decide on one reading at engine time: its ``mono`` stamp (GPS fixes aside)."""
        self.runtime.wall_offset = state.wall_offset
        match reading:
            case BleSighting():
                events = self._ble(state, reading)
                return state, self._walled(state, events) if events else events
            case TagRead():
                events = self._tag(state, reading)
                return state, self._walled(state, events) if events else events
            case GpsFix():
                events = []
                geofence.on_fix(state, self.runtime, reading, events)
                return state, events
        return state, []

    def _seen(self, state: EngineState, tag: str, reader: str, t: float,
              rssi: float | None) -> None:
        sighting = state.seen.get(tag)
        if sighting is None:
            state.seen[tag] = Sighting(reader, t, rssi, state.gps.fix)
        elif t >= sighting.time:
            sighting.reader, sighting.time, sighting.rssi, sighting.position = (
                reader, t, rssi, state.gps.fix)

    def _tag(self, state: EngineState, read: TagRead) -> list[Event]:
        runtime = self.runtime
        if read.tag not in runtime.tags:
            return []
        t = read.mono
        if t != t:  # NaN: no monotonic stamp
            t = read.time
        events: list[Event] = []
        if t >= state.clock:
            step = self._advance(state, read.time, t, read.reader)
            if step is not None:
                events.append(step)
        self._seen(state, read.tag, read.reader, t, read.rssi)
        gate_side = runtime.gates.get(read.reader)
        if gate_side is not None:
            gate.on_read(state, runtime, gate_side, read, t, events)
        return events

    def _ble(self, state: EngineState, advert: BleSighting) -> list[Event]:
        runtime = self.runtime
        tag = advert.tag
        tag_config = runtime.tags.get(tag)
        if tag_config is None:
            return []
        t = advert.mono
        if t != t:  # NaN: no monotonic stamp
            t = advert.time
        reader = advert.reader
        events: list[Event] = []
        if t >= state.clock:
            step = self._advance(state, advert.time, t, reader)
            if step is not None:
                events.append(step)
        # _seen inlined: this is the hottest path (most readings are BLE adverts).
        sighting = state.seen.get(tag)
        if sighting is None:
            state.seen[tag] = Sighting(reader, t, advert.rssi, state.gps.fix)
        elif t >= sighting.time:
            sighting.reader, sighting.time, sighting.rssi, sighting.position = (
                reader, t, advert.rssi, state.gps.fix)
        state.heard[reader] = t
        reader_zones = runtime.reader_zones.get(reader)
        settings = runtime.settings
        if reader_zones:
            windows = state.rssi.get(reader)
            if windows is None:
                windows = state.rssi[reader] = {}
            window = windows.get(tag)
            if window is None:
                window = windows[tag] = Window()
            window.add(t, advert.rssi)
            reader_level = level(window, t, settings.rssi_window_s, settings.rssi_min_samples)
            for zone in reader_zones:
                zone_level = reader_level
                zone_readers = zone.settings.readers
                if len(zone_readers) > 1:  # the strongest of the zone's readers
                    zone_level = self._zone_level(state, zone_readers, reader, reader_level,
                                                  tag, t)
                zones.on_level(state, runtime, zone, tag, reader, t, advert.rssi, zone_level,
                               events)
        battery_mv = advert.battery_mv
        if battery_mv is not None:
            battery.on_reading(state.battery, tag, tag_config.child, reader, t, battery_mv,
                               settings.battery_low_mv, settings.battery_clear_mv, events)
        if advert.button:
            self._sos(state, advert, t, events)
        return events

    def _zone_level(self, state: EngineState, readers: tuple[str, ...], current: str,
                    current_level: float | None, tag: str, t: float) -> float | None:
        """The strongest level of ``tag`` over ``readers``; ``current``'s level at ``t``
        is already known (level() is idempotent at one time, so it is not redone)."""
        best = current_level
        settings = self.runtime.settings
        for reader in readers:
            if reader == current:
                continue
            window = state.rssi.get(reader, {}).get(tag)
            if window is not None:
                value = level(window, t, settings.rssi_window_s, settings.rssi_min_samples)
                if value is not None and (best is None or value > best):
                    best = value
        return best

    def _sos(self, state: EngineState, advert: BleSighting, t: float,
             events: list[Event]) -> None:
        """One event per press: adverts repeating the press within the debounce are one."""
        last = state.sos.get(advert.tag)
        if last is not None and t <= last:
            return  # an older advert than one already handled
        state.sos[advert.tag] = t
        runtime = self.runtime
        if last is not None and t - last < runtime.settings.sos_debounce_s:
            return
        pos = unit_position(state, runtime)
        zones_now = zones_of(state, advert.tag)
        zone = zones_now[0] if zones_now else state.last_zone.get(advert.tag)
        if zone is None:
            reader_zones = runtime.reader_zones.get(advert.reader)
            zone = reader_zones[0].settings.id if reader_zones else None
        # Emergency first: the outbox orders by lane, but the log and tests read in order.
        events.insert(0, Event(kind="sos", time=t, lane=Lane.EMERGENCY,
                               reader=advert.reader, child=runtime.tags[advert.tag].child,
                               data={"zone": zone, "position": pos,
                                     "cameras": cameras_near(pos, runtime), "rssi": advert.rssi,
                                     "battery_mv": advert.battery_mv}))

    def tick(self, state: EngineState, now: float, mono: float = math.nan
             ) -> tuple[EngineState, list[Event]]:
        """Time-driven decisions at wall time ``now``, monotonic ``mono`` (NaN: use now)."""
        self.runtime.wall_offset = state.wall_offset
        t = now if mono != mono else mono
        events: list[Event] = []
        if t >= state.clock:
            step = self._advance(state, now, t, None)
            if step is not None:
                events.append(step)
        t = state.clock
        gate.expire(state, self.runtime, t, events)
        zones.expire(state, self.runtime, t, events)
        roll_call(state, self.runtime, t, events)
        return state, self._walled(state, events) if events else events

    def locate(self, state: EngineState, who: str) -> dict[str, object]:
        return locate(state, self.runtime, who)


def _walled_data(data: dict[str, Any], offset: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in WALL_KEYS and isinstance(value, float | int) and not isinstance(value, bool):
            value = iso_utc(value + offset)
        elif key == "position" and isinstance(value, dict) and isinstance(
                value.get("fix_time"), float | int):
            value = {**value, "fix_time": iso_utc(value["fix_time"])}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            value = [_walled_data(item, offset) for item in value]
        out[key] = value
    return out
