"""Issue 10: the engine against field conditions (tests/fieldgen.py), and the generator.

The first tests check the generator and the measures themselves (they must
pass). The engine tests assert the issue's targets on fixed seeds and on fresh
seeds drawn per run (ids ``seed<N>``; replay one with ``KIDSAFE_SEED=<N>``).
The current engine misses most targets, so those are xfail (not strict) until
the engine work of issue 10 lands; remove the marks as they start passing.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from datetime import datetime
from typing import Any

import pytest

from fieldgen import (
    FIELD_T0,
    FLOOR_DBM,
    GateEpisode,
    Path,
    UnitClock,
    ZoneField,
    _approach_knots,
    _settle_knots,
    draw_clock_step,
    missed_alerts,
    score_battery,
    score_gate,
    score_zone,
    seeds,
)
from gateway.model import BleSighting, Event, TagRead
from scenarios import (
    battery_field,
    field_battery_engine,
    field_gate_engine,
    field_zone_engine,
    gate_field,
    replay_hint,
    run_decided,
    run_field,
    thresholds_from_calibration,
    zone_field,
)

EXPONENTS = (2.0, 2.35, 2.7)
DWELL_S = 5.0  # the engine's default, kept by field_zone_engine


def _ids(values: list[int]) -> list[str]:
    return [f"seed{v}" for v in values]


ZONE_FIXED = (11,)
ZONE_SEEDS = seeds(ZONE_FIXED)
GATE_SEEDS = seeds([21])
BATTERY_SEEDS = seeds([31])
XFAIL = "issue 10: the engine is not yet robust to field conditions"


# -- the generator and the measures ----------------------------------------------------------

def test_generators_are_deterministic() -> None:
    a, b = zone_field(5, hours=0.2), zone_field(5, hours=0.2)
    assert a.readings == b.readings and a.crossings == b.crossings and a.monos == b.monos
    assert gate_field(5, 5, 2).readings == gate_field(5, 5, 2).readings
    assert battery_field(5, 4, 0.6).readings == battery_field(5, 4, 0.6).readings


@pytest.mark.parametrize("exponent", EXPONENTS)
def test_zone_truth_and_radio_are_physical(exponent: float) -> None:
    zf = zone_field(7, hours=1.0, exponent=exponent)
    site = zf.site
    assert 10 <= site.radius_m <= 30 and site.exponent == exponent
    reads = [r for r in zf.readings if isinstance(r, BleSighting)]
    assert all(r.rssi >= FLOOR_DBM for r in reads)
    # Still children never cross after they stood; only moving ones cross more than once.
    for s in zf.still:
        assert all(c.time < s.start for c in zf.crossings if c.child == s.child)
        assert 0.3 <= s.depth_m <= 3.0 or s.role == "inside"
    by_role: dict[str, int] = {}
    for c in zf.crossings:
        by_role[zf.roles[c.child]] = by_role.get(zf.roles[c.child], 0) + 1
    assert "outside" not in by_role and by_role["moving"] > by_role["boundary"]
    # Adverts heard per second of a still child near the reader: 1 Hz minus the loss.
    inner = next(s for s in zf.still if s.role == "inside")
    n = sum(1 for r in reads if r.tag == inner.tag and inner.start <= r.time < zf.end)
    assert abs(n / (zf.end - inner.start) - (1 - site.loss)) < 0.06


def test_shadowing_fades_last_seconds() -> None:
    """Consecutive adverts of a still tag are correlated (slow fades), far ones are not."""
    zf = zone_field(8, hours=1.0, moving=0, boundary=0, inside=1, outside=0)
    s = zf.still[0]
    xs = [(r.time, float(r.rssi)) for r in zf.readings
          if isinstance(r, BleSighting) and r.time >= s.start]

    def corr(lag: float) -> float:
        pairs = [(a[1], b[1]) for a, b in itertools.pairwise(xs)
                 if abs(b[0] - a[0] - lag) < 0.2]
        if lag > 1.5:  # pairs at a larger lag
            j = 0
            pairs = []
            for a in xs:
                while j < len(xs) and xs[j][0] < a[0] + lag:
                    j += 1
                if j < len(xs) and xs[j][0] - a[0] < lag + 1.0:
                    pairs.append((a[1], xs[j][1]))
        return statistics.correlation([p[0] for p in pairs], [p[1] for p in pairs])

    assert corr(1.0) > 0.35
    assert abs(corr(60.0)) < 0.15
    sd = statistics.pstdev(x for _, x in xs)
    assert 4.5 < sd < 8.0  # ~6 dB overall


def test_calibration_readings_estimate_the_boundary() -> None:
    errors = []
    for seed in range(12):
        zf = zone_field(seed, hours=0.05, moving=1, boundary=0, inside=0, outside=0)
        cal = zf.calibration
        assert 55 <= len(cal.boundary) / (1 - zf.site.loss) <= 125
        assert len(cal.one_m) > 40
        enter, exit_ = thresholds_from_calibration(cal)
        errors.append((enter + exit_) / 2 - zf.site.mean_rssi(zf.site.radius_m))
    assert statistics.median(abs(e) for e in errors) < 3.0


def test_calibration_with_several_reference_tags() -> None:
    """Tags held together: each its own id and 1 m power; one tag's draws are as before."""
    one = zone_field(3, hours=0.05, moving=1, boundary=0, inside=0, outside=0)
    three = zone_field(3, hours=0.05, moving=1, boundary=0, inside=0, outside=0, ref_tags=3)
    assert one.readings == three.readings  # the children's radio does not change
    assert {r.tag for r in three.calibration.boundary} == {
        "CA11B0000001", "CA11B0000002", "CA11B0000003"}
    assert [r for r in three.calibration.boundary if r.tag == "CA11B0000001"] == list(
        one.calibration.boundary)
    assert 2.4 < len(three.calibration.boundary) / len(one.calibration.boundary) < 3.6


