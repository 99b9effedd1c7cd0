"""Field-condition scenario generators with ground truth, and the accuracy measures.

Issue 10: the engine's own scenarios (scenarios.py) are too kind. These
generators model what a school yard or a park does to BLE and UHF radio, from
physical quantities (metres, path-loss exponents, fade durations, millivolts
per minute) and never from how the engine decides, so tuning the engine
against them cannot flatter it. Nothing here imports the engine.

- BLE zones declared in metres around a reader: per-site path-loss exponent
  in [2.0, 2.7], 1 m power per site and tag, log-normal shadowing as a
  Gauss-Markov process per tag (fades lasting seconds) plus fast per-advert
  noise, per-site advert loss, a -110 dBm floor, 1 Hz adverts with jitter.
  Children walk across the boundary, stand still just inside it or far
  inside, stay far outside, or walk up to the zone and stop outside it (a
  parent waiting at the park's edge, a child at the fence). Truth: crossing
  times and still intervals.
- Calibration readings: a reference tag held at the boundary and at 1 m.
- Batteries: true voltage falling 1.5-4 mV/min, noisy readings; truth: the
  time the true voltage crosses low_mv.
- Gates: a walk along a 1-D path through two antenna fields with per-read
  RSSI, whole-antenna misses, weak reflections, turn-backs and revisits;
  truth: the time each passage crosses the gate line.
- Clock steps: readings carry the unit's wall clock (``time``) and monotonic
  clock (``mono``); :class:`UnitClock` maps true time to (wall, mono). The
  monos are also kept alongside the readings (``monos``, one per reading).

Every generator is a pure function of its seed. :func:`seeds` gives fixed
seeds plus fresh ones per run (``KIDSAFE_SEED`` replays one).
"""

from __future__ import annotations

import math
import os
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.model import BleSighting, Reading, TagRead

__all__ = [
    "FIELD_T0",
    "ZERO_ZONE",
    "BatteryField",
    "BatteryScore",
    "BatteryTruth",
    "Calibration",
    "Channel",
    "ClockStep",
    "FieldCrossing",
    "GateEpisode",
    "GateField",
    "GatePassage",
    "GateScore",
    "Site",
    "StillTag",
    "UnitClock",
    "ZoneField",
    "ZoneScore",
    "battery_field",
    "boundary_median",
    "calibration",
    "draw_clock_step",
    "draw_site",
    "gate_field",
    "missed_alerts",
    "replay_hint",
    "score_battery",
    "score_gate",
    "score_zone",
    "seeds",
    "stamp_all",
    "zone_field",
]

FIELD_T0 = 1_717_203_600.0  # 2024-06-01 01:00 UTC (as scenarios.T0)
FLOOR_DBM = -110.0  # nothing weaker is heard
WALL_DB = 25.0  # a building or a car between tag and reader


# -- seeds -----------------------------------------------------------------------------------

def seeds(fixed: Sequence[int], fresh: int | None = None) -> list[int]:
    """The fixed seeds plus ``fresh`` random ones drawn now (default: env
    KIDSAFE_FRESH_SEEDS or 2). ``KIDSAFE_SEED=1234`` runs that one seed only,
    to replay a failure. Use the seed in parametrize ids and assertion messages."""
    one = os.environ.get("KIDSAFE_SEED")
    if one:
        return [int(one)]
    n = int(os.environ.get("KIDSAFE_FRESH_SEEDS", "2")) if fresh is None else fresh
    # Under pytest-xdist each worker collects the tests, and all must draw the same seeds:
    # they come from the run's id, which the workers share (still fresh for every run).
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    rnd = random.Random(f"{run}:{list(fixed)}:{n}") if run else random.SystemRandom()
    return [*fixed, *(rnd.randrange(1_000_000, 2**31) for _ in range(n))]


def replay_hint(seed: int) -> str:
    return f"seed {seed} (replay: KIDSAFE_SEED={seed} pytest ...)"


# -- clock -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ClockStep:
    at: float  # true time of the step
    delta_s: float  # wall clock change: negative steps back


@dataclass(frozen=True, slots=True)
class UnitClock:
    """The unit's clocks as functions of true time: the wall clock starts
    ``offset_s`` off and is stepped by ``steps``; the monotonic clock counts
    seconds since boot. One place stamps every reading (:meth:`stamp`)."""

    offset_s: float = 0.0
    steps: tuple[ClockStep, ...] = ()
    boot: float = FIELD_T0 - 120.0
    mono_at_boot: float = 7.0

    def stamp(self, t: float) -> tuple[float, float]:
        """True time -> (wall, mono)."""
        wall = t + self.offset_s
        for s in self.steps:
            if s.at <= t:
                wall += s.delta_s
        return wall, self.mono_at_boot + (t - self.boot)

    def wall(self, t: float) -> float:
        return self.stamp(t)[0]

    def true_of_mono(self, mono: float) -> float:
        return self.boot + (mono - self.mono_at_boot)

    @staticmethod
    def ntp_step(at: float, delta_s: float) -> UnitClock:
        """A wall clock that was wrong since boot and is corrected at ``at``
        (delta < 0: it was ahead, as after a boot without an RTC)."""
        return UnitClock(offset_s=-delta_s, steps=(ClockStep(at, delta_s),))


