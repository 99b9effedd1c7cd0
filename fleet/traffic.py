"""What a simulated unit decides, and when: the fleet's traffic, as pure functions.

No I/O and no clock: a unit's traffic is a seeded random stream of (time, Event), so a
run can be repeated. Two kinds of site, as in a city's deployment:

- a **school gate**: a morning rush (arrivals peaking in a compressed "morning" window,
  then a trickle of departures and late arrivals), gate events in the routine lane;
- a **park**: BLE sightings decided into zone enter/exit events (routine), evenly spread.

Both have the occasional tag battery warning (routine) and, rarely, an SOS (emergency).
Payload shapes follow docs/schemas/event.schema.json (the backend validates every event
and quarantines what does not match), with sizes like the engine's own.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from gateway.contract import iso_utc
from gateway.model import Event, Lane

GATE, PARK = "gate", "park"


@dataclass(frozen=True)
class Mix:
    """Per unit: mean events per second, and how the rate rises for the morning rush."""

    rate: float = 0.5  # mean decided events per second per unit over a morning
    morning_s: float = 60.0  # the compressed rush hour: gate arrivals peak in its middle
    peak: float = 3.0  # the gate's rate at the peak, as a multiple of ``rate``
    sos_per_hour: float = 0.5  # random SOS presses per unit (the bench adds its own)
    battery_share: float = 0.02  # share of events that are low-battery warnings
    children: int = 500  # enrolled children per unit


def site_kind(index: int) -> str:
    """Two in three units stand at school gates, one in three in parks."""
    return PARK if index % 3 == 2 else GATE


def _gate_rate(mix: Mix, t: float) -> float:
    """The gate's rate at time ``t`` into a morning (a raised-cosine rush, mean = rate)."""
    phase = (t % mix.morning_s) / mix.morning_s
    # 1 + (peak - 1) * bump, with the bump's mean 0.5; scaled so the morning's mean is rate.
    bump = 0.5 - 0.5 * math.cos(2 * math.pi * phase)
    return mix.rate * (1 + (mix.peak - 1) * bump) / (1 + (mix.peak - 1) * 0.5)


def next_gap(rng: random.Random, mix: Mix, kind: str, t: float) -> float:
    """Seconds to the unit's next decision after ``t`` (a Poisson process; the gate's rate
    follows the morning, taken at ``t``: fine for gaps much shorter than the morning)."""
    rate = _gate_rate(mix, t) if kind == GATE else mix.rate
    return rng.expovariate(max(rate, 1e-6))


def event(rng: random.Random, mix: Mix, kind: str, unit: int, wall: float) -> Event:
    """One decided event of a unit of ``kind``, at wall time ``wall``."""
    child = f"c-{unit:04d}-{rng.randrange(mix.children):04d}"
    if rng.random() < mix.battery_share:
        return Event(kind="low_battery", time=wall - 30, lane=Lane.ROUTINE, reader="ble-1",
                     child=child, data={"battery_mv": rng.randrange(2300, 2500),
                                        "threshold_mv": 2500, "decided": iso_utc(wall)})
    if kind == GATE:
        day = iso_utc(wall)[:10]
        return Event(kind="gate", time=wall, lane=Lane.ROUTINE, reader="gate-main", child=child,
                     data={"gate": "main", "direction": rng.choice(("arrival", "departure")),
                           "day": day, "first_arrival_today": rng.random() < 0.9,
                           "first_passage_today": rng.random() < 0.9,
                           "reads": rng.randrange(1, 6)})
    zone = f"park-{unit:04d}-{rng.randrange(3)}"
    if rng.random() < 0.5:
        return Event(kind="zone_enter", time=wall - 2, lane=Lane.ROUTINE, reader="ble-1",
                     child=child, data={"zone": zone, "rssi": round(rng.uniform(-80, -55), 1),
                                        "dwell_s": round(rng.uniform(3, 9), 1),
                                        "decided": iso_utc(wall)})
    return Event(kind="zone_exit", time=wall - 5, lane=Lane.ROUTINE, reader="ble-1",
                 child=child, data={"zone": zone, "reason": rng.choice(("weak", "absent")),
                                    "rssi": round(rng.uniform(-95, -80), 1),
                                    "last_seen": iso_utc(wall - 6),
                                    "zone_quiet_s": round(rng.uniform(0, 3), 1),
                                    "decided": iso_utc(wall)})


def sos(rng: random.Random, unit: int, wall: float) -> Event:
    """A child's SOS button at a unit (the emergency lane)."""
    return Event(kind="sos", time=wall, lane=Lane.EMERGENCY, reader="ble-1",
                 child=f"c-{unit:04d}-{rng.randrange(500):04d}",
                 data={"zone": None, "position": {"lat": 52.52 + unit * 1e-4, "lon": 13.40,
                                                  "source": "fixed"},
                       "cameras": [f"cam-{unit:04d}-1"], "rssi": -62, "battery_mv": 2900})
