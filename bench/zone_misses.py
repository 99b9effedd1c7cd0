"""Where the zone figures are lost: misses by kind, and what event times alone could buy.

A diagnosis, not a bench figure (docs/zones.md, "Third pass"). The setup is the
second pass's: 4 sites per exponent, 1 h, 10 moving, 10 boundary, 5 far-inside and
3 far-outside children, the zone calibrated as bench/accuracy.py does. For each
exponent it prints precision / recall / within (dwell + 30 s) of the engine, and
of the same decisions restamped at the true crossing (the latest crossing of the
child and kind before the decision: an oracle, not a procedure). The first bounds
what decision rules must do; the second what a better crossing estimate could
give with today's decisions. Then the misses by kind:

- ``missed <role> <kind> <why>``: a true crossing with no event within -30..+120 s;
  why: ``late`` (the child's nearest event of that kind is later), ``early``,
  ``none`` (no event of that kind at all);
- ``extra <role> <kind>``: an event matched to no crossing;
- ``not within <role> <kind>``: matched, but more than dwell + 30 s off.

``--approach N`` adds N children per site who walk up to the zone and stop outside
it at 1.2-2 radii (tests/fieldgen.py ``approach``; the other children's draws are
the same with or without them).

``--settle N`` adds N children per site who stand deep inside for 5-25 min, then move
to stand 0.3-3 m inside the boundary to the end (``settle``: any exit of theirs is
false: each shows as ``extra settle zone_exit`` and counts in the false exits).

    python bench/zone_misses.py [--seeds 100,101,102,103] [--hours 1] [--approach 6]
                                [--settle 5]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.accuracy import DWELL_S, EXPONENTS
from fieldgen import (
    ZERO_ZONE,
    ZONE_EARLY_S,
    ZONE_LATE_S,
    ZoneField,
    ZoneScore,
    _pairs,
    score_zone,
    zone_field,
)
from gateway.model import Event
from scenarios import field_zone_engine, run_field


def _decided(e: Any) -> float:
    return datetime.fromisoformat(str(e.data["decided"]).replace("Z", "+00:00")).timestamp()


def restamped(zf: ZoneField, events: list[Any]) -> list[Event]:
    """The events at the latest true crossing of their child and kind before their
    decision (unchanged when there is none: a decision no crossing explains)."""
    out = []
    for e in events:
        decided = _decided(e)
        prior = [c.time for c in zf.crossings
                 if c.child == e.child and c.kind == e.kind and c.time <= decided]
        out.append(Event(kind=e.kind, time=prior[-1] if prior else e.time, child=e.child,
                         data=e.data))
    return out


def kinds(zf: ZoneField, events: list[Any]) -> Counter[str]:
    pairs = _pairs(zf.crossings, events, lambda c: (c.child, c.kind),
                   lambda e: (e.child, e.kind), ZONE_EARLY_S, ZONE_LATE_S)
    matched_c = {id(c) for c, _ in pairs}
    matched_e = {id(e) for _, e in pairs}
    out: Counter[str] = Counter()
    for c in zf.crossings:
        if id(c) in matched_c:
            continue
        offsets = [e.time - c.time for e in events if e.child == c.child and e.kind == c.kind]
        why = "none" if not offsets else "late" if min(offsets, key=abs) > 0 else "early"
        out[f"missed {zf.roles[c.child]} {c.kind} {why}"] += 1
    for e in events:
        if id(e) not in matched_e:
            out[f"extra {zf.roles[e.child]} {e.kind}"] += 1
    for c, e in pairs:
        if abs(e.time - c.time) > DWELL_S + 30.0:
            out[f"not within {zf.roles[c.child]} {c.kind}"] += 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="100,101,102,103")
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--approach", type=int, default=0)
    p.add_argument("--settle", type=int, default=0,
                   help="children per site who move from deep inside to just inside")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    counts: Counter[str] = Counter()
    for n in EXPONENTS:
        engine: ZoneScore = ZERO_ZONE
        oracle: ZoneScore = ZERO_ZONE
        for seed in seeds:
            zf = zone_field(seed, hours=args.hours, moving=10, boundary=10, inside=5,
                            outside=3, exponent=n, approach=args.approach,
                            settle=args.settle)
            events = [e for e in run_field(field_zone_engine(zf), zf.readings)
                      if e.kind in ("zone_enter", "zone_exit")]
            engine = engine + score_zone(zf, events, DWELL_S)
            oracle = oracle + score_zone(zf, restamped(zf, events), DWELL_S)
            counts += kinds(zf, events)
        for name, z in (("engine", engine), ("restamped at the truth", oracle)):
            print(f"n={n:<4} {name:24} precision {z.precision:.3f} recall {z.recall:.3f} "
                  f"within {z.within_share:.3f} ({z.matched}/{z.events} events, "
                  f"{z.crossings} crossings, {z.false_exits} false exits)")
    for k, v in sorted(counts.items()):
        print(f"  {k:40} {v:4}")


if __name__ == "__main__":
    main()