def draw_clock_step(rnd: random.Random, at: float, back: bool = True) -> UnitClock:
    """A step back of 30 s to 2 h or forward of 30 s to 1 h at ``at``."""
    size = math.exp(rnd.uniform(math.log(30), math.log(7200 if back else 3600)))
    return UnitClock.ntp_step(at, -size if back else size)


def stamp_all(readings: Sequence[Reading], true_times: Sequence[float],
              clock: UnitClock | None) -> tuple[list[Reading], list[float]]:
    """Readings (in arrival order) stamped with their wall time and mono, and the monos."""
    if clock is None:
        clock = UnitClock()
    out: list[Reading] = []
    monos: list[float] = []
    for r, t in zip(readings, true_times, strict=True):
        wall, mono = clock.stamp(t)
        out.append(replace(r, time=wall, mono=mono))
        monos.append(mono)
    return out, monos


def _in_order(items: list[tuple[float, Reading]], clock: UnitClock | None
              ) -> tuple[list[Reading], list[float], list[float]]:
    items.sort(key=lambda x: x[0])
    true_times = [t for t, _ in items]
    reads, monos = stamp_all([r for _, r in items], true_times, clock)
    return reads, monos, true_times


# -- BLE propagation -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Site:
    """One zone's radio site. ``ref_dbm`` is the mean 1 m power of the tag model here."""

    zone: str
    reader: str
    radius_m: float
    exponent: float
    ref_dbm: float
    tag_spread_db: float  # per-tag sd of the 1 m power around ref_dbm
    shadow_sigma_db: float  # slow (correlated) shadowing
    shadow_tau_s: float  # its correlation time
    fast_sigma_db: float  # per-advert noise
    loss: float  # share of adverts lost

    def mean_rssi(self, d: float, offset_db: float = 0.0) -> float:
        return self.ref_dbm + offset_db - 10.0 * self.exponent * math.log10(max(d, 0.3))


def draw_site(rnd: random.Random, zone: str = "yard", reader: str = "ble-yard",
              exponent: float | None = None, radius_m: float | None = None) -> Site:
    return Site(zone=zone, reader=reader,
                radius_m=radius_m if radius_m is not None else rnd.uniform(10.0, 30.0),
                exponent=exponent if exponent is not None else rnd.uniform(2.0, 2.7),
                ref_dbm=rnd.uniform(-65.0, -55.0), tag_spread_db=1.5,
                shadow_sigma_db=5.0, shadow_tau_s=rnd.uniform(1.0, 4.0),
                fast_sigma_db=3.0, loss=rnd.uniform(0.10, 0.30))


class Channel:
    """One tag's link to one reader: Gauss-Markov shadowing plus fast noise."""

    def __init__(self, rnd: random.Random, site: Site, offset_db: float) -> None:
        self.rnd, self.site, self.offset_db = rnd, site, offset_db
        self.x = rnd.gauss(0.0, site.shadow_sigma_db)
        self.t: float | None = None

    def rssi(self, t: float, d: float) -> float:
        s, rnd = self.site, self.rnd
        if self.t is not None:
            a = math.exp(-(t - self.t) / s.shadow_tau_s)
            self.x = a * self.x + math.sqrt(1.0 - a * a) * s.shadow_sigma_db * rnd.gauss(0, 1)
        self.t = t
        return s.mean_rssi(d, self.offset_db) + self.x + rnd.gauss(0.0, s.fast_sigma_db)


def tag_offset(rnd: random.Random, site: Site) -> float:
    """A tag's 1 m power relative to the model's: small, tags of one model are alike."""
    return max(-3.0, min(3.0, rnd.gauss(0.0, site.tag_spread_db)))


def _advertise(rnd: random.Random, ch: Channel, reader: str, tag: str, t0: float, t1: float,
               dist: Callable[[float], float], out: list[tuple[float, Reading]],
               telemetry: Callable[[float], int | None] | None = None,
               walls: Sequence[tuple[float, float]] = ()) -> None:
    """Adverts at 1 Hz with jitter from t0 to t1; lost ones and those below the floor
    are not heard (the channel still evolves). In ``walls`` intervals the tag is
    behind a building or in a car: 25 dB more loss."""
    loss = ch.site.loss
    t = t0 + rnd.uniform(0.0, 1.0)
    while t < t1:
        v = ch.rssi(t, dist(t))
        if walls and any(a <= t < b for a, b in walls):
            v -= WALL_DB
        if rnd.random() >= loss and v >= FLOOR_DBM:
            mv = telemetry(t) if telemetry is not None else None
            out.append((t, BleSighting(reader=reader, tag=tag, time=t, rssi=round(v),
                                       battery_mv=mv)))
        t += 1.0 + rnd.uniform(-0.05, 0.05)


class Path:
    """Piecewise-linear distance from the reader over time (constant after the end)."""

    def __init__(self, knots: list[tuple[float, float]]) -> None:
        self.knots = knots
        self.i = 0

    def __call__(self, t: float) -> float:  # called with non-decreasing t
        k = self.knots
        while self.i + 1 < len(k) and k[self.i + 1][0] <= t:
            self.i += 1
        if self.i + 1 >= len(k) or t <= k[self.i][0]:
            return k[self.i][1]
        (ta, da), (tb, db) = k[self.i], k[self.i + 1]
        return da + (db - da) * (t - ta) / (tb - ta)

    def crossings(self, r: float) -> list[tuple[str, float]]:
        out = []
        for (ta, da), (tb, db) in zip(self.knots, self.knots[1:], strict=False):
            if (da - r) * (db - r) < 0:
                out.append(("zone_enter" if db < r else "zone_exit",
                            ta + (tb - ta) * (r - da) / (db - da)))
        return out


