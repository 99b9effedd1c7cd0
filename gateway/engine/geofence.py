"""Geofences from the unit's own GPS fixes (docs/zones.md).

Fixes are trusted only when they are real fixes (quality, fix type, HDOP, a
trusted receiver time), newer than the newest fix already considered
(replayed or buffered fixes must not run time backwards), and reachable from
the last trusted fix at the configured speed. A jump is an outlier unless
further fixes agree with it (then the old anchor was the outlier and the
track re-anchors, so one bad fix cannot freeze the position for good).

Membership changes only when a fix lies beyond a band of ``hysteresis_m``
around the boundary, for ``geofence_confirm`` consecutive fixes. The first
trusted fix sets the initial side silently: a unit that boots inside a fence
has not entered it.
"""

from __future__ import annotations

from gateway.engine.geo import haversine_m
from gateway.engine.runtime import Runtime
from gateway.engine.state import EngineState, Position
from gateway.model import Event, GpsFix, Lane

JUMP_CONFIRM = 3  # consecutive mutually consistent fixes that re-anchor after a jump
JUMP_SLACK_M = 25.0  # position noise allowed on top of max speed


def _reject(state: EngineState, why: str) -> None:
    r = state.gps.rejected
    r[why] = r.get(why, 0) + 1


def _reachable(a: Position, b: Position, max_speed: float) -> bool:
    return haversine_m(a[0], a[1], b[0], b[1]) <= max_speed * (b[2] - a[2]) + JUMP_SLACK_M


def on_fix(state: EngineState, rt: Runtime, f: GpsFix, events: list[Event]) -> None:
    s = rt.s
    g = state.gps
    if f.lat is None or f.lon is None or f.fix_quality == 0 or f.fix_type < s.gps_min_fix_type:
        return _reject(state, "no_fix")
    if not f.time_trusted:
        return _reject(state, "untrusted_time")
    if f.hdop is not None and f.hdop > s.gps_max_hdop:
        return _reject(state, "hdop")
    if f.time <= g.last_time:
        return _reject(state, "out_of_order")
    g.last_time = f.time
    fix: Position = (f.lat, f.lon, f.time)
    if g.fix is not None and not _reachable(g.fix, fix, s.gps_max_speed_mps):
        if g.pending and _reachable(g.pending[-1], fix, s.gps_max_speed_mps):
            g.pending.append(fix)
        else:
            g.pending = [fix]
        if len(g.pending) < JUMP_CONFIRM:
            return _reject(state, "jump")
    g.pending = []
    g.fix = fix
    g.hdop = f.hdop
    for fr in rt.fences:
        d = fr.shape.signed_distance(f.lat, f.lon)
        half = fr.s.hysteresis_m / 2
        side = True if d < -half else False if d > half else None
        rec = g.fences.get(fr.s.id)
        if rec is None:
            rec = g.fences[fr.s.id] = [None, 0]
        if rec[0] is None:
            rec[0] = side  # first trusted fix: where we are, not a crossing
            continue
        if side is None or side == rec[0]:
            rec[1] = 0
            continue
        rec[1] += 1
        if rec[1] < s.geofence_confirm:
            continue
        rec[0], rec[1] = side, 0
        events.append(Event(
            kind="geofence_enter" if side else "geofence_exit", time=f.time, lane=Lane.ROUTINE,
            reader=f.reader, child=None,
            data={"geofence": fr.s.id, "lat": round(f.lat, 6), "lon": round(f.lon, 6),
                  "distance_m": round(d, 1),
                  "hdop": None if f.hdop is None else round(f.hdop, 2),
                  "speed_mps": None if f.speed_mps is None else round(f.speed_mps, 2)}))
    return None
