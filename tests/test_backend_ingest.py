"""The backend through a real mosquitto and a real PostgreSQL: stored once, duplicates
dropped, invalid messages quarantined, gaps reported and matched to buffer_drop, receipts
signed and verifiable with the backend's public key."""

from __future__ import annotations

import json
import time
from pathlib import Path

from backendproc import (
    PREFIX,
    BackendProcess,
    ReceiptCollector,
    count,
    drop_event,
    encode,
    event,
    keypair,
    publisher,
    write_config,
)
from firmware_sim.broker import LocalBroker
from firmware_sim.postgres import query
from gateway.contract import SCHEMA_VERSION
from harness import wait_until


def test_ingest_dedupe_quarantine_gaps_receipts(broker: LocalBroker, backend_dsn: str,
                                                tmp_path: Path) -> None:
    priv, pub = keypair(tmp_path)
    cfg = write_config(tmp_path / "backend.toml", broker_port=broker.port, dsn=backend_dsn,
                       key_file=priv)
    backend = BackendProcess(cfg, tmp_path / "backend.log").start()
    receipts = ReceiptCollector(broker.port, pub)
    unit = "unit-a"
    p = publisher(broker.port)
    try:
        base = f"{PREFIX}/{unit}"
        # seqs 1..40 without 5-7 (dropped, and a buffer_drop says so) and 20 (lost silently)
        bodies = [event(unit, s) for s in range(1, 41) if s not in (5, 6, 7, 20)]
        bodies.append(drop_event(unit, 41, [[5, 7]]))
        for b in bodies:
            p.publish(f"{base}/event/{b['kind']}", encode(b), qos=1).wait_for_publish(5)
        for b in bodies[:10]:  # resends: same ids
            p.publish(f"{base}/event/{b['kind']}", encode(b), qos=1).wait_for_publish(5)
        bad_schema = {**event(unit, 42), "lane": "emergency"}  # gate is routine
        other_unit = event("unit-b", 43)  # on unit-a's topic
        p.publish(f"{base}/event/gate", encode(bad_schema), qos=1).wait_for_publish(5)
        p.publish(f"{base}/event/gate", encode(other_unit), qos=1).wait_for_publish(5)
        p.publish(f"{base}/event/gate", b"\xff not json", qos=1).wait_for_publish(5)
        p.publish(f"{base}/event/gate", b"\xff not json", qos=1).wait_for_publish(5)  # same
        p.publish(f"{base}/status", json.dumps(
            {"unit": unit, "state": "online", "time": "2026-12-01T10:00:00.000Z",
             "reason": "connected"}).encode(), qos=1, retain=True).wait_for_publish(5)
        p.publish(f"{base}/birth", json.dumps(
            {"unit": unit, "site": "test-site", "software": "9.9", "schema": SCHEMA_VERSION,
             "config_version": "c-1", "config_previous": None, "config_label": "",
             "last_seq": 41, "high_water_seq": 1000, "mqtt": "5",
             "time": "2026-12-01T10:00:00.000Z"}).encode(), qos=1).wait_for_publish(5)

        wait_until(lambda: count(backend_dsn, "SELECT count(*) FROM events") >= len(bodies)
                   and count(backend_dsn, "SELECT count(*) FROM quarantine") >= 3, 20,
                   "events and quarantine stored")
        # Every valid seq and the invalid event with a readable seq (42, 43) are receipted.
        want = {b["seq"] for b in bodies} | {42, 43}
        wait_until(lambda: receipts.covered(unit) >= want, 10, "receipts for every seq")
        time.sleep(0.3)  # anything stored twice would show by now
    finally:
        p.disconnect()
        p.loop_stop()
        receipts.stop()
        assert backend.stop() == 0, backend.log_text()[-2000:]
    # MQTT 3.1.1 (the default): publishes split from the socket by backend/mqttread.py
    assert "publishes read by the tap" in backend.log_text()

    ids = [r[0] for r in query(backend_dsn, "SELECT id::text FROM events")]
    assert sorted(ids) == sorted(b["id"] for b in bodies)  # each once, none invalid
    assert receipts.covered(unit) == want
    assert receipts.covered("unit-b") == set()  # the receipt goes to the topic's unit

    q = query(backend_dsn, "SELECT topic, unit, seq, reasons, times_seen FROM quarantine "
              "ORDER BY id")
    assert len(q) == 3
    assert [r["seq"] for r in q] == [42, 43, None]
    assert "routine" in " ".join(q[0]["reasons"])
    assert "unit-b" in " ".join(q[1]["reasons"])
    assert q[2]["reasons"][0].startswith("not JSON") and q[2]["times_seen"] == 2

    gaps = query(backend_dsn, "SELECT from_seq, to_seq FROM seq_gaps WHERE unit = $1 "
                 "ORDER BY from_seq", unit)
    assert [(g[0], g[1]) for g in gaps] == [(5, 7), (20, 20)]
    unit_row = query(backend_dsn, "SELECT state, last_seq, high_water_seq, software "
                     "FROM units WHERE unit = $1", unit)[0]
    assert tuple(unit_row) == ("online", 41, 1000, "9.9")

    # The operator's view: `kidsafe-backend gaps` says which gap is explained (exit 1: one
    # is not).
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "backend", "gaps", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1, out
    assert f"{unit}\t5-7\t3\tbuffer_drop" in out.stdout
    assert f"{unit}\t20-20\t1\tUNEXPLAINED" in out.stdout
    assert "stored" in backend.log_text()


