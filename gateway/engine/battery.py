"""Low battery from noisy telemetry: one event per real crossing of ``low_mv``.

A tag's battery readings are about ±20 mV noisy while the true voltage falls
1.5-4 mV a minute, so the first reading below ``low_mv`` comes long before the
real crossing. Readings are summed into one-minute slots (per tag at most
HISTORY_SLOTS of them: the state stays small however often a tag reports),
and at the end of each minute (docs/zones.md, "Battery"):

- the *level* is the median of the last DECIDE_SLOTS slots' means: the voltage
  of about five minutes ago, robust to glitches;
- the tag goes low when the level is below ``low_mv`` by more than the noise of
  that median could explain (Z * NOISE_MV / sqrt(readings)): with a reading a
  second that is about a millivolt, with one every half minute some 7 mV;
- the event's ``time`` is the estimated crossing: where a robust line
  (Theil-Sen) through the slots of the last HISTORY_SLOTS minutes meets
  ``low_mv``; ``data.decided`` is when it was decided;
- it is armed again once the level is back at ``clear_mv`` (a new battery).

A tag first heard already far below ``low_mv`` (FAST_READINGS readings in a row
more than FAST_MARGIN_MV below, which noise cannot do) is low at once.
"""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from gateway.model import Event, Lane

SLOT_S = 60.0
HISTORY_SLOTS = 20  # minutes kept: the crossing line is fitted over them
DECIDE_SLOTS = 6  # minutes whose median is the level
MIN_READINGS = 5  # fewer in the decide window: no decision
NOISE_MV = 10.0  # standard deviation of one reading (the ±20 mV band)
Z = 3.0
FAST_MARGIN_MV = 60.0
FAST_READINGS = 5


class BatteryTrack:
    """One tag's battery readings, summed per minute slot; slot ``base + i`` covers
    [(base + i) * SLOT_S, (base + i + 1) * SLOT_S) of reading time."""

    __slots__ = ("base", "counts", "fast_count", "fast_since", "low", "sums")

    def __init__(self, base: int = 0) -> None:
        self.base = base
        self.sums: list[float] = []
        self.counts: list[int] = []
        self.low = False  # went low, not yet back at clear_mv
        self.fast_count = 0  # readings in a row far below low_mv
        self.fast_since = 0.0  # time of the first of them

    def to_list(self) -> list[Any]:
        return [self.base, self.sums, self.counts, self.low, self.fast_count, self.fast_since]

    @classmethod
    def from_list(cls, v: list[Any]) -> BatteryTrack:
        track = cls(int(v[0]))
        track.sums = [float(x) for x in v[1]]
        track.counts = [int(x) for x in v[2]]
        track.low, track.fast_count, track.fast_since = bool(v[3]), int(v[4]), float(v[5])
        return track


def on_reading(tracks: dict[str, BatteryTrack], tag: str, child: str, reader: str, t: float,
               mv: int, low_mv: int, clear_mv: int, events: list[Event]) -> None:
    track = tracks.get(tag)
    if track is None:
        track = tracks[tag] = BatteryTrack(int(t // SLOT_S))
        track.sums.append(0.0)
        track.counts.append(0)
    else:
        open_slot = track.base + len(track.counts) - 1
        if not open_slot * SLOT_S <= t < (open_slot + 1) * SLOT_S:
            slot = int(t // SLOT_S)
            if slot < open_slot:  # out of order across minutes: count it where it belongs
                index = slot - track.base
                if index >= 0:
                    track.sums[index] += mv
                    track.counts[index] += 1
                return
            # A minute is over: decide on the slots before this one.
            _decide(track, child, reader, t, low_mv, clear_mv, events)
            _advance(track, slot)
    track.sums[-1] += mv
    track.counts[-1] += 1
    if mv < low_mv - FAST_MARGIN_MV:
        if track.low:
            return
        if not track.fast_count:
            track.fast_since = t
        track.fast_count += 1
        if track.fast_count >= FAST_READINGS:
            _go_low(track, child, reader, track.fast_since, t, mv, low_mv, events)
    elif track.fast_count:
        track.fast_count = 0


def _advance(track: BatteryTrack, slot: int) -> None:
    """Open ``slot`` (empty slots for silent minutes), keeping HISTORY_SLOTS + 1."""
    last = track.base + len(track.counts) - 1
    if slot - last > HISTORY_SLOTS:
        track.base, track.sums, track.counts = slot, [0.0], [0]
        return
    for _ in range(slot - last):
        track.sums.append(0.0)
        track.counts.append(0)
    extra = len(track.counts) - HISTORY_SLOTS - 1
    if extra > 0:
        del track.sums[:extra], track.counts[:extra]
        track.base += extra


def _decide(track: BatteryTrack, child: str, reader: str, now: float, low_mv: int,
            clear_mv: int, events: list[Event]) -> None:
    """At the end of a minute: the level of the last DECIDE_SLOTS minutes against the
    thresholds (the slot still open when this runs is the one just ended)."""
    sums, counts = track.sums, track.counts
    start = max(0, len(counts) - DECIDE_SLOTS)
    means = [sums[i] / counts[i] for i in range(start, len(counts)) if counts[i]]
    readings = sum(counts[start:])
    if readings < MIN_READINGS:
        return
    level = median(means)
    if track.low:
        if level >= clear_mv:
            track.low = False
            track.fast_count = 0
        return
    if level < low_mv - Z * NOISE_MV / math.sqrt(readings):
        _go_low(track, child, reader, _crossing(track, low_mv, now), now, round(level), low_mv,
                events)


def _crossing(track: BatteryTrack, low_mv: int, now: float) -> float:
    """When a robust line through the slot means crossed ``low_mv`` (clamped to the
    history); the median time of the decide window where the line does not fall."""
    first = track.base * SLOT_S
    points = [((i + 0.5) * SLOT_S, track.sums[i] / n)  # time after ``first``
              for i, n in enumerate(track.counts) if n]
    slopes = [(v2 - v1) / (t2 - t1) for k, (t1, v1) in enumerate(points)
              for t2, v2 in points[k + 1:]]
    recent = points[-DECIDE_SLOTS:]
    fallback = first + recent[len(recent) // 2][0]
    slope = median(slopes) if slopes else 0.0
    if slope >= 0.0:
        return min(fallback, now)
    intercept = median(v - slope * t for t, v in points)
    return min(first + max((low_mv - intercept) / slope, 0.0), now)


def _go_low(track: BatteryTrack, child: str, reader: str, t: float, now: float,
            mv: int, low_mv: int, events: list[Event]) -> None:
    track.low = True
    track.fast_count = 0
    events.append(Event(kind="low_battery", time=t, lane=Lane.ROUTINE, reader=reader,
                        child=child, data={"battery_mv": mv, "threshold_mv": low_mv,
                                           "decided": now}))  # engine time: see WALL_KEYS
