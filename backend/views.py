"""What the operator page shows, read from the backend's tables.

``build_state`` is pure: rows from the database (the ``events`` and ``units`` tables of
backend/migrations), the sites file and the time in, the page's state out: alerts first,
roll-calls per site, unit health. The few queries that feed it are in
backend/web/source.py; the page pushes the state to the browsers only when it changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from backend.web.sites import Sites, nearest_cameras

ALERT_KINDS = ("sos", "zone_alert")
Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Camera:
    id: str
    distance_m: float


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: str            # "sos" | "zone_alert"
    unit: str
    site: str
    reader: str
    zone: str | None
    child: str
    time: str            # RFC 3339, when it happened (the unit's clock)
    received: str        # when the backend stored it
    lat: float | None
    lon: float | None
    where: str           # "gps" | "fixed" | "unit" | "zone": where lat/lon come from
    cameras: tuple[Camera, ...]          # nearest in the sites file
    unit_cameras: tuple[str, ...]        # the unit's own list in the event (sos)


@dataclass(frozen=True, slots=True)
class Present:
    child: str
    units: tuple[str, ...]
    last_seen: float | str | None


@dataclass(frozen=True, slots=True)
class Missing:
    child: str
    last_seen: float | str | None
    last_reader: str | None


@dataclass(frozen=True, slots=True)
class RollCall:
    site: str
    alert_id: str
    started: float | str | None
    units: tuple[str, ...]     # units that reported in this roll-call
    present: tuple[Present, ...]
    missing: tuple[Missing, ...]
    updated: str               # newest report's time


@dataclass(frozen=True, slots=True)
class UnitHealth:
    unit: str
    site: str
    state: str                 # "online" | "offline" | "silent" (online, nothing heard lately)
    last_seen: str | None
    backlog: int | None        # events in the unit's buffer
    awaiting_receipt: int | None
    clock: str                 # "ok" | "off by +3.2 s" | "unknown"
    readers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PageState:
    alerts: tuple[Alert, ...]
    roll_calls: tuple[RollCall, ...]
    units: tuple[UnitHealth, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _iso(t: Any) -> str:
    return t.isoformat() if isinstance(t, datetime) else str(t)


def _epoch(t: Any) -> float | None:
    """Epoch seconds of a time in any of the contract's forms (datetime, RFC 3339, epoch)."""
    if isinstance(t, int | float) and not isinstance(t, bool):
        return float(t)
    if isinstance(t, datetime):
        return t.timestamp()
    if isinstance(t, str):
        try:
            return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def alert_of(row: Row, sites: Sites) -> Alert:
    """An SOS or must-stay alert with where it is: the GPS or fixed position in the event,
    else the unit's place in the sites file, else the zone's centre."""
    data = row.get("data") or {}
    pos = data.get("position") or None
    zone = data.get("zone")
    lat = lon = None
    where = "unknown"
    if isinstance(pos, dict) and isinstance(pos.get("lat"), int | float):
        lat, lon, where = float(pos["lat"]), float(pos["lon"]), str(pos.get("source", "gps"))
    else:
        placed = sites.unit(row["unit"])
        z = sites.zone(zone, row["unit"]) if isinstance(zone, str) else None
        if placed is not None:
            lat, lon, where = placed[1].lat, placed[1].lon, "unit"
        elif z is not None:
            lat, lon, where = z.lat, z.lon, "zone"
    cams = tuple(Camera(c, round(d, 1)) for c, d in nearest_cameras(sites, lat, lon)) \
        if lat is not None and lon is not None else ()
    return Alert(id=str(row["id"]), kind=row["kind"], unit=row["unit"], site=row["site"],
                 reader=row.get("reader") or "", zone=zone if isinstance(zone, str) else None,
                 child=row.get("child") or "", time=_iso(row["time"]),
                 received=_iso(row.get("received", row["time"])), lat=lat, lon=lon,
                 where=where, cameras=cams,
                 unit_cameras=tuple(str(c) for c in data.get("cameras") or ()))


