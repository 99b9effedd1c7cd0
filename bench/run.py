"""kidsafe-gateway benchmarks: one run, one table, optionally one JSON object.

    python bench/run.py                 # full run (~1-2 min on a 2-core machine)
    python bench/run.py --quick         # a small run, e.g. for CI
    python bench/run.py --json out.json # also write the figures as one JSON object

Targets (issue 4, 5, 6, 9, 10): e2e_ratio_vs_raw_paho >= 0.8; e2e_ratio_vs_fast_paho >= 0.8
(against paho on its external loop in one thread, the fastest plain-Python QoS 1
publisher: the buffer's durability may cost at most a fifth); drain_events_per_s >= 0.8
of raw paho; drain_peak_rss_mb < 64; sos_ack_latency_p99_ms < 50;
engine_readings_per_s >= 100,000; ble_flood_rss_growth_mb <= 5 (issue 11: 1,000,000
adverts with random ids through the BLE driver); site_load_cpu_percent <= 5 (the whole
daemon's CPU, % of one core, at a full simulated site: bench/site_load.py; full run
only); write_bytes_per_event <= 4096 (issue 11: SD-card wear, bytes a
real gatewayd writes to disk per delivered event over a 10,000-event run, bench/wear.py);
cmd_locate_reply_p99_ms < 100 (issue 12: a signed locate published -> its reply received
while a real gatewayd drains a 100,000-event backlog, bench/commands.py);
backend_ingest_ratio >= 0.5 (issue 13: kidsafe-backend's ingest of a 100,000-event backlog
into PostgreSQL against PostgreSQL's own batched inserts of the same rows in the same run)
and e2e_receipt_latency_p99_ms < 250 (decided at the unit -> signed receipt back, 200
events/s; bench/backend.py); cmd_locate_reply_p99_ms < 100 (issue 12: a signed locate
published -> its reply received while a real gatewayd drains a 100,000-event backlog,
bench/commands.py).
Issue 14's fleet_* figures (full run only, bench/fleet.py, ~40 min): 600 units on a
three-node RabbitMQ cluster with the backend and PostgreSQL; targets loss 0, duplicates
stored 0, SOS p99 while a node is down < 1 s, recovery < 30 s (docs/fleet.md).
Figures are printed, not asserted: a shared machine makes timed assertions flaky.
Issue 10's accuracy figures (group "accuracy", bench/accuracy.py) are printed beside its
targets too; the tests (tests/test_engine_field.py) assert them.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import accuracy, ble_flood, codecs, commands, delivery, site_load, wear
from bench import fleet as fleet_bench

TARGETS: dict[str, tuple[str, float]] = {
    "e2e_ratio_vs_raw_paho": (">=", 0.8),
    "e2e_ratio_vs_fast_paho": (">=", 0.8),
    "drain_ratio_vs_raw_paho": (">=", 0.8),
    "drain_peak_rss_mb": ("<", 64),
    "sos_ack_latency_p99_ms": ("<", 50),
    "engine_readings_per_s": (">=", 100_000),
    **accuracy.TARGETS,
    **ble_flood.TARGETS,
    **site_load.TARGETS,
    **wear.TARGETS,
    **commands.TARGETS,
    **fleet_bench.TARGETS,
    # issue 13: the reference backend (bench/backend.py)
    "backend_ingest_ratio": (">=", 0.5),
    "e2e_receipt_latency_p99_ms": ("<", 250),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (CI)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as one JSON object")
    p.add_argument("--only", choices=["codecs", "engine", "ble", "delivery", "wear", "accuracy",
                                      "site", "commands", "backend", "fleet"],
                   action="append",
                   help="run only these groups (repeatable)")
    args = p.parse_args(argv)
    groups = args.only or ["codecs", "engine", "ble", "delivery", "wear", "accuracy", "site",
                           "commands", "backend", "fleet"]
    seconds = 0.5 if args.quick else 1.5
    figures: dict[str, float] = {}
    t0 = time.monotonic()

    def step(name: str, fn: Callable[[], float]) -> None:
        print(f"  ... {name}", file=sys.stderr, flush=True)
        figures[name] = round(fn(), 1)

    if "codecs" in groups:
        for key, fn in codecs.BENCHES.items():
            step(key, functools.partial(fn, seconds))
    if "engine" in groups:
        from bench import engine

        # bench_engine takes the scenario length in simulated seconds, not wall time.
        step("engine_readings_per_s", lambda: engine.bench_engine(120 if args.quick else 600))
    if "ble" in groups:
        step("ble_flood_rss_growth_mb",
             lambda: ble_flood.bench_ble_flood(100_000 if args.quick else 1_000_000))
    if "delivery" in groups:
        figures.update(delivery.run(args.quick))
    if "commands" in groups:
        figures.update(commands.run(args.quick))
    if "wear" in groups:
        step("write_bytes_per_event", lambda: wear.bench_wear(2_000 if args.quick else 10_000))
    if "accuracy" in groups:
        print("  ... accuracy (field scenarios)", file=sys.stderr, flush=True)
        figures.update(accuracy.run(args.quick))
    if "backend" in groups:
        from bench import backend  # needs the backend extra (aiomqtt, asyncpg) and PostgreSQL

        figures.update(backend.run(args.quick))
    notes: list[str] = []
    if "site" in groups and args.quick:
        # Its set-up alone (300 mock BlueZ devices, five readers, a daemon) takes ~20 s.
        notes.append("site_load_cpu_percent: not run with --quick (60 s window; "
                     "python bench/site_load.py --seconds 20 for a short look)")
    elif "site" in groups:
        print("  ... site load (300 BLE tags at 1 Hz, 4 gates, GPS; 60 s)", file=sys.stderr,
              flush=True)
        figures.update(site_load.run(60.0))

    if "fleet" in groups and args.quick:
        notes.append("fleet_*: not run with --quick (600 units on a three-node RabbitMQ "
                     "cluster, ~40 min; python bench/fleet.py --units 100 --quick for a look)")
    elif "fleet" in groups:
        print("  ... fleet: 600 units, three RabbitMQ nodes, backend, PostgreSQL", file=sys.stderr,
              flush=True)
        figures.update(fleet_bench.run_all(False, phases=("steady", "kill", "sweep", "storm"),
                                           sizes=[1200, 2400]))

    print(f"\nkidsafe-gateway bench ({'quick' if args.quick else 'full'}) on "
          f"{platform.machine()}, Python {platform.python_version()}, "
          f"{time.monotonic() - t0:.0f} s\n")
    print(f"{'figure':34} {'value':>14}  target")
    for key, value in figures.items():
        target = TARGETS.get(key)
        mark = ""
        if target:
            op, limit = target
            ok = (value >= limit if op == ">=" else value <= limit if op == "<="
                  else value < limit)
            mark = f"{op} {limit:g}  {'ok' if ok else 'MISSED'}"
        shown = f"{value:>14.4f}" if abs(value) < 10 else f"{value:>14,.2f}"  # ratios
        print(f"{key:34} {shown}  {mark}")
    for note in notes:
        print(f"\n{note}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
