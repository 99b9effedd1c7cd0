"""The engine's configuration, and the lookup tables compiled from it once."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime

from gateway.engine.geo import Shape
from gateway.engine.settings import (
    EngineSettings,
    GeofenceSettings,
    ZoneSettings,
)
from gateway.model import TagConfig


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine needs of a config; ``gateway.config.engine_config`` builds it."""

    reader_roles: dict[str, str]
    tags: dict[str, TagConfig]
    gate_window_s: float = 3.0
    settings: EngineSettings = field(default_factory=EngineSettings)


@dataclass(slots=True)
class ZoneRt:
    s: ZoneSettings
    stay_groups: frozenset[str]


@dataclass(slots=True)
class FenceRt:
    s: GeofenceSettings
    shape: Shape


@dataclass(slots=True)
class GateSide:
    gate: str
    side: str | None  # "outer" / "inner"; None: single-antenna gate
    antennas: dict[int, str] | None  # antenna -> side, for one reader with two antennas


class Runtime:
    """Lookup tables for the hot path, built from an EngineConfig."""

    def __init__(self, cfg: EngineConfig) -> None:
        s = cfg.settings
        self.cfg = cfg
        self.s = s
        self.tags = cfg.tags
        self.tz = zoneinfo.ZoneInfo(s.timezone)
        self.zones = [ZoneRt(z, frozenset(z.stay_groups)) for z in s.zones]
        self.reader_zones: dict[str, tuple[ZoneRt, ...]] = {}
        for z in self.zones:
            for r in z.s.readers:
                self.reader_zones[r] = (*self.reader_zones.get(r, ()), z)
        self.fences = [FenceRt(g, Shape(g.center, g.radius_m, g.points)) for g in s.geofences]
        self.gates: dict[str, GateSide] = {}
        for rid, role in cfg.reader_roles.items():
            gid = s.reader_gate.get(rid, "gate" if role in ("gate_outer", "gate_inner") else rid)
            if role == "gate_outer":
                self.gates[rid] = GateSide(gid, "outer", None)
            elif role == "gate_inner":
                self.gates[rid] = GateSide(gid, "inner", None)
            elif role == "gate":
                ants = s.antenna_roles.get(rid)
                self.gates[rid] = GateSide(gid, None, ants or None)
        # Children of each zone's stay groups, for the roll-call's "missing" list.
        self.child_tags: dict[str, list[str]] = {}
        for tid, t in sorted(cfg.tags.items()):
            self.child_tags.setdefault(t.child, []).append(tid)

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def day(self, t: float) -> str:
        return self.local(t).date().isoformat()

    def staying(self, z: ZoneRt, tag: TagConfig, t: float) -> list[str]:
        """The tag's groups that must stay in zone ``z`` at time ``t`` (empty: free to go)."""
        if not z.stay_groups:
            return []
        groups = sorted(z.stay_groups.intersection(tag.groups))
        if not groups:
            return []
        lt = self.local(t)
        if lt.weekday() not in z.s.stay_days:
            return []
        m = lt.hour * 60 + lt.minute
        return groups if any(a <= m < b for a, b in z.s.stay_hours) else []
