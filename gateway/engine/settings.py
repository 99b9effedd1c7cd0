"""The engine's config sections: ``[engine]``, ``[[zones]]``, ``[[geofences]]``,
``[[cameras]]``, ``[battery]``, ``[roll_call]`` and the gate options of readers.

``gateway.config.parse`` calls :func:`parse_settings` with its own checker, so
these errors are listed together with every other config error (docs/zones.md).
"""

from __future__ import annotations

import math
import re
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.checker import Checker, bounds, identifier, non_negative, positive, seconds
from gateway.model import ReaderConfig

# Keys of a [[readers]] table that the engine reads (the config loader allows them on any
# reader, beside id/kind/role and the driver's declared options).
READER_KEYS = ("antenna_roles", "gate")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SIDES = ("outer", "inner")
# Default propagation model for zones declared in metres without calibration (docs/zones.md):
# mean RSSI = REF_1M_DBM - 10 * EXPONENT * log10(d). -59 dBm at 1 m is the usual measured
# power of a 0 dBm BLE tag (the iBeacon "measured power" convention); 2.35 is the middle of
# the exponents of open parks (2.0) and cluttered yards (2.7), so a site at either end is
# off by at most 0.35 * 10 * log10(R) dB (3.5 dB at 10 m, 5.2 dB at 30 m): calibrate.
REF_1M_DBM = -59.0
DEFAULT_EXPONENT = 2.35
# Thresholds around the boundary level b: enter fast at b + ENTER_MARGIN_DB (the smoothed
# level, held dwell_s: a child walking well in), or slowly on a CUSUM of the adverts above b
# reaching ENTER_SCORE_DB (a child coming to stand just inside); leave on a sustained drop
# below b - EXIT_MARGIN_DB. The exit margin covers the spread of tags of one model around
# the calibration tag (about 1.5 dB) and the error of a two-minute calibration (about
# 1 dB), so a child standing still just inside is not pushed out by its tag being a little
# weaker than the reference. The fast enter's margin is wide because a 15 s level held 5 s
# is a maximum over time: a child standing at 1.2-2 radii for minutes reached b + 3 dB
# (docs/zones.md, "Fourth pass").
ENTER_MARGIN_DB = 6.0
ENTER_SCORE_DB = 200.0  # slow enter CUSUM decision threshold (dB summed over adverts)
EXIT_MARGIN_DB = 4.5
EXIT_SCORE_DB = 200.0  # exit CUSUM decision threshold (dB summed over adverts)
_HOURS_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    id: str
    readers: tuple[str, ...]
    enter_dbm: float = -75.0  # smoothed RSSI at or above this (for dwell_s) enters
    enter_score_db: float = ENTER_SCORE_DB  # adverts above boundary_dbm summed: enters (0: off)
    exit_dbm: float = -85.0  # a sustained drop below this (exit_score_db) leaves
    dwell_s: float = 5.0
    exit_dwell_s: float = 3.0  # the exit score must have run at least this long
    boundary_dbm: float = -80.0  # mean RSSI at the boundary: the crossing-time reference
    radius_m: float | None = None  # declared size (documentation; the dBm values decide)
    exit_score_db: float = EXIT_SCORE_DB
    absence_s: float = 30.0  # no sighting for this long leaves
    stay_groups: tuple[str, ...] = ()  # tags in these groups must stay in during stay hours
    stay_hours: tuple[tuple[int, int], ...] = ()  # [start, end) minutes of the local day
    stay_days: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # Monday = 0


@dataclass(frozen=True, slots=True)
class GeofenceSettings:
    id: str
    center: tuple[float, float] | None = None  # circle: (lat, lon) and radius_m
    radius_m: float = 0.0
    points: tuple[tuple[float, float], ...] = ()  # polygon: (lat, lon) vertices
    hysteresis_m: float = 30.0  # band width around the boundary