# -- zones -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FieldCrossing:
    child: str
    tag: str
    kind: str  # zone_enter / zone_exit
    time: float  # true time


@dataclass(frozen=True, slots=True)
class StillTag:
    child: str
    tag: str
    role: str  # boundary (0.3-3 m inside) / inside (far inside)
    depth_m: float  # how far inside the boundary it stands
    start: float  # true time it stands still from (after walking in)
    end: float

    @property
    def hours(self) -> float:
        return (self.end - self.start) / 3600.0


@dataclass(frozen=True, slots=True)
class Calibration:
    """What a technician records: a reference tag held at the boundary and at 1 m."""

    zone: str
    reader: str
    radius_m: float
    boundary: tuple[BleSighting, ...]
    one_m: tuple[BleSighting, ...]


@dataclass(slots=True)
class ZoneField:
    site: Site
    tags: list[dict[str, Any]]  # [[tags]] config entries
    readings: list[Reading]  # arrival order, `time` = the unit's wall clock
    monos: list[float]  # the unit's monotonic clock per reading
    true_times: list[float]
    crossings: list[FieldCrossing]
    still: list[StillTag]
    roles: dict[str, str]  # child -> moving / boundary / inside / outside / approach
    calibration: Calibration
    start: float
    end: float  # crossings happen before; readings go on for `tail_s` after
    clock: UnitClock = field(default_factory=UnitClock)


def field_tags(n: int, prefix: str, groups: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:06X}", "child": f"{prefix.lower()}-{i:04d}",
             "groups": groups or []} for i in range(n)]


def calibration(rnd: random.Random, site: Site, at: float,
                boundary_s: float | None = None, one_m_s: float | None = None,
                ref_tags: int = 1) -> Calibration:
    """Reference tags (of the same model as the children's) held together at the
    boundary, then at 1 m, each for 60-120 s, at this site. Each reference tag has its
    own 1 m power and its own link (held on a body, tags a hand apart fade apart)."""
    at_b: list[tuple[float, Reading]] = []
    at_1m: list[tuple[float, Reading]] = []
    tb = t1m = 0.0
    for k in range(ref_tags):  # draws in the order of the one-tag recording of old
        ch = Channel(rnd, site, tag_offset(rnd, site))
        tag = f"CA11B{k + 1:07d}"
        if k == 0:
            tb = boundary_s if boundary_s is not None else rnd.uniform(60, 120)
        _advertise(rnd, ch, site.reader, tag, at, at + tb, lambda _t: site.radius_m, at_b)
        if k == 0:
            t1m = one_m_s if one_m_s is not None else rnd.uniform(60, 120)
        _advertise(rnd, ch, site.reader, tag, at + tb + 30.0, at + tb + 30.0 + t1m,
                   lambda _t: 1.0, at_1m)
    at_b.sort(key=lambda x: x[0])
    at_1m.sort(key=lambda x: x[0])
    return Calibration(site.zone, site.reader, site.radius_m,
                       tuple(r for _, r in at_b if isinstance(r, BleSighting)),
                       tuple(r for _, r in at_1m if isinstance(r, BleSighting)))


