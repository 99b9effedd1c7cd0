"""Fleet bench (issue 14): hundreds of simulated units against a three-node RabbitMQ 3.10
cluster, the reference backend storing into PostgreSQL, receipts back to the units.

    python bench/fleet.py                    # the full run: 600 units, then the sweep
    python bench/fleet.py --units 100 --quick
    python bench/fleet.py --sweep 600,1200,2400 --only sweep

Phases (each figure is a ``fleet_*`` key; docs/fleet.md has the method and the results):
- steady: N units with gate/park traffic (RATE events/s per unit); events/s stored in
  PostgreSQL, decision -> receipt latency at the unit (p50/p99), each node's beam RSS,
  loss (every committed event stored exactly once), CPU of the generator, the brokers,
  the backend, PostgreSQL.
- kill: the same traffic plus an SOS every 0.2 s; node 1 (a third of the units, not the
  backend's) SIGKILLed, restarted 10 s later; events lost, duplicates stored, resends on
  the wire, SOS p99 while the node is down, seconds until every unit delivers again.
  With ``--standby`` units keep a standby connection for the emergency lane on the next
  node (the same run before/after).
- storm: every unit stopped, 1,000 events put in each buffer, then all started at once;
  seconds to drain into PostgreSQL, SOS latency while they drain (units' window 32,
  keepalive 60 s, receipt timeout 600 s: STORM_UNIT).
- sweep: the steady phase for growing N (short windows); the first N where what is
  stored falls behind what is offered, and which process used the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fleet.cluster import Cluster, cpu_seconds  # noqa: E402
from fleet.generator import pct  # noqa: E402
from fleet.pool import FleetPool  # noqa: E402
from fleet.stack import BackendProc, keypair, query, stored_count, stored_seqs  # noqa: E402
from fleet.traffic import Mix  # noqa: E402

TARGETS: dict[str, tuple[str, float]] = {
    "fleet_lost_events": ("<=", 0),
    "fleet_kill_lost_events": ("<=", 0),
    "fleet_kill_dup_stored": ("<=", 0),
    "fleet_kill_sos_p99_ms": ("<", 1000),
    "fleet_kill_recovery_s": ("<", 30),
}

# The backend's receipts in flight for these runs ([broker] max_inflight; None: the
# backend's default, 1,000 since finding 1 of docs/fleet.md; it was paho's 20).
INFLIGHT: int | None = 1000
# Decided events per second per unit, averaged over a compressed morning: gate units peak
# at 3x this in the rush (a 500-pupil school's gate: ~1,000 passages in two half-hours),
# parks are steadier. 600 units offer 120 events/s.
RATE = 0.2
# Units' settings (docs/fleet.md, the storm): the steady and kill phases use the
# gateway's window and a keepalive of 15 s; the storm uses what drained 600 units' backlog
# here (a smaller window, a longer keepalive, and a receipt timeout longer than the drain:
# shorter ones made every unit resend everything awaiting its receipt, again and again).
UNIT_WINDOW = 256  # routine/telemetry events in flight per unit (the gateway's default)
UNIT_KEEPALIVE_S = 15
STORM_UNIT = {"window": 32, "keepalive": 60, "receipt_timeout": 600.0}
STORM_LIMIT_S = 1500.0
KEEP_LOGS: Path | None = None  # --logs: the backend's log of each phase kept here
RECEIPT_TIMEOUT_S = 20.0  # units' [delivery] receipt_timeout_s (the gateway's default: 60)
# --standby: each unit keeps a standby connection for its emergency lane on the node after
# its home node ([broker] standby_host; docs/mqtt.md, "Standby connection"). Off by
# default: one 600-unit node-kill run with it collapsed on this machine (docs/fleet.md,
# "A standby connection for the emergency lane"); measured at 200 units.
STANDBY: bool | str = False
# --sos-at-kill (a diagnostic, not the figure: it adds an SOS at each of the killed
# node's units right after the kill, so that many SOS are decided while their unit's main
# connection is down, where the bench's random SOS put one or two per run).
SOS_AT_KILL = False
# --emergency-receipts-qos0: the backend's emergency session receipts at QoS 0 (an
# experiment: RabbitMQ 3.10 closes the connection of a refused QoS 1 publish).
EMERGENCY_RECEIPT_QOS: int | None = None


def say(msg: str) -> None:
    print(f"  ... {msg}", file=sys.stderr, flush=True)


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its children (PostgreSQL's backends)."""
    total = cpu_seconds(root)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root:
                total += cpu_seconds(int(d.name))
    return total


