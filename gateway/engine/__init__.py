"""The edge decision engine: a pure function of (state, reading, time).

``Engine.step(state, reading) -> (state, events)`` (at the reading's own time)
and ``Engine.tick(state, now) -> (state, events)`` (time-driven decisions such
as absence timeouts and roll-calls) do no I/O and read no clock, so a recorded
field log replays to the same events every time. State is a plain dataclass
the caller owns; the engine updates it in place for speed and returns it.
``state_to_dict`` / ``state_from_dict`` make it JSON for the daemon to persist.
Readings reach the engine only for enrolled tags (the pipeline filters and
counts the rest; the engine ignores any that slip through).

Engine time (``state.clock``) is the newest reading or tick time; GPS fix
times never move it (a receiver can report 2003). A jump in engine time
longer than ``resume_gap_s`` means the unit was down: zone timers are moved
over the gap so a restart does not turn into false exits (state.shift_times).
The caller must tick more often than that (the pipeline ticks every 0.5 s).
"""

from __future__ import annotations

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
    shift_times,
    state_from_dict,
    state_to_dict,
)
from gateway.model import BleSighting, Event, GpsFix, Lane, Reading, TagRead

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineSettings",
    "EngineState",
    "end_roll_call",
    "locate",
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

    def _advance(self, state: EngineState, t: float) -> None:
        clock = state.clock
        if clock and t - clock > self.runtime.settings.resume_gap_s:
            shift_times(state, t - clock)
        state.clock = t

    def step(self, state: EngineState, reading: Reading) -> tuple[EngineState, list[Event]]:
        """Decide on one reading; engine time is the reading's own time (GPS fixes aside)."""
        match reading:
            case BleSighting():
                return state, self._ble(state, reading)
            case TagRead():
                return state, self._tag(state, reading)
            case GpsFix():
                events: list[Event] = []
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
        if read.time > state.clock:
            self._advance(state, read.time)
        self._seen(state, read.tag, read.reader, read.time, read.rssi)
        events: list[Event] = []
        gate_side = runtime.gates.get(read.reader)
        if gate_side is not None:
            gate.on_read(state, runtime, gate_side, read, events)
        return events

    def _ble(self, state: EngineState, advert: BleSighting) -> list[Event]:
        runtime = self.runtime
        tag = advert.tag
        tag_config = runtime.tags.get(tag)
        if tag_config is None:
            return []
        t = advert.time
        if t > state.clock:
            self._advance(state, t)
        reader = advert.reader
        # _seen inlined: this is the hottest path (most readings are BLE adverts).
        sighting = state.seen.get(tag)
        if sighting is None:
            state.seen[tag] = Sighting(reader, t, advert.rssi, state.gps.fix)
        elif t >= sighting.time:
            sighting.reader, sighting.time, sighting.rssi, sighting.position = (
                reader, t, advert.rssi, state.gps.fix)
        state.heard[reader] = t
        events: list[Event] = []
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
            self._sos(state, advert, events)
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

    def _sos(self, state: EngineState, advert: BleSighting, events: list[Event]) -> None:
        """One event per press: adverts repeating the press within the debounce are one."""
        last = state.sos.get(advert.tag)
        if last is not None and advert.time <= last:
            return  # an older advert than one already handled
        state.sos[advert.tag] = advert.time
        runtime = self.runtime
        if last is not None and advert.time - last < runtime.settings.sos_debounce_s:
            return
        pos = unit_position(state, runtime)
        zones_now = zones_of(state, advert.tag)
        zone = zones_now[0] if zones_now else state.last_zone.get(advert.tag)
        if zone is None:
            reader_zones = runtime.reader_zones.get(advert.reader)
            zone = reader_zones[0].settings.id if reader_zones else None
        # Emergency first: the outbox orders by lane, but the log and tests read in order.
        events.insert(0, Event(kind="sos", time=advert.time, lane=Lane.EMERGENCY,
                               reader=advert.reader, child=runtime.tags[advert.tag].child,
                               data={"zone": zone, "position": pos,
                                     "cameras": cameras_near(pos, runtime), "rssi": advert.rssi,
                                     "battery_mv": advert.battery_mv}))

    def tick(self, state: EngineState, now: float) -> tuple[EngineState, list[Event]]:
        if now > state.clock:
            self._advance(state, now)
        now = state.clock
        events: list[Event] = []
        gate.expire(state, self.runtime, now, events)
        zones.expire(state, self.runtime, now, events)
        roll_call(state, self.runtime, now, events)
        return state, events

    def locate(self, state: EngineState, who: str) -> dict[str, object]:
        return locate(state, self.runtime, who)