def zone_field(seed: int, hours: float = 1.0, moving: int = 8, boundary: int = 6,
               inside: int = 2, outside: int = 2, exponent: float | None = None,
               radius_m: float | None = None, clock: UnitClock | None = None,
               groups: list[str] | None = None, tail_s: float = 600.0,
               zone: str = "yard", reader: str = "ble-yard", ref_tags: int = 1,
               approach: int = 0, settle: int = 0) -> ZoneField:
    """One zone of radius R (metres) around one reader at a site drawn from ``seed``.

    moving: children walking in and out (0.6-1.5 m/s) between far inside (0.15-0.6 R)
    and outside (1.4-3 R, or 4-8 R: mostly out of range), staying 2-15 min;
    boundary: walk in, then stand 0.3-3 m inside the boundary to the end; inside:
    walk in, stand at 0.1-0.5 R; outside: stay at 1.5-4 R all along. All but
    ``outside`` start out of the zone, at 1.5-3 R.
    approach: walk from far out (3-6 R) to 1.2-2 R outside and stand there (a parent
    waiting at the park's edge, a child at the fence): a third stand to the end, a
    third later walk in (to 0.15-0.6 R) for 2-15 min and back out to stand at 1.2-2 R
    again, a third later walk away (4-8 R). They are drawn from their own random
    stream after the others, so the other roles' radio, crossings and calibration
    are the same for a seed whatever ``approach`` is (their tags come last).
    settle: walk in to 0.1-0.5 R, stand there 5-25 min, then move to 0.3-3 m inside
    the boundary and stand there to the end (a child who plays in the middle of the
    yard, then sits by its fence): still children, so any exit of theirs is false;
    their own stream and tags after the approach children's, likewise.
    A fifth of the exits end behind a wall (25 dB more loss) 2-10 s after the crossing.
    """
    rnd = random.Random(seed)
    site = draw_site(rnd, zone, reader, exponent, radius_m)
    r = site.radius_m
    start = FIELD_T0
    end = start + hours * 3600.0
    roles = ["moving"] * moving + ["boundary"] * boundary + ["inside"] * inside \
        + ["outside"] * outside
    tags = field_tags(len(roles) + approach + settle, "F1E1D0", groups)
    items: list[tuple[float, Reading]] = []
    crossings: list[FieldCrossing] = []
    still: list[StillTag] = []
    role_of: dict[str, str] = {}
    for tg, role in zip(tags[:len(roles)], roles, strict=True):
        role_of[tg["child"]] = role
        d0 = rnd.uniform(1.5, 3.0) * r
        t = start + rnd.uniform(0.0, 60.0)
        knots = [(start, d0), (t, d0)]
        if role == "moving":
            d, inside_now = d0, False
            while True:
                if not inside_now:
                    target = max(1.0, rnd.uniform(0.15, 0.6) * r)
                elif rnd.random() < 0.3:  # leaves the park: mostly out of radio range
                    target = rnd.uniform(4.0, 8.0) * r
                else:
                    target = rnd.uniform(1.4, 3.0) * r
                walk = abs(target - d) / rnd.uniform(0.6, 1.5)
                if t + walk > end:
                    break
                t += walk
                knots.append((t, target))
                d, inside_now = target, not inside_now
                t += rnd.uniform(120.0, 900.0)
                knots.append((t, d))
        elif role in ("boundary", "inside"):
            depth = rnd.uniform(0.3, 3.0) if role == "boundary" else \
                r - max(1.0, rnd.uniform(0.1, 0.5) * r)
            t += (d0 - (r - depth)) / rnd.uniform(0.6, 1.5)
            knots.append((t, r - depth))
            still.append(StillTag(tg["child"], tg["id"], role, depth, t, end))
        else:
            knots = [(start, rnd.uniform(1.5, 4.0) * r)]
        crossings += _walk(rnd, site, tg, knots, start, end, tail_s, items)
    cal = calibration(rnd, site, start - 3600.0, ref_tags=ref_tags)
    arnd = random.Random(f"approach-{seed}")  # its own stream: the draws above stay
    for tg in tags[len(roles):len(roles) + approach]:
        role_of[tg["child"]] = "approach"
        crossings += _walk(arnd, site, tg, _approach_knots(arnd, r, start, end), start, end,
                           tail_s, items)
    srnd = random.Random(f"settle-{seed}")  # its own stream too
    for tg in tags[len(roles) + approach:]:
        role_of[tg["child"]] = "settle"
        knots, arrived, depth = _settle_knots(srnd, r, start, end)
        still.append(StillTag(tg["child"], tg["id"], "settle", depth, arrived, end))
        crossings += _walk(srnd, site, tg, knots, start, end, tail_s, items)
    reads, monos, true_times = _in_order(items, clock)
    crossings.sort(key=lambda c: c.time)
    return ZoneField(site, tags, reads, monos, true_times, crossings, still, role_of, cal,
                     start, end, clock or UnitClock())


def _walk(rnd: random.Random, site: Site, tg: dict[str, Any], knots: list[tuple[float, float]],
          start: float, end: float, tail_s: float, items: list[tuple[float, Reading]]
          ) -> list[FieldCrossing]:
    """One child's adverts along ``knots`` into ``items``; its true crossings (to ``end``)."""
    path = Path(knots)
    crossed = path.crossings(site.radius_m)
    # A fifth of exits go through a door or into a car: the signal drops at once
    # (the case only an absence timeout decides) until the child is back.
    walls = []
    for i, (k, ct) in enumerate(crossed):
        if k == "zone_exit" and rnd.random() < 0.2:
            back = crossed[i + 1][1] if i + 1 < len(crossed) else end + tail_s
            walls.append((ct + rnd.uniform(2.0, 10.0), back))
    ch = Channel(rnd, site, tag_offset(rnd, site))
    _advertise(rnd, ch, site.reader, tg["id"], start, end + tail_s, path, items, walls=walls)
    return [FieldCrossing(tg["child"], tg["id"], k, ct) for k, ct in crossed if ct <= end]


def _settle_knots(rnd: random.Random, r: float, start: float, end: float
                  ) -> tuple[list[tuple[float, float]], float, float]:
    """A child who walks in to 0.1-0.5 R, stands there 5-25 min, then moves to stand
    0.3-3 m inside the boundary to the end: (knots, when it was first inside, depth)."""
    d0 = rnd.uniform(1.5, 3.0) * r
    t = start + rnd.uniform(0.0, 60.0)
    knots = [(start, d0), (t, d0)]
    deep = max(1.0, rnd.uniform(0.1, 0.5) * r)
    speed = rnd.uniform(0.6, 1.5)
    arrived = t + (d0 - r) / speed  # the crossing in
    t += (d0 - deep) / speed
    knots.append((t, deep))
    t += rnd.uniform(300.0, 1500.0)
    knots.append((t, deep))
    depth = rnd.uniform(0.3, 3.0)
    t += (r - depth - deep) / rnd.uniform(0.3, 1.0)  # ambles to the fence
    knots.append((t, r - depth))
    return knots, arrived, depth


