"""Zone calibration: the pure estimator behind ``gatewayd calibrate`` (docs/zones.md).

A technician holds a reference tag (a tag of the model the children wear) at the
zone's boundary for a minute or two, then at 1 m from the reader. From those
RSSI samples: the boundary level (median: robust to the fades and nulls of BLE),
its spread (the interquartile range scaled to a standard deviation), the 1 m
power and the site's path-loss exponent. The thresholds are the boundary level
plus / minus the margins of gateway.engine.settings, widened when the boundary
level itself is uncertain (few samples or a wide spread).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.engine.settings import ENTER_MARGIN_DB, EXIT_MARGIN_DB

MIN_SAMPLES = 30  # fewer boundary adverts than this is too little to calibrate on
# Adverts a second apart are correlated (fades last seconds): about one in this many
# carries independent information, for the standard error of the boundary median.
CORRELATED_ADVERTS = 3.0
# A two-minute recording has a standard error of 1-2 dB (the reference tag's own fades);
# beyond this the thresholds move out by twice the excess: a short or chaotic recording
# must not place the exit threshold where children standing inside would cross it.
GOOD_STDERR_DB = 2.0
KEYS = ("boundary_dbm", "enter_dbm", "exit_dbm", "calibration")  # what a calibration writes
_HEADER_RE = re.compile(r"^\s*\[")
_ZONES_RE = re.compile(r"^\s*\[\[\s*zones\s*\]\]\s*(#.*)?$")
_ID_RE = re.compile(r"^\s*id\s*=\s*[\"']([^\"']*)[\"']")
_KEY_RE = re.compile(r"^\s*(" + "|".join(KEYS) + r")\s*=")


class CalibrationError(ValueError):
    """The recording cannot give a calibration (too few samples, 1 m not stronger)."""


@dataclass(frozen=True, slots=True)
class Estimate:
    radius_m: float
    boundary_dbm: float  # median RSSI of the reference tag at the boundary
    spread_db: float  # robust standard deviation of those samples
    samples: int
    stderr_db: float  # standard error of boundary_dbm
    ref_dbm: float | None = None  # median at 1 m, when recorded
    exponent: float | None = None  # path-loss exponent, when the 1 m reading exists


@dataclass(frozen=True, slots=True)
class Thresholds:
    boundary_dbm: float
    enter_dbm: float
    exit_dbm: float


def _spread(values: Sequence[float]) -> float:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / 1.349  # IQR of a normal distribution is 1.349 sigma


def estimate(boundary: Sequence[float], one_m: Sequence[float] | None,
             radius_m: float) -> Estimate:
    """The site's figures from the reference tag's RSSI samples (dBm)."""
    if len(boundary) < MIN_SAMPLES:
        raise CalibrationError(f"only {len(boundary)} adverts at the boundary "
                               f"(at least {MIN_SAMPLES}: hold the tag there longer)")
    b = float(statistics.median(boundary))
    spread = _spread(boundary)
    # Standard error of a median: 1.2533 sigma / sqrt(n), n counted in independent samples.
    stderr = 1.2533 * spread / math.sqrt(len(boundary) / CORRELATED_ADVERTS)
    ref = exponent = None
    if one_m:
        if len(one_m) < MIN_SAMPLES // 2:
            raise CalibrationError(f"only {len(one_m)} adverts at 1 m "
                                   f"(at least {MIN_SAMPLES // 2})")
        ref = float(statistics.median(one_m))
        if radius_m > 1.0:
            if ref <= b:
                raise CalibrationError(f"the 1 m level ({ref:.1f} dBm) is not stronger than "
                                       f"the boundary's ({b:.1f} dBm): wrong tag or reader?")
            exponent = (ref - b) / (10.0 * math.log10(radius_m))
    return Estimate(radius_m, b, spread, len(boundary), stderr, ref, exponent)


def thresholds(est: Estimate, enter_margin_db: float = ENTER_MARGIN_DB,
               exit_margin_db: float = EXIT_MARGIN_DB) -> Thresholds:
    """Thresholds with their margins, each widened by twice the calibration's own
    standard error beyond GOOD_STDERR_DB."""
    extra = max(0.0, 2.0 * (est.stderr_db - GOOD_STDERR_DB))
    b = round(est.boundary_dbm, 1)
    return Thresholds(b, round(b + enter_margin_db + extra, 1),
                      round(b - exit_margin_db - extra, 1))


def snippet(est: Estimate, th: Thresholds, date: str) -> list[str]:
    """The lines a calibration puts into the zone's [[zones]] table."""
    figures = [f'date = "{date}"', f"radius_m = {est.radius_m:g}",
               f"samples = {est.samples}", f"spread_db = {est.spread_db:.1f}",
               f"stderr_db = {est.stderr_db:.1f}"]
    if est.ref_dbm is not None:
        figures.append(f"ref_dbm = {est.ref_dbm:.1f}")
    if est.exponent is not None:
        figures.append(f"exponent = {est.exponent:.2f}")
    return [f"boundary_dbm = {th.boundary_dbm:.1f}", f"enter_dbm = {th.enter_dbm:.1f}",
            f"exit_dbm = {th.exit_dbm:.1f}", f"calibration = {{ {', '.join(figures)} }}"]


def edit_zone(text: str, zone: str, lines: list[str]) -> str:
    """``text`` (a config file) with ``lines`` in place of the calibration keys of the
    [[zones]] table whose id is ``zone``; every other line is kept as it was.
    Raises KeyError when there is no such table."""
    src = text.splitlines(keepends=True)
    start = None
    for i, line in enumerate(src):
        if _ZONES_RE.match(line):
            end = next((j for j in range(i + 1, len(src)) if _HEADER_RE.match(src[j])),
                       len(src))
            for j in range(i + 1, end):
                m = _ID_RE.match(src[j])
                if m and m.group(1) == zone:
                    start = i
                    break
            if start is not None:
                break
    if start is None:
        raise KeyError(zone)
    newline = "\r\n" if src[start].endswith("\r\n") else "\n"
    kept = [line for line in src[start + 1:end] if not _KEY_RE.match(line)]
    at = next(k for k, line in enumerate(kept) if _ID_RE.match(line)) + 1
    if not kept[at - 1].endswith("\n"):  # the id line ends the file
        kept[at - 1] += newline
    body = kept[:at] + [line + newline for line in lines] + kept[at:]
    return "".join(src[:start + 1] + body + src[end:])
