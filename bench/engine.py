"""Engine throughput on one core for a realistic reading mix (readings/s).

A school-gate unit: 300 enrolled BLE tags advertising at 1 Hz to two zone
readers (one zone each, one zone covered by both), RSSI noise and drops,
some battery telemetry and button presses; a two-antenna UHF gate with
children passing; a GPS fix per second. The engine is ticked every 0.5 s of
reading time like the daemon's pipeline. Generation is not timed.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gateway.model import BleSighting, GpsFix, Reading
from scenarios import (
    SCHOOL,
    T0,
    child_tags,
    engine_of,
    gate_scenario,
    offset,
    raw_config,
    reader,
    rssi_at,
)


def _config(tags: list[dict[str, Any]]) -> dict[str, Any]:
    readers = [reader("ble-a", "zone"), reader("ble-b", "zone"), reader("gps", "gps"),
               reader("uhf-gate", "gate", antenna_roles={"1": "outer", "2": "inner"})]
    zones = [{"id": "yard", "readers": ["ble-a"], "enter_dbm": -80.0, "exit_dbm": -86.0},
             {"id": "hall", "readers": ["ble-a", "ble-b"], "enter_dbm": -78.0,
              "exit_dbm": -86.0, "stay_groups": ["g1"], "stay_hours": ["08:00-16:00"]}]
    fences = [{"id": "school", "center": [SCHOOL[0], SCHOOL[1]], "radius_m": 150.0}]
    cams = [{"id": f"cam-{i}", "lat": SCHOOL[0] + i * 1e-4, "lon": SCHOOL[1]} for i in range(8)]
    return raw_config(readers, tags, zones=zones, geofences=fences, cameras=cams,
                      engine={"timezone": "Asia/Seoul", "position": list(SCHOOL)})


def readings(seconds: int = 600, n_tags: int = 300, seed: int = 1) -> tuple[list[Any],
                                                                            list[Reading]]:
    rnd = random.Random(seed)
    tags = child_tags(n_tags, groups=["g1"])
    out: list[Reading] = []
    dist = {t["id"]: rnd.uniform(1, 40) for t in tags}
    for s in range(seconds):
        for tg in tags:
            tid = tg["id"]
            if rnd.random() < 0.01:  # someone walks somewhere else
                dist[tid] = rnd.uniform(1, 40)
            for r, extra in (("ble-a", 0.0), ("ble-b", 6.0)):
                if rnd.random() < 0.2:
                    continue
                v = rssi_at(dist[tid]) - extra + rnd.gauss(0, 6)
                if v < -100:
                    continue
                out.append(BleSighting(r, tid, T0 + s + rnd.random(), round(v),
                                       battery_mv=rnd.choice((None, None, None, 2900, 2550)),
                                       button=rnd.random() < 1e-4))
        lat, lon = offset(*SCHOOL, rnd.gauss(0, 3), rnd.gauss(0, 3) + s)
        out.append(GpsFix("gps", T0 + s, lat, lon, fix_quality=1, fix_type=3, hdop=1.0))
    gate, _ = gate_scenario(seed, tags[:100], 2)
    out += [r for r in gate if r.time < T0 + seconds]
    out.sort(key=lambda r: r.time)
    return tags, out


def bench_engine(seconds: int = 600) -> float:
    """Readings per second through Engine.step (plus its ticks) on one core."""
    tags, reads = readings(seconds)
    eng = engine_of(_config(tags))
    st = eng.initial_state()
    step, tick = eng.step, eng.tick
    next_tick = reads[0].time
    n_events = 0
    t0 = time.perf_counter()
    for r in reads:
        if r.time >= next_tick:
            st, evs = tick(st, next_tick)
            n_events += len(evs)
            next_tick += 0.5
        st, evs = step(st, r)
        n_events += len(evs)
    elapsed = time.perf_counter() - t0
    assert n_events > 0
    return len(reads) / elapsed


def main() -> None:
    print(f"engine_readings_per_s: {bench_engine():,.0f}")


if __name__ == "__main__":
    main()