def _approach_knots(rnd: random.Random, r: float, start: float, end: float
                    ) -> list[tuple[float, float]]:
    """A child who walks up to the zone and stops outside it, at 1.2-2 R, for minutes
    (then, for some, a visit in and back out to stand again, or a walk away)."""
    d0 = rnd.uniform(3.0, 6.0) * r
    t = start + rnd.uniform(0.0, 600.0)
    stop = rnd.uniform(1.2, 2.0) * r
    knots = [(start, d0), (t, d0)]
    t += (d0 - stop) / rnd.uniform(0.6, 1.5)
    knots.append((t, stop))
    then = rnd.random()
    t += rnd.uniform(180.0, 1800.0)  # stands there (past the end for many)
    if then < 1 / 3 or t >= end:
        return knots
    knots.append((t, stop))
    if then < 2 / 3:  # walks in, stays a while, comes back out to stand again
        inner = max(1.0, rnd.uniform(0.15, 0.6) * r)
        t += (stop - inner) / rnd.uniform(0.6, 1.5)
        knots.append((t, inner))
        t += rnd.uniform(120.0, 900.0)
        knots.append((t, inner))
        stop = rnd.uniform(1.2, 2.0) * r
        t += (stop - inner) / rnd.uniform(0.6, 1.5)
        knots.append((t, stop))
    else:  # walks away
        far = rnd.uniform(4.0, 8.0) * r
        t += (far - stop) / rnd.uniform(0.6, 1.5)
        knots.append((t, far))
    return knots


# -- batteries -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class BatteryTruth:
    child: str
    tag: str
    crossing: float | None  # true time the true voltage falls below low_mv; None: never
    every: int  # telemetry in every Nth advert


@dataclass(slots=True)
class BatteryField:
    tags: list[dict[str, Any]]
    readings: list[Reading]
    monos: list[float]
    truth: list[BatteryTruth]
    low_mv: int
    start: float
    end: float


def battery_field(seed: int, n_tags: int = 20, hours: float = 2.0, low_mv: int = 2600,
                  never_share: float = 0.3, noise_mv: float = 10.0,
                  reader: str = "ble-bat", clock: UnitClock | None = None) -> BatteryField:
    """Tags whose true voltage falls 1.5-4 mV/min and crosses ``low_mv`` at 15 min to
    (end - 20 min); a share never crosses (hovering 15-60 mV above ``low_mv``, nearly
    flat). Readings: gaussian noise (sd ``noise_mv``, ~±20 mV), in every advert or every
    5th/10th/30th advert as real tags send it. Only adverts carrying telemetry are
    emitted (the others carry nothing for the battery decision)."""
    rnd = random.Random(seed)
    start, end = FIELD_T0, FIELD_T0 + hours * 3600.0
    tags = field_tags(n_tags, "BA77E0")
    items: list[tuple[float, Reading]] = []
    truth: list[BatteryTruth] = []
    for tg in tags:
        every = rnd.choice((1, 1, 5, 10, 30))
        if rnd.random() < never_share:
            slope = rnd.uniform(-0.05, 0.1) / 60.0  # mV/s, nearly flat
            v0 = low_mv + rnd.uniform(15.0, 60.0)
            v0 = max(v0, low_mv + 15.0 + slope * (end - start))
            crossing = None
        else:
            slope = rnd.uniform(1.5, 4.0) / 60.0
            crossing = rnd.uniform(start + 900.0, end - 1200.0)
            v0 = low_mv + slope * (crossing - start)
        truth.append(BatteryTruth(tg["child"], tg["id"], crossing, every))
        rssi0 = rnd.uniform(-75.0, -60.0)
        t = start + rnd.uniform(0.0, 1.0)
        k = rnd.randrange(every)
        while t < end:
            if k % every == 0 and rnd.random() >= 0.15:
                mv = round(v0 - slope * (t - start) + rnd.gauss(0.0, noise_mv))
                items.append((t, BleSighting(reader=reader, tag=tg["id"], time=t,
                                             rssi=round(rssi0 + rnd.gauss(0, 3)),
                                             battery_mv=mv)))
            k += 1
            t += 1.0 + rnd.uniform(-0.05, 0.05)
    reads, monos, _ = _in_order(items, clock)
    return BatteryField(tags, reads, monos, truth, low_mv, start, end)


# -- gates -----------------------------------------------------------------------------------

# A 1-D walkway: the gate line at x = 0, outside at x < 0. The outer antenna looks at
# x = -1.2, the inner at +1.2; each reads a tag within 2 m of it (the fields overlap
# around the line).
ANT_X = {"outer": -1.2, "inner": 1.2}
FIELD_M = 2.0
POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class GatePassage:
    child: str
    tag: str
    direction: str  # arrival / departure
    time: float  # true time the child crosses the gate line


@dataclass(frozen=True, slots=True)
class GateEpisode:
    """Something that happened at the gate; only kind "passage" is a passage."""

    child: str
    kind: str  # passage / turn_back / revisit
    start: float
    end: float
    missed: tuple[str, ...]  # antennas that read nothing in this episode
    linger_s: float


@dataclass(slots=True)
class GateField:
    tags: list[dict[str, Any]]
    readings: list[Reading]
    monos: list[float]
    passages: list[GatePassage]
    episodes: list[GateEpisode]
    two_readers: bool


