"""The edge decision engine: a pure function of (state, reading, time).

``Engine.step(state, reading, now) -> (state, events)`` and
``Engine.tick(state, now) -> (state, events)`` (time-driven decisions such as
absence timeouts and roll-calls) do no I/O and read no clock, so a recorded
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

from gateway.engine import gate, geofence, zones
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
        self.rt = Runtime(cfg)

    def initial_state(self) -> EngineState:
        return EngineState()

    def _advance(self, state: EngineState, t: float) -> None:
        c = state.clock
        if c and t - c > self.rt.s.resume_gap_s:
            shift_times(state, t - c)
        state.clock = t

    def step(self, state: EngineState, reading: Reading,
             now: float) -> tuple[EngineState, list[Event]]:
        cls = type(reading)
        if cls is BleSighting:
            return state, self._ble(state, reading)  # type: ignore[arg-type]
        if cls is TagRead:
            return state, self._tag(state, reading)  # type: ignore[arg-type]
        if cls is GpsFix:
            events: list[Event] = []
            geofence.on_fix(state, self.rt, reading, events)  # type: ignore[arg-type]
            return state, events
        return state, []

    def _seen(self, state: EngineState, tag: str, reader: str, t: float,
              rssi: float | None) -> None:
        s = state.seen.get(tag)
        if s is None:
            state.seen[tag] = Sighting(reader, t, rssi, state.gps.fix)
        elif t >= s.time:
            s.reader, s.time, s.rssi, s.position = reader, t, rssi, state.gps.fix

    def _tag(self, state: EngineState, r: TagRead) -> list[Event]:
        rt = self.rt
        if r.tag not in rt.tags:
            return []
        if r.time > state.clock:
            self._advance(state, r.time)
        self._seen(state, r.tag, r.reader, r.time, r.rssi)
        events: list[Event] = []
        gs = rt.gates.get(r.reader)
        if gs is not None:
            gate.on_read(state, rt, gs, r, events)
        return events

    def _ble(self, state: EngineState, b: BleSighting) -> list[Event]:
        rt = self.rt
        tag = b.tag
        tc = rt.tags.get(tag)
        if tc is None:
            return []
        t = b.time
        if t > state.clock:
            self._advance(state, t)
        reader = b.reader
        s = state.seen.get(tag)
        if s is None:
            state.seen[tag] = Sighting(reader, t, b.rssi, state.gps.fix)
        elif t >= s.time:
            s.reader, s.time, s.rssi, s.position = reader, t, b.rssi, state.gps.fix
        state.heard[reader] = t
        events: list[Event] = []
        zl = rt.reader_zones.get(reader)
        if zl:
            ws = state.rssi.get(reader)
            if ws is None:
                ws = state.rssi[reader] = {}
            w = ws.get(tag)
            if w is None:
                w = ws[tag] = Window()
            w.add(t, b.rssi)
            st = rt.s
            lvl = level(w, t, st.rssi_window_s, st.rssi_min_samples)
            for z in zl:
                zl_lvl = lvl
                if len(z.s.readers) > 1:  # the strongest of the zone's readers
                    zl_lvl = self._zone_level(state, z.s.readers, tag, t)
                zones.on_level(state, rt, z, tag, reader, t, b.rssi, zl_lvl, events)
        mv = b.battery_mv
        if mv is not None:
            low = state.battery_low
            if tag in low:
                if mv >= rt.s.battery_clear_mv:
                    del low[tag]
            elif mv < rt.s.battery_low_mv:
                low[tag] = mv
                events.append(Event(kind="low_battery", time=t, lane=Lane.ROUTINE, reader=reader,
                                    child=tc.child,
                                    data={"battery_mv": mv,
                                          "threshold_mv": rt.s.battery_low_mv}))
        if b.button:
            self._sos(state, b, events)
        return events

    def _zone_level(self, state: EngineState, readers: tuple[str, ...], tag: str,
                    t: float) -> float | None:
        best = None
        st = self.rt.s
        for r in readers:
            w = state.rssi.get(r, {}).get(tag)
            if w is not None:
                v = level(w, t, st.rssi_window_s, st.rssi_min_samples)
                if v is not None and (best is None or v > best):
                    best = v
        return best

    def _sos(self, state: EngineState, b: BleSighting, events: list[Event]) -> None:
        """One event per press: adverts repeating the press within the debounce are one."""
        last = state.sos.get(b.tag)
        if last is not None and b.time <= last:
            return  # an older advert than one already handled
        state.sos[b.tag] = b.time
        if last is not None and b.time - last < self.rt.s.sos_debounce_s:
            return
        rt = self.rt
        pos = unit_position(state, rt)
        zl = zones_of(state, b.tag)
        zone = zl[0] if zl else state.last_zone.get(b.tag)
        if zone is None:
            rz = rt.reader_zones.get(b.reader)
            zone = rz[0].s.id if rz else None
        # Emergency first: the outbox orders by lane, but the log and tests read in order.
        events.insert(0, Event(kind="sos", time=b.time, lane=Lane.EMERGENCY, reader=b.reader,
                               child=rt.tags[b.tag].child,
                               data={"zone": zone, "position": pos,
                                     "cameras": cameras_near(pos, rt), "rssi": b.rssi,
                                     "battery_mv": b.battery_mv}))

    def tick(self, state: EngineState, now: float) -> tuple[EngineState, list[Event]]:
        if now > state.clock:
            self._advance(state, now)
        now = state.clock
        events: list[Event] = []
        gate.expire(state, self.rt, now, events)
        zones.expire(state, self.rt, now, events)
        roll_call(state, self.rt, now, events)
        return state, events

    def locate(self, state: EngineState, who: str) -> dict[str, object]:
        return locate(state, self.rt, who)
