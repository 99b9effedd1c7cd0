"""Engine state: plain slotted records in dicts keyed by strings, so it is fast
to update in place and maps one-to-one onto JSON (``state_to_dict`` /
``state_from_dict``) for the daemon to persist across restarts.

All times are engine times (the readings' monotonic stamps, see
gateway/engine/__init__.py), never clock reads; ``wall_offset`` turns them into
wall-clock times. GPS fix times (``gps.last_time``, positions) are the
receiver's own UTC times.
"""

from __future__ import annotations

import base64
import math
import struct
from bisect import insort
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gateway.engine.battery import BatteryTrack

STATE_VERSION = 2  # 2: gate passages keep per-side RSSI summaries; battery filters

# Zone presence of one tag: a small state machine (docs/zones.md).
OUT, ENTERING, IN, LEAVING = 0, 1, 2, 3

Position = tuple[float, float, float]  # lat, lon, fix time


class Window:
    """RSSI samples of one tag at one reader over the last window_s, kept twice:
    in arrival order (to expire) and sorted (for the interquartile mean)."""

    __slots__ = ("ordered", "times", "values")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.values: deque[float] = deque()
        self.ordered: list[float] = []  # same values as ``values``, sorted

    def add(self, t: float, value: float) -> None:
        self.times.append(t)
        self.values.append(value)
        insort(self.ordered, value)


class Presence:
    """One tag in one zone."""

    __slots__ = ("cross", "drift", "home", "last_seen", "level", "level_time", "score", "seen",
                 "since", "status", "step_end", "step_w", "steps")

    def __init__(self, status: int = OUT, since: float = 0.0, last_seen: float = 0.0,
                 level: float | None = None, seen: float | None = None, score: float = 0.0,
                 drift: float = 0.0, cross: float | None = None, home: float | None = None,
                 level_time: float | None = None, step_end: float = 0.0,
                 step_w: float = 0.0, steps: list[float] | None = None) -> None:
        self.status = status
        self.since = since  # timer: when the current ENTERING/LEAVING run or IN began
        self.last_seen = last_seen  # timer for the absence timeout (moved over downtime)
        self.level = level  # last smoothed RSSI, dBm
        self.seen = last_seen if seen is None else seen  # real time of the last sighting
        self.score = score  # exit CUSUM (dB): evidence of being below exit_dbm
        self.drift = drift  # CUSUM (dB) of being across the boundary from ``status``
        self.cross = self.seen if cross is None else cross  # real time its run began
        self.home = home  # slow average of the level while in (None: out)
        self.level_time = self.seen if level_time is None else level_time  # of ``level``
        # While out: the adverts binned over time since it went out (zones.py, "step"),
        # [sum of dB about the boundary level, count] per bin of step_w s up to step_end.
        self.step_end = step_end
        self.step_w = step_w
        self.steps = [] if steps is None else steps


class SideReads:
    """What one side of a two-sided gate read of one presentation, summed so that it
    stays small however long a child lingers (docs/zones.md, "Gates").

    ``strength`` is the RSSI in dBm, or without RSSI (RDM6300) the side's read rate
    (reads/s, decaying over 1 s): reads close to the antenna are both strong and dense,
    reflections and stray reads are weak or isolated."""

    __slots__ = ("first_strength", "first_strong", "has_rssi", "last_strong", "peak", "previous",
                 "rate", "reader", "reads", "weight", "weighted_offset")

    def __init__(self) -> None:
        self.reads = 0
        self.weight = 0.0  # sum of the reads' weights (power, or rate without RSSI)
        self.weighted_offset = 0.0  # sum of weight * (read time - passage start)
        self.peak = -math.inf  # strongest strength seen
        self.first_strong = self.last_strong = 0.0  # first/last read near the peak
        self.first_strength = -math.inf  # strength of the read at first_strong
        self.rate = 0.0  # decaying read rate at ``previous``
        self.previous = 0.0  # time of the side's last read
        self.reader = ""  # reader of the side's first read
        self.has_rssi = False  # strengths are dBm (else read rates)

    def to_list(self) -> list[Any]:
        return [self.reads, self.weight, self.weighted_offset, _finite(self.peak),
                self.first_strong, self.last_strong, _finite(self.first_strength), self.rate,
                self.previous, self.reader, self.has_rssi]

    @classmethod
    def from_list(cls, v: list[Any]) -> SideReads:
        side = cls()
        (side.reads, side.weight, side.weighted_offset, peak, side.first_strong,
         side.last_strong, first_strength, side.rate, side.previous, side.reader,
         side.has_rssi) = v
        side.peak = -math.inf if peak is None else float(peak)
        side.first_strength = -math.inf if first_strength is None else float(first_strength)
        return side


