"""Where is a child: the unit's position, a tag's last sighting, roll-calls."""

from __future__ import annotations

from typing import Any

from gateway.engine.geo import haversine_m
from gateway.engine.runtime import EngineConfig, Runtime
from gateway.engine.state import IN, LEAVING, EngineState, Position, RollCall
from gateway.model import Event, Lane, canonical_tag_id


def position_dict(p: Position | None, runtime: Runtime) -> dict[str, Any] | None:
    """A position for event data: a GPS fix if there is one, else the configured one."""
    if p is not None:
        return {"lat": round(p[0], 6), "lon": round(p[1], 6), "source": "gps",
                "fix_time": p[2]}
    fixed = runtime.settings.position
    if fixed is not None:
        return {"lat": fixed[0], "lon": fixed[1], "source": "fixed"}
    return None


def unit_position(state: EngineState, runtime: Runtime) -> dict[str, Any] | None:
    return position_dict(state.gps.fix, runtime)


def cameras_near(pos: dict[str, Any] | None, runtime: Runtime) -> list[str]:
    """Ids of the cameras within camera_radius_m of ``pos``, nearest first."""
    if pos is None:
        return []
    near = []
    radius = runtime.settings.camera_radius_m
    for camera in runtime.settings.cameras:
        distance = haversine_m(pos["lat"], pos["lon"], camera.lat, camera.lon)
        if distance <= radius:
            near.append((distance, camera.id))
    return [cid for _, cid in sorted(near)]


def zones_of(state: EngineState, tag: str) -> list[str]:
    """Zones the tag is in now (IN, or LEAVING but not yet out)."""
    out = []
    for zid, tags in state.zones.items():
        presence = tags.get(tag)
        if presence is not None and (presence.status == IN or presence.status == LEAVING):
            out.append(zid)
    return sorted(out)


def locate(state: EngineState, cfg: EngineConfig | Runtime, who: str) -> dict[str, Any]:
    """Answer "where is this child?" for a child reference or a tag id.

    The answer is the newest sighting over the child's tags: reader, zones now,
    last zone entered, time, RSSI and the unit's position at that time.
    """
    runtime = cfg if isinstance(cfg, Runtime) else Runtime(cfg)
    tid = canonical_tag_id(who)
    if tid in runtime.tags:
        tags = [tid]
        child: str | None = runtime.tags[tid].child
    elif who in runtime.child_tags:
        tags, child = runtime.child_tags[who], who
    else:
        return {"query": who, "found": False, "enrolled": False}
    best = None
    for candidate in tags:
        sighting = state.seen.get(candidate)
        if sighting is not None and (best is None or sighting.time > best[1].time):
            best = (candidate, sighting)
    if best is None:
        return {"query": who, "found": False, "enrolled": True, "child": child}
    tag, sighting = best
    zones = zones_of(state, tag)
    return {
        "query": who, "found": True, "enrolled": True, "child": child, "tag": tag,
        "reader": sighting.reader, "time": sighting.time + state.wall_offset,
        "rssi": None if sighting.rssi is None else round(sighting.rssi, 1),
        "zones": zones, "zone": zones[0] if zones else None,
        "last_zone": state.last_zone.get(tag),
        "position": position_dict(sighting.position, runtime),
    }


def start_roll_call(state: EngineState, alert_id: str, now: float,
                    interval_s: float | None = None, by: str = "switch") -> EngineState:
    """A disaster alert is on: ``tick`` publishes roll-calls from ``now`` (engine time:
    the monotonic clock of the readings) on, every ``interval_s`` (None: the config's).
    ``by``: "switch" (``--roll-call``) or "command" (``alert/start``, kept over restarts)."""
    call = state.roll_call
    if call is None or call.alert_id != alert_id:
        state.roll_call = RollCall(alert_id, now, now, interval_s, by)
    else:
        if by == "command":  # a command takes over a switch's roll-call: kept over restarts
            call.by = by
        if interval_s is not None and interval_s != call.interval_s:
            call.interval_s = interval_s
            call.next_due = min(call.next_due, now + interval_s)
    return state


def end_roll_call(state: EngineState, alert_id: str | None = None) -> EngineState:
    """The alert is over (``alert_id`` None: whichever is running)."""
    if state.roll_call is not None and alert_id in (None, state.roll_call.alert_id):
        state.roll_call = None
    return state


def roll_call(state: EngineState, runtime: Runtime, now: float, events: list[Event]) -> None:
    call = state.roll_call
    if call is None or now < call.next_due:
        return
    call.next_due = max(call.next_due + (call.interval_s or runtime.settings.roll_call_interval_s),
                        now)
    present_in: dict[str, list[str]] = {}  # child -> zones it is in
    last_seen: dict[str, float] = {}  # child -> newest sighting in those zones
    for zid, tags in sorted(state.zones.items()):
        for tag, presence in tags.items():
            if presence.status == IN or presence.status == LEAVING:
                child = runtime.tags[tag].child
                present_in.setdefault(child, []).append(zid)
                last_seen[child] = round(max(last_seen.get(child, 0.0), presence.seen), 3)
    present = [{"child": child, "zones": present_in[child], "last_seen": last_seen[child]}
               for child in sorted(present_in)]
    expected: set[str] = set()
    for zone in runtime.zones:
        for tag_config in runtime.tags.values():
            if zone.stay_groups.intersection(tag_config.groups):
                expected.add(tag_config.child)
    missing = []
    for child in sorted(expected - present_in.keys()):
        seen = [state.seen[t] for t in runtime.child_tags.get(child, []) if t in state.seen]
        last = max(seen, key=lambda sighting: sighting.time) if seen else None
        missing.append({"child": child, "last_seen": None if last is None else last.time,
                        "last_reader": None if last is None else last.reader})
    events.append(Event(kind="roll_call", time=now, lane=Lane.EMERGENCY, reader=None, child=None,
                        data={"alert_id": call.alert_id, "started": call.started,
                              "zones": [zone.settings.id for zone in runtime.zones],
                              "present": present,
                              "count": len(present), "missing": missing,
                              "position": unit_position(state, runtime)}))