def test_approach_children_stop_outside() -> None:
    """Children who walk up to the zone and stand outside at 1.2-2 R (some visit it and
    come back out, some walk away); the other children's draws stay as without them."""
    kw: dict[str, Any] = dict(hours=1.0, moving=4, boundary=3, inside=2, outside=1,
                              exponent=2.35)
    a, b = zone_field(100, **kw), zone_field(100, approach=8, **kw)
    old = {t["id"] for t in a.tags}
    assert [r for r in b.readings if getattr(r, "tag", None) in old] == a.readings
    assert [c for c in b.crossings if c.tag in old] == a.crossings
    assert a.calibration == b.calibration and len(b.tags) == len(a.tags) + 8
    assert sum(1 for v in b.roles.values() if v == "approach") == 8
    r, ends = 20.0, {"stand": 0, "visit": 0, "away": 0}
    rnd = random.Random(1)
    for _ in range(300):
        knots = _approach_knots(rnd, r, FIELD_T0, FIELD_T0 + 3600.0)
        ds = [d for _, d in knots]
        assert ds[0] >= 3.0 * r and 1.2 * r <= ds[2] <= 2.0 * r  # from far out, stops
        assert all(t1 >= t0 for (t0, _), (t1, _) in itertools.pairwise(knots))
        crossed = [k for k, _ in Path(knots).crossings(r)]
        assert crossed in ([], ["zone_enter", "zone_exit"])
        if crossed:
            ends["visit"] += 1
            assert 1.2 * r <= ds[-1] <= 2.0 * r  # back out, stands again
        else:
            ends["away" if ds[-1] >= 4.0 * r else "stand"] += 1
    assert all(n > 30 for n in ends.values()), ends


def test_settle_children_move_from_deep_inside_to_the_fence() -> None:
    """Children who play deep inside, then stand 0.3-3 m inside the boundary to the end:
    one crossing (in), still children from it; the other children's draws unchanged."""
    kw: dict[str, Any] = dict(hours=1.0, moving=4, boundary=3, inside=2, outside=1,
                              exponent=2.35, approach=2)
    a, b = zone_field(100, **kw), zone_field(100, settle=5, **kw)
    old = {t["id"] for t in a.tags}
    assert [r for r in b.readings if getattr(r, "tag", None) in old] == a.readings
    assert [c for c in b.crossings if c.tag in old] == a.crossings
    settled = [s for s in b.still if s.role == "settle"]
    assert len(settled) == 5 and sum(1 for v in b.roles.values() if v == "settle") == 5
    r = 20.0
    rnd = random.Random(2)
    for _ in range(300):
        knots, arrived, depth = _settle_knots(rnd, r, FIELD_T0, FIELD_T0 + 3600.0)
        ds = [d for _, d in knots]
        assert ds[0] >= 1.5 * r and ds[2] <= 0.5 * r and ds[-1] == r - depth
        assert 0.3 <= depth <= 3.0 and ds[3] == ds[2]  # stood deep inside, then moved
        crossed = Path(knots).crossings(r)
        assert [k for k, _ in crossed] == ["zone_enter"]
        assert abs(crossed[0][1] - arrived) < 1e-6


