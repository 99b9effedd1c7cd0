"""A simulated NMEA 0183 GNSS receiver on a pseudo-terminal.

It follows a track (waypoints with times, or a constant speed) and writes
GGA + RMC + GSA every epoch (1 Hz by default, like most modules), with the
noise real receivers show: a few metres of position jitter, an occasional
corrupted checksum, and on request a jump (multipath), a lost fix, or a GPS
week-rollover date (old receivers with a 10-bit week counter report dates
1024 weeks in the past; traccar#4965). Sentences follow NMEA 0183 4.x
(``$<talker><type>,...*hh``, hh = XOR of the bytes between ``$`` and ``*``);
the talker is GP (GPS only) or GN (multi-constellation).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import threading
import time
from dataclasses import dataclass
from functools import reduce
from operator import xor
from typing import Any

from firmware_sim.simulator import (
    Context,
    Settings,
    Simulator,
    Started,
    StepArgs,
    later,
    plug_action,
    serial_where,
)
from firmware_sim.vserial import VirtualSerial
from firmware_sim.worker import Worker

EARTH_R = 6371008.8
WEEK_ROLLOVER = dt.timedelta(weeks=1024)
BYTE_S = 10 / 9600


@dataclass(frozen=True, slots=True)
class Waypoint:
    lat: float
    lon: float
    t: float | None = None  # seconds from the start; None: derived from the track's speed


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    la1, lo1, la2, lo2 = map(math.radians, (a[0], a[1], b[0], b[1]))
    h = (math.sin((la2 - la1) / 2) ** 2
         + math.cos(la1) * math.cos(la2) * math.sin((lo2 - lo1) / 2) ** 2)
    return 2 * EARTH_R * math.asin(math.sqrt(h))


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """A point some metres north/east of another (flat-earth; fine for a few km)."""
    dlat = math.degrees(north_m / EARTH_R)
    dlon = math.degrees(east_m / (EARTH_R * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


class Track:
    """Piecewise-linear movement through waypoints; stands still at the end."""

    def __init__(self, points: list[Waypoint], speed_mps: float = 10.0) -> None:
        if not points:
            raise ValueError("a track needs at least one waypoint")
        times: list[float] = []
        for i, p in enumerate(points):
            if p.t is not None:
                times.append(p.t)
            elif i == 0:
                times.append(0.0)
            else:
                prev = points[i - 1]
                times.append(times[-1] + distance_m((prev.lat, prev.lon), (p.lat, p.lon))
                             / speed_mps)
        for i, (a, b) in enumerate(itertools.pairwise(times), start=1):
            if b < a:
                prev, p = points[i - 1], points[i]
                how = (f"given as t = {prev.t:g} s" if prev.t is not None
                       else f"reached at {speed_mps:g} m/s")
                raise ValueError(
                    f"waypoint times must not go backwards: waypoint {i} "
                    f"({p.lat}, {p.lon}) has t = {b:g} s, but waypoint {i - 1} "
                    f"({prev.lat}, {prev.lon}) is at t = {a:.1f} s ({how})")
        self.points = points
        self.times = times

    @property
    def duration(self) -> float:
        return self.times[-1]

    def at(self, t: float) -> tuple[float, float, float, float]:
        """(lat, lon, speed m/s, course degrees) at ``t`` seconds from the start."""
        pts, ts = self.points, self.times
        if t <= ts[0] or len(pts) == 1:
            return pts[0].lat, pts[0].lon, 0.0, 0.0
        for i in range(1, len(pts)):
            if t <= ts[i]:
                a, b = pts[i - 1], pts[i]
                span = ts[i] - ts[i - 1]
                f = (t - ts[i - 1]) / span if span > 0 else 1.0
                d = distance_m((a.lat, a.lon), (b.lat, b.lon))
                course = math.degrees(math.atan2(
                    (b.lon - a.lon) * math.cos(math.radians(a.lat)), b.lat - a.lat)) % 360
                return (a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f,
                        d / span if span > 0 else 0.0, course)
        last = pts[-1]
        return last.lat, last.lon, 0.0, 0.0


def checksum(body: str) -> str:
    return f"{reduce(xor, body.encode('ascii'), 0):02X}"


def sentence(body: str) -> bytes:
    return f"${body}*{checksum(body)}\r\n".encode("ascii")


def _lat(v: float) -> tuple[str, str]:
    a = abs(v)
    return f"{int(a):02d}{(a - int(a)) * 60:07.4f}", "N" if v >= 0 else "S"


def _lon(v: float) -> tuple[str, str]:
    a = abs(v)
    return f"{int(a):03d}{(a - int(a)) * 60:07.4f}", "E" if v >= 0 else "W"


class GpsSim(Worker):
    thread_name = "gps-sim"

    def __init__(self, port: VirtualSerial, track: Track, *, rate_hz: float = 1.0,
                 talker: str = "GP", jitter_m: float = 3.0, checksum_error_rate: float = 0.0,
                 satellites: int = 9, hdop: float = 0.9, seed: int = 1) -> None:
        if len(talker) != 2 or not talker.isalpha():
            raise ValueError("talker is two letters, e.g. GP or GN")
        self.port = port
        self.track = track
        self.rate_hz = rate_hz
        self.talker = talker.upper()
        self.jitter_m = jitter_m
        self.checksum_error_rate = checksum_error_rate
        self.satellites = satellites
        self.hdop = hdop
        self.rng = random.Random(seed)
        self.fix = True  # False: the receiver lost its fix (tunnel, indoors)
        self.jump_m: tuple[float, float] = (0.0, 0.0)  # an offset while a jump lasts
        self.time_offset = dt.timedelta(0)  # WEEK_ROLLOVER * -1: the rollover bug
        self.epochs = 0
        self.t0 = time.monotonic()
        super().__init__()

    def week_rollover(self, on: bool = True) -> None:
        self.time_offset = -WEEK_ROLLOVER if on else dt.timedelta(0)

    def jump(self, north_m: float, east_m: float = 0.0) -> None:
        self.jump_m = (north_m, east_m)

    def epoch(self, utc: dt.datetime, elapsed: float) -> list[bytes]:
        """The sentences of one epoch (what the receiver writes after each fix)."""
        utc = utc + self.time_offset
        lat, lon, speed, course = self.track.at(elapsed)
        n = self.rng.gauss(0, self.jitter_m) + self.jump_m[0]
        e = self.rng.gauss(0, self.jitter_m) + self.jump_m[1]
        lat, lon = offset(lat, lon, n, e)
        hms = utc.strftime("%H%M%S") + f".{utc.microsecond // 10000:02d}"
        dmy = utc.strftime("%d%m%y")
        la, ns = _lat(lat)
        lo, ew = _lon(lon)
        t = self.talker
        if self.fix:
            hdop = max(0.5, self.hdop + self.rng.gauss(0, 0.1))
            gga = f"{t}GGA,{hms},{la},{ns},{lo},{ew},1,{self.satellites:02d},{hdop:.1f},"\
                  f"{35.0 + self.rng.gauss(0, 1):.1f},M,18.0,M,,"
            rmc = f"{t}RMC,{hms},A,{la},{ns},{lo},{ew},{speed / 0.514444:.2f},{course:.1f},"\
                  f"{dmy},,,A"
            prns = [str(p) for p in (2, 5, 7, 9, 13, 15, 18, 20, 24, 29, 30, 31)]
            prns = prns[: self.satellites] + [""] * (12 - min(12, self.satellites))
            gsa = f"{t}GSA,A,3,{','.join(prns)},{hdop * 1.6:.1f},{hdop:.1f},{hdop * 1.3:.1f}"
        else:
            gga = f"{t}GGA,{hms},,,,,0,00,99.9,,M,,M,,"
            rmc = f"{t}RMC,{hms},V,,,,,,,{dmy},,,N"
            gsa = f"{t}GSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9"
        out = []
        for body in (gga, rmc, gsa):
            s = sentence(body)
            if self.rng.random() < self.checksum_error_rate:
                s = s[:-4] + (b"00" if s[-4:-2] != b"00" else b"11") + b"\r\n"
            out.append(s)
        self.epochs += 1
        return out

    def write(self, data: bytes) -> None:
        self.port.write(data)
        time.sleep(len(data) * BYTE_S)  # 9600 baud, as most modules ship

    def _on_start(self) -> None:
        self.t0 = time.monotonic()  # the track starts when the device does

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        # Epochs on whole multiples of the period of UTC, like a receiver.
        while not self._stop.is_set():
            now = time.time()
            nxt = (math.floor(now / period) + 1) * period
            if self._stop.wait(nxt - now):
                return
            utc = dt.datetime.fromtimestamp(nxt, dt.UTC)
            self.write(b"".join(self.epoch(utc, time.monotonic() - self.t0)))


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def track_of(settings: Settings) -> Track:
    """The ``track`` and ``speed_mps`` of a [[device]] table; ValueError says what is wrong."""
    raw: Any = settings.get("track")
    if not isinstance(raw, list) or not raw:
        raise ValueError("expected [[lat, lon] or [lat, lon, t], ...]")
    points = []
    for i, p in enumerate(raw):
        if (not isinstance(p, list) or len(p) not in (2, 3)
                or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in p)):
            raise ValueError(f"waypoint {i}: expected [lat, lon] or [lat, lon, t], got {p!r}")
        points.append(Waypoint(float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else None))
    return Track(points, float(settings.get("speed_mps", SIMULATOR.settings["speed_mps"])))


def _check(settings: Settings) -> list[tuple[str, str]]:
    speed = settings.get("speed_mps", SIMULATOR.settings["speed_mps"])
    if not isinstance(speed, int | float) or isinstance(speed, bool) or speed <= 0:
        return [("speed_mps", "expected metres per second > 0")]
    try:
        track_of(settings)
    except ValueError as e:
        return [("track", str(e))]
    return []


def _act(sim: GpsSim, action: str, a: StepArgs, stop: threading.Event) -> None:
    if plug_action(sim.port, action, a, stop):
        return
    if action == "jump":
        sim.jump(float(a["north_m"]), float(a.get("east_m", 0.0)))
        later(a, stop, lambda: sim.jump(0.0, 0.0))
    elif action == "no_fix":
        sim.fix = False
        later(a, stop, lambda: setattr(sim, "fix", True))
    elif action == "week_rollover":
        sim.week_rollover()
        later(a, stop, lambda: sim.week_rollover(False))
    elif action == "checksum_errors":
        sim.checksum_error_rate = float(a["rate"])


def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    track = track_of(s)
    port = ctx.serial_port(device_id, s)
    sim = GpsSim(port, track, rate_hz=float(s["rate_hz"]), talker=str(s["talker"]),
                 jitter_m=float(s["jitter_m"]),
                 checksum_error_rate=float(s["checksum_error_rate"]),
                 satellites=int(s["satellites"]), hdop=float(s["hdop"]),
                 seed=int(s["seed"])).start()
    ctx.stack.callback(sim.stop)
    return Started({"kind": SIMULATOR.kind, "role": "gps", "port": port.path},
                   serial_where(port), lambda action, a, stop: _act(sim, action, a, stop))


SIMULATOR = Simulator(
    kind="gps_nmea",
    settings={"link": None, "track": None, "speed_mps": 10.0, "rate_hz": 1.0, "talker": "GP",
              "jitter_m": 3.0, "checksum_error_rate": 0.0, "satellites": 9, "hdop": 0.9,
              "seed": 1},
    actions={"jump": ("north_m",), "no_fix": (), "week_rollover": (),
             "checksum_errors": ("rate",), "unplug": (), "replug": ()},
    start=_start,
    check=_check,
)
