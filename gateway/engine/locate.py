"""Where is a child: the unit's position, a tag's last sighting, roll-calls."""

from __future__ import annotations

from typing import Any

from gateway.engine.geo import haversine_m
from gateway.engine.runtime import EngineConfig, Runtime
from gateway.engine.state import IN, LEAVING, EngineState, Position, RollCall
from gateway.model import Event, Lane, canonical_tag_id


def position_dict(p: Position | None, rt: Runtime) -> dict[str, Any] | None:
    """A position for event data: a GPS fix if there is one, else the configured one."""
    if p is not None:
        return {"lat": round(p[0], 6), "lon": round(p[1], 6), "source": "gps",
                "fix_time": p[2]}
    if rt.s.position is not None:
        return {"lat": rt.s.position[0], "lon": rt.s.position[1], "source": "fixed"}
    return None


def unit_position(state: EngineState, rt: Runtime) -> dict[str, Any] | None:
    return position_dict(state.gps.fix, rt)


def cameras_near(pos: dict[str, Any] | None, rt: Runtime) -> list[str]:
    """Ids of the cameras within camera_radius_m of ``pos``, nearest first."""
    if pos is None:
        return []
    near = []
    for c in rt.s.cameras:
        d = haversine_m(pos["lat"], pos["lon"], c.lat, c.lon)
        if d <= rt.s.camera_radius_m:
            near.append((d, c.id))
    return [cid for _, cid in sorted(near)]


def zones_of(state: EngineState, tag: str) -> list[str]:
    """Zones the tag is in now (IN, or LEAVING but not yet out)."""
    out = []
    for zid, tags in state.zones.items():
        p = tags.get(tag)
        if p is not None and (p.status == IN or p.status == LEAVING):
            out.append(zid)
    return sorted(out)


def locate(state: EngineState, cfg: EngineConfig | Runtime, who: str) -> dict[str, Any]:
    """Answer "where is this child?" for a child reference or a tag id.

    The answer is the newest sighting over the child's tags: reader, zones now,
    last zone entered, time, RSSI and the unit's position at that time.
    """
    rt = cfg if isinstance(cfg, Runtime) else Runtime(cfg)
    tid = canonical_tag_id(who)
    if tid in rt.tags:
        tags = [tid]
        child: str | None = rt.tags[tid].child
    elif who in rt.child_tags:
        tags, child = rt.child_tags[who], who
    else:
        return {"query": who, "found": False, "enrolled": False}
    best = None
    for t in tags:
        s = state.seen.get(t)
        if s is not None and (best is None or s.time > best[1].time):
            best = (t, s)
    if best is None:
        return {"query": who, "found": False, "enrolled": True, "child": child}
    tag, s = best
    zones = zones_of(state, tag)
    return {
        "query": who, "found": True, "enrolled": True, "child": child, "tag": tag,
        "reader": s.reader, "time": s.time,
        "rssi": None if s.rssi is None else round(s.rssi, 1),
        "zones": zones, "zone": zones[0] if zones else None,
        "last_zone": state.last_zone.get(tag),
        "position": position_dict(s.position, rt),
    }


def start_roll_call(state: EngineState, alert_id: str, now: float) -> EngineState:
    """A disaster alert is on: ``tick`` publishes roll-calls from ``now`` on."""
    if state.roll_call is None or state.roll_call.alert_id != alert_id:
        state.roll_call = RollCall(alert_id, now, now)
    return state


def end_roll_call(state: EngineState, alert_id: str | None = None,
                  now: float | None = None) -> EngineState:
    """The alert is over (``alert_id`` None: whichever is running)."""
    if state.roll_call is not None and alert_id in (None, state.roll_call.alert_id):
        state.roll_call = None
    return state


def roll_call(state: EngineState, rt: Runtime, now: float, events: list[Event]) -> None:
    rc = state.roll_call
    if rc is None or now < rc.next_due:
        return
    rc.next_due = max(rc.next_due + rt.s.roll_call_interval_s, now)
    present: dict[str, dict[str, Any]] = {}
    for zid, tags in sorted(state.zones.items()):
        for tag, p in tags.items():
            if p.status == IN or p.status == LEAVING:
                child = rt.tags[tag].child
                e = present.setdefault(child, {"child": child, "zones": [], "last_seen": 0.0})
                e["zones"].append(zid)
                e["last_seen"] = round(max(e["last_seen"], p.seen), 3)
    expected: set[str] = set()
    for z in rt.zones:
        for tc in rt.tags.values():
            if z.stay_groups.intersection(tc.groups):
                expected.add(tc.child)
    missing = []
    for child in sorted(expected - present.keys()):
        seen = [state.seen[t] for t in rt.child_tags.get(child, []) if t in state.seen]
        last = max(seen, key=lambda s: s.time) if seen else None
        missing.append({"child": child, "last_seen": None if last is None else last.time,
                        "last_reader": None if last is None else last.reader})
    events.append(Event(kind="roll_call", time=now, lane=Lane.EMERGENCY, reader=None, child=None,
                        data={"alert_id": rc.alert_id, "started": rc.started,
                              "zones": [z.s.id for z in rt.zones],
                              "present": [present[c] for c in sorted(present)],
                              "count": len(present), "missing": missing,
                              "position": unit_position(state, rt)}))