def roll_calls_of(rows: Sequence[Row]) -> list[RollCall]:
    """One roll-call per (site, alert id) from each unit's newest report: a child present at
    any unit of the site is present; missing only if no unit has them."""
    newest: dict[tuple[str, str, str], Row] = {}
    for r in rows:
        data = r.get("data") or {}
        key = (r["site"], str(data.get("alert_id", "")), r["unit"])
        cur = newest.get(key)
        if cur is None or (_epoch(r["time"]) or 0) >= (_epoch(cur["time"]) or 0):
            newest[key] = r
    by_call: dict[tuple[str, str], list[Row]] = {}
    for (site, alert_id, _unit), r in newest.items():
        by_call.setdefault((site, alert_id), []).append(r)
    out = []
    for (site, alert_id), reports in sorted(by_call.items()):
        present: dict[str, tuple[set[str], Any]] = {}
        missing: dict[str, Missing] = {}
        for r in reports:
            data = r.get("data") or {}
            for p in data.get("present") or ():
                units, seen = present.setdefault(p["child"], (set(), p.get("last_seen")))
                units.add(r["unit"])
                if (_epoch(p.get("last_seen")) or 0) > (_epoch(seen) or 0):
                    present[p["child"]] = (units, p.get("last_seen"))
            for m in data.get("missing") or ():
                prev = missing.get(m["child"])
                if prev is None or (_epoch(m.get("last_seen")) or 0) > (_epoch(prev.last_seen)
                                                                         or 0):
                    missing[m["child"]] = Missing(m["child"], m.get("last_seen"),
                                                  m.get("last_reader"))
        first = min(reports, key=lambda r: str((r.get("data") or {}).get("started")))
        out.append(RollCall(
            site=site, alert_id=alert_id, started=(first.get("data") or {}).get("started"),
            units=tuple(sorted(r["unit"] for r in reports)),
            present=tuple(Present(c, tuple(sorted(u)), s) for c, (u, s) in sorted(present.items())),
            missing=tuple(m for c, m in sorted(missing.items()) if c not in present),
            updated=max(_iso(r["time"]) for r in reports)))
    return out


def clock_of(health: Row | None, received: Any) -> str:
    """The unit's clock as the backend sees it: the unit's own verdict when its health says,
    else the offset of the health message's time from when the backend received it."""
    if not health:
        return "unknown"
    ck = health.get("clock")
    if isinstance(ck, dict) and isinstance(ck.get("synced"), bool):
        return "ok" if ck["synced"] else "not synchronised"
    sent, got = _epoch(health.get("time")), _epoch(received)
    if sent is None or got is None:
        return "unknown"
    off = sent - got
    return "ok" if abs(off) <= 2.0 else f"off by {off:+.1f} s"


def unit_of(row: Row, now: float, silent_s: float) -> UnitHealth:
    health = row.get("health") or {}
    buf = health.get("buffer") or {}
    last = row.get("last_seen")
    state = row.get("state") or "unknown"
    if state == "online" and (now - (_epoch(last) or 0)) > silent_s:
        state = "silent"
    awaiting = buf.get("awaiting_receipt")
    return UnitHealth(
        unit=row["unit"], site=row.get("site") or "", state=state,
        last_seen=_iso(last) if last is not None else None,
        backlog=buf.get("depth") if isinstance(buf.get("depth"), int) else None,
        awaiting_receipt=awaiting if isinstance(awaiting, int) else None,
        clock=clock_of(health, row.get("health_received")),
        readers={k: str(v.get("state")) for k, v in (health.get("readers") or {}).items()
                 if isinstance(v, dict)})


def build_state(alerts: Sequence[Row], roll_calls: Sequence[Row], units: Sequence[Row],
                sites: Sites, now: float, silent_s: float = 90.0) -> PageState:
    """The page's state: alerts newest first, roll-calls per site, every unit the database or
    the sites file knows (a unit never heard from is shown as such)."""
    seen = {r["unit"]: unit_of(r, now, silent_s) for r in units}
    for s in sites.sites:
        for u in s.units:
            seen.setdefault(u.id, UnitHealth(u.id, s.id, "never seen", None, None, None,
                                             "unknown"))
    order = sorted(alerts, key=lambda r: _epoch(r["time"]) or 0, reverse=True)
    return PageState(alerts=tuple(alert_of(r, sites) for r in order),
                     roll_calls=tuple(roll_calls_of(roll_calls)),
                     units=tuple(sorted(seen.values(), key=lambda u: (u.site, u.unit))))
