"""The sites file: where units, zones, geofences and cameras stand (the page's map).

Units know only their own readers and radii; the page needs every site's geometry in
one place to draw it and to name the cameras nearest an alert. Pure: TOML text in,
frozen dataclasses out, errors with their key paths.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EARTH_RADIUS_M = 6_371_008.8


class SitesError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Point:
    id: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    unit: str
    lat: float
    lon: float
    radius_m: float


@dataclass(frozen=True, slots=True)
class Geofence:
    id: str
    lat: float | None  # circle: centre and radius...
    lon: float | None
    radius_m: float | None
    points: tuple[tuple[float, float], ...]  # ...or polygon


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    units: tuple[Point, ...]
    zones: tuple[Zone, ...]
    geofences: tuple[Geofence, ...]
    cameras: tuple[Point, ...]


@dataclass(frozen=True, slots=True)
class Sites:
    sites: tuple[Site, ...]

    def site(self, site_id: str) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)

    def unit(self, unit_id: str) -> tuple[Site, Point] | None:
        for s in self.sites:
            for u in s.units:
                if u.id == unit_id:
                    return s, u
        return None

    def zone(self, zone_id: str, unit_id: str | None = None) -> Zone | None:
        """A zone by id; zone ids are unit-local, so the unit's own zone wins."""
        found = [z for s in self.sites for z in s.zones if z.id == zone_id]
        return next((z for z in found if z.unit == unit_id), found[0] if found else None)

    def units_of(self, site_id: str) -> list[str]:
        s = self.site(site_id)
        return [u.id for u in s.units] if s else []

    def to_json(self) -> list[dict[str, Any]]:
        """The geometry the page's map draws."""
        return [{"id": s.id, "name": s.name,
                 "units": [{"id": u.id, "lat": u.lat, "lon": u.lon} for u in s.units],
                 "zones": [{"id": z.id, "unit": z.unit, "lat": z.lat, "lon": z.lon,
                            "radius_m": z.radius_m} for z in s.zones],
                 "geofences": [{"id": g.id, "lat": g.lat, "lon": g.lon,
                                "radius_m": g.radius_m, "points": [list(p) for p in g.points]}
                               for g in s.geofences],
                 "cameras": [{"id": c.id, "lat": c.lat, "lon": c.lon} for c in s.cameras]}
                for s in self.sites]


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine): cameras are metres to a few km away."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


def nearest_cameras(sites: Sites, lat: float, lon: float, n: int = 3,
                    max_m: float = 500.0) -> list[tuple[str, float]]:
    """The ``n`` cameras nearest a position, within ``max_m``: (id, metres), nearest first."""
    cams = [(c.id, distance_m(lat, lon, c.lat, c.lon)) for s in sites.sites for c in s.cameras]
    return sorted((c for c in cams if c[1] <= max_m), key=lambda c: c[1])[:n]


def _num(d: dict[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SitesError(f"{where}.{key}: expected a number, got {v!r}")
    return float(v)


def _str(d: dict[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise SitesError(f"{where}.{key}: expected a non-empty string, got {v!r}")
    return v


def _list(d: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    v = d.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise SitesError(f"{where}.{key}: expected a list of tables")
    return v


def _point(d: dict[str, Any], where: str) -> Point:
    return Point(_str(d, "id", where), _num(d, "lat", where), _num(d, "lon", where))


def _geofence(d: dict[str, Any], where: str) -> Geofence:
    pts = d.get("points")
    if pts is not None:
        if (not isinstance(pts, list) or len(pts) < 3
                or not all(isinstance(p, list) and len(p) == 2 for p in pts)):
            raise SitesError(f"{where}.points: expected at least 3 [lat, lon] pairs")
        return Geofence(_str(d, "id", where), None, None, None,
                        tuple((float(p[0]), float(p[1])) for p in pts))
    return Geofence(_str(d, "id", where), _num(d, "lat", where), _num(d, "lon", where),
                    _num(d, "radius_m", where), ())


def parse(doc: dict[str, Any]) -> Sites:
    out = []
    for i, s in enumerate(_list(doc, "sites", "")):
        w = f"sites[{i}]"
        sid = _str(s, "id", w)
        out.append(Site(
            sid, str(s.get("name", sid)),
            tuple(_point(u, f"{w}.units[{j}]") for j, u in enumerate(_list(s, "units", w))),
            tuple(Zone(_str(z, "id", f"{w}.zones[{j}]"), _str(z, "unit", f"{w}.zones[{j}]"),
                       _num(z, "lat", f"{w}.zones[{j}]"), _num(z, "lon", f"{w}.zones[{j}]"),
                       _num(z, "radius_m", f"{w}.zones[{j}]"))
                  for j, z in enumerate(_list(s, "zones", w))),
            tuple(_geofence(g, f"{w}.geofences[{j}]")
                  for j, g in enumerate(_list(s, "geofences", w))),
            tuple(_point(c, f"{w}.cameras[{j}]") for j, c in enumerate(_list(s, "cameras", w)))))
    return Sites(tuple(out))


def load(path: str | Path) -> Sites:
    try:
        return parse(tomllib.loads(Path(path).read_text()))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SitesError(f"{path}: {e}") from e
