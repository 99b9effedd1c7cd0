"""The engine's configuration, and the lookup tables compiled from it once."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field, replace
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
class ZoneRuntime:
    settings: ZoneSettings
    stay_groups: frozenset[str]
    multi: bool = False  # covered by several readers: the strongest one decides


@dataclass(slots=True)
class FenceRuntime:
    settings: GeofenceSettings
    shape: Shape


@dataclass(slots=True)
class GateSide:
    gate: str
    side: str | None  # "outer" / "inner"; None: single-antenna gate
    antennas: dict[int, str] | None  # antenna -> side, for one reader with two antennas


class Runtime:
    """Lookup tables for the hot path, built from an EngineConfig."""

    def __init__(self, cfg: EngineConfig) -> None:
        settings = cfg.settings
        self.cfg = cfg
        self.settings = settings
        self.tags = cfg.tags
        self.tzinfo = zoneinfo.ZoneInfo(settings.timezone)
        # Wall minus engine time, kept equal to the state's by the Engine before each
        # decision, so local times (stay hours, the day) are wall-clock times.
        self.wall_offset = 0.0
        self.zones = [ZoneRuntime(zone, frozenset(zone.stay_groups), len(zone.readers) > 1)
                      for zone in settings.zones]
        self.reader_zones: dict[str, tuple[ZoneRuntime, ...]] = {}
        for zone in self.zones:
            for reader in zone.settings.readers:
                self.reader_zones[reader] = (*self.reader_zones.get(reader, ()), zone)
        self.fences = [FenceRuntime(fence, Shape(fence.center, fence.radius_m, fence.points))
                       for fence in settings.geofences]
        self.gates: dict[str, GateSide] = {}
        for rid, role in cfg.reader_roles.items():
            gid = settings.reader_gate.get(
                rid, "gate" if role in ("gate_outer", "gate_inner") else rid)
            if role == "gate_outer":
                self.gates[rid] = GateSide(gid, "outer", None)
            elif role == "gate_inner":
                self.gates[rid] = GateSide(gid, "inner", None)
            elif role == "gate":
                antennas = settings.antenna_roles.get(rid)
                self.gates[rid] = GateSide(gid, None, antennas or None)
        self.child_tags: dict[str, list[str]] = {}
        self.set_tags(cfg.tags)

    def set_tags(self, tags: dict[str, TagConfig]) -> None:
        """Switch the enrolled tags (the roster changed); the caller forgets the state of
        tags that left (engine/forget.py) before the next decision."""
        self.cfg = replace(self.cfg, tags=tags)
        self.tags = tags
        # Each child's tags, for locate and the roll-call's "missing" list.
        child_tags: dict[str, list[str]] = {}
        for tid, tag in sorted(tags.items()):
            child_tags.setdefault(tag.child, []).append(tid)
        self.child_tags = child_tags

    def local(self, t: float) -> datetime:
        """Local wall time of engine time ``t``."""
        return datetime.fromtimestamp(t + self.wall_offset, self.tzinfo)

    def day(self, t: float) -> str:
        return self.local(t).date().isoformat()

    def staying(self, zone: ZoneRuntime, tag: TagConfig, t: float) -> list[str]:
        """The tag's groups that must stay in ``zone`` at time ``t`` (empty: free to go)."""
        if not zone.stay_groups:
            return []
        groups = sorted(zone.stay_groups.intersection(tag.groups))
        if not groups:
            return []
        local = self.local(t)
        if local.weekday() not in zone.settings.stay_days:
            return []
        minute = local.hour * 60 + local.minute
        if any(start <= minute < end for start, end in zone.settings.stay_hours):
            return groups
        return []
