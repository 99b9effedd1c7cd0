"""Accuracy of the engine's zone, gate and battery decisions in field conditions (issue 10).

The scenarios come from tests/fieldgen.py, which models radio and batteries
from physical quantities and never from how the engine decides (see its
docstring and docs/zones.md). Figures, summed over several generated sites:

- zone_precision / zone_recall: zone_enter/zone_exit events matched one-to-one
  to true boundary crossings (same child and kind, -30 s..+120 s), overall and
  per path-loss exponent (suffix _n2.0 etc.; the radius and the rest of the
  site are drawn per site);
- zone_false_exits_per_100h: zone_exit events of children standing still
  (0.3-3 m inside the boundary, or far inside, and since 2 Dec 2026 the five per
  site who stand deep inside for 5-25 min and then move to stand 0.3-3 m inside
  the boundary: fieldgen's ``settle``) per 100 tag-hours of standing;
  _far_inside: the same for the children standing far inside only;
- zone_time_error_p50_s: median |event time - true crossing| of matched events;
- zone_events_within_dwell_30s: share of zone events within dwell_s + 30 s of
  their true crossing (unmatched events are not within);
- gate_direction_accuracy: events with the true direction / all gate events
  with a direction; gate_recall_with_direction: those / true passages;
  gate_spurious_per_100_passages: events matched to no passage;
- battery_exact_once_ratio: tags with exactly one low_battery within ±5 min
  of the true crossing (none for tags that never cross) / all tags;
- zone_alerts_missed_across_step: must-stay children who left while the wall
  clock was stepped back (NTP after a boot without RTC) and got no zone_alert
  within 180 s (decision time measured on the monotonic clock), where the same
  scenario without the step alerted: the misses the step causes (the issue's "no
  missed zone alert across a wall-clock step"). Until 1 Dec 2026 this figure
  counted every miss in the window, also those of the zone decision itself,
  which the scenario without the step misses too; those are printed apart as
  zone_alerts_missed_without_step (no target: the zone figures above count them).

How the zones are configured: as a technician does, in metres (the zone's
radius) and calibrated by `gatewayd calibrate`'s estimator (gateway/calibrate.py)
from the readings a technician records (a reference tag held at the boundary,
then at 1 m, for 60-120 s each): scenarios.field_zone_engine. Never from the
generator's true exponent or power: that would be an oracle. Other zone
settings are the engine's defaults (dwell 5 s, absence 30 s, enter and exit
scores 200 dB). The targets are the issue's; they are printed, not asserted. Zone
precision, recall and the within share fall short (0.83-0.99 after the fourth
pass; the mix has no children waiting outside: bench/zone_misses.py --approach
measures those): docs/zones.md ("Second pass") shows that a perfect calibration
does not reach them either, and why
("Third pass", bench/zone_misses.py: not perfect event times either):
children standing just inside vs. children standing at 1.4 radii, 1.5 dB per tag;
an ideal decider's recall bound in this mix is about 0.97-0.98 at n = 2.0.
A calibration with several reference tags: ``zone_field(..., ref_tags=3)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fieldgen import (
    FIELD_T0,
    ZERO_ZONE,
    BatteryScore,
    GateScore,
    UnitClock,
    ZoneScore,
    battery_field,
    gate_field,
    missed_alert_exits,
    score_battery,
    score_gate,
    score_zone,
    zone_field,
)
from scenarios import (
    field_battery_engine,
    field_gate_engine,
    field_zone_engine,
    run_decided,
    run_field,
)

EXPONENTS = (2.0, 2.35, 2.7)
# Children per site who settle at the fence after playing deep inside (added to the
# mix on 2 Dec 2026: the engine exited 6-43 per 100 h of them, docs/zones.md).
SETTLE = 5
DWELL_S = 5.0  # the engine's default zone dwell_s, which field_zone_engine keeps

TARGETS: dict[str, tuple[str, float]] = {
    "zone_precision": (">=", 0.98),
    "zone_recall": (">=", 0.98),
    "zone_false_exits_per_100h": ("<=", 1.0),
    "zone_events_within_dwell_30s": (">=", 0.98),
    "gate_direction_accuracy": (">=", 0.99),
    "gate_recall_with_direction": (">=", 0.95),
    "battery_exact_once_ratio": (">=", 1.0),
    "zone_alerts_missed_across_step": ("<=", 0.0),
    **{f"{k}_n{n}": v for n in EXPONENTS for k, v in (
        ("zone_precision", (">=", 0.98)), ("zone_recall", (">=", 0.98)),
        ("zone_false_exits_per_100h", ("<=", 1.0)))},
}


def zone_scores(quick: bool) -> dict[float, ZoneScore]:
    sites, hours = (1, 1.0) if quick else (3, 2.0)
    out: dict[float, ZoneScore] = {}
    for n in EXPONENTS:
        total = ZERO_ZONE
        for k in range(sites):
            zf = zone_field(100 + k, hours=hours, moving=10, boundary=10, inside=5,
                            outside=3, exponent=n, settle=SETTLE)
            total = total + score_zone(zf, run_field(field_zone_engine(zf), zf.readings),
                                       DWELL_S)
        out[n] = total
    return out


def gate_score(quick: bool) -> GateScore:
    children = 40 if quick else 150
    total = GateScore(0, 0, 0, 0, 0, 0)
    for seed, two in ((200, False), (201, True)):
        gf = gate_field(seed, children, 4, two_readers=two)
        total = total + score_gate(gf, run_field(field_gate_engine(gf), gf.readings))
    return total


def battery_score(quick: bool) -> BatteryScore:
    bf = battery_field(300, 20 if quick else 60, hours=2.0 if quick else 3.0)
    return score_battery(bf, run_field(field_battery_engine(bf), bf.readings))


def missed_across_step(quick: bool) -> tuple[int, int]:
    """Must-stay children leaving while the wall clock is 20 min behind engine time:
    (alerts missed with the step but not without it, alerts missed without it too)."""
    caused = same = 0
    for k in range(1 if quick else 3):
        at, back = FIELD_T0 + 600.0, 1200.0
        missed = []
        for clock in (UnitClock.ntp_step(at, -back), None):
            zf = zone_field(400 + k, hours=1.0, moving=20, boundary=0, inside=4, outside=0,
                            clock=clock, groups=["class-3a"])
            decided = run_decided(field_zone_engine(zf, stay_groups=["class-3a"]),
                                  zf.readings, zf.monos)
            missed.append(set(missed_alert_exits(zf, decided, at, at + back)))
        caused += len(missed[0] - missed[1])
        same += len(missed[0] & missed[1])
    return caused, same


def run(quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    zones = zone_scores(quick)
    total = ZERO_ZONE
    for z in zones.values():
        total = total + z
    figures.update(total.figures())
    for n, z in zones.items():
        f = z.figures(f"_n{n}")
        figures.update({k: v for k, v in f.items() if not k.startswith(
            ("zone_time_error", "zone_events_within", "zone_false_exits_per_100h_far"))})
    figures.update(gate_score(quick).figures())
    figures.update(battery_score(quick).figures())
    caused, same = missed_across_step(quick)
    figures["zone_alerts_missed_across_step"] = float(caused)
    figures["zone_alerts_missed_without_step"] = float(same)
    return figures


def main() -> None:
    for k, v in run("--quick" in sys.argv).items():
        target = TARGETS.get(k)
        print(f"{k:40} {v:>10.4f}  {' '.join(map(str, target)) if target else ''}")


if __name__ == "__main__":
    main()
