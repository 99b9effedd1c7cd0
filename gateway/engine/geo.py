"""Small-area geometry: distances in metres between WGS84 points.

Geofences and camera radii are a few hundred metres across, so a local
equirectangular projection around the fence is accurate to centimetres there
and much cheaper than geodesics; haversine is used for point-to-point
distances (jump checks, cameras) where the points may be far apart.
"""

from __future__ import annotations

import math

EARTH_R = 6_371_008.8  # mean radius, metres
_DEG = math.pi / 180.0


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = lat1 * _DEG, lat2 * _DEG
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin((lon2 - lon1) * _DEG / 2) ** 2)
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(a)))


class Shape:
    """A circle or polygon; ``signed_distance`` is negative inside, positive outside."""

    __slots__ = ("lat0", "lon0", "m_per_deg_lat", "m_per_deg_lon", "radius", "vertices")

    def __init__(self, center: tuple[float, float] | None, radius_m: float,
                 points: tuple[tuple[float, float], ...]) -> None:
        if center is not None:
            self.lat0, self.lon0 = center
        else:
            self.lat0 = sum(p[0] for p in points) / len(points)
            self.lon0 = sum(p[1] for p in points) / len(points)
        self.m_per_deg_lat = EARTH_R * _DEG
        self.m_per_deg_lon = EARTH_R * _DEG * math.cos(self.lat0 * _DEG)
        self.radius = radius_m
        self.vertices = [self.project(lat, lon) for lat, lon in points]  # polygon, in metres

    def project(self, lat: float, lon: float) -> tuple[float, float]:
        """Metres east and north of (lat0, lon0): the circle's centre or the polygon's mean."""
        return (lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * self.m_per_deg_lat

    def signed_distance(self, lat: float, lon: float) -> float:
        x, y = self.project(lat, lon)
        vertices = self.vertices
        if not vertices:
            return math.hypot(x, y) - self.radius
        inside = False
        best = math.inf
        n = len(vertices)
        for i in range(n):
            x1, y1 = vertices[i]
            x2, y2 = vertices[(i + 1) % n]
            if (y1 > y) != (y2 > y) and x < (x2 - x1) * (y - y1) / (y2 - y1) + x1:
                inside = not inside
            dx, dy = x2 - x1, y2 - y1
            seg = dx * dx + dy * dy
            u = 0.0 if seg == 0 else max(0.0, min(1.0, ((x - x1) * dx + (y - y1) * dy) / seg))
            best = min(best, math.hypot(x - x1 - u * dx, y - y1 - u * dy))
        return -best if inside else best