def test_a_database_outage_loses_nothing(broker: LocalBroker, tmp_path: Path) -> None:
    """PostgreSQL stopped while events arrive: the backend keeps the batch, acknowledges
    nothing, retries, and stores everything once the database is back."""
    import asyncio

    from backend import migrate
    from pg import PgServer

    pg = PgServer().start()
    try:
        dsn = pg.create_database()
        asyncio.run(migrate.apply(dsn))
        priv, pub = keypair(tmp_path)
        cfg = write_config(tmp_path / "backend.toml", broker_port=broker.port, dsn=dsn,
                           key_file=priv)
        backend = BackendProcess(cfg, tmp_path / "backend.log").start()
        receipts = ReceiptCollector(broker.port, pub)
        p = publisher(broker.port)
        unit = "unit-db"
        try:
            bodies = [event(unit, s) for s in range(1, 201)]
            for b in bodies[:100]:
                p.publish(f"{PREFIX}/{unit}/event/gate", encode(b), qos=1)
            wait_until(lambda: count(dsn, "SELECT count(*) FROM events") == 100, 20,
                       "the first 100 stored")
            pg.stop()
            for b in bodies[100:]:
                p.publish(f"{PREFIX}/{unit}/event/gate", encode(b), qos=1).wait_for_publish(5)
            wait_until(lambda: "database unavailable" in backend.log_text(), 20,
                       "the backend to notice")
            pg.start()
            wait_until(lambda: count(dsn, "SELECT count(*) FROM events") == 200, 30,
                       "everything stored after the outage")
            wait_until(lambda: receipts.covered(unit) == set(range(1, 201)), 15,
                       "every seq receipted")
        finally:
            p.disconnect()
            p.loop_stop()
            receipts.stop()
            assert backend.stop() == 0, backend.log_text()[-2000:]
        assert "Traceback" not in backend.log_text()
    finally:
        pg.close()


def test_what_the_database_refuses_is_quarantined_not_a_poison_message(
        broker: LocalBroker, backend_dsn: str, tmp_path: Path) -> None:
    """Valid JSON the schema allows but PostgreSQL cannot store (a NUL character in a text
    or a jsonb string) is quarantined with the database's reason; the rest of its batch is
    stored, and the backend keeps running."""
    priv, pub = keypair(tmp_path)
    cfg = write_config(tmp_path / "backend.toml", broker_port=broker.port, dsn=backend_dsn,
                       key_file=priv, batch_latency_ms=200.0)  # one batch for all three
    backend = BackendProcess(cfg, tmp_path / "backend.log").start()
    receipts = ReceiptCollector(broker.port, pub)
    p = publisher(broker.port)
    unit = "unit-nul"
    try:
        good = event(unit, 1)
        nul_child = {**event(unit, 2), "child": "c-\u0000"}
        nul_data = event(unit, 3)
        nul_data["data"]["gate"] = "gate-\u0000"
        for b in (good, nul_child, nul_data):
            p.publish(f"{PREFIX}/{unit}/event/gate", encode(b), qos=1)
        wait_until(lambda: count(backend_dsn, "SELECT count(*) FROM quarantine") == 2, 20,
                   "both quarantined")
        wait_until(lambda: receipts.covered(unit) == {1, 2, 3}, 10, "all three receipted")
    finally:
        p.disconnect()
        p.loop_stop()
        receipts.stop()
        assert backend.stop() == 0, backend.log_text()[-2000:]
    assert [r[0] for r in query(backend_dsn, "SELECT seq FROM events")] == [1]
    q = query(backend_dsn, "SELECT seq, reasons FROM quarantine ORDER BY seq")
    assert [r["seq"] for r in q] == [2, 3]
    assert all(r["reasons"][0].startswith("database refused it") for r in q)
    assert "writing it message by message" in backend.log_text()


def test_two_workers_share_a_subscription_over_mqtt5(broker: LocalBroker, backend_dsn: str,
                                                     tmp_path: Path) -> None:
    """Two backends in one shared group (MQTT 5, $share/...): the broker splits the events
    between them, each is stored once and receipted."""
    priv, pub = keypair(tmp_path)
    workers = []
    for i in (1, 2):
        cfg = write_config(tmp_path / f"backend{i}.toml", broker_port=broker.port,
                           dsn=backend_dsn, key_file=priv, client_id=f"worker-{i}",
                           broker={"protocol": "5", "shared_group": "kidsafe"})
        workers.append(BackendProcess(cfg, tmp_path / f"backend{i}.log").start())
    receipts = ReceiptCollector(broker.port, pub)
    p = publisher(broker.port)
    unit = "unit-shared"
    try:
        for s in range(1, 201):
            p.publish(f"{PREFIX}/{unit}/event/gate", encode(event(unit, s)), qos=1)
        wait_until(lambda: count(backend_dsn, "SELECT count(*) FROM events") == 200, 30,
                   "all stored")
        wait_until(lambda: receipts.covered(unit) == set(range(1, 201)), 15, "all receipted")
    finally:
        p.disconnect()
        p.loop_stop()
        receipts.stop()
        for w in workers:
            assert w.stop() == 0, w.log_text()[-2000:]
    for w in workers:
        assert "$share/kidsafe/kidsafe/v1/+/event/+" in w.log_text()
        assert "publishes read by paho" in w.log_text()  # MQTT 5: no tap
        final = w.log_text().rsplit("stopped: ", 1)[1]
        assert not final.startswith("0 messages"), final  # both took a share