class Run:
    """The cluster, PostgreSQL, the backend and a fleet, for one bench run."""

    def __init__(self, work: Path, pg: Any, receipts: bool = True,
                 inflight: int | None = INFLIGHT) -> None:
        self.inflight = inflight
        self.work = work
        self.pg = pg
        self.cluster = Cluster(work / "rabbit").start()
        self.receipts = receipts
        self.priv, self.pub = keypair(work / "keys")
        self.backend: BackendProc | None = None
        self.fleet: FleetPool | None = None
        self.db = 0

    def new_db(self) -> str:
        self.db += 1
        return str(self.pg.create_database())

    def start_backend(self, dsn: str) -> BackendProc:
        b = BackendProc(self.work / f"backend{self.db}", self.cluster.mqtt_port(3), dsn,
                        self.priv if self.receipts else None, client_id=f"backend{self.db}",
                        inflight=self.inflight, emergency_receipt_qos=EMERGENCY_RECEIPT_QOS)
        b.migrate()
        self.backend = b.start()
        return b

    def unit_extra(self, keepalive: int, receipt_timeout: float) -> dict[str, Any]:
        if not self.receipts:
            return {}
        # A receipt lost with the backend's connection (seen when a node dies) is made good
        # by the unit's resend after receipt_timeout_s: 20 s rather than 60 in a cluster.
        return {"delivery": {"mode": "receipt", "receipt_timeout_s": receipt_timeout},
                "broker": {"keepalive_s": keepalive},
                "commands": {"public_keys": [str(self.pub)]}}

    def new_fleet(self, n: int, rate: float = RATE, storm: bool = False) -> FleetPool:
        # UNIT_WINDOW: each unit's in-flight window (the gateway's default 256; the
        # storm's finding in docs/fleet.md).
        # Buffers on tmpfs: a real unit has its own SD card; 600 units' fsyncs on one
        # shared disk would measure the disk, not the fleet.
        shm = Path(tempfile.mkdtemp(prefix="kidsafe-fleet-", dir="/dev/shm"))
        self.fleet = FleetPool(n, self.cluster.mqtt_ports, shm, mix=Mix(rate=rate),
                               extra=self.unit_extra(*self.unit_settings(storm)[1:]),
                               window=self.unit_settings(storm)[0], standby=STANDBY)
        self.shm = shm
        return self.fleet

    @staticmethod
    def unit_settings(storm: bool) -> tuple[int, int, float]:
        """(window, keepalive_s, receipt_timeout_s) of the units."""
        if storm:
            return (int(STORM_UNIT["window"]), int(STORM_UNIT["keepalive"]),
                    float(STORM_UNIT["receipt_timeout"]))
        return UNIT_WINDOW, UNIT_KEEPALIVE_S, RECEIPT_TIMEOUT_S

    def end_fleet(self) -> None:
        if self.backend is not None and KEEP_LOGS is not None:
            KEEP_LOGS.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.backend.log, KEEP_LOGS / f"backend{self.db}.log")
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None
            shutil.rmtree(self.shm, ignore_errors=True)
        if self.backend is not None:
            self.backend.stop()
            self.backend = None

    def close(self) -> None:
        self.end_fleet()
        self.cluster.stop()
        if KEEP_LOGS is not None:  # the nodes' own logs (connections closed, elections)
            for f in (self.work / "rabbit").glob("n*/log/*.log"):
                shutil.copy(f, KEEP_LOGS / f"{f.parent.parent.name}-{f.name}")

    def cpu(self) -> dict[str, float]:
        return {"generator": self.fleet.cpu_s() if self.fleet else 0.0,
                "brokers": sum(self.cluster.cpu_seconds().values()),
                "backend": self.backend.cpu_s() if self.backend else 0.0,
                "postgres": tree_cpu(self.pg.proc.pid)}