def test_battery_truth() -> None:
    bf = battery_field(3, 30, hours=2.0)
    crossers = [b for b in bf.truth if b.crossing is not None]
    assert 0 < len(crossers) < len(bf.truth)
    for b in crossers:
        assert b.crossing is not None
        near = [r.battery_mv for r in bf.readings if isinstance(r, BleSighting)
                and r.tag == b.tag and abs(r.time - b.crossing) < 120]
        assert not near or abs(statistics.mean(x for x in near if x) - bf.low_mv) < 25
    for b in bf.truth:
        if b.crossing is None:
            late = [r.battery_mv for r in bf.readings if isinstance(r, BleSighting)
                    and r.tag == b.tag and r.battery_mv is not None]
            assert statistics.mean(late[-30:]) > bf.low_mv + 5


def test_gate_truth() -> None:
    gf = gate_field(4, 40, 4)
    assert len(gf.passages) == 160
    kinds = {e.kind for e in gf.episodes}
    assert kinds == {"passage", "turn_back", "revisit"}
    for p in gf.passages:
        ep = [e for e in gf.episodes if e.child == p.child and e.start <= p.time <= e.end]
        assert [e.kind for e in ep] == ["passage"]
    rssi = [r.rssi for r in gf.readings if isinstance(r, TagRead) and r.rssi is not None]
    assert len(rssi) == len(gf.readings)
    # Field reads are -45 dBm minus 10 dB/m within 2 m; reflections -78..-69 dBm.
    assert min(rssi) >= -78.0 and sum(1 for v in rssi if v <= -69.0) > 10
    missed: list[GateEpisode] = [e for e in gf.episodes if e.missed]
    assert missed, "some antenna should miss a whole episode at 2 % each"


def test_clock_stamps_wall_and_mono() -> None:
    at = FIELD_T0 + 600
    clock = UnitClock.ntp_step(at, -1800)
    assert clock.stamp(at - 1) == (at - 1 + 1800, clock.stamp(at - 1)[1])
    assert clock.stamp(at + 1)[0] == at + 1
    zf = zone_field(2, hours=0.3, clock=clock)
    walls = [r.time for r in zf.readings]
    assert any(b < a - 1000 for a, b in itertools.pairwise(walls))  # the step
    assert all(b >= a for a, b in zip(zf.monos, zf.monos[1:], strict=False))
    assert [clock.true_of_mono(m) for m in zf.monos] == pytest.approx(zf.true_times)


def test_seeds_fixed_fresh_and_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KIDSAFE_SEED", raising=False)
    s = seeds([1, 2], fresh=3)
    assert s[:2] == [1, 2] and len(set(s)) == 5
    monkeypatch.setenv("KIDSAFE_SEED", "77")
    assert seeds([1, 2]) == [77]


def _perfect_events(zf: ZoneField) -> list[Event]:
    return [Event(kind=c.kind, time=c.time + 3.0, child=c.child, data={"zone": zf.site.zone})
            for c in zf.crossings]


def test_measures_score_truth_as_perfect() -> None:
    zf = zone_field(9, hours=1.0)
    sc = score_zone(zf, _perfect_events(zf), DWELL_S)
    assert sc.precision == sc.recall == sc.within_share == 1.0
    assert sc.false_exits_per_100h == 0 and sc.time_error_p50_s == pytest.approx(3.0)
    late = [Event(kind=e.kind, time=e.time + 60.0, child=e.child, data=e.data)
            for e in _perfect_events(zf)]
    assert score_zone(zf, late, DWELL_S).within_share == 0.0
    gf = gate_field(9, 10, 2)
    evs = [Event(kind="gate", time=p.time, child=p.child, data={"direction": p.direction})
           for p in gf.passages]
    g = score_gate(gf, evs)
    assert g.direction_accuracy == g.recall_with_direction == 1.0 and g.spurious == 0
    bf = battery_field(9, 10, 1.0)
    bev = [Event(kind="low_battery", time=b.crossing + 100, child=b.child)
           for b in bf.truth if b.crossing is not None]
    assert score_battery(bf, bev).ratio == 1.0
    assert score_battery(bf, bev + bev[:1]).ratio < 1.0


