"""Geofences from the unit's GPS: a noisy bus track with a jump, a bus parked on a boundary."""

from __future__ import annotations

from typing import Any

from gateway.model import GpsFix
from scenarios import SCHOOL, T0, bus_track, engine_of, parked_on_boundary, raw_config, reader

FENCE = {"id": "school", "center": [SCHOOL[0], SCHOOL[1]], "radius_m": 150.0}
READERS = [reader("gps", "gps")]


def test_bus_enters_and_leaves_school_once() -> None:
    eng = engine_of(raw_config(READERS, [], geofences=[FENCE]))
    fixes, truth = bus_track(21)
    st = eng.initial_state()
    events = []
    for f in fixes:
        st, evs = eng.step(st, f)
        events += evs
    kinds = [(e.kind, e.data["geofence"]) for e in events]
    assert kinds == [("geofence_enter", "school"), ("geofence_exit", "school")]
    # Within the band (15 m at 8 m/s) plus the confirming fixes.
    assert 0 <= events[0].time - truth["enter"] <= 5
    assert 0 <= events[1].time - truth["exit"] <= 5
    assert st.gps.rejected["jump"] >= 1 and st.gps.rejected["hdop"] >= 1
    assert st.gps.rejected["out_of_order"] >= 1


def test_parked_on_the_boundary_does_not_flap() -> None:
    eng = engine_of(raw_config(READERS, [], geofences=[FENCE]))
    st = eng.initial_state()
    events = []
    for f in parked_on_boundary(5, 4 * 3600):
        st, evs = eng.step(st, f)
        events += evs
    assert events == []


def test_bad_fixes_and_reanchoring() -> None:
    eng = engine_of(raw_config(READERS, [], geofences=[FENCE]))
    st = eng.initial_state()

    def fix(t: float, north: float, **kw: Any) -> GpsFix:
        from scenarios import offset

        lat, lon = offset(*SCHOOL, north, 0.0)
        return GpsFix("gps", T0 + t, lat, lon, **{"fix_quality": 1, "fix_type": 3, **kw})

    st, _ = eng.step(st, fix(0, 0))
    st, _ = eng.step(st, fix(1, 0, fix_quality=0))  # no fix
    st, _ = eng.step(st, fix(2, 0, time_trusted=False))  # receiver clock not trusted
    st, _ = eng.step(st, fix(3, 0, fix_type=1))
    assert st.gps.rejected == {"no_fix": 2, "untrusted_time": 1}
    # The unit really was moved 5 km (on a truck): after 3 agreeing fixes it follows.
    out = []
    for i in range(4, 8):
        st, evs = eng.step(st, fix(i, 5000 + i))
        out += evs
    assert st.gps.rejected["jump"] == 2
    assert [(e.kind, e.time) for e in out] == [("geofence_exit", T0 + 7)]  # 2 fixes confirm
    assert st.gps.fix is not None and st.gps.fix[2] == T0 + 7
    st, evs = eng.step(st, fix(5, 0))  # older than the newest fix: ignored
    assert evs == [] and st.gps.rejected["out_of_order"] == 1