def settle(run: Run, timeout: float = 120.0) -> float:
    """Seconds until the brokers are quiet after the units connected: each unit's durable
    session is a quorum queue, and creating hundreds of them keeps the nodes busy (and
    PUBACKs waiting) for tens of seconds after the CONNACKs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        c0 = sum(run.cluster.cpu_seconds().values())
        time.sleep(3)
        if (sum(run.cluster.cpu_seconds().values()) - c0) / 3 < 0.1 * run.cluster.size:
            break
    return time.monotonic() - t0


def sos_stored_ms(dsn: str, after: float, before: float) -> list[float]:
    """Decision (the unit's commit, ``recorded``) -> row in PostgreSQL (``received``) of the
    SOS events decided in [after, before): what an operator's screen waits for."""
    rows = query(dsn, "SELECT extract(epoch FROM recorded), extract(epoch FROM received) "
                      "FROM events WHERE kind = 'sos'")
    return sorted((float(b) - float(a)) * 1000 for a, b in rows if after <= float(a) < before)


def check_stored(fleet: FleetPool, dsn: str) -> tuple[int, int]:
    """(committed events missing from PostgreSQL, (unit, seq) pairs stored more than once)."""
    stored = stored_seqs(dsn)
    lost = dup = 0
    for unit, committed in fleet.committed_ids().items():
        have = stored.get(unit, [])
        dup += len(have) - len(set(have))
        lost += len(committed - set(have))
    return lost, dup


def wait_stored(fleet: FleetPool, dsn: str, timeout: float) -> bool:
    want = fleet.committed
    return fleet.wait(lambda: fleet.depth() == 0 and stored_count(dsn) >= want, timeout, 0.5)


def steady(run: Run, n: int, seconds: float, warmup: float = 10.0) -> dict[str, float]:
    dsn = run.new_db()
    run.start_backend(dsn)
    f = run.new_fleet(n)
    out: dict[str, float] = {"fleet_units": n, "fleet_offered_events_per_s": n * RATE,
                             "fleet_generator_rss_per_unit_mb":
                             round((f.rss_units_mb - f.rss_before_mb) / n, 3)}
    t0 = time.monotonic()
    f.start()
    f.wait(lambda: f.online() == n, 120)
    out["fleet_connect_all_s"] = round(time.monotonic() - t0, 1)
    out["fleet_settle_s"] = round(settle(run), 1)
    f.start_traffic(warmup + seconds)
    time.sleep(warmup)
    f.reset_latencies()
    c0, s0, w0 = run.cpu(), stored_count(dsn), time.monotonic()
    time.sleep(seconds)
    c1, s1, w1 = run.cpu(), stored_count(dsn), time.monotonic()
    f.join_traffic()
    dt = w1 - w0
    summ = f.summary()
    out["fleet_events_per_s"] = round((s1 - s0) / dt, 1)
    out["fleet_generator_lag_max_s"] = round(f.stats()["lag_max_s"], 2)
    out["fleet_latency_p50_ms"] = summ["latency_p50_ms"]
    out["fleet_latency_p99_ms"] = summ["latency_p99_ms"]
    for i, mb in run.cluster.rss_mb().items():
        out[f"fleet_node{i}_rss_mb"] = round(mb, 1)
    for k in c0:
        out[f"fleet_cpu_{k}_percent"] = round(100 * (c1[k] - c0[k]) / dt, 1)
    out["fleet_generator_rss_mb"] = round(f.rss_mb(), 1)
    out["fleet_generator_processes"] = len(f.procs)
    out["fleet_generator_cpu_ms_per_event"] = round(
        1000 * (c1["generator"] - c0["generator"]) / max(1, s1 - s0), 3)
    ok = wait_stored(f, dsn, 120)
    lost, dup = check_stored(f, dsn)
    # Not drained within the wait: what is missing may still be on its way (-1: unknown).
    out["fleet_lost_events"] = lost if ok else -1
    if not ok:
        out["fleet_undrained_events"] = lost
    out["fleet_dup_stored"] = dup
    run.end_fleet()
    return out


def node_kill(run: Run, n: int, down_s: float = 10.0) -> dict[str, float]:
    dsn = run.new_db()
    run.start_backend(dsn)
    f = run.new_fleet(n)
    f.start()
    f.wait(lambda: f.online() == n, 120)
    settle(run)
    f.start_traffic(60, sos_every_s=0.2)
    time.sleep(10)
    f.reset_latencies()
    t_kill = time.time()
    f.mark(t_kill)  # per unit: when its first event decided after the kill was receipted
    run.cluster.kill(1)
    f.probe()  # a decision at every unit at once: when does each deliver again?
    if SOS_AT_KILL:
        f.sos_node(0, run.cluster.size)
    say(f"node 1 killed; {f.online()} of {n} units online")
    time.sleep(down_s)
    t_restart = time.time()
    restart_s = run.cluster.restart(1)
    say(f"node 1 back after {restart_s:.1f} s")
    f.join_traffic()
    ok = wait_stored(f, dsn, 180)
    lost, dup = check_stored(f, dsn)
    st = f.stats()
    # Every SOS decided while the node was down, receipted whenever it was.
    down = [(ms, unit, off, sb) for ms, at, unit, off, sb in
            zip(st["sos"], st["sos_at"], st["sos_unit"], st["sos_offline"], st["sos_standby"],
                strict=True) if t_kill <= at < t_restart]
    sos_down = [ms for ms, *_ in down]
    # Decided while the unit's own main connection was down (reconnecting after the kill):
    # what the standby is for; and those its standby's receipt deleted.
    offline = sorted(ms for ms, _, off, _ in down if off)
    via_standby = sorted(ms for ms, _, _, sb in down if sb)
    # The killed node's units (home node 1: index % 3 == 0) must first reconnect elsewhere.
    on_killed = sorted(ms for ms, unit, *_ in down if unit % run.cluster.size == 0)
    elsewhere = sorted(ms for ms, unit, *_ in down if unit % run.cluster.size != 0)
    stored_ms = sos_stored_ms(dsn, t_kill, t_restart)
    out = {**reconnects(st["connections"], t_kill, t_restart, run.cluster.size),
        "fleet_kill_sos_stored_p50_ms": round(pct(stored_ms, 0.5), 1),
        "fleet_kill_sos_stored_p99_ms": round(pct(stored_ms, 0.99), 1),
        "fleet_kill_sos_max_ms": round(max(sos_down, default=float("nan")), 1),
        "fleet_kill_lost_events": lost if ok else -1,
        "fleet_kill_dup_stored": dup,
        "fleet_kill_resent_on_wire": st["sent"] - st["committed"],
        "fleet_kill_sos_p50_ms": round(pct(sos_down, 0.5), 1),
        "fleet_kill_sos_p99_ms": round(pct(sos_down, 0.99), 1),
        "fleet_kill_sos_count": len(sos_down),
        "fleet_kill_sos_killed_node_p50_ms": round(pct(on_killed, 0.5), 1),
        "fleet_kill_sos_killed_node_max_ms": round(max(on_killed, default=float("nan")), 1),
        "fleet_kill_sos_other_nodes_p50_ms": round(pct(elsewhere, 0.5), 1),
        "fleet_kill_sos_other_nodes_max_ms": round(max(elsewhere, default=float("nan")), 1),
        "fleet_kill_sos_undelivered": st["unacked_sos"],
        "fleet_kill_recovery_s": round(max(st["back"].values()) - t_kill, 1)
        if len(st["back"]) == n else -1.0,
        # How many units had an event decided after the kill receipted, and when the
        # slowest of those (and the 99th percentile) did.
        "fleet_kill_units_back": len(st["back"]),
        "fleet_kill_generator_lag_max_s": round(st["lag_max_s"], 1),
        "fleet_kill_back_p99_s": round(pct(sorted(t - t_kill for t in st["back"].values()),
                                           0.99), 1),
        "fleet_kill_back_max_s": round(max(st["back"].values(), default=t_kill) - t_kill, 1),
        "fleet_kill_node_restart_s": round(restart_s, 1),
        # Units' standby connections (0 / 0 without: no --standby): events published on
        # them (in resent_on_wire too) and deleted by their PUBACK or receipt.
        "fleet_kill_standby": {False: 0, "outage": 1, "connect": 2}[STANDBY],
        "fleet_kill_sos_at_kill": int(SOS_AT_KILL),
        "fleet_kill_emergency_receipt_qos": 1 if EMERGENCY_RECEIPT_QOS is None
        else EMERGENCY_RECEIPT_QOS,
        "fleet_kill_standby_sent": st["standby_sent"],
        "fleet_kill_standby_deleted": st["standby_deleted"],
        "fleet_kill_sos_main_down_count": len(offline),
        "fleet_kill_sos_main_down_p50_ms": round(pct(offline, 0.5), 1),
        "fleet_kill_sos_main_down_max_ms": round(max(offline, default=float("nan")), 1),
        "fleet_kill_sos_via_standby_count": len(via_standby),
        "fleet_kill_sos_via_standby_max_ms": round(max(via_standby, default=float("nan")), 1),
    }
    run.end_fleet()
    return out


def reconnects(connections: list[tuple[int, tuple[Any, ...]]], after: float, before: float,
               nodes: int) -> dict[str, float]:
    """The units' connections that replaced one lost in [after, before): how many, from
    which home node, and how long each step took from the loss (fleet.unit.Connection)."""
    steps: dict[str, list[float]] = {"backoff": [], "connack": [], "connack_wait": [],
                                     "suback": [], "puback": [], "tries": []}
    homes = [0] * nodes
    for unit, (_node, lost, tries, sent, connack, suback, puback) in connections:
        if lost is None or not after <= lost < before:
            continue
        homes[unit % nodes] += 1
        steps["backoff"].append(sent - lost)
        steps["connack"].append(connack - lost)
        steps["connack_wait"].append(connack - sent)
        steps["tries"].append(tries)
        if suback is not None:
            steps["suback"].append(suback - lost)
        if puback is not None:
            steps["puback"].append(puback - lost)
    out: dict[str, float] = {f"fleet_kill_reconnects_home_node{i + 1}": h
                             for i, h in enumerate(homes)}
    for k, v in steps.items():
        v.sort()
        scale, tail = (1, "") if k == "tries" else (1000, "_ms")
        out[f"fleet_kill_reconnect_{k}_p50{tail}"] = round(scale * pct(v, 0.5), 1)
        out[f"fleet_kill_reconnect_{k}_max{tail}"] = round(scale * max(v, default=float("nan")),
                                                           1)
    return out


def storm(run: Run, n: int, backlog: int = 1000, limit_s: float = 1500) -> dict[str, float]:
    """Past ``limit_s`` the drain is cut short: the share stored and the rate so far."""
    dsn = run.new_db()
    run.start_backend(dsn)
    f = run.new_fleet(n, storm=True)
    # The units' sessions exist (as after an outage of the network or the broker): connect
    # once, let the brokers settle, then every unit goes away and collects a backlog.
    f.start()
    f.wait(lambda: f.online() == n, 120)
    settle(run)
    f.stop()
    t0 = time.monotonic()
    f.backlog(backlog)
    say(f"{n * backlog} events in {n} buffers in {time.monotonic() - t0:.0f} s; all start")
    t0 = time.monotonic()
    w0 = time.time()
    c0 = run.cpu()
    f.start()
    f.start_traffic(3600, sos_every_s=0.5)  # the live traffic goes on (and its SOS)
    s0 = stored_count(dsn)
    last = [time.monotonic()]
    first_minute = [-1]

    def drained() -> bool:
        stored = stored_count(dsn)
        if time.monotonic() - last[0] > 60:
            last[0] = time.monotonic()
            if first_minute[0] < 0:
                first_minute[0] = stored - s0
            say(f"storm: {stored - s0} stored in {time.monotonic() - t0:.0f} s")
        return f.committed - stored < n * RATE * 2 and f.depth() < n * RATE * 2

    ok = f.wait(drained, limit_s, 1.0)
    drain = time.monotonic() - t0
    stored = stored_count(dsn) - s0
    w1 = time.time()
    c1 = run.cpu()
    f.stop_traffic()
    summ = f.summary()
    st = f.stats()
    ok = ok and wait_stored(f, dsn, 120)
    lost, dup = check_stored(f, dsn)
    if not ok:
        lost = -1  # not drained: what is missing is still on its way
    stored_ms = sos_stored_ms(dsn, w0, w1)
    out = {"fleet_storm_events": n * backlog,
           "fleet_storm_sos_stored_p50_ms": round(pct(stored_ms, 0.5), 1),
           "fleet_storm_sos_stored_p99_ms": round(pct(stored_ms, 0.99), 1),
           "fleet_storm_drain_s": round(drain, 1) if ok else -1.0,
           "fleet_storm_events_per_s": round(stored / drain, 1),
           "fleet_storm_stored_fraction": round(min(1.0, stored / f.committed), 3),
           "fleet_storm_sos_p50_ms": summ["sos_p50_ms"], "fleet_storm_sos_p99_ms":
           summ["sos_p99_ms"], "fleet_storm_sos_count": summ["sos_count"],
           "fleet_storm_lost_events": lost, "fleet_storm_dup_stored": dup,
           # reconnections beyond the one each unit makes, and resends on the wire
           "fleet_storm_reconnects": st["connects"] - 2 * n,
           "fleet_storm_resent_on_wire": st["sent"] - st["committed"],
           "fleet_storm_unit_window": STORM_UNIT["window"],
           "fleet_storm_receipt_timeout_s": STORM_UNIT["receipt_timeout"],
           "fleet_storm_unit_keepalive_s": STORM_UNIT["keepalive"],
           "fleet_storm_stored_first_60s": first_minute[0]}
    for k in c0:
        out[f"fleet_storm_cpu_{k}_percent"] = round(100 * (c1[k] - c0[k]) / drain, 1)
    run.end_fleet()
    return out


def sweep(run: Run, sizes: list[int], seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in sizes:
        say(f"sweep: {n} units, {n * RATE:.0f} events/s offered")
        r = steady(run, n, seconds, warmup=10)
        out[f"fleet_sweep_{n}_events_per_s"] = r["fleet_events_per_s"]
        out[f"fleet_sweep_{n}_latency_p99_ms"] = r["fleet_latency_p99_ms"]
        for k in ("generator", "brokers", "backend", "postgres"):
            out[f"fleet_sweep_{n}_cpu_{k}_percent"] = r[f"fleet_cpu_{k}_percent"]
        print(json.dumps({k: v for k, v in r.items()}), file=sys.stderr, flush=True)
        if r["fleet_events_per_s"] < 0.9 * n * RATE or r["fleet_latency_p99_ms"] > 5000:
            out["fleet_saturated_at_units"] = n
            break
    return out


def _shown(figures: dict[str, float]) -> dict[str, float]:
    print(json.dumps(figures), file=sys.stderr, flush=True)
    return figures


def run_all(quick: bool, units: int = 600, phases: tuple[str, ...] = ("steady", "kill", "storm"),
            sizes: list[int] | None = None, progress: Callable[[str], None] = say,
            backlog: int = 1000) -> dict[str, float]:
    from pg import PgServer  # tests/pg.py: a throw-away server, our child

    logging.basicConfig(level=logging.CRITICAL)
    work = Path(tempfile.mkdtemp(prefix="kidsafe-fleet-"))
    out: dict[str, float] = {}
    pg = PgServer().start()
    try:
        progress("three-node RabbitMQ cluster")
        run = Run(work, pg, inflight=INFLIGHT)
        try:
            if "steady" in phases:
                progress(f"steady: {units} units for {20 if quick else 60} s")
                out.update(_shown(steady(run, units, 20 if quick else 60)))
            if "kill" in phases:
                progress(f"node kill: {units} units")
                out.update(_shown(node_kill(run, units)))
            if "sweep" in phases:
                out.update(_shown(sweep(run, sizes or [600, 1200, 2400], 30)))
            if "storm" in phases:
                backlog = 100 if quick else backlog
                progress(f"reconnect storm: {units} units x {backlog} events")
                out.update(_shown(storm(run, units, backlog, STORM_LIMIT_S)))
        finally:
            run.close()
    finally:
        pg.close()
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", type=int, default=600)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", action="append", choices=["steady", "kill", "storm", "sweep"])
    p.add_argument("--sweep", default="600,1200,2400")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--logs", metavar="DIR", type=Path,
                   help="keep each phase's backend log in DIR")
    p.add_argument("--unit-window", type=int, default=32,
                   help="storm: each unit's in-flight window (the gateway's default: 256)")
    p.add_argument("--unit-keepalive", type=int, default=60,
                   help="storm: units' MQTT keepalive, s")
    p.add_argument("--backlog", type=int, default=1000, help="storm: events per unit")
    p.add_argument("--receipt-timeout", type=float, default=600.0,
                   help="storm: units' receipt_timeout_s (resend what awaits a receipt this "
                        "long; the gateway's default: 60)")
    p.add_argument("--storm-limit", type=float, default=1500,
                   help="storm: seconds before the drain is cut short")
    p.add_argument("--standby", nargs="?", const="outage", choices=["outage", "connect"],
                   help="units keep a standby connection for the emergency lane on the "
                        "next node (off by default: docs/fleet.md); 'connect': it "
                        "subscribes to the receipts at its connect, not at an outage")
    p.add_argument("--sos-at-kill", action="store_true",
                   help="kill: an SOS at each of the killed node's units right after the "
                        "kill (a diagnostic of the SOS decided while the main is down)")
    p.add_argument("--emergency-receipts-qos0", action="store_true",
                   help="the backend's emergency session receipts at QoS 0 (an experiment)")
    p.add_argument("--window", type=int, help="the backend's MQTT in-flight window "
                   "(0: as shipped, paho's 20)")
    a = p.parse_args(argv)
    phases = tuple(a.only or ["steady", "kill", "storm", "sweep"])
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # SIGTERM ends the run through its finally blocks (the nodes, PostgreSQL, the workers).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    global INFLIGHT, STORM_LIMIT_S, KEEP_LOGS, STANDBY, SOS_AT_KILL, EMERGENCY_RECEIPT_QOS
    KEEP_LOGS = a.logs
    STANDBY = a.standby or False
    SOS_AT_KILL = a.sos_at_kill
    EMERGENCY_RECEIPT_QOS = 0 if a.emergency_receipts_qos0 else None
    STORM_UNIT.update(window=a.unit_window, keepalive=a.unit_keepalive,
                      receipt_timeout=a.receipt_timeout)
    if a.window is not None:
        INFLIGHT = a.window or None
    storm_backlog = a.backlog
    STORM_LIMIT_S = a.storm_limit
    out = run_all(a.quick, a.units, phases, [int(x) for x in a.sweep.split(",")],
                  backlog=storm_backlog)
    for k, v in out.items():
        t = TARGETS.get(k)
        print(f"{k:45s} {v:>12}" + (f"   target {t[0]} {t[1]}" if t else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