# -- the engine against the targets --------------------------------------------------

def _zone_run(seed: int, exponent: float, **kw: Any) -> tuple[ZoneField, Any]:
    zf = zone_field(seed, exponent=exponent, **kw)
    return zf, score_zone(zf, run_field(field_zone_engine(zf), zf.readings), DWELL_S)


@pytest.mark.xfail(reason=f"{XFAIL}: zone precision/recall 0.89-0.99 on fixed and fresh "
                   "seeds (fourth pass); even the same decisions stamped at the true "
                   "crossings give a recall of 0.95-0.98 (missed and spurious decisions near "
                   "the boundary; docs/zones.md 'Third pass')",
                   strict=False, raises=AssertionError)
@pytest.mark.parametrize("exponent", EXPONENTS)
@pytest.mark.parametrize("seed", ZONE_SEEDS, ids=_ids(ZONE_SEEDS))
def test_zone_precision_recall(seed: int, exponent: float) -> None:
    zf, sc = _zone_run(seed, exponent, hours=1.0)
    assert sc.precision >= 0.98 and sc.recall >= 0.98, (
        f"{replay_hint(seed)}, n={exponent}, R={zf.site.radius_m:.0f} m: precision "
        f"{sc.precision:.3f} recall {sc.recall:.3f} ({sc.matched}/{sc.events} events, "
        f"{sc.crossings} crossings)")


# Fixed seeds assert the target. A fresh seed now and then shows a false exit or two (seed
# 1170042419: 2 in 36 still tag-hours, none on 16 other fresh seeds): reported, not failed,
# while issue 10 is open, so CI stays a verdict on regressions, not on the dice.
STILL_PARAMS = [
    pytest.param(seed, id=f"seed{seed}", marks=() if seed in ZONE_FIXED else pytest.mark.xfail(
        reason=f"{XFAIL}: rare false exits of children standing just inside on some fresh "
        "seeds (about 1 seed in 20)", strict=False, raises=AssertionError))
    for seed in ZONE_SEEDS]


@pytest.mark.parametrize("exponent", EXPONENTS)
@pytest.mark.parametrize("seed", STILL_PARAMS)
def test_zone_still_children_no_false_exits(seed: int, exponent: float) -> None:
    _zf, sc = _zone_run(seed, exponent, hours=2.0, moving=0, boundary=12, inside=6,
                       outside=0)
    assert sc.false_exits <= sc.still_hours / 100, (
        f"{replay_hint(seed)}, n={exponent}: {sc.false_exits} false exits in "
        f"{sc.still_hours:.0f} still tag-hours")


@pytest.mark.xfail(reason=f"{XFAIL}: 90-97 % within (at most the precision: an unmatched "
                   "event is never within; docs/zones.md 'Third pass')", strict=False,
                   raises=AssertionError)
@pytest.mark.parametrize("seed", ZONE_SEEDS, ids=_ids(ZONE_SEEDS))
def test_zone_event_times_near_the_crossing(seed: int) -> None:
    rnd = random.Random(seed)
    _zf, sc = _zone_run(seed, rnd.uniform(2.0, 2.7), hours=1.0)
    assert sc.within_share >= 0.98, (
        f"{replay_hint(seed)}: {sc.within}/{sc.events} events within dwell + 30 s, "
        f"median error {sc.time_error_p50_s:.1f} s")


@pytest.mark.parametrize("seed", BATTERY_SEEDS, ids=_ids(BATTERY_SEEDS))
def test_low_battery_exactly_once_near_the_crossing(seed: int) -> None:
    bf = battery_field(seed, 20, hours=2.0)
    sc = score_battery(bf, run_field(field_battery_engine(bf), bf.readings))
    assert sc.ratio == 1.0, (f"{replay_hint(seed)}: {sc.exact}/{sc.tags} tags right, "
                             f"{sc.early} events early")