class KnownSide:
    """The side of the gates a child went to last on a local day, and a presentation
    on that side since then that may have been a passage the far antenna missed."""

    __slots__ = ("day", "pending", "pending_reader", "pending_reads", "side")

    def __init__(self, day: str, side: str, pending: float | None = None,
                 pending_reader: str = "", pending_reads: int = 0) -> None:
        self.day = day
        self.side = side  # "outer" / "inner"
        self.pending = pending  # when it would have crossed
        self.pending_reader = pending_reader
        self.pending_reads = pending_reads

    def to_list(self) -> list[Any]:
        return [self.day, self.side, self.pending, self.pending_reader, self.pending_reads]


class Passage:
    """An open presentation of one tag at a gate, closed by silence."""

    __slots__ = ("emitted", "inner", "last_time", "outer", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.last_time = start
        self.outer = SideReads()
        self.inner = SideReads()
        self.emitted = False


class Sighting:
    """A tag's last sighting, for locate."""

    __slots__ = ("position", "reader", "rssi", "time")

    def __init__(self, reader: str, time: float, rssi: float | None,
                 position: Position | None) -> None:
        self.reader = reader
        self.time = time
        self.rssi = rssi
        self.position = position


class FenceSide:
    """Which side of one geofence the unit is on, and the run of fixes saying otherwise."""

    __slots__ = ("inside", "streak")

    def __init__(self, inside: bool | None = None, streak: int = 0) -> None:
        self.inside = inside  # None: no trusted fix outside the hysteresis band yet
        self.streak = streak  # consecutive fixes beyond the band on the other side


@dataclass(slots=True)
class GpsState:
    last_time: float = 0.0  # newest fix time considered (ordering)
    fix: Position | None = None  # last trusted fix
    hdop: float | None = None
    pending: list[Position] = field(default_factory=list)  # consistent fixes after a jump
    fences: dict[str, FenceSide] = field(default_factory=dict)  # geofence id -> side
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count


@dataclass(slots=True)
class RollCall:
    alert_id: str
    started: float
    next_due: float
    interval_s: float | None = None  # None: [roll_call] interval_s of the config
    by: str = "switch"  # "switch" (--roll-call: ends at a start without it) or "command"


@dataclass(slots=True)
class EngineState:
    clock: float = 0.0  # engine time: newest reading/tick time seen (0: nothing yet)
    wall_offset: float = 0.0  # wall minus engine time of the newest reading/tick
    seen: dict[str, Sighting] = field(default_factory=dict)  # tag -> last sighting
    rssi: dict[str, dict[str, Window]] = field(default_factory=dict)  # reader -> tag
    heard: dict[str, float] = field(default_factory=dict)  # reader -> last BLE sighting
    zones: dict[str, dict[str, Presence]] = field(default_factory=dict)  # zone -> tag
    last_zone: dict[str, str] = field(default_factory=dict)  # tag -> zone last entered
    passages: dict[str, dict[str, Passage]] = field(default_factory=dict)  # gate -> tag
    arrived: dict[str, str] = field(default_factory=dict)  # child -> local day of 1st arrival
    passed: dict[str, str] = field(default_factory=dict)  # child -> local day of 1st passage
    gate_sides: dict[str, KnownSide] = field(default_factory=dict)  # child -> known side
    # gate -> side -> typical strongest RSSI of a passage there (learnt, dBm)
    gate_peaks: dict[str, dict[str, float]] = field(default_factory=dict)
    sos: dict[str, float] = field(default_factory=dict)  # tag -> last button advert
    battery: dict[str, BatteryTrack] = field(default_factory=dict)  # tag -> minute slots
    gps: GpsState = field(default_factory=GpsState)
    roll_call: RollCall | None = None
    downtime_s: float = 0.0  # total gaps treated as the unit being down


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no -inf


def _pos(p: Position | None) -> list[float] | None:
    return None if p is None else [p[0], p[1], p[2]]


def _unpos(p: list[float] | None) -> Position | None:
    return None if p is None else (float(p[0]), float(p[1]), float(p[2]))


def _fence_side(v: list[Any]) -> FenceSide:
    inside, streak = v
    return FenceSide(None if inside is None else bool(inside), int(streak))


def pack_steps(steps: list[float]) -> str:
    """A tag's step bins as saved: little-endian float32s in base64. Up to 128 numbers per
    tag that is out, saved with every commit of events: one C call each way, where
    rounding every number for a short JSON list was the largest cost of the save at a
    park (docs/architecture.md, "Cost at a site"). float32 keeps the dB sums to better
    than 0.01 dB and the counts exactly (below 2**24)."""
    return base64.b64encode(struct.pack(f"<{len(steps)}f", *steps)).decode("ascii")


def unpack_steps(saved: str | list[float]) -> list[float]:
    """Inverse of :func:`pack_steps`; a list is the form saved before (rounded numbers)."""
    if isinstance(saved, list):
        return [float(v) for v in saved]
    raw = base64.b64decode(saved, validate=True)
    if len(raw) % 4:
        raise ValueError(f"step bins of {len(raw)} bytes, not whole float32s")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def state_to_dict(state: EngineState) -> dict[str, Any]:
    """A JSON-able copy of the state (lists and dicts of str/float/int/bool/None)."""
    gps = state.gps
    return {
        "version": STATE_VERSION,
        "clock": state.clock,
        "wall_offset": state.wall_offset,
        "downtime_s": state.downtime_s,
        "seen": {t: [s.reader, s.time, s.rssi, _pos(s.position)] for t, s in state.seen.items()},
        "rssi": {r: {t: [list(w.times), list(w.values)] for t, w in tags.items()}
                 for r, tags in state.rssi.items()},
        "heard": dict(state.heard),
        "zones": {z: {t: [p.status, p.since, p.last_seen, p.level, p.seen, p.score, p.drift,
                          p.cross, p.home, p.level_time, p.step_end, p.step_w,
                          pack_steps(p.steps)]
                      for t, p in tags.items()}
                  for z, tags in state.zones.items()},
        "last_zone": dict(state.last_zone),
        "passages": {gid: {t: [p.start, p.last_time, p.emitted, p.outer.to_list(),
                               p.inner.to_list()]
                           for t, p in tags.items()}
                     for gid, tags in state.passages.items()},
        "arrived": dict(state.arrived),
        "passed": dict(state.passed),
        "gate_sides": {c: known.to_list() for c, known in state.gate_sides.items()},
        "gate_peaks": {g: dict(peaks) for g, peaks in state.gate_peaks.items()},
        "sos": dict(state.sos),
        "battery": {t: track.to_list() for t, track in state.battery.items()},
        "gps": {"last_time": gps.last_time, "fix": _pos(gps.fix), "hdop": gps.hdop,
                "pending": [_pos(p) for p in gps.pending],
                "fences": {k: [v.inside, v.streak] for k, v in gps.fences.items()},
                "rejected": dict(gps.rejected)},
        "roll_call": None if state.roll_call is None else {
            "alert_id": state.roll_call.alert_id, "started": state.roll_call.started,
            "next_due": state.roll_call.next_due, "interval_s": state.roll_call.interval_s,
            "by": state.roll_call.by},
    }


def _presence(saved: list[Any]) -> Presence:
    p = Presence(*saved)
    p.steps = unpack_steps(p.steps)
    return p


def state_from_dict(data: dict[str, Any]) -> EngineState:
    """Inverse of :func:`state_to_dict`; raises ValueError for another version."""
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"engine state version {data.get('version')!r}, "
                         f"expected {STATE_VERSION}")
    state = EngineState(clock=float(data["clock"]),
                        wall_offset=float(data.get("wall_offset", 0.0)),  # v1: wall times
                        downtime_s=float(data.get("downtime_s", 0.0)))
    state.seen = {t: Sighting(v[0], v[1], v[2], _unpos(v[3])) for t, v in data["seen"].items()}
    for reader, tags in data["rssi"].items():
        windows = state.rssi[reader] = {}
        for tag, (times, values) in tags.items():
            window = windows[tag] = Window()
            for t, value in zip(times, values, strict=True):
                window.add(t, value)
    state.heard = dict(data["heard"])
    # Presence lists of 5 (before the exit scores existed), 10 or 13 items (step bins).
    state.zones = {z: {t: _presence(v) for t, v in tags.items()}
                   for z, tags in data["zones"].items()}
    state.last_zone = dict(data["last_zone"])
    for gid, tags in data["passages"].items():
        passages = state.passages[gid] = {}
        for tag, v in tags.items():
            p = passages[tag] = Passage(v[0])
            p.last_time, p.emitted = v[1], v[2]
            p.outer, p.inner = SideReads.from_list(v[3]), SideReads.from_list(v[4])
    state.arrived = dict(data["arrived"])
    state.passed = dict(data["passed"])
    state.gate_sides = {c: KnownSide(*v) for c, v in data["gate_sides"].items()}
    state.gate_peaks = {g: dict(peaks) for g, peaks in data["gate_peaks"].items()}
    state.sos = dict(data["sos"])
    state.battery = {t: BatteryTrack.from_list(v) for t, v in data["battery"].items()}
    gps = data["gps"]
    state.gps = GpsState(last_time=gps["last_time"], fix=_unpos(gps["fix"]), hdop=gps["hdop"],
                         pending=[p for p in (_unpos(x) for x in gps["pending"]) if p is not None],
                         fences={k: _fence_side(v) for k, v in gps["fences"].items()},
                         rejected=dict(gps["rejected"]))
    roll_call = data.get("roll_call")
    if roll_call:
        state.roll_call = RollCall(roll_call["alert_id"], roll_call["started"],
                                   roll_call["next_due"], roll_call.get("interval_s"),
                                   roll_call.get("by", "switch"))
    return state


def shift_times(state: EngineState, gap: float) -> None:
    """Move the zone and gate silence timers forward by ``gap``: the unit was down, and
    time it did not listen must not count as a tag's absence or dwell (no false exits on
    restart), nor end a card's presentation at a gate (a card still held after a restart
    is the same passage, not a new one). Facts (sighting and read times, reported
    ``last_seen``) keep their real times."""
    for tags in state.zones.values():
        for presence in tags.values():
            presence.since += gap
            presence.last_seen += gap
    for passages in state.passages.values():
        for passage in passages.values():
            passage.last_time += gap
    state.downtime_s += gap


def resume(state: EngineState, downtime: float) -> None:
    """The unit was down for ``downtime`` seconds (the daemon measured it on the wall
    clock): engine time moves on by it and the silence timers move over it, however
    short, so a card still held at the gate after a restart is not a new passage."""
    if state.clock and downtime > 0:
        shift_times(state, downtime)
        state.clock += downtime
