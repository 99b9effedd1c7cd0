"""The reference backend's figures (issue 13), each against a real mosquitto and a real
PostgreSQL 15 (its default, durable settings: fsync on), kidsafe-backend as its own process:

- ``backend_events_per_s``: a backlog of events (100,000; --quick 10,000) waits in the
  backend's persistent session while it is offline; it is started, and the rate is the
  events stored divided by the time from its first commit to its last (``events.received``
  is each transaction's start: no polling in the measurement);
- ``pg_batched_insert_per_s``: PostgreSQL's own rate for the same rows in the same run:
  the backend's store (the same INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING
  statements, batches of the same size, one transaction each) fed the parsed rows
  directly, with no broker, no JSON and no validation (measured before and after the
  backend's run, the higher rate kept); ``backend_ingest_ratio`` = the
  first / the second (target >= 0.5: the broker, parsing, validation and receipts may
  cost at most as much as the database itself);
- ``e2e_receipt_latency_p50_ms`` / ``_p99_ms``: a unit (the gateway in receipt mode, in
  this process as the delivery bench runs it) commits a steady 200 events/s; per event,
  from just before its commit to its buffer to the moment the verified receipt deleted it
  there (target p99 < 250 ms);
- ``backend_receipt_rtt_p50_ms`` / ``_p99_ms``: the backend's share of that: a plain paho
  client publishing 200 events/s (QoS 1) and taking its receipts, from just before each
  publish to the verified receipt covering it (broker + backend + database + broker).

Diagnostics: KIDSAFE_BENCH_DEBUG=1 prints the unit's commit times and the unit-commit ->
backend-transaction delay (events.recorded -> events.received); KIDSAFE_BENCH_UNIT_MODE=broker
runs the unit in broker mode (then "back" is the PUBACK's delete); KIDSAFE_BENCH_MQTT=5 the
backend on MQTT 5.
"""

from __future__ import annotations

import asyncio
import json
import os
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
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would hide the
# backend package: the repository root goes first (as in bench/run.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

from backend import migrate, schemas
from backend.ingest import EventRow, parse
from backend.store import Store
from firmware_sim import procs
from firmware_sim.broker import LocalBroker
from firmware_sim.postgres import query
from gateway import signing
from gateway.contract import iso_utc

# The throw-away PostgreSQL server the tests use (tests/pg.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg import PgServer

TARGETS: dict[str, tuple[str, float]] = {
    "backend_ingest_ratio": (">=", 0.5),
    "e2e_receipt_latency_p99_ms": ("<", 250),
}
PREFIX = "kidsafe/v1"
BATCH = 500
# The backend's MQTT version (its default, 3.1.1; KIDSAFE_BENCH_MQTT=5 to compare).
PROTOCOL = os.environ.get("KIDSAFE_BENCH_MQTT", "3.1.1")


def _event(unit: str, seq: int) -> bytes:
    now = iso_utc(time.time())
    return json.dumps({
        "id": str(uuid.uuid4()), "seq": seq, "unit": unit, "site": "bench-site", "kind": "gate",
        "lane": "routine", "time": now, "recorded": now, "reader": "gate-a",
        "child": f"c-{seq % 500}",
        "data": {"direction": "arrival", "gate": "gate-a", "day": now[:10],
                 "first_arrival_today": False, "first_passage_today": False, "reads": 3}},
        separators=(",", ":")).encode()


def _config(work: Path, port: int, dsn: str, key: Path, latency_ms: float) -> Path:
    path = work / f"backend-{latency_ms:g}.toml"
    path.write_text(tomli_w.dumps({
        "prefix": PREFIX,
        "broker": {"host": "127.0.0.1", "port": port, "client_id": "bench-backend",
                   "protocol": PROTOCOL, "reconnect_max_s": 0.5},
        "database": {"dsn": dsn},
        "receipts": {"key_file": str(key)},
        "ingest": {"batch_size": BATCH, "batch_latency_ms": latency_ms},
    }))
    return path