@pytest.mark.parametrize("two", [False, True], ids=["antennas", "readers"])
@pytest.mark.parametrize("seed", GATE_SEEDS, ids=_ids(GATE_SEEDS))
def test_gate_direction(seed: int, two: bool) -> None:
    gf = gate_field(seed, 60, 4, two_readers=two)
    sc = score_gate(gf, run_field(field_gate_engine(gf), gf.readings))
    assert sc.direction_accuracy >= 0.99 and sc.recall_with_direction >= 0.95, (
        f"{replay_hint(seed)}: direction {sc.correct}/{sc.decided}, recall "
        f"{sc.correct}/{sc.passages}, {sc.undecided_matched} without direction, "
        f"{sc.spurious} spurious")


@pytest.mark.parametrize("seed", ZONE_SEEDS, ids=_ids(ZONE_SEEDS))
def test_no_missed_zone_alert_across_a_step_back(seed: int) -> None:
    """Engine time is monotonic: a step back neither freezes decisions nor fires any;
    it is reported once. An exit the zone decision misses without the step too is the
    zone decision's (test_zone_precision_recall), not the clock's."""
    at = FIELD_T0 + 600.0
    clock = draw_clock_step(random.Random(seed), at, back=True)  # 30 s to 2 h back
    back = -clock.steps[0].delta_s
    kw: dict[str, Any] = dict(hours=1.0, moving=20, boundary=0, inside=2, outside=0,
                              exponent=2.35, groups=["class-3a"])
    results = []
    for c in (None, clock):
        zf = zone_field(seed, clock=c, **kw)
        decided = run_decided(field_zone_engine(zf, stay_groups=["class-3a"]), zf.readings,
                              zf.monos)
        results.append((missed_alerts(zf, decided, at, at + back), decided))
    start_mono = min(zf.monos)  # the stepped run's (the last zf) first reading
    (exits, baseline), _ = results[0]
    (_, missed), decided = results[1]
    assert missed <= baseline, (f"{replay_hint(seed)}: step back {back:.0f} s, {missed} of "
                                f"{exits} exits without an alert ({baseline} without the step)")
    steps = [e for e, _ in decided if e.kind == "clock_step"]
    assert [e.data["step_s"] for e in steps] == [pytest.approx(-back, abs=0.01)]
    # Event times are on the unit's wall clock as it was when decided (true once it was
    # corrected): ``decided`` is that clock's time, ``time`` (the crossing) before it and
    # not before the run began, counted back on that same clock; never frozen, never on
    # the wrong side of the step. (How long after the crossing an exit is decided is the
    # zone decision's: test_zone_event_times_near_the_crossing.)
    for e, mono in decided:
        wall = clock.wall(clock.true_of_mono(mono))
        assert wall - (mono - start_mono) - 0.01 <= e.time <= wall + 0.01, (
            f"{replay_hint(seed)}: {e}")
        if "decided" in e.data:
            at = datetime.fromisoformat(e.data["decided"].replace("Z", "+00:00")).timestamp()
            # (an absence is decided at a replay tick, up to tick_s before the reading)
            assert wall - 1.01 <= at <= wall + 0.002, f"{replay_hint(seed)}: {e}"


@pytest.mark.parametrize("seed", ZONE_SEEDS, ids=_ids(ZONE_SEEDS))
def test_forward_step_neither_fires_nor_misses_alerts(seed: int) -> None:
    """A forward step is handled today (downtime shift): alerts are as without it."""
    at = FIELD_T0 + 600.0
    kw: dict[str, Any] = dict(hours=1.0, moving=12, boundary=0, inside=2, outside=0,
                              exponent=2.35, groups=["class-3a"])
    counts = []
    for clock in (None, draw_clock_step(random.Random(seed), at, back=False)):
        zf = zone_field(seed, clock=clock, **kw)
        decided = run_decided(field_zone_engine(zf, stay_groups=["class-3a"]), zf.readings,
                              zf.monos)
        counts.append(missed_alerts(zf, decided, at, math.inf))
    assert counts[1][1] <= counts[0][1], f"{replay_hint(seed)}: missed {counts}"