@dataclass(frozen=True, slots=True)
class CameraSettings:
    id: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class EngineSettings:
    timezone: str = "UTC"
    position: tuple[float, float] | None = None  # fixed units: where the unit stands
    camera_radius_m: float = 150.0
    gate_pair_s: float = 8.0  # a one-sided gate presentation waits this long for the other side
    tick_s: float = 1.0  # replay tick cadence
    resume_gap_s: float = 10.0  # a longer gap in engine time is downtime: timeouts pause
    rssi_window_s: float = 15.0
    rssi_min_samples: int = 5
    sos_debounce_s: float = 10.0
    gps_max_hdop: float = 5.0
    gps_min_fix_type: int = 2
    gps_max_speed_mps: float = 40.0
    geofence_confirm: int = 2  # consecutive fixes beyond the band before a change
    battery_low_mv: int = 2600
    battery_clear_mv: int = 2800
    roll_call_interval_s: float = 60.0
    zones: tuple[ZoneSettings, ...] = ()
    geofences: tuple[GeofenceSettings, ...] = ()
    cameras: tuple[CameraSettings, ...] = ()
    antenna_roles: dict[str, dict[int, str]] = field(default_factory=dict)  # reader -> ant -> side
    reader_gate: dict[str, str] = field(default_factory=dict)  # reader -> gate id


def _dbm(v: float) -> str | None:
    return None if -130 <= v <= 20 else "must be a dBm value between -130 and 20"


def _latlon(v: Any) -> str | None:
    if (not isinstance(v, list) or len(v) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)):
        return "expected [lat, lon] (two numbers)"
    if not (-90 <= v[0] <= 90 and -180 <= v[1] <= 180):
        return "lat must be within -90..90 and lon within -180..180"
    return None