def gate_field(seed: int, n_children: int = 60, passages_per_child: int = 4,
               two_readers: bool = False, p_miss_antenna: float = 0.02,
               p_linger: float = 0.12, p_turn_back: float = 0.06, p_revisit: float = 0.08,
               clock: UnitClock | None = None) -> GateField:
    """Children passing a two-antenna UHF gate, alternating arrival and departure.

    Per poll (10/s per antenna) a tag within 2 m of an antenna is read with a
    probability falling with distance, at RSSI -45 dBm minus 10 dB/m (sd 2.5 dB).
    A child standing still in one field gives weak reflection reads (-78..-69 dBm)
    on the other antenna. Per episode each antenna misses everything with
    ``p_miss_antenna``. Turn-backs walk into the first field and back (no
    passage); revisits come back from the far side into the second field a few
    seconds after a passage and leave again (no passage)."""
    rnd = random.Random(seed)
    tags = field_tags(n_children, "6A7E00")
    items: list[tuple[float, Reading]] = []
    passages: list[GatePassage] = []
    episodes: list[GateEpisode] = []
    for tg in tags:
        t = FIELD_T0 + rnd.uniform(0.0, 120.0)
        outside = True  # arrival first
        done = 0
        while done < passages_per_child:
            sign = -1.0 if outside else 1.0  # the side the child comes from
            v = rnd.uniform(0.6, 1.8)
            missed = tuple(a for a in ("outer", "inner") if rnd.random() < p_miss_antenna)
            if rnd.random() < p_turn_back:
                turn = sign * rnd.uniform(0.3, 1.5)
                linger = rnd.uniform(0.0, 10.0)
                knots = [(t, 4.0 * sign)]
                t1 = t + abs(4.0 * sign - turn) / v
                knots += [(t1, turn), (t1 + linger, turn),
                          (t1 + linger + abs(4.0 * sign - turn) / v, 4.0 * sign)]
                _gate_reads(rnd, tg["id"], knots, missed, two_readers, items)
                episodes.append(GateEpisode(tg["child"], "turn_back", t, knots[-1][0],
                                            missed, linger))
                t = knots[-1][0] + rnd.uniform(20.0, 120.0)
                continue
            before = rnd.uniform(3.0, 25.0) if rnd.random() < p_linger else 0.0
            after = rnd.uniform(3.0, 25.0) if rnd.random() < p_linger else 0.0
            x_b = sign * rnd.uniform(0.9, 1.8)  # where one lingers in the first field
            x_a = -sign * rnd.uniform(0.9, 1.8)
            knots = [(t, 4.0 * sign)]
            tt = t + abs(4.0 * sign - x_b) / v
            knots += [(tt, x_b), (tt + before, x_b)]
            tt += before
            cross = tt + abs(x_b) / v
            tt += abs(x_b - x_a) / v
            knots += [(tt, x_a), (tt + after, x_a)]
            tt += after + abs(-4.0 * sign - x_a) / v
            knots.append((tt, -4.0 * sign))
            _gate_reads(rnd, tg["id"], knots, missed, two_readers, items)
            direction = "arrival" if outside else "departure"
            passages.append(GatePassage(tg["child"], tg["id"], direction, cross))
            episodes.append(GateEpisode(tg["child"], "passage", t, tt, missed, before + after))
            done += 1
            outside = not outside
            t = tt + rnd.uniform(3.0, 40.0)
            if rnd.random() < p_revisit:  # back from the far side, then away again
                far = 4.0 * (1.0 if not outside else -1.0)
                x_r = far / 4.0 * rnd.uniform(0.4, 1.6)
                linger = rnd.uniform(0.0, 8.0)
                t1 = t + abs(far - x_r) / v
                knots = [(t, far), (t1, x_r), (t1 + linger, x_r),
                         (t1 + linger + abs(far - x_r) / v, far)]
                rmiss = tuple(a for a in ("outer", "inner") if rnd.random() < p_miss_antenna)
                _gate_reads(rnd, tg["id"], knots, rmiss, two_readers, items)
                episodes.append(GateEpisode(tg["child"], "revisit", t, knots[-1][0], rmiss,
                                            linger))
                t = knots[-1][0]
            t += rnd.uniform(60.0, 600.0)
    reads, monos, _ = _in_order(items, clock)
    passages.sort(key=lambda p: p.time)
    return GateField(tags, reads, monos, passages, episodes, two_readers)


def _gate_reads(rnd: random.Random, tag: str, knots: list[tuple[float, float]],
                missed: tuple[str, ...], two_readers: bool,
                out: list[tuple[float, Reading]]) -> None:
    path = Path(knots)
    t, t_end = knots[0][0], knots[-1][0]
    prev = path(t)
    while t <= t_end:
        x = path(t)
        still = abs(x - prev) < 1e-9
        prev = x
        for side, xa in ANT_X.items():
            if side in missed:
                continue
            dist = abs(x - xa)
            rssi: float | None = None
            if dist < FIELD_M:
                if rnd.random() < 0.6 * (1.0 - dist / (FIELD_M + 0.4)):
                    rssi = -45.0 - 10.0 * dist + rnd.gauss(0.0, 2.5)
            elif still and abs(x - ANT_X["outer" if side == "inner" else "inner"]) < FIELD_M \
                    and rnd.random() < 0.04:
                rssi = rnd.uniform(-78.0, -69.0)  # a reflection off the child standing there
            if rssi is not None:
                tr = t + rnd.uniform(0.0, 0.02)
                out.append((tr, _uhf_read(tag, side, tr, round(rssi, 1), two_readers)))
        t += POLL_S


