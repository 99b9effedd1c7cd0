"""Seeded scenario generators with ground truth for the engine tests and bench.

Each generator returns the readings (in time order, as a pipeline would see
them) and what really happened, so tests measure the engine against truth.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Field-condition generators (issue 10) live in fieldgen.py; re-exported here.
from fieldgen import *  # noqa: F403
from fieldgen import BatteryField, Calibration, GateField, ZoneField, boundary_median
from gateway.config import engine_config, parse
from gateway.engine import Engine
from gateway.model import BleSighting, GpsFix, Reading, TagRead

T0 = 1_717_203_600.0  # 2024-06-01 01:00 UTC = 10:00 in Seoul (a Saturday)
SCHOOL = (37.5665, 126.9780)  # lat, lon of the school used by the GPS scenarios


def raw_config(readers: list[dict[str, Any]] | None = None,
               tags: list[dict[str, Any]] | None = None, **sections: Any) -> dict[str, Any]:
    """A complete raw config (as parsed TOML) with the given engine sections."""
    raw: dict[str, Any] = {
        "unit": {"id": "unit-s1", "site": "scenario"},
        "broker": {"host": "127.0.0.1"},
        "buffer": {"path": "/tmp/unused.db"},
        "readers": readers or [],
        "tags": tags or [],
    }
    raw.update(sections)
    return raw


def reader(rid: str, role: str, **options: Any) -> dict[str, Any]:
    # The engine does not care about the hardware kind; rdm6300 validates anywhere. One port
    # per reader: the loader refuses two readers on one port.
    return {"id": rid, "kind": "rdm6300", "role": role, "port": f"/dev/null-{rid}", **options}


def engine_of(raw: dict[str, Any]) -> Engine:
    return Engine(engine_config(parse(raw)))


def child_tags(n: int, prefix: str = "C0FFEE", groups: list[str] | None = None
               ) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:06X}", "child": f"c-{i:04d}", "groups": groups or []}
            for i in range(n)]


# -- gates -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Passage:
    child: str
    tag: str
    direction: str  # arrival / departure
    start: float  # first moment in an antenna field
    end: float  # last moment in an antenna field


def gate_scenario(seed: int, tags: list[dict[str, Any]], passages_per_child: int,
                  two_readers: bool = False, p_read: float = 0.5,
                  p_cross: float = 0.03) -> tuple[list[Reading], list[Passage]]:
    """Children walking through a two-antenna gate both ways.

    Each antenna polls every 0.1 s and reads a tag in its field with
    probability ``p_read`` (misses); the other antenna picks up a stray read
    with probability ``p_cross``. Some children linger in a field before or
    after crossing. One UHF reader with antennas 1 (outer) and 2 (inner), or
    two readers ``gate-out`` / ``gate-in``.
    """
    rnd = random.Random(seed)
    reads: list[Reading] = []
    truth: list[Passage] = []
    for tg in tags:
        t = T0 + rnd.uniform(0, 120)
        direction = rnd.choice(["arrival", "departure"])
        for _ in range(passages_per_child):
            scale = rnd.uniform(0.6, 2.0)  # slow and fast walkers
            before = rnd.uniform(3, 25) if rnd.random() < 0.1 else 0.0
            after = rnd.uniform(3, 25) if rnd.random() < 0.15 else 0.0
            first = "outer" if direction == "arrival" else "inner"
            second = "inner" if first == "outer" else "outer"
            # Field intervals: first side, overlap in the middle, second side.
            f1 = (t, t + before + 1.5 * scale)
            f2 = (t + before + 1.0 * scale, t + before + 2.5 * scale + after)
            tt = t
            while tt <= f2[1]:
                for side, (a, b) in ((first, f1), (second, f2)):
                    inside = a <= tt <= b
                    if (inside and rnd.random() < p_read) or (
                            not inside and rnd.random() < p_cross
                            and (f1[0] <= tt <= f2[1])):
                        reads.append(_gate_read(tg["id"], side, tt + rnd.uniform(0, 0.01),
                                                two_readers))
                tt += 0.1
            truth.append(Passage(tg["child"], tg["id"], direction, t, f2[1]))
            t = f2[1] + rnd.uniform(20, 300)
            direction = "departure" if direction == "arrival" else "arrival"
    reads.sort(key=lambda r: r.time)
    return reads, truth


def _gate_read(tag: str, side: str, t: float, two_readers: bool) -> TagRead:
    if two_readers:
        return TagRead(reader="gate-out" if side == "outer" else "gate-in", tag=tag, time=t)
    return TagRead(reader="uhf-gate", tag=tag, time=t, rssi=-60.0,
                   antenna=1 if side == "outer" else 2)


# -- BLE zones -------------------------------------------------------------------------------

ZONE_R = 10.0  # metres: truth boundary of the zone around its reader


def rssi_at(d: float) -> float:
    """Mean RSSI at ``d`` metres: -59 dBm at 1 m, path-loss exponent 2.5."""
    return -59.0 - 25.0 * math.log10(max(d, 0.5))


ZONE_SECTION: dict[str, Any] = {
    "id": "yard", "readers": ["ble-yard"], "enter_dbm": -80.0, "exit_dbm": -86.0,
    "dwell_s": 5.0, "exit_dwell_s": 3.0, "absence_s": 30.0}


@dataclass(frozen=True, slots=True)
class Crossing:
    child: str
    tag: str
    kind: str  # zone_enter / zone_exit
    time: float


def _adverts(rnd: random.Random, tag: str, t0: float, t1: float, dist: Any,
             out: list[Reading], p_drop: float = 0.2, sigma: float = 6.0,
             interval: float = 1.0, reader: str = "ble-yard") -> None:
    t = t0 + rnd.uniform(0, interval)
    while t < t1:
        if rnd.random() >= p_drop:
            v = rssi_at(dist(t)) + rnd.gauss(0.0, sigma)
            if v >= -100.0:  # the radio's sensitivity
                out.append(BleSighting(reader=reader, tag=tag, time=t, rssi=round(v)))
        t += interval + rnd.uniform(-0.05, 0.05)


def zone_moving(seed: int, tags: list[dict[str, Any]], duration_s: float,
                speed: float = 1.2) -> tuple[list[Reading], list[Crossing]]:
    """Tags walking in and out of the zone: stay inside (1-5 m), walk out to 20-60 m,
    stay, walk back. Gaussian RSSI noise sigma 6 dB, 20 % of adverts dropped."""
    rnd = random.Random(seed)
    reads: list[Reading] = []
    truth: list[Crossing] = []
    for tg in tags:
        t = T0
        d = rnd.uniform(60, 90)  # start far away, out of radio range
        inside = False
        while t < T0 + duration_s:
            stay = rnd.uniform(90, 600)
            _adverts(rnd, tg["id"], t, t + stay, lambda _t, d=d: d, reads)
            t += stay
            target = rnd.uniform(20, 60) if inside else rnd.uniform(1, 5)
            walk = abs(target - d) / speed

            def dist(tt: float, a: float = d, b: float = target, s: float = t,
                     w: float = walk) -> float:
                return a + (b - a) * min(1.0, (tt - s) / w)
            _adverts(rnd, tg["id"], t, t + walk, dist, reads)
            cross = t + abs(ZONE_R - d) / speed
            truth.append(Crossing(tg["child"], tg["id"],
                                  "zone_exit" if inside else "zone_enter", cross))
            t += walk
            d, inside = target, not inside
        # Stay put to a common end, so the last crossing has time to be decided.
        _adverts(rnd, tg["id"], t, T0 + duration_s + 900, lambda _t, d=d: d, reads)
    reads.sort(key=lambda r: r.time)
    return reads, truth


def zone_standing(seed: int, tags: list[dict[str, Any]], duration_s: float,
                  start: float = T0) -> list[Reading]:
    """Tags standing still inside the zone (1-6 m from the reader) for duration_s."""
    rnd = random.Random(seed)
    reads: list[Reading] = []
    for tg in tags:
        d = rnd.uniform(1, 6)
        _adverts(rnd, tg["id"], start, start + duration_s, lambda _t, d=d: d, reads)
    reads.sort(key=lambda r: r.time)
    return reads


# -- GPS -------------------------------------------------------------------------------------

def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (lat + north_m / 111_195.0,
            lon + east_m / (111_195.0 * math.cos(math.radians(lat))))


def bus_track(seed: int) -> tuple[list[Reading], dict[str, float]]:
    """A bus driving east through the school's 150 m circle at 8 m/s, 1 Hz fixes with
    3 m noise, a few high-HDOP fixes far off, out-of-order repeats and one 2 km jump.
    Truth: the times it crosses the circle."""
    rnd = random.Random(seed)
    fixes: list[Reading] = []
    speed = 8.0
    x0 = -1200.0  # metres east of the school, start
    n = int(2400 / speed)
    for i in range(n):
        t = T0 + i
        x = x0 + speed * i
        lat, lon = offset(*SCHOOL, rnd.gauss(0, 3.0) + 20.0, x + rnd.gauss(0, 3.0))
        hdop = rnd.uniform(0.7, 1.8)
        if rnd.random() < 0.02:  # multipath: far off, and the receiver knows it
            lat, lon = offset(lat, lon, rnd.uniform(-80, 80), rnd.uniform(-80, 80))
            hdop = rnd.uniform(6, 15)
        if i == n // 3:  # a wild jump the receiver believes
            lat, lon = offset(lat, lon, 2000.0, 0.0)
        fixes.append(GpsFix(reader="gps", time=t, lat=lat, lon=lon, fix_quality=1, fix_type=3,
                            satellites=9, hdop=hdop, speed_mps=speed))
        if rnd.random() < 0.03 and i > 5:  # a late, replayed older fix
            old = fixes[-rnd.randint(2, 5)]
            assert isinstance(old, GpsFix)
            fixes.append(old)
    r = 150.0
    enter = T0 + (-r - x0) / speed
    exit_ = T0 + (r - x0) / speed
    # Entering/exiting the circle: the chord at 20 m north is slightly shorter.
    half = math.sqrt(r * r - 20.0 * 20.0)
    enter = T0 + (-half - x0) / speed
    exit_ = T0 + (half - x0) / speed
    return fixes, {"enter": enter, "exit": exit_}


def parked_on_boundary(seed: int, duration_s: float, radius: float = 150.0) -> list[Reading]:
    """A bus parked exactly on the circle's boundary: 1 Hz fixes, slowly wandering
    GPS error (a random walk pulled back to 0, ~4 m) plus 2 m white noise."""
    rnd = random.Random(seed)
    out: list[Reading] = []
    en = ee = 0.0
    for i in range(int(duration_s)):
        en = 0.98 * en + rnd.gauss(0, 0.8)
        ee = 0.98 * ee + rnd.gauss(0, 0.8)
        lat, lon = offset(*SCHOOL, en + rnd.gauss(0, 2), radius + ee + rnd.gauss(0, 2))
        out.append(GpsFix(reader="gps", time=T0 + i, lat=lat, lon=lon, fix_quality=1,
                          fix_type=3, satellites=8, hdop=rnd.uniform(0.8, 2.5), speed_mps=0.0))
    return out


# -- running and scoring ---------------------------------------------------------------------

def run(engine: Engine, readings: Sequence[Reading], state: Any = None, until: float | None = None
        ) -> tuple[Any, list[Any]]:
    """Replay readings with the replay's implicit ticks; tick on to wall time ``until``
    (for readings with monotonic stamps: the engine time that is at the last offset)."""
    from gateway.recording import Control
    from gateway.replay import Replayer

    rp = Replayer(engine, state)
    events = []
    for r in readings:
        events += rp.feed(r)
    if until is not None:
        monotonic = bool(readings) and readings[-1].mono == readings[-1].mono
        mono = until - rp.state.wall_offset if monotonic else math.nan
        events += rp.feed(Control("tick", until, mono=mono))
    return rp.state, events


def match(truth: list[Crossing], events: list[Any], early_s: float,
          late_s: dict[str, float]) -> tuple[int, int]:
    """One-to-one matching of events to true crossings of the same child and kind, each
    event within [-early_s, +late_s[kind]] of its crossing. Returns (matched, events)."""
    evs = [e for e in events if e.kind in late_s]
    by: dict[tuple[str, str], list[Any]] = {}
    for e in evs:
        by.setdefault((e.child, e.kind), []).append(e)
    used: set[int] = set()
    matched = 0
    for c in sorted(truth, key=lambda c: c.time):
        best = None
        for e in by.get((c.child, c.kind), []):
            d = e.time - c.time
            if id(e) not in used and -early_s <= d <= late_s[c.kind] and (
                    best is None or d < best.time - c.time):
                best = e
        if best is not None:
            used.add(id(best))
            matched += 1
    return matched, len(evs)


# -- field conditions (issue 10): generators in fieldgen.py, engine glue here ------------------


CALIBRATION_MARGIN_DB = 3.0


def thresholds_from_calibration(cal: Calibration, margin_db: float = CALIBRATION_MARGIN_DB
                                ) -> tuple[float, float]:
    """(enter_dbm, exit_dbm) from what a technician recorded: the median RSSI of the
    reference tag at the boundary, plus / minus ``margin_db``. The simplest honest
    check of the recording (field_zone_engine uses gatewayd calibrate's estimator)."""
    m = boundary_median(cal)
    return m + margin_db, m - margin_db


def field_zone_engine(zf: ZoneField, **zone: Any) -> Engine:
    """The engine with zf's zone as a technician sets it up: declared in metres
    (``radius_m``) and calibrated with ``gatewayd calibrate``'s estimator from zf's
    calibration readings (boundary and 1 m). Never the generator's true parameters."""
    from gateway import calibrate

    cal = zf.calibration
    est = calibrate.estimate([r.rssi for r in cal.boundary],
                             [r.rssi for r in cal.one_m] or None, cal.radius_m)
    th = calibrate.thresholds(est)
    section = {"id": zf.site.zone, "readers": [zf.site.reader], "radius_m": cal.radius_m,
               "boundary_dbm": th.boundary_dbm, "enter_dbm": th.enter_dbm,
               "exit_dbm": th.exit_dbm, **zone}
    return engine_of(raw_config([reader(zf.site.reader, "zone")], zf.tags, zones=[section],
                                engine={"timezone": "Asia/Seoul"}))


def field_gate_engine(gf: GateField) -> Engine:
    readers = ([reader("gate-out", "gate_outer"), reader("gate-in", "gate_inner")]
               if gf.two_readers else
               [reader("uhf-gate", "gate", antenna_roles={"1": "outer", "2": "inner"})])
    return engine_of(raw_config(readers, gf.tags, engine={"timezone": "Asia/Seoul"}))


def field_battery_engine(bf: BatteryField) -> Engine:
    return engine_of(raw_config([reader("ble-bat", "zone")], bf.tags,
                                battery={"low_mv": bf.low_mv},
                                engine={"timezone": "Asia/Seoul"}))


def run_field(engine: Engine, readings: Sequence[Reading], tail_s: float = 0.0) -> list[Any]:
    """Events of a field scenario. Ticks stop at the newest reading (+ ``tail_s``): the
    generators keep every tag advertising past the scored period, and ticking on past
    the end would turn the end of the recording into absence exits."""
    if not readings:
        return []
    _, events = run(engine, readings, until=max(r.time for r in readings) + tail_s)
    return events


def run_decided(engine: Engine, readings: Sequence[Reading], monos: Sequence[float]
                ) -> list[tuple[Any, float]]:
    """Events with the unit's monotonic time of the reading that decided them (what a
    decision latency is measured on when the wall clock steps)."""
    from gateway.replay import Replayer

    rp = Replayer(engine)
    out: list[tuple[Any, float]] = []
    for r, mono in zip(readings, monos, strict=True):
        out += [(e, mono) for e in rp.feed(r)]
    return out