def _strings(c: Checker, tbl: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    v = c.get(tbl, key, path, list, [])
    if not all(isinstance(x, str) for x in v):
        c.error(f"{path}.{key}", "expected an array of strings")
        return ()
    return tuple(v)


def _array_of_tables(c: Checker, raw: dict[str, Any],
                     key: str) -> list[tuple[str, dict[str, Any]]]:
    v = raw.get(key, [])
    if not isinstance(v, list):
        c.error(key, f"expected an array of tables ([[{key}]])")
        return []
    out = []
    for i, t in enumerate(v):
        if isinstance(t, dict):
            out.append((f"{key}[{i}]", t))
        else:
            c.error(f"{key}[{i}]", "expected a table")
    return out


def model_boundary_dbm(radius_m: float, ref_dbm: float = REF_1M_DBM,
                       exponent: float = DEFAULT_EXPONENT) -> float:
    """Mean RSSI at ``radius_m`` from the reader under the log-distance model."""
    return ref_dbm - 10.0 * exponent * math.log10(max(radius_m, 0.1))


def _zone_levels(c: Checker, z: dict[str, Any], path: str
                 ) -> tuple[float | None, float, float, float]:
    """(radius_m, boundary_dbm, enter_dbm, exit_dbm) of a [[zones]] table.

    The boundary level is ``boundary_dbm`` (written by ``gatewayd calibrate``), else the
    default model at ``radius_m``; the thresholds default to it plus / minus the margins.
    Without either, enter_dbm / exit_dbm (default -75 / -85) and the boundary halfway."""
    radius = c.get(z, "radius_m", path, float, None, check=positive)
    boundary = c.get(z, "boundary_dbm", path, float, None, check=_dbm)
    if boundary is None and radius is not None:
        boundary = round(model_boundary_dbm(radius), 1)
    if boundary is None:
        enter = c.get(z, "enter_dbm", path, float, -75.0, check=_dbm)
        exit_ = c.get(z, "exit_dbm", path, float, min(-85.0, enter), check=_dbm)
        boundary = (enter + exit_) / 2
    else:
        enter = c.get(z, "enter_dbm", path, float, boundary + ENTER_MARGIN_DB, check=_dbm)
        exit_ = c.get(z, "exit_dbm", path, float, boundary - EXIT_MARGIN_DB, check=_dbm)
    if ("calibration" in z and "enter_dbm" in z and "boundary_dbm" in z
            and enter < boundary + ENTER_MARGIN_DB - 0.05):
        # What `gatewayd calibrate` wrote before the fourth pass (boundary + 3 dB): children
        # waiting outside were entered on a fade (docs/zones.md, "Fourth pass").
        c.warn(f"{path}.enter_dbm",
               f"{enter:g} is boundary_dbm + {enter - boundary:.1f} dB, as `gatewayd calibrate` "
               f"wrote it before 2 Dec 2026; the fast enter is now boundary_dbm + "
               f"{ENTER_MARGIN_DB:g} dB: run `gatewayd calibrate` again, or delete enter_dbm")
    if exit_ >= enter:
        c.error(f"{path}.exit_dbm", f"must be below enter_dbm ({enter:g}): hysteresis")
    elif not exit_ <= boundary <= enter:
        c.error(f"{path}.boundary_dbm",
                f"must lie between exit_dbm ({exit_:g}) and enter_dbm ({enter:g})")
    return radius, boundary, enter, exit_


def antenna_roles_of(options: dict[str, Any]) -> dict[int, str]:
    """A reader's ``antenna_roles`` option as {antenna: side}; lenient (validated elsewhere)."""
    v = options.get("antenna_roles")
    if not isinstance(v, dict):
        return {}
    return {int(k): s for k, s in v.items() if str(k).isdigit() and s in SIDES}


def parse_settings(raw: dict[str, Any], c: Checker,
                   readers: Sequence[ReaderConfig[Any]]) -> EngineSettings:
    """Read the engine's sections out of the raw TOML, reporting errors to ``c``."""
    reader_ids = {r.id for r in readers}
    roles = {r.id: r.role for r in readers}

    e = c.table(raw, "engine", "engine", required=False)
    c.unknown(e, {"timezone", "position", "camera_radius_m", "gate_pair_s", "tick_s",
                  "resume_gap_s", "rssi_window_s", "rssi_min_samples", "sos_debounce_s",
                  "gps_max_hdop", "gps_min_fix_type", "gps_max_speed_mps",
                  "geofence_hysteresis_m", "geofence_confirm"}, "engine")
    tz = c.get(e, "timezone", "engine", str, "UTC")
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        c.error("engine.timezone", f"unknown time zone {tz!r} (expected e.g. 'Asia/Seoul')")
        tz = "UTC"
    position = c.get(e, "position", "engine", list, None, check=_latlon)
    fence_hyst = c.get(e, "geofence_hysteresis_m", "engine", float, 30.0,
                       check=bounds(ge=0, le=10_000))

    def num(tbl: dict[str, Any], key: str, path: str, default: float, check: Any = positive) -> Any:
        return c.get(tbl, key, path, float, default, check=check)

    settings: dict[str, Any] = dict(
        timezone=tz,
        position=(float(position[0]), float(position[1])) if position else None,
        # Every number bounded (issue 11): a window of a day is already nonsense at a gate.
        camera_radius_m=num(e, "camera_radius_m", "engine", 150.0, bounds(ge=0, le=100_000)),
        gate_pair_s=num(e, "gate_pair_s", "engine", 8.0, seconds(600)),
        tick_s=num(e, "tick_s", "engine", 1.0, seconds(60)),
        resume_gap_s=num(e, "resume_gap_s", "engine", 10.0, seconds(86_400)),
        rssi_window_s=num(e, "rssi_window_s", "engine", 15.0, seconds(3600)),
        rssi_min_samples=c.get(e, "rssi_min_samples", "engine", int, 5,
                               check=bounds(ge=1, le=10_000)),
        sos_debounce_s=num(e, "sos_debounce_s", "engine", 10.0, bounds(ge=0, le=3600)),
        gps_max_hdop=num(e, "gps_max_hdop", "engine", 5.0, bounds(gt=0, le=100)),
        gps_min_fix_type=c.get(e, "gps_min_fix_type", "engine", int, 2,
                               check=lambda v: None if v in (1, 2, 3) else "must be 1, 2 or 3"),
        gps_max_speed_mps=num(e, "gps_max_speed_mps", "engine", 40.0, bounds(gt=0, le=1000)),
        geofence_confirm=c.get(e, "geofence_confirm", "engine", int, 2,
                               check=bounds(ge=1, le=1000)),
    )

    b = c.table(raw, "battery", "battery", required=False)
    c.unknown(b, {"low_mv", "clear_mv"}, "battery")
    low = c.get(b, "low_mv", "battery", int, 2600, check=bounds(gt=0, le=10_000))
    clear = c.get(b, "clear_mv", "battery", int, max(2800, low), check=bounds(gt=0, le=10_000))
    if clear < low:
        c.error("battery.clear_mv", f"must be at least low_mv ({low})")
    settings.update(battery_low_mv=low, battery_clear_mv=clear)

    rc = c.table(raw, "roll_call", "roll_call", required=False)
    c.unknown(rc, {"interval_s"}, "roll_call")
    settings["roll_call_interval_s"] = num(rc, "interval_s", "roll_call", 60.0, seconds(3600))

    zone_readers = tuple(sorted(r.id for r in readers if r.role == "zone"))
    zones: list[ZoneSettings] = []
    seen: set[str] = set()
    for path, z in _array_of_tables(c, raw, "zones"):
        c.unknown(z, {"id", "readers", "radius_m", "boundary_dbm", "enter_dbm", "exit_dbm",
                      "enter_score_db", "exit_score_db", "calibration", "dwell_s", "exit_dwell_s",
                      "absence_s", "stay_groups", "stay_hours", "stay_days"}, path)
        zid: str = c.get(z, "id", path, str, path, required=True, check=identifier)
        if zid in seen:
            c.error(f"{path}.id", f"duplicate zone id {zid!r}")
        seen.add(zid)
        zr = _strings(c, z, "readers", path) if "readers" in z else zone_readers
        for rid in zr:
            if rid not in reader_ids:
                c.error(f"{path}.readers", f"unknown reader {rid!r}")
        if not zr:
            c.error(f"{path}.readers", "no readers cover this zone (no reader has role 'zone')")
        radius, boundary, enter, exit_ = _zone_levels(c, z, path)
        c.get(z, "calibration", path, dict, {})  # figures of the last calibration: for people
        hours: list[tuple[int, int]] = []
        for h in _strings(c, z, "stay_hours", path):
            m = _HOURS_RE.match(h)
            start = int(m.group(1)) * 60 + int(m.group(2)) if m else 0
            end = int(m.group(3)) * 60 + int(m.group(4)) if m else 0
            if not m or end <= start or end > 24 * 60:
                c.error(f"{path}.stay_hours", f"{h!r}: expected 'HH:MM-HH:MM', start before end")
            else:
                hours.append((start, end))
        days = _strings(c, z, "stay_days", path) if "stay_days" in z else DAYS
        bad = [d for d in days if d.lower() not in DAYS]
        if bad:
            c.error(f"{path}.stay_days", f"unknown day(s) {bad} (use {', '.join(DAYS)})")
        groups = _strings(c, z, "stay_groups", path)
        if groups and not hours:
            hours = [(0, 24 * 60)]  # stay groups without hours: all day
        zones.append(ZoneSettings(
            id=zid, readers=zr, enter_dbm=enter, exit_dbm=exit_, boundary_dbm=boundary,
            radius_m=radius,
            enter_score_db=num(z, "enter_score_db", path, ENTER_SCORE_DB, non_negative),
            exit_score_db=num(z, "exit_score_db", path, EXIT_SCORE_DB, non_negative),
            dwell_s=num(z, "dwell_s", path, 5.0, non_negative),
            exit_dwell_s=num(z, "exit_dwell_s", path, 3.0, non_negative),
            absence_s=num(z, "absence_s", path, 30.0),
            stay_groups=groups, stay_hours=tuple(hours),
            stay_days=tuple(sorted(DAYS.index(d.lower()) for d in days if d.lower() in DAYS)),
        ))
    settings["zones"] = tuple(zones)

    fences: list[GeofenceSettings] = []
    seen = set()
    for path, g in _array_of_tables(c, raw, "geofences"):
        c.unknown(g, {"id", "center", "radius_m", "points", "hysteresis_m"}, path)
        gid: str = c.get(g, "id", path, str, path, required=True, check=identifier)
        if gid in seen:
            c.error(f"{path}.id", f"duplicate geofence id {gid!r}")
        seen.add(gid)
        hyst = num(g, "hysteresis_m", path, fence_hyst, bounds(ge=0, le=10_000))
        if ("center" in g) == ("points" in g):
            c.error(path, "give either center + radius_m (circle) or points (polygon)")
            continue
        if "center" in g:
            center = c.get(g, "center", path, list, None, check=_latlon)
            radius = c.get(g, "radius_m", path, float, 0.0, required=True,
                           check=bounds(gt=0, le=1_000_000))
            if center and radius:
                fences.append(GeofenceSettings(gid, (float(center[0]), float(center[1])),
                                               radius, (), hyst))
            continue
        pts = c.get(g, "points", path, list, [])
        errs = [i for i, p in enumerate(pts) if _latlon(p)]
        if errs or len(pts) < 3:
            c.error(f"{path}.points", "expected at least 3 [lat, lon] points"
                    + (f" (bad: {errs})" if errs else ""))
            continue
        fences.append(GeofenceSettings(gid, None, 0.0,
                                       tuple((float(p[0]), float(p[1])) for p in pts), hyst))
    settings["geofences"] = tuple(fences)

    cams: list[CameraSettings] = []
    seen = set()
    for path, cam in _array_of_tables(c, raw, "cameras"):
        c.unknown(cam, {"id", "lat", "lon"}, path)
        cid: str = c.get(cam, "id", path, str, path, required=True)
        if cid in seen:
            c.error(f"{path}.id", f"duplicate camera id {cid!r}")
        seen.add(cid)
        lat = c.get(cam, "lat", path, float, None, required=True,
                    check=lambda v: None if -90 <= v <= 90 else "must be within -90..90")
        lon = c.get(cam, "lon", path, float, None, required=True,
                    check=lambda v: None if -180 <= v <= 180 else "must be within -180..180")
        if lat is not None and lon is not None and math.isfinite(lat + lon):
            cams.append(CameraSettings(cid, lat, lon))
    settings["cameras"] = tuple(cams)

    # Gate options on readers: antenna_roles (one reader, two antennas) and gate (pairs
    # a gate_outer reader with its gate_inner reader; one gate per unit needs neither).
    antennas: dict[str, dict[int, str]] = {}
    gates: dict[str, str] = {}
    for path, rt in _array_of_tables(c, raw, "readers"):
        reader_id = rt.get("id")
        if not isinstance(reader_id, str):
            continue
        if "gate" in rt:
            gate_id = c.get(rt, "gate", path, str, None, check=identifier)
            if gate_id:
                gates[reader_id] = gate_id
        if "antenna_roles" in rt:
            ar = c.get(rt, "antenna_roles", path, dict, {})
            ok = True
            for k, s in ar.items():
                if not (str(k).isdigit() and 1 <= int(k) <= 8) or s not in SIDES:
                    c.error(f"{path}.antenna_roles.{k}",
                            "expected antenna number (\"1\"..\"8\") = \"outer\" or \"inner\"")
                    ok = False
            if ok and ar and set(ar.values()) != set(SIDES):
                c.error(f"{path}.antenna_roles", "needs at least one outer and one inner antenna")
            elif ok and ar and roles.get(reader_id) not in ("gate", None):
                c.error(f"{path}.antenna_roles", "only for readers with role 'gate'")
            elif ok and ar:
                antennas[reader_id] = antenna_roles_of(rt)
    for r in readers:
        if r.role in ("gate_outer", "gate_inner"):
            gates.setdefault(r.id, "gate")
        elif r.role == "gate":
            gates.setdefault(r.id, r.id)
    settings.update(antenna_roles=antennas, reader_gate=gates)

    return EngineSettings(**settings)