def _uhf_read(tag: str, side: str, t: float, rssi: float, two_readers: bool) -> TagRead:
    if two_readers:
        return TagRead(reader="gate-out" if side == "outer" else "gate-in", tag=tag, time=t,
                       rssi=rssi)
    return TagRead(reader="uhf-gate", tag=tag, time=t, rssi=rssi,
                   antenna=1 if side == "outer" else 2)


# -- measurement -----------------------------------------------------------------------------

def _pairs(truth: Sequence[Any], events: Sequence[Any], key_t: Callable[[Any], tuple[Any, ...]],
           key_e: Callable[[Any], tuple[Any, ...]], early_s: float, late_s: float
           ) -> list[tuple[Any, Any]]:
    """One-to-one matching of events to truth items with the same key, event time within
    [-early_s, +late_s] of the true time, closest pairs first."""
    by: dict[tuple[Any, ...], list[Any]] = {}
    for e in events:
        by.setdefault(key_e(e), []).append(e)
    cand = []
    for i, c in enumerate(truth):
        for j, e in enumerate(by.get(key_t(c), [])):
            d = e.time - c.time
            if -early_s <= d <= late_s:
                cand.append((abs(d), i, id(e), j, c, e))
    cand.sort(key=lambda x: (x[0], x[1], x[3]))
    used_t: set[int] = set()
    used_e: set[int] = set()
    out = []
    for _, i, eid, _, c, e in cand:
        if i not in used_t and eid not in used_e:
            used_t.add(i)
            used_e.add(eid)
            out.append((c, e))
    return out


ZONE_EARLY_S = 30.0  # a zone event this much before the crossing still counts as found
ZONE_LATE_S = 120.0  # ...and this much after (timing is scored separately)


@dataclass(frozen=True, slots=True)
class ZoneScore:
    crossings: int
    events: int
    matched: int
    false_exits: int  # zone_exit events of still children (boundary and far inside)
    still_hours: float
    within: int  # events within dwell_s + 30 s of their crossing
    errors_s: tuple[float, ...]  # |event time - true crossing| of matched events
    deep_false_exits: int = 0  # of those false exits, children standing far inside
    deep_hours: float = 0.0

    @property
    def precision(self) -> float:
        return self.matched / self.events if self.events else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.crossings if self.crossings else 1.0

    @property
    def false_exits_per_100h(self) -> float:
        return 100.0 * self.false_exits / self.still_hours if self.still_hours else 0.0

    @property
    def time_error_p50_s(self) -> float:
        return statistics.median(self.errors_s) if self.errors_s else math.nan

    @property
    def within_share(self) -> float:
        return self.within / self.events if self.events else 1.0

    def __add__(self, o: ZoneScore) -> ZoneScore:
        return ZoneScore(self.crossings + o.crossings, self.events + o.events,
                         self.matched + o.matched, self.false_exits + o.false_exits,
                         self.still_hours + o.still_hours, self.within + o.within,
                         self.errors_s + o.errors_s,
                         self.deep_false_exits + o.deep_false_exits,
                         self.deep_hours + o.deep_hours)

    def figures(self, suffix: str = "") -> dict[str, float]:
        return {f"zone_precision{suffix}": round(self.precision, 4),
                f"zone_recall{suffix}": round(self.recall, 4),
                f"zone_false_exits_per_100h{suffix}": round(self.false_exits_per_100h, 2),
                f"zone_false_exits_per_100h_far_inside{suffix}": round(
                    100.0 * self.deep_false_exits / self.deep_hours if self.deep_hours
                    else 0.0, 2),
                f"zone_time_error_p50_s{suffix}": round(self.time_error_p50_s, 1),
                f"zone_events_within_dwell_30s{suffix}": round(self.within_share, 4)}


ZERO_ZONE = ZoneScore(0, 0, 0, 0, 0.0, 0, ())


def score_zone(zf: ZoneField, events: Iterable[Any], dwell_s: float) -> ZoneScore:
    """Zone events (kind zone_enter / zone_exit of zf's zone) against zf's truth.

    precision: matched / zone events; recall: matched / true crossings, matching
    within [-30 s, +120 s]. false exits: every zone_exit of a still child.
    within: events matched within dwell_s + 30 s of their crossing, over all
    zone events (an unmatched event is not within)."""
    evs = [e for e in events if e.kind in ("zone_enter", "zone_exit")
           and e.data.get("zone") == zf.site.zone]
    pairs = _pairs(zf.crossings, evs, lambda c: (c.child, c.kind), lambda e: (e.child, e.kind),
                   ZONE_EARLY_S, ZONE_LATE_S)
    errors = tuple(abs(e.time - c.time) for c, e in pairs)
    still = {s.child: s.role for s in zf.still}
    false_exits = [e for e in evs if e.kind == "zone_exit" and e.child in still]
    return ZoneScore(len(zf.crossings), len(evs), len(pairs), len(false_exits),
                     sum(s.hours for s in zf.still),
                     sum(1 for d in errors if d <= dwell_s + 30.0), errors,
                     sum(1 for e in false_exits if still[e.child] == "inside"),
                     sum(s.hours for s in zf.still if s.role == "inside"))


