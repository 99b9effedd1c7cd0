"""Delivery benchmarks (issue 4), all against one local mosquitto in one run.

- raw: paho-mqtt QoS 1 publishing of the gateway's own payloads, same in-flight
  window as the gateway, on paho's own network thread (``loop_start``): the
  baseline of issue 4.
- fast: the fastest plain-Python QoS 1 publisher we could write with paho: its
  external loop in one thread (``socket()``, ``loop_read/loop_write`` with
  ``select``, as the gateway itself does), keeping the same window full itself so
  paho never queues (paho re-scans its whole in-flight list per PUBACK once it
  queues). No buffer, no deletes: the bar for the gateway's loop.
- e2e: the same events through the gateway's outbox (SQLite, FULL sync) and
  publisher, as a ratio of raw and of fast. Raw, fast and e2e run interleaved
  ROUNDS times and the medians are compared (single runs on a shared 2-core
  machine vary by +-15 %); the min and max of the per-round ratios are printed too.
- drain: a real ``gatewayd run`` process with a pre-filled buffer; events/s from
  its first acknowledgement to an empty buffer, and the process's peak RSS.
- sos: latency from commit to PUBACK of emergency events made while a backlog
  drains (in-process, so each event's ack time is seen exactly).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim import procs
from firmware_sim.broker import LocalBroker
from gateway import config as configmod
from gateway.daemon import Gateway
from gateway.model import Event, Lane
from gateway.outbox import Outbox

ROUNDS = 5  # full run; the quick run does 3
WINDOW = 256 + 32  # the gateway's default in-flight window plus its emergency reserve
REPO = Path(__file__).resolve().parents[1]


def sample_events(n: int) -> list[Event]:
    """Gate passages with data as the engine gives it (docs/mqtt.md), so payloads are the
    real size."""
    return [Event(kind="gate", time=1.7e9 + i * 0.01, lane=Lane.ROUTINE, reader="gate-main",
                  child=f"c-{i % 500:04d}",
                  data={"gate": "main", "direction": "arrival", "day": "2023-11-14",
                        "first_arrival_today": i < 500, "first_passage_today": i < 500,
                        "reads": 3}) for i in range(n)]


def payloads(n: int, work: Path) -> list[tuple[str, bytes]]:
    ob = Outbox(str(work / "payloads.db"), "bench-unit", "bench-site")
    stored = ob.add(sample_events(n))
    ob.close()
    return [(f"kidsafe/v1/bench-unit/{s.topic}", s.payload) for s in stored]


def raw_paho(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Messages per second, from the first publish to the last PUBACK."""
    done = threading.Event()
    acked = 0
    lock = threading.Lock()

    def on_publish(*_a: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == len(msgs):
                done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for topic, payload in msgs:
        c.publish(topic, payload, qos=1)
    done.wait(300)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return len(msgs) / dt


def fast_paho(port: int, msgs: list[tuple[str, bytes]]) -> float:
    """Messages per second, from the first publish to the last PUBACK: paho's external
    loop in one thread, the window kept full by us."""
    acked = 0
    connected = False

    def on_connect(*_a: object) -> None:
        nonlocal connected
        connected = True

    def on_publish(*_a: object) -> None:
        nonlocal acked
        acked += 1

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-fast", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(WINDOW)
    c.max_queued_messages_set(0)
    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    sock = c.socket()
    assert sock is not None, "paho has no socket after connect()"
    deadline = time.monotonic() + 10
    while not connected and time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [sock] if c.want_write() else [], [], 0.1)
        if readable:
            c.loop_read()
        c.loop_write()
    n, sent = len(msgs), 0
    publish = c.publish
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while acked < n and time.monotonic() < deadline:
        while sent < n and sent - acked < WINDOW:  # publish() writes at once in this mode
            topic, payload = msgs[sent]
            publish(topic, payload, qos=1)
            sent += 1
        readable, writable, _ = select.select([sock], [sock] if c.want_write() else [], [],
                                              1.0)
        if readable and c.loop_read() != mqtt.MQTT_ERR_SUCCESS:
            break
        if writable:
            c.loop_write()
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_write()
    return acked / dt


def _config(work: Path, port: int, name: str) -> configmod.Config:
    return configmod.parse({
        "unit": {"id": "bench-unit", "site": "bench-site"},
        "broker": {"port": port, "client_id": name},
        "buffer": {"path": str(work / f"{name}.db")},
        "health": {"interval_s": 3600},
    })


def gateway_e2e(port: int, n: int, work: Path) -> float:
    """Events per second through outbox + publisher, committed in pipeline-sized batches."""
    gw = Gateway(_config(work, port, "bench-e2e"))
    acked = 0
    done = threading.Event()

    def on_acked(seqs: list[int]) -> None:
        nonlocal acked
        acked += len(seqs)
        if acked >= n:
            done.set()

    gw.publisher.on_acked = on_acked
    gw.start()
    deadline = time.monotonic() + 10
    while not gw.publisher.online and time.monotonic() < deadline:
        time.sleep(0.01)
    events = sample_events(n)
    t0 = time.perf_counter()
    for i in range(0, n, 512):
        gw.pipeline.commit(events[i:i + 512])
    done.wait(300)
    dt = time.perf_counter() - t0
    gw.shutdown()
    return n / dt


def fill(ob: Outbox, n: int) -> None:
    """Commit an n-event backlog in 10,000-event transactions."""
    events = sample_events(10_000)
    for i in range(0, n, 10_000):
        ob.add(events[: min(10_000, n - i)])


