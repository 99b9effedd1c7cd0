"""Safety-zone presence from BLE sightings (docs/zones.md).

Per tag and zone a four-state machine on the smoothed RSSI (rssi.level):

    OUT --level >= enter--> ENTERING --held dwell_s--> IN   (zone_enter)
    IN --level < exit--> LEAVING --held exit_dwell_s--> OUT (zone_exit)
    IN/LEAVING --no sighting for absence_s--> OUT           (zone_exit, reason absent)

enter_dbm > exit_dbm is the hysteresis band; a level inside the band never
changes the state. Leaving a zone one must stay in is also a zone_alert.
"""

from __future__ import annotations

from typing import Any

from gateway.engine.locate import unit_position
from gateway.engine.runtime import Runtime, ZoneRt
from gateway.engine.state import ENTERING, IN, LEAVING, OUT, EngineState, Presence
from gateway.model import Event, Lane


def on_level(state: EngineState, rt: Runtime, z: ZoneRt, tag: str, reader: str, t: float,
             rssi: float, lvl: float | None, events: list[Event]) -> None:
    """One sighting of ``tag`` (raw ``rssi``, smoothed ``lvl``) by a reader of zone ``z``."""
    zid = z.s.id
    tags = state.zones.get(zid)
    if tags is None:
        tags = state.zones[zid] = {}
    s = z.s
    p = tags.get(tag)
    if p is None:
        p = tags[tag] = Presence(OUT, t, t, None)
    elif t > p.seen:
        p.seen = t
        # A faint advert from far away (weaker than exit_dbm) is not presence: sparse
        # ones would otherwise hold a tag "in" that left, below min_samples forever.
        if rssi >= s.exit_dbm:
            p.last_seen = t
    if lvl is None:
        return
    p.level = lvl
    st = p.status
    if st == IN:
        if lvl < s.exit_dbm:
            p.status, p.since = LEAVING, t
            if s.exit_dwell_s <= 0:
                _exit(state, rt, z, tag, p, t, reader, "weak", events)
    elif st == LEAVING:
        if lvl >= s.exit_dbm:
            p.status = IN
        elif t - p.since >= s.exit_dwell_s:
            _exit(state, rt, z, tag, p, t, reader, "weak", events)
    elif st == OUT:
        if lvl >= s.enter_dbm:
            p.status, p.since = ENTERING, t
            if s.dwell_s <= 0:
                _enter(state, rt, z, tag, p, t, reader, events)
    elif lvl < s.enter_dbm:  # ENTERING: the dwell must be unbroken
        p.status = OUT
    elif t - p.since >= s.dwell_s:
        _enter(state, rt, z, tag, p, t, reader, events)


def _enter(state: EngineState, rt: Runtime, z: ZoneRt, tag: str, p: Presence, t: float,
           reader: str, events: list[Event]) -> None:
    p.status = IN
    state.last_zone[tag] = z.s.id
    events.append(Event(kind="zone_enter", time=t, lane=Lane.ROUTINE, reader=reader,
                        child=rt.tags[tag].child,
                        data={"zone": z.s.id, "rssi": _r1(p.level),
                              "dwell_s": round(t - p.since, 1)}))


def _exit(state: EngineState, rt: Runtime, z: ZoneRt, tag: str, p: Presence, t: float,
          reader: str | None, reason: str, events: list[Event]) -> None:
    p.status = OUT
    tc = rt.tags[tag]
    heard = max((state.heard.get(r, 0.0) for r in z.s.readers), default=0.0)
    data: dict[str, Any] = {"zone": z.s.id, "reason": reason, "rssi": _r1(p.level),
                            "last_seen": round(p.seen, 3),
                            "zone_quiet_s": round(max(0.0, t - heard), 1)}
    events.append(Event(kind="zone_exit", time=t, lane=Lane.ROUTINE, reader=reader,
                        child=tc.child, data=data))
    groups = rt.staying(z, tc, t)
    if groups:
        events.append(Event(kind="zone_alert", time=t, lane=Lane.EMERGENCY, reader=reader,
                            child=tc.child,
                            data={**data, "stay_groups": groups,
                                  "position": unit_position(state, rt)}))


def expire(state: EngineState, rt: Runtime, now: float, events: list[Event]) -> None:
    """Absence timeouts, measured on the engine clock (reading/tick time)."""
    for z in rt.zones:
        tags = state.zones.get(z.s.id)
        if not tags:
            continue
        absence = z.s.absence_s
        gone = []
        for tag, p in tags.items():
            if now - p.last_seen > absence:
                if p.status == IN or p.status == LEAVING:
                    _exit(state, rt, z, tag, p, now, None, "absent", events)
                gone.append(tag)  # forget tags out of range: memory stays flat
        for tag in gone:
            del tags[tag]


def _r1(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