def _backend(config: Path, log: Path, ready: str = "subscribed to ") -> subprocess.Popen[bytes]:
    before = log.read_text().count(ready) if log.exists() else 0
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "backend", "run", "--config", str(config)],
                            stdout=out, stderr=out, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    out.close()
    deadline = time.monotonic() + 30
    while log.read_text().count(ready) <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"kidsafe-backend did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def _publish_all(port: int, msgs: list[tuple[str, bytes]]) -> None:
    """QoS 1, a window of 1000 in flight, until the last PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-unit", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    # In chunks: paho's message ids wrap at 65,535, and a 100,000-message queue would
    # reuse an id still queued (ERR_QUEUE_SIZE).
    for i in range(0, len(msgs), 20_000):
        infos = [c.publish(t, p, qos=1) for t, p in msgs[i:i + 20_000]]
        for info in infos:
            info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def _sql(dsn: str, statement: str) -> Any:
    """The one value a statement returns."""
    return query(dsn, statement)[0][0]


def _migrated(pg: PgServer) -> str:
    dsn = pg.create_database()
    asyncio.run(migrate.apply(dsn))
    return dsn


async def _insert_direct(dsn: str, rows: list[EventRow]) -> float:
    store = await Store.open(dsn)
    try:
        t0 = time.perf_counter()
        for i in range(0, len(rows), BATCH):
            await store.write(rows[i:i + BATCH])
        return len(rows) / (time.perf_counter() - t0)
    finally:
        await store.close()


def ingest(pg: PgServer, broker: LocalBroker, work: Path, key: Path, n: int,
           say: Any) -> dict[str, float]:
    dsn = _migrated(pg)
    cfg = _config(work, broker.port, dsn, key, 20.0)
    log = work / "backend-ingest.log"
    procs.end(_backend(cfg, log), signal.SIGTERM)  # its persistent session now exists
    msgs = [(f"{PREFIX}/unit-b/event/gate", _event("unit-b", s)) for s in range(1, n + 1)]
    contract = schemas.load()
    rows = [parse(PREFIX, contract, t, p) for t, p in msgs]
    assert all(isinstance(r, EventRow) for r in rows)
    # PostgreSQL's own rate, before and after the backend's run; the higher one counts (the
    # conservative ratio on a machine whose load changes).
    say("PostgreSQL's own batched inserts of the same rows")
    direct = asyncio.run(_insert_direct(_migrated(pg), rows))  # type: ignore[arg-type]
    say(f"backlog: {n} events queued for the offline backend")
    _publish_all(broker.port, msgs)
    say("backend started on the backlog")
    # Connected is enough: its session's queued messages come before the SUBACK.
    proc = _backend(cfg, log, ready="connected to ")
    try:
        deadline = time.monotonic() + max(120, n / 500)
        while _sql(dsn, "SELECT count(*) FROM events") < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog not stored in time: {log.read_text()[-2000:]}")
            time.sleep(0.5)
    finally:
        procs.end(proc, signal.SIGTERM)
    first_batch = _sql(dsn, "SELECT count(*) FROM events WHERE received = "
                            "(SELECT min(received) FROM events)")
    span = _sql(dsn, "SELECT extract(epoch FROM max(received) - min(received)) FROM events")
    rate = (n - first_batch) / float(span)
    say("PostgreSQL's own batched inserts of the same rows, again")
    direct = max(direct, asyncio.run(_insert_direct(_migrated(pg), rows)))  # type: ignore[arg-type]
    return {"backend_events_per_s": round(rate, 1),
            "pg_batched_insert_per_s": round(direct, 1),
            "backend_ingest_ratio": round(rate / direct, 3)}


def latency(pg: PgServer, broker: LocalBroker, work: Path, key: Path, pub: Path,
            seconds: float, rate: float = 200.0) -> dict[str, float]:
    dsn = _migrated(pg)
    cfg = _config(work, broker.port, dsn, key, 5.0)
    proc = _backend(cfg, work / "backend-latency.log")
    keys = signing.load_keyring([pub])
    unit = "unit-l"
    decided: dict[int, float] = {}
    lat: dict[int, float] = {}
    lock = threading.Lock()
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(signing.verify(bytes(msg.payload), keys, signing.TYP_RECEIPT).payload)
        with lock:
            for a, b in body["ranges"]:
                for s in range(a, b + 1):
                    if s in decided and s not in lat:
                        lat[s] = now - decided[s]

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unit, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, *_: cl.subscribe(f"{PREFIX}/{unit}/receipt", qos=1)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert ready.wait(10)
        n = int(seconds * rate)
        t0 = time.perf_counter()
        for seq in range(1, n + 1):
            wait = t0 + (seq - 1) / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            payload = _event(unit, seq)
            with lock:
                decided[seq] = time.perf_counter()
            c.publish(f"{PREFIX}/{unit}/event/gate", payload, qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if len(lat) >= n:
                    break
            time.sleep(0.05)
    finally:
        c.disconnect()
        c.loop_stop()
        procs.end(proc, signal.SIGTERM)
    ms = sorted(v * 1000 for v in lat.values())
    if len(ms) < n:
        raise RuntimeError(f"only {len(ms)} of {n} events were receipted")
    return {"e2e_receipt_latency_p50_ms": round(statistics.median(ms), 1),
            "e2e_receipt_latency_p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)}


def latency_gateway(pg: PgServer, broker: LocalBroker, work: Path, key: Path, pub: Path,
                    seconds: float, rate: float = 200.0,
                    kind: str = "gate") -> dict[str, float]:
    """The same figure at a real unit: the gateway (in this process, as the delivery bench
    runs it) in receipt mode. Decided: the event's due time at 200/s; events due since
    the last commit are committed together, as the pipeline does (SQLite,
    synchronous=FULL); back: when the verified receipt has deleted it from the buffer
    (the publisher's on_acked, which receipt mode calls on that delete)."""
    from gateway import config as configmod
    from gateway.daemon import Gateway
    from gateway.model import Event, Lane

    dsn = _migrated(pg)
    proc = _backend(_config(work, broker.port, dsn, key, 5.0), work / "backend-gw.log")
    gw = Gateway(configmod.parse({
        "unit": {"id": "unit-g", "site": "bench-site"},
        "broker": {"port": broker.port, "client_id": "unit-g"},
        "buffer": {"path": str(work / "unit-g.db")},
        "health": {"interval_s": 3600},
        "commands": {"public_keys": [str(pub)]},
        "delivery": {"mode": os.environ.get("KIDSAFE_BENCH_UNIT_MODE", "receipt")},
    }))
    decided: dict[int, float] = {}
    lat: list[float] = []
    adds: list[float] = []  # the commits' own times
    lock = threading.Lock()

    def on_acked(seqs: list[int]) -> None:
        now = time.perf_counter()
        with lock:
            for s in seqs:
                t = decided.pop(s, None)
                if t is not None:
                    lat.append((now - t) * 1000)

    gw.publisher.on_acked = on_acked
    gw.start()
    try:
        deadline = time.monotonic() + 15
        while not gw.publisher.online and time.monotonic() < deadline:
            time.sleep(0.01)
        n = int(seconds * rate)
        day = time.strftime("%Y-%m-%d", time.gmtime())

        def make(i: int) -> Event:
            if kind == "gate":
                return Event(kind="gate", time=time.time(), lane=Lane.ROUTINE, reader="gate-a",
                             child=f"c-{i % 500}",
                             data={"direction": "arrival", "gate": "gate-a", "day": day,
                                   "first_arrival_today": False, "first_passage_today": False,
                                   "reads": 3})
            return Event(kind="sos", time=time.time(), lane=Lane.EMERGENCY, reader="ble-1",
                         child=f"c-{i % 500}", data={"zone": None, "position": None,
                                                     "cameras": []})

        # As the pipeline commits: what became due since the last commit goes in one
        # transaction. An event is decided at its due time (t0 + i / rate), so the wait
        # for the commit counts in its latency.
        t0 = time.perf_counter()
        sent = 0
        while sent < n:
            due = min(n, int((time.perf_counter() - t0) * rate) + 1)
            if due <= sent:
                time.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
                continue
            c0 = time.perf_counter()
            stored = gw.outbox.add([make(i) for i in range(sent, due)])
            adds.append(time.perf_counter() - c0)
            with lock:
                for k, row in enumerate(stored):
                    decided[row.seq] = t0 + (sent + k) / rate
            sent = due
            gw.publisher.notify()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with lock:
                if not decided:
                    break
            time.sleep(0.02)
    finally:
        gw.shutdown()
        procs.end(proc, signal.SIGTERM)
    if os.environ.get("KIDSAFE_BENCH_DEBUG"):
        print(f"unit commits: {len(adds)}, median {1000 * statistics.median(adds):.1f} ms, "
              f"max {1000 * max(adds):.1f} ms", file=sys.stderr)
        print("unit commit -> backend transaction, p50/p99 ms:", _sql(dsn, """
            SELECT array[percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
                         percentile_cont(0.99) WITHIN GROUP (ORDER BY d)]
            FROM (SELECT 1000 * extract(epoch FROM received - recorded) AS d FROM events) x"""),
              file=sys.stderr)
    if len(lat) < n:
        raise RuntimeError(f"only {len(lat)} of {n} events were receipted")
    ms = sorted(lat)
    return {"e2e_receipt_latency_p50_ms": round(statistics.median(ms), 1),
            "e2e_receipt_latency_p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1)}


def run(quick: bool, progress: bool = True) -> dict[str, float]:
    def say(msg: str) -> None:
        if progress:
            print(f"  ... backend: {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="kidsafe-bench-backend-"))
    pg = PgServer(flags=()).start()  # PostgreSQL's defaults: fsync on
    broker = LocalBroker(str(work / "broker"), persistence=False).start()
    try:
        key, pub = work / "backend.key", work / "backend.pub"
        signing.generate_keypair(key, pub)
        out = ingest(pg, broker, work, key, 10_000 if quick else 100_000, say)
        secs = 3.0 if quick else 15.0
        say(f"steady 200 events/s for {secs:g} s from a gateway in receipt mode")
        out.update(latency_gateway(pg, broker, work, key, pub, secs))
        say(f"steady 200 events/s for {secs:g} s from a plain MQTT client (the backend's share)")
        rtt = latency(pg, broker, work, key, pub, secs)
        out["backend_receipt_rtt_p50_ms"] = rtt["e2e_receipt_latency_p50_ms"]
        out["backend_receipt_rtt_p99_ms"] = rtt["e2e_receipt_latency_p99_ms"]
        return out
    finally:
        broker.stop()
        pg.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    for k, v in run(ap.parse_args().quick).items():
        print(f"{k:32} {v:>12}")