@dataclass(frozen=True, slots=True)
class GateScore:
    passages: int
    events: int  # gate events
    decided: int  # gate events with a direction
    correct: int  # events matched to a passage with its true direction
    undecided_matched: int  # matched events without a direction
    spurious: int  # events matched to no passage (turn-backs, revisits, doubles)

    @property
    def direction_accuracy(self) -> float:
        return self.correct / self.decided if self.decided else 1.0

    @property
    def recall_with_direction(self) -> float:
        return self.correct / self.passages if self.passages else 1.0

    def __add__(self, o: GateScore) -> GateScore:
        return GateScore(*(a + b for a, b in zip(self.tuple(), o.tuple(), strict=True)))

    def tuple(self) -> tuple[int, ...]:
        return (self.passages, self.events, self.decided, self.correct,
                self.undecided_matched, self.spurious)

    def figures(self) -> dict[str, float]:
        return {"gate_direction_accuracy": round(self.direction_accuracy, 4),
                "gate_recall_with_direction": round(self.recall_with_direction, 4),
                "gate_spurious_per_100_passages":
                    round(100.0 * self.spurious / self.passages, 2) if self.passages else 0.0}


GATE_TOLERANCE_S = 30.0


def score_gate(gf: GateField, events: Iterable[Any]) -> GateScore:
    """Gate events against true passages (same child, event time within ±30 s of the
    crossing, one-to-one). Direction accuracy: correct / all events with a direction
    (an event with a direction but no passage is a wrong decision)."""
    evs = [e for e in events if e.kind == "gate"]
    pairs = _pairs(gf.passages, evs, lambda p: (p.child,), lambda e: (e.child,),
                   GATE_TOLERANCE_S, GATE_TOLERANCE_S)
    correct = sum(1 for p, e in pairs if e.data.get("direction") == p.direction)
    undecided = sum(1 for _, e in pairs if e.data.get("direction") is None)
    decided = sum(1 for e in evs if e.data.get("direction") is not None)
    return GateScore(len(gf.passages), len(evs), decided, correct, undecided,
                     len(evs) - len(pairs))


BATTERY_TOLERANCE_S = 300.0


@dataclass(frozen=True, slots=True)
class BatteryScore:
    tags: int
    exact: int  # tags with exactly one event within ±5 min (crossers) or none (others)
    early: int  # low_battery events more than 5 min before the true crossing
    events: int

    @property
    def ratio(self) -> float:
        return self.exact / self.tags if self.tags else 1.0

    def __add__(self, o: BatteryScore) -> BatteryScore:
        return BatteryScore(self.tags + o.tags, self.exact + o.exact, self.early + o.early,
                            self.events + o.events)

    def figures(self) -> dict[str, float]:
        return {"battery_exact_once_ratio": round(self.ratio, 4)}


def score_battery(bf: BatteryField, events: Iterable[Any]) -> BatteryScore:
    by: dict[str, list[float]] = {}
    n = 0
    for e in events:
        if e.kind == "low_battery":
            by.setdefault(e.child, []).append(e.time)
            n += 1
    exact = early = 0
    for b in bf.truth:
        times = by.get(b.child, [])
        if b.crossing is None:
            exact += not times
            early += len(times)
        else:
            exact += len(times) == 1 and abs(times[0] - b.crossing) <= BATTERY_TOLERANCE_S
            early += sum(1 for t in times if t < b.crossing - BATTERY_TOLERANCE_S)
    return BatteryScore(len(bf.truth), exact, early, n)


def missed_alerts(zf: ZoneField, decided: Iterable[tuple[Any, float]], after: float,
                  until: float, late_s: float = 180.0) -> tuple[int, int]:
    """(true exits in [after, until], those without a zone_alert decided within late_s
    of the crossing). ``decided`` pairs each event with the monotonic time of the
    reading that decided it, so the measure holds whatever the wall clock did; every
    child of zf must be in a stay group of its zone."""
    exits = [c for c in zf.crossings if c.kind == "zone_exit" and after <= c.time <= until]
    return len(exits), len(missed_alert_exits(zf, decided, after, until, late_s))


def missed_alert_exits(zf: ZoneField, decided: Iterable[tuple[Any, float]], after: float,
                       until: float, late_s: float = 180.0) -> list[tuple[str, float]]:
    """The (child, true time) of each exit :func:`missed_alerts` counts as missed."""
    alerts: dict[str, list[float]] = {}
    for e, mono in decided:
        if e.kind == "zone_alert":
            alerts.setdefault(e.child, []).append(zf.clock.true_of_mono(mono))
    return [(c.child, c.time) for c in zf.crossings
            if c.kind == "zone_exit" and after <= c.time <= until
            and not any(c.time - ZONE_EARLY_S <= t <= c.time + late_s
                        for t in alerts.get(c.child, []))]


def boundary_median(cal: Calibration) -> float:
    """The median RSSI of the calibration's boundary readings."""
    return statistics.median(r.rssi for r in cal.boundary)
