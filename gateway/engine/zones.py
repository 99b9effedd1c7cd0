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
from gateway.engine.runtime import Runtime, ZoneRuntime
from gateway.engine.state import ENTERING, IN, LEAVING, OUT, EngineState, Presence
from gateway.model import Event, Lane


def on_level(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, reader: str,
             t: float, rssi: float, level: float | None, events: list[Event]) -> None:
    """One sighting of ``tag`` (raw ``rssi``, smoothed ``level``) by a reader of ``zone``."""
    settings = zone.settings
    zid = settings.id
    tags = state.zones.get(zid)
    if tags is None:
        tags = state.zones[zid] = {}
    presence = tags.get(tag)
    if presence is None:
        presence = tags[tag] = Presence(OUT, t, t, None)
    elif t > presence.seen:
        presence.seen = t
        # A faint advert from far away (weaker than exit_dbm) is not presence: sparse
        # ones would otherwise hold a tag "in" that left, below min_samples forever.
        if rssi >= settings.exit_dbm:
            presence.last_seen = t
    if level is None:
        return
    presence.level = level
    status = presence.status
    if status == IN:
        if level < settings.exit_dbm:
            presence.status, presence.since = LEAVING, t
            if settings.exit_dwell_s <= 0:
                _exit(state, runtime, zone, tag, presence, t, reader, "weak", events)
    elif status == LEAVING:
        if level >= settings.exit_dbm:
            presence.status = IN
        elif t - presence.since >= settings.exit_dwell_s:
            _exit(state, runtime, zone, tag, presence, t, reader, "weak", events)
    elif status == OUT:
        if level >= settings.enter_dbm:
            presence.status, presence.since = ENTERING, t
            if settings.dwell_s <= 0:
                _enter(state, runtime, zone, tag, presence, t, reader, events)
    elif level < settings.enter_dbm:  # ENTERING: the dwell must be unbroken
        presence.status = OUT
    elif t - presence.since >= settings.dwell_s:
        _enter(state, runtime, zone, tag, presence, t, reader, events)


def _enter(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, presence: Presence,
           t: float, reader: str, events: list[Event]) -> None:
    presence.status = IN
    zid = zone.settings.id
    state.last_zone[tag] = zid
    events.append(Event(kind="zone_enter", time=t, lane=Lane.ROUTINE, reader=reader,
                        child=runtime.tags[tag].child,
                        data={"zone": zid, "rssi": _round1(presence.level),
                              "dwell_s": round(t - presence.since, 1)}))


def _exit(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, presence: Presence,
          t: float, reader: str | None, reason: str, events: list[Event]) -> None:
    presence.status = OUT
    tag_config = runtime.tags[tag]
    heard = max((state.heard.get(r, 0.0) for r in zone.settings.readers), default=0.0)
    data: dict[str, Any] = {"zone": zone.settings.id, "reason": reason,
                            "rssi": _round1(presence.level),
                            "last_seen": round(presence.seen, 3),
                            "zone_quiet_s": round(max(0.0, t - heard), 1)}
    events.append(Event(kind="zone_exit", time=t, lane=Lane.ROUTINE, reader=reader,
                        child=tag_config.child, data=data))
    groups = runtime.staying(zone, tag_config, t)
    if groups:
        events.append(Event(kind="zone_alert", time=t, lane=Lane.EMERGENCY, reader=reader,
                            child=tag_config.child,
                            data={**data, "stay_groups": groups,
                                  "position": unit_position(state, runtime)}))


def expire(state: EngineState, runtime: Runtime, now: float, events: list[Event]) -> None:
    """Absence timeouts, measured on the engine clock (reading/tick time)."""
    for zone in runtime.zones:
        tags = state.zones.get(zone.settings.id)
        if not tags:
            continue
        absence = zone.settings.absence_s
        gone = []
        for tag, presence in tags.items():
            if now - presence.last_seen > absence:
                if presence.status == IN or presence.status == LEAVING:
                    _exit(state, runtime, zone, tag, presence, now, None, "absent", events)
                gone.append(tag)  # forget tags out of range: memory stays flat
        for tag in gone:
            del tags[tag]


def _round1(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
