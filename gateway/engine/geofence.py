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
from gateway.engine.state import EngineState, FenceSide, Position
from gateway.model import Event, GpsFix, Lane

JUMP_CONFIRM = 3  # consecutive mutually consistent fixes that re-anchor after a jump
JUMP_SLACK_M = 25.0  # position noise allowed on top of max speed


def _reject(state: EngineState, why: str) -> None:
    rejected = state.gps.rejected
    rejected[why] = rejected.get(why, 0) + 1


def _reachable(a: Position, b: Position, max_speed: float) -> bool:
    return haversine_m(a[0], a[1], b[0], b[1]) <= max_speed * (b[2] - a[2]) + JUMP_SLACK_M


def on_fix(state: EngineState, runtime: Runtime, fix: GpsFix, events: list[Event]) -> None:
    settings = runtime.settings
    gps = state.gps
    if (fix.lat is None or fix.lon is None or fix.fix_quality == 0
            or fix.fix_type < settings.gps_min_fix_type):
        return _reject(state, "no_fix")
    if not fix.time_trusted:
        return _reject(state, "untrusted_time")
    if fix.hdop is not None and fix.hdop > settings.gps_max_hdop:
        return _reject(state, "hdop")
    if fix.time <= gps.last_time:
        return _reject(state, "out_of_order")
    gps.last_time = fix.time
    point: Position = (fix.lat, fix.lon, fix.time)
    max_speed = settings.gps_max_speed_mps
    if gps.fix is not None and not _reachable(gps.fix, point, max_speed):
        if gps.pending and _reachable(gps.pending[-1], point, max_speed):
            gps.pending.append(point)
        else:
            gps.pending = [point]
        if len(gps.pending) < JUMP_CONFIRM:
            return _reject(state, "jump")
    gps.pending = []
    gps.fix = point
    gps.hdop = fix.hdop
    for fence in runtime.fences:
        fid = fence.settings.id
        distance = fence.shape.signed_distance(fix.lat, fix.lon)
        half_band = fence.settings.hysteresis_m / 2
        inside = True if distance < -half_band else False if distance > half_band else None
        known = gps.fences.get(fid)
        if known is None:
            known = gps.fences[fid] = FenceSide()
        if known.inside is None:
            known.inside = inside  # first trusted fix: where we are, not a crossing
            continue
        if inside is None or inside == known.inside:
            known.streak = 0
            continue
        known.streak += 1
        if known.streak < settings.geofence_confirm:
            continue
        known.inside, known.streak = inside, 0
        events.append(Event(
            kind="geofence_enter" if inside else "geofence_exit", time=fix.time,
            lane=Lane.ROUTINE, reader=fix.reader, child=None,
            data={"geofence": fid, "lat": round(fix.lat, 6), "lon": round(fix.lon, 6),
                  "distance_m": round(distance, 1),
                  "hdop": None if fix.hdop is None else round(fix.hdop, 2),
                  "speed_mps": None if fix.speed_mps is None else round(fix.speed_mps, 2)}))
    return None
