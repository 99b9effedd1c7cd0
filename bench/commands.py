"""Command latency (issue 12): a signed ``locate`` published -> its reply received, while
a real ``gatewayd run`` process drains a backlog (100,000 events; 20,000 with --quick)
through a local mosquitto. The reply must not wait behind the events: the publisher
sends replies first, and the locate is answered by the pipeline thread between batches.

    python bench/commands.py [--quick]
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.delivery import _count, fill
from firmware_sim import procs
from firmware_sim.broker import LocalBroker
from gateway import cmdtool, signing
from gateway.outbox import Outbox
from gateway.publisher import nodelay

TARGETS: dict[str, tuple[str, float]] = {"cmd_locate_reply_p99_ms": ("<", 100)}
UNIT = "bench-unit"
PREFIX = f"kidsafe/v1/{UNIT}"


def bench_locate(port: int, n_backlog: int, work: Path) -> tuple[float, float, int]:
    """(p50, p99) ms and the number of locates answered during the drain."""
    db = work / "cmd.db"
    ob = Outbox(str(db), UNIT, "bench-site", max_events=10 * n_backlog)
    fill(ob, n_backlog)
    ob.close()
    signing.generate_keypair(work / "backend.key", work / "backend.pub")
    key = signing.load_private_key(work / "backend.key")
    cfg = work / "cmd.toml"
    cfg.write_text(f'[unit]\nid = "{UNIT}"\nsite = "bench-site"\n[broker]\nport = {port}\n'
                   f'client_id = "bench-cmd"\n[buffer]\npath = "{db}"\n'
                   f'max_events = {10 * n_backlog}\n[health]\ninterval_s = 3600\n'
                   f'[commands]\npublic_keys = ["{work / "backend.pub"}"]\n'
                   '[[tags]]\nid = "62E3086CED"\nchild = "c-0001"\n')
    sent: dict[str, float] = {}
    latencies: list[float] = []
    got = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter()
        corr = getattr(msg.properties, "CorrelationData", b"")
        t0 = sent.pop(corr.decode(), None) if isinstance(corr, bytes) else None
        if t0 is not None and json.loads(msg.payload)["code"] == 200:
            latencies.append((t - t0) * 1000)
        got.set()

    backend = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-backend",
                          protocol=mqtt.MQTTv5)
    backend.on_message = on_message
    backend.on_subscribe = lambda *_a: subscribed.set()
    backend.connect("127.0.0.1", port)
    nodelay(backend)
    backend.loop_start()
    backend.subscribe(f"{PREFIX}/reply/#", qos=1)
    subscribed.wait(10)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _count(db) > 0.95 * n_backlog and time.monotonic() < deadline:
            time.sleep(0.02)  # connected and draining
        i = 0
        while time.monotonic() < deadline:
            if i % 10 == 0 and _count(db) < 0.05 * n_backlog:
                break  # the backlog is (nearly) drained: measure only while it drains
            i += 1
            rid = str(uuid.uuid4())
            env = cmdtool.envelope("locate", {"child": "c-0001"}, UNIT, request_id=rid)
            token = cmdtool.sign_command(env, key)
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{PREFIX}/reply/{rid}"
            props.CorrelationData = rid.encode()
            got.clear()
            sent[rid] = time.perf_counter()
            backend.publish(f"{PREFIX}/cmd/locate", token, qos=1, properties=props)
            got.wait(2.0)
            time.sleep(0.01)
    finally:
        procs.end(proc, signal.SIGTERM, timeout=15)
        backend.disconnect()
        backend.loop_stop()
    if len(latencies) < 2:
        return float("nan"), float("nan"), len(latencies)
    q = statistics.quantiles(latencies, n=100)
    return statistics.median(latencies), q[98], len(latencies)


def run(quick: bool, progress: bool = True) -> dict[str, float]:
    n = 20_000 if quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="kidsafe-bench-cmd-"))
    if progress:
        print(f"  ... locate command while a {n}-event backlog drains", file=sys.stderr,
              flush=True)
    try:
        with LocalBroker(str(work / "broker"), persistence=False,
                         extra_conf="set_tcp_nodelay true") as broker:
            p50, p99, count = bench_locate(broker.port, n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"cmd_locate_reply_p50_ms": round(p50, 2), "cmd_locate_reply_p99_ms": round(p99, 2),
            "cmd_locates_during_drain": float(count)}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