def _count(db: Path) -> int:
    with Outbox.saved(str(db)) as saved:  # read-only: the daemon owns the buffer
        return saved.depth()


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def drain(port: int, n: int, work: Path) -> tuple[float, float, float]:
    """(events/s, peak RSS MB, idle CPU %) of a real daemon process draining an n-event
    backlog; idle CPU is measured over the 3 s after the buffer is empty."""
    db = work / "drain.db"
    ob = Outbox(str(db), "bench-unit", "bench-site", max_events=10 * n)
    fill(ob, n)
    ob.close()
    cfg = work / "drain.toml"
    cfg.write_text(f'[unit]\nid = "bench-unit"\nsite = "bench-site"\n[broker]\nport = {port}\n'
                   f'client_id = "bench-drain"\n[buffer]\npath = "{db}"\nmax_events = {10 * n}\n'
                   '[health]\ninterval_s = 3600\n')
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        t_first = None
        deadline = time.monotonic() + 600
        left = n
        while time.monotonic() < deadline:
            left = _count(db)
            if t_first is None and left < n:
                t_first, first_left = time.perf_counter(), left
            if left == 0:
                break
            time.sleep(0.05)
        t_end = time.perf_counter()
        rss = _vm_hwm_mb(proc.pid)
        rate = (first_left / (t_end - t_first)) if t_first and left == 0 else float("nan")
        cpu0, w0 = _cpu_s(proc.pid), time.perf_counter()
        time.sleep(3.0)
        idle = 100 * (_cpu_s(proc.pid) - cpu0) / (time.perf_counter() - w0)
        return rate, rss, idle
    finally:
        procs.end(proc, signal.SIGTERM, timeout=15)


def sos_latency(port: int, n_backlog: int, n_sos: int, work: Path) -> tuple[float, float]:
    """(p50, p99) ms from commit to PUBACK of emergency events during a backlog drain."""
    gw = Gateway(_config(work, port, "bench-sos"))
    gw.outbox.max_events = 10 * n_backlog
    fill(gw.outbox, n_backlog)
    committed: dict[int, float] = {}
    latencies: list[float] = []

    def on_acked(seqs: list[int]) -> None:
        now = time.perf_counter()
        for s in seqs:
            t = committed.pop(s, None)
            if t is not None:
                latencies.append((now - t) * 1000)

    gw.publisher.on_acked = on_acked
    gw.start()
    while gw.outbox.depth() > n_backlog * 0.9:  # draining is under way
        time.sleep(0.005)
    for i in range(n_sos):
        if gw.outbox.depth() < n_backlog * 0.1:
            break
        t = time.perf_counter()
        stored = gw.outbox.add([Event(kind="sos", time=time.time(), lane=Lane.EMERGENCY,
                                      reader="ble-1", child=f"c-{i}", data={})])
        committed[stored[0].seq] = t
        gw.publisher.notify()
        time.sleep(0.02)
    deadline = time.monotonic() + 30
    while committed and time.monotonic() < deadline:
        time.sleep(0.01)
    gw.shutdown()
    if len(latencies) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(latencies, n=100)
    return statistics.median(latencies), q[98]


def run(quick: bool, progress: bool = True) -> dict[str, float]:
    n_raw = 10_000 if quick else 30_000  # fewer and fixed start-up costs dominate the ratio
    n_drain = 10_000 if quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="kidsafe-bench-"))
    out: dict[str, float] = {}

    def say(msg: str) -> None:
        if progress:
            print(f"  ... {msg}", file=sys.stderr, flush=True)

    with LocalBroker(str(work / "broker"), persistence=False) as broker:
        msgs = payloads(n_raw, work)
        raws, fasts, e2es = [], [], []
        rounds = 3 if quick else ROUNDS
        for i in range(rounds):  # interleaved, so all see the same machine; medians
            say(f"round {i + 1}/{rounds}: raw paho QoS 1, fast paho, then the gateway, "
                f"{n_raw} each")
            raws.append(raw_paho(broker.port, msgs))
            fasts.append(fast_paho(broker.port, msgs))
            run_dir = work / f"e2e-{i}"
            run_dir.mkdir()
            e2es.append(gateway_e2e(broker.port, n_raw, run_dir))
        raw, e2e = statistics.median(raws), statistics.median(e2es)
        fast = statistics.median(fasts)
        ratios = sorted(e / r for e, r in zip(e2es, raws, strict=True))
        fast_ratios = sorted(e / f for e, f in zip(e2es, fasts, strict=True))
        say(f"drain of a {n_drain}-event backlog by a gatewayd process")
        rate, rss, idle = drain(broker.port, n_drain, work)
        say("SOS latency while a backlog drains")
        p50, p99 = sos_latency(broker.port, n_drain, 100 if not quick else 30, work)
    out["raw_paho_msgs_per_s"] = round(raw, 1)
    out["gateway_e2e_events_per_s"] = round(e2e, 1)
    out["e2e_ratio_vs_raw_paho"] = round(e2e / raw, 3)
    out["e2e_ratio_min"] = round(ratios[0], 3)
    out["e2e_ratio_max"] = round(ratios[-1], 3)
    out["fast_paho_msgs_per_s"] = round(fast, 1)
    out["e2e_ratio_vs_fast_paho"] = round(e2e / fast, 3)
    out["e2e_ratio_vs_fast_min"] = round(fast_ratios[0], 3)
    out["e2e_ratio_vs_fast_max"] = round(fast_ratios[-1], 3)
    out["drain_events_per_s"] = round(rate, 1)
    out["drain_ratio_vs_raw_paho"] = round(rate / raw, 3)
    out["drain_peak_rss_mb"] = round(rss, 1)
    out["daemon_idle_cpu_percent"] = round(idle, 2)
    out["sos_ack_latency_p50_ms"] = round(p50, 2)
    out["sos_ack_latency_p99_ms"] = round(p99, 2)
    shutil.rmtree(work, ignore_errors=True)
    return out
