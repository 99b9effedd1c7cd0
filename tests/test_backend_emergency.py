"""The backend's emergency session (backend/emergency.py) and the receipts it sends again
after a reconnect (backend/receipt_ledger.py): the pure parts, then through a real
mosquitto and a real PostgreSQL."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from backend import config, emergency
from backend.gaps import classify
from backend.ingest import merge
from backend.receipt_ledger import Ledger
from backendproc import (
    PREFIX,
    BackendProcess,
    ReceiptCollector,
    count,
    encode,
    event,
    keypair,
    publisher,
    write_config,
)
from firmware_sim.broker import LocalBroker
from harness import wait_until

REPO = Path(__file__).resolve().parents[1]


# -- pure ----------------------------------------------------------------------------------


def test_the_emergency_kinds_are_the_contracts() -> None:
    """The session subscribes to the kinds the contract puts in the emergency lane."""
    schema = json.loads((REPO / "docs/schemas/event.schema.json").read_text())
    lanes = {}
    for rule in schema["allOf"]:
        kind = rule.get("if", {}).get("properties", {}).get("kind", {}).get("const")
        lane = rule.get("then", {}).get("properties", {}).get("lane", {}).get("const")
        if kind is not None:
            lanes[kind] = lane
    assert {k for k, lane in lanes.items() if lane == "emergency"} == set(emergency.KINDS)


def test_emergency_session_config() -> None:
    cfg = config.parse({"broker": {"client_id": "b-1"}})
    assert cfg.broker.emergency_session is True
    e = emergency.session_config(cfg)
    assert e.broker.client_id == "b-1-emergency" and e.ingest.batch_latency_ms == 0
    assert emergency.topics(cfg) == [f"kidsafe/v1/+/event/{k}" for k in emergency.KINDS]
    shared = config.parse({"broker": {"protocol": "5", "shared_group": "g",
                                      "emergency_client_id": "sos-1"}})
    assert emergency.client_id(shared) == "sos-1"
    own = config.parse({"broker": {"username": "backend", "password_file": "/p",
                                   "emergency_username": "backend-emergency"}})
    assert emergency.session_config(own).broker.username == "backend-emergency"
    assert emergency.session_config(own).broker.password_file == "/p"
    assert emergency.session_config(cfg).broker.username == cfg.broker.username
    assert emergency.topics(shared)[0] == "$share/g/kidsafe/v1/+/event/sos"
    assert config.parse({"broker": {"emergency_session": False}}).broker.emergency_session \
        is False
    with pytest.raises(config.ConfigError, match="expected bool"):
        config.parse({"broker": {"emergency_session": 1}})
    with pytest.raises(config.ConfigError, match="must differ"):
        config.parse({"broker": {"client_id": "x", "emergency_client_id": "x"}})


def test_ledger_keeps_only_what_a_dead_connection_lost() -> None:
    led = Ledger()
    led.sent(1, 1, "u", [[1, 3]])
    led.sent(2, 1, "u", [[4, 4], [9, 9]])
    led.sent(3, 1, "v", [[7, 7]])
    led.sent(4, 1, "w", [[1, 1]])
    led.acked(3)  # PUBACKed: nothing to send again
    led.failed(4, connection_alive=True)  # timed out on a live connection: the unit resends
    led.failed(2, connection_alive=False)  # its connection died: kept
    led.sent(5, 2, "u", [[10, 10]])  # on the new connection: not lost
    assert led.hold_lost(2) == 1 and len(led) == 1  # u owes; the receipt on 2 is held
    assert led.owed_for(["v", "x"]) == {}
    assert led.owed_for(["u"]) == {"u": [[1, 4], [9, 9]]}  # with u's next receipt
    assert led.owed_all() == {}
    assert merge([(5, 9), (1, 3), (4, 4), (20, 21)]) == [[1, 9], [20, 21]]
    small = Ledger(max_held=2)
    for k in range(3):
        small.sent(k, 1, f"u{k}", [[1, 1]])
    assert small.forgotten == 1 and small.hold_lost(2) == 2
    assert set(small.owed_all()) == {"u1", "u2"}


def test_an_emergency_seq_stored_ahead_is_a_gap_on_its_way() -> None:
    """The SOS (seq 10) stored before routine 4-9: a gap, unexplained while they travel,
    explained where a drop notice covers it."""
    assert [(g.from_seq, g.to_seq, g.explained_by) for g in
            classify([("u", 4, 9)], [])] == [(4, 9, None)]
    assert [(g.from_seq, g.to_seq, g.explained_by) for g in
            classify([("u", 4, 9)], [("u", 4, 5, "buffer_drop")])] == \
        [(4, 5, "buffer_drop"), (6, 9, None)]


# -- through mosquitto and PostgreSQL ----------------------------------------------------------


def test_an_sos_behind_a_backlog_is_stored_first_once_and_receipted(
        broker: LocalBroker, backend_dsn: str, tmp_path: Path) -> None:
    """10,000 routine events queued in the backend's main session while it was away, then
    an SOS: the emergency session stores it while most of the backlog is still queued
    (one FIFO session stored it after all of them); the main session's copy is a
    duplicate; every event is receipted, and no gap is left."""
    n = 10_000
    priv, pub = keypair(tmp_path)
    cfg = write_config(tmp_path / "backend.toml", broker_port=broker.port, dsn=backend_dsn,
                       key_file=priv, batch_latency_ms=20.0)
    backend = BackendProcess(cfg, tmp_path / "backend.log").start()  # both sessions exist
    wait_until(lambda: "emergency session listening" in backend.log_text(), 30,
               "the emergency session subscribed")
    assert backend.stop() == 0
    unit = "unit-e"
    p = publisher(broker.port)
    receipts = ReceiptCollector(broker.port, pub)
    try:
        base = f"{PREFIX}/{unit}"
        for s in range(1, n + 1):
            info = p.publish(f"{base}/event/gate", encode(event(unit, s)), qos=1)
        info.wait_for_publish(60)
        sos = event(unit, n + 1, "sos", lane="emergency", data={
            "zone": "yard", "position": None, "cameras": [], "rssi": -60,
            "battery_mv": 2900})
        p.publish(f"{base}/event/sos", encode(sos), qos=1).wait_for_publish(10)
        backend.start()
        wait_until(lambda: count(backend_dsn, "SELECT count(*) FROM events") == n + 1, 120,
                   "the backlog and the SOS stored")
        wait_until(lambda: receipts.covered(unit) == set(range(1, n + 2)), 60,
                   "every event receipted")
        before = count(backend_dsn, "SELECT count(*) FROM events WHERE kind = 'gate' AND "
                        "received < (SELECT received FROM events WHERE kind = 'sos')")
        assert before < n // 2, f"{before} of {n} routine events were stored before the SOS"
        assert count(backend_dsn, f"SELECT count(*) FROM events WHERE id = '{sos['id']}'") == 1
        assert count(backend_dsn, "SELECT count(*) FROM seq_gaps") == 0
    finally:
        p.disconnect()
        p.loop_stop()
        receipts.stop()
        assert backend.stop() == 0, backend.log_text()[-3000:]
    log = backend.log_text()
    ended = log.rsplit("emergency session ended: ", 1)[1]
    assert ended.startswith("1 messages: 1 events stored"), ended  # the SOS only
    main = log.rsplit("\n", 2)[-2].split("stopped: ", 1)[1]
    assert f"{n + 1} messages: {n} events stored, 1 duplicates" in main, main


def test_receipts_lost_with_the_connection_are_sent_again(
        broker: LocalBroker, backend_dsn: str, tmp_path: Path) -> None:
    """The broker stops answering right after the backend received a batch (its PUBACKs
    and receipts go unanswered), then crashes and comes back: the backend sends that
    receipt again on its new connection (the unit not heard from again: after
    OWED_RECEIPTS_S), not leaving the unit to resend after its receipt_timeout_s."""
    priv, pub = keypair(tmp_path)
    cfg = write_config(tmp_path / "backend.toml", broker_port=broker.port, dsn=backend_dsn,
                       key_file=priv, batch_latency_ms=1500.0,
                       broker={"emergency_session": False})
    backend = BackendProcess(cfg, tmp_path / "backend.log").start()
    receipts = ReceiptCollector(broker.port, pub, persistent=True)
    # A clean restart saves both sessions (persistence), so the collector's outlives the
    # crash below and the receipt sent again is queued for it even before it reconnects.
    broker.restart()
    backend.wait_subscribed()
    wait_until(lambda: receipts.client.is_connected(), 30, "the collector reconnected")
    unit = "unit-r"
    p = publisher(broker.port)
    try:
        for s in range(1, 6):
            p.publish(f"{PREFIX}/{unit}/event/gate", encode(event(unit, s)),
                      qos=1).wait_for_publish(10)
        time.sleep(0.3)  # in the backend's batch, written 1.5 s after the first
        broker.pause()
        wait_until(lambda: count(backend_dsn, "SELECT count(*) FROM events") == 5, 30,
                   "the batch committed")
        time.sleep(0.5)  # its receipt sent, never PUBACKed
        assert receipts.covered(unit) == set()
        assert broker.proc is not None  # a crash while paused (stop() resumes it first)
        broker.proc.send_signal(signal.SIGKILL)
        broker.proc.wait(10)
        broker.start()
        wait_until(lambda: receipts.covered(unit) == set(range(1, 6)), 30,
                   "the receipt sent again after the reconnect")
    finally:
        p.disconnect()
        p.loop_stop()
        receipts.stop()
        assert backend.stop() == 0, backend.log_text()[-3000:]
    assert "sending again the receipts of 1 units lost with an earlier connection" in \
        backend.log_text()
