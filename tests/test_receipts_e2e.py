"""Receipt mode end to end (issue 13): real mosquitto, real gatewayd, signed receipts.

The backend here is tests/receipter.py, a small test-side stand-in that stores events
in memory by id and signs receipts with a test key. The reference backend
(``backend/``, PostgreSQL) replaces it in the full fault test of the issue: the
places that must switch are marked ``REAL BACKEND``.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import signing
from gateway.outbox import Outbox
from harness import GatewayProcess, Subscriber, gatewayd, wait_until, write_config
from receipter import Receipter, runs, signed_receipt

TAGS = [f"{0xB0_0000_0000 + i:010X}" for i in range(1000)]
UNIT = "unit-r1"


def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    priv, pub = tmp_path / "backend.key", tmp_path / "backend.pub"
    signing.generate_keypair(priv, pub)
    return signing.load_private_key(priv), pub


def receipt_config(tmp_path: Path, broker: LocalBroker, reader: VirtualSerial, pub: Path,
                   timeout_s: float = 60.0) -> Path:
    extra = (f'[commands]\npublic_keys = ["{pub}"]\n\n'
             f'[delivery]\nmode = "receipt"\nreceipt_timeout_s = {timeout_s}\n')
    return write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db", unit=UNIT,
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": reader.path,
                  "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3}],
        tags=[{"id": t, "child": f"c-{i}"} for i, t in enumerate(TAGS)],
        broker_extra={"reconnect_max_s": 0.5}, gate_window_s=0.2, extra=extra)


def depth(db: Path) -> int:
    with Outbox.saved(str(db)) as saved:
        return saved.depth()


def last_seq(db: Path) -> int:
    with Outbox.saved(str(db)) as saved:
        return saved.last_seq()


def settled_last_seq(db: Path, quiet_s: float = 2.0, timeout: float = 60) -> int:
    """The buffer's last seq once no event was committed for ``quiet_s``."""
    deadline = time.monotonic() + timeout
    n = last_seq(db)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = last_seq(db)
        if now == n:
            return n
        n = now
    raise AssertionError("events kept being committed")


def flood(reader: VirtualSerial, count: int, rate: float) -> threading.Thread:
    t = threading.Thread(target=lambda: Rdm6300Sim(reader).flood(TAGS, count, rate,
                                                                 lossless=True), daemon=True)
    t.start()
    return t


def committed(db: Path, n: int, timeout: float = 30) -> None:
    """Wait until the daemon committed ``n`` events, and no more come."""
    wait_until(lambda: last_seq(db) >= n, timeout, f"{n} events committed")


def status(cfg: Path) -> dict[str, Any]:
    r = gatewayd("status", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def assert_exactly_once(rc: Receipter, n: int) -> None:
    got = rc.seqs()
    missing = sorted(set(range(1, n + 1)) - set(got))
    assert not missing, f"{len(missing)} seqs never stored, first {missing[:10]}"
    assert all(len(ids) == 1 for ids in got.values()), "a seq stored under two ids"
    assert rc.count() == n  # each event once, by id


def test_receipt_mode_delivers_and_empties_the_buffer(tmp_path: Path, broker: LocalBroker,
                                                      reader: VirtualSerial) -> None:
    key, pub = keys(tmp_path)
    cfg = receipt_config(tmp_path, broker, reader, pub)
    db = tmp_path / "buf.db"
    sub = Subscriber(broker.port, client_id="contract-check").start()  # schemas checked
    rc = Receipter(broker.port, key).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        flood(reader, 300, 300).join(30)
        committed(db, 300)
        rc.wait_count(300, 30)
        wait_until(lambda: depth(db) == 0, 30, "the buffer emptied by receipts")
        assert_exactly_once(rc, 300)
        doc = status(cfg)
        assert doc["buffer"]["awaiting_receipt"] == 0 and doc["mqtt"]["receipts"] > 0
        assert doc["mqtt"]["acked"] == 300 and doc["mqtt"]["receipts_refused"] == 0
        wait_until(lambda: bool(sub.on("/health")), 10, "a health message")
        assert all(isinstance(h["buffer"]["awaiting_receipt"], int) for h in sub.on("/health"))
        assert "Traceback" not in gw.log_text()
    finally:
        gw.stop()
        rc.stop()
        sub.stop()


def test_events_await_their_receipt_and_forged_receipts_delete_nothing(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    key, pub = keys(tmp_path)
    cfg = receipt_config(tmp_path, broker, reader, pub)
    db = tmp_path / "buf.db"
    rc = Receipter(broker.port, key)
    rc.receipting = False  # stores, does not receipt (yet)
    rc.start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-main: online")  # reads before it are lost
        gw.wait_log("connected (MQTT")
        flood(reader, 40, 200).join(30)
        committed(db, 40)
        rc.wait_count(40, 30)
        wait_until(lambda: status(cfg)["buffer"]["awaiting_receipt"] == 40, 15,
                   "40 events awaiting their receipt")
        assert depth(db) == 40  # the broker has them: not enough in receipt mode
        other = Ed25519PrivateKey.generate()
        forged = [
            signed_receipt(other, UNIT, [[1, 1000]]),  # a key the unit does not trust
            signed_receipt(key, "unit-other", [[1, 1000]]),  # another unit's receipt
            json.dumps({"unit": UNIT, "ranges": [[1, 1000]], "time": "2026-12-01T00:00:00Z"}
                       ).encode(),  # unsigned
            signing.sign(json.dumps({"unit": UNIT, "ranges": [[1, 40]],
                                     "time": "2026-12-01T00:00:00Z"}).encode(), key,
                         signing.TYP_COMMAND),  # signed for another use
            signed_receipt(key, UNIT, [[1, 40]], extra_field=1),  # not the contract
            signed_receipt(key, UNIT, [[40, 1]]),  # a range the wrong way round
        ]
        for token in forged:
            rc.send(UNIT, token)
        wait_until(lambda: status(cfg)["mqtt"]["receipts_refused"] == len(forged), 15,
                   "the forged receipts refused")
        assert depth(db) == 40 and status(cfg)["buffer"]["awaiting_receipt"] == 40
        assert gw.log_text().count("receipt refused") == 1  # one line a minute, counted
        # Not resent on this connection while awaiting (the timeout is 60 s).
        assert max(rc.deliveries.values()) == 1
        rc.send(UNIT, signed_receipt(key, UNIT, runs(list(range(1, 31))), upto=None))
        wait_until(lambda: depth(db) == 10, 15, "30 receipted events deleted")
        rc.send(UNIT, signed_receipt(key, UNIT, [], upto=40))
        wait_until(lambda: depth(db) == 0, 15, "the rest deleted by the watermark")
    finally:
        gw.stop()
        rc.stop()


def test_a_restart_sends_every_unreceipted_event_again(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    key, pub = keys(tmp_path)
    cfg = receipt_config(tmp_path, broker, reader, pub)
    db = tmp_path / "buf.db"
    log = tmp_path / "gateway.log"
    rc = Receipter(broker.port, key)
    rc.receipting = False
    rc.start()
    gw = GatewayProcess(cfg, log).start()
    try:
        gw.wait_log("reader gate-main: online")  # reads before it are lost
        gw.wait_log("connected (MQTT")
        flood(reader, 50, 200).join(30)
        committed(db, 50)
        rc.wait_count(50, 30)
        gw.kill(signal.SIGKILL)  # the awaiting marks were in memory only: all goes again
        gw = GatewayProcess(cfg, log).start()
        wait_until(lambda: all(rc.deliveries.get(s, 0) >= 2 for s in range(1, 51)), 30,
                   "every un-receipted event sent again after the restart")
        assert depth(db) == 50
        rc.receipting = True
        wait_until(lambda: depth(db) == 0, 30, "the buffer emptied by receipts")
        assert_exactly_once(rc, 50)
    finally:
        gw.stop()
        rc.stop()


def test_an_event_the_backend_lost_goes_again_after_the_receipt_timeout(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    key, pub = keys(tmp_path)
    cfg = receipt_config(tmp_path, broker, reader, pub, timeout_s=1.0)
    db = tmp_path / "buf.db"
    rc = Receipter(broker.port, key, drop_first=set(range(1, 21))).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-main: online")  # reads before it are lost
        gw.wait_log("connected (MQTT")
        t0 = time.monotonic()
        flood(reader, 20, 200).join(30)
        committed(db, 20)
        wait_until(lambda: depth(db) == 0, 30, "the lost events sent again and receipted")
        assert time.monotonic() - t0 >= 1.0
        assert all(rc.deliveries[s] >= 2 for s in range(1, 21))
        assert_exactly_once(rc, 20)
        assert gw.log_text().count("connected (MQTT") == 1  # on the same connection
    finally:
        gw.stop()
        rc.stop()


@pytest.mark.slow
def test_broker_sigkilled_20_times_every_event_stored_once_and_the_buffer_empty(
        tmp_path: Path, reader: VirtualSerial) -> None:
    """Issue 13's fault test, against the test receipter: mosquitto without persistence
    SIGKILLed 10 times while the backend consumes and 10 times while it is offline.

    REAL BACKEND: replace Receipter by the reference backend (kidsafe-backend on a
    throw-away PostgreSQL) and count ``SELECT id FROM events`` instead of rc.seqs().
    """
    broker = LocalBroker(str(tmp_path / "broker"), persistence=False).start()
    key, pub = keys(tmp_path)
    cfg = receipt_config(tmp_path, broker, reader, pub, timeout_s=2.0)
    db = tmp_path / "buf.db"
    log = tmp_path / "gateway.log"
    rc = Receipter(broker.port, key).start()  # REAL BACKEND: start kidsafe-backend here
    gw = GatewayProcess(cfg, log).start()

    def connects() -> int:
        return gw.log_text().count("connected (MQTT")

    def kill_broker() -> None:
        n = connects()
        broker.stop(signal.SIGKILL)  # persistence off: what it held is gone
        broker.start()
        wait_until(lambda: connects() > n, 30, "the gateway to reconnect")

    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        source = flood(reader, 3000, 150)
        for _ in range(10):  # the backend consuming
            seen = rc.count()
            wait_until(lambda: rc.count() >= seen + 30, 30, "events stored")  # noqa: B023
            kill_broker()
        rc.stop()  # REAL BACKEND: SIGTERM kidsafe-backend (its session stays at the broker)
        for _ in range(10):  # the backend offline: the broker's queue for it dies each time
            time.sleep(0.4)
            kill_broker()
        rc.start()  # REAL BACKEND: start kidsafe-backend again
        source.join(60)
        n = settled_last_seq(db)  # the pipeline may still be deciding the last reads
        assert n >= 2900  # the flood was decided (gate_window_s may merge a few reads)
        wait_until(lambda: depth(db) == 0, 120, "every event receipted")
        # The kills did lose deliveries (the broker's queue for the offline backend): they
        # came again, and were stored once.
        assert sum(rc.deliveries.values()) > n
        assert_exactly_once(rc, n)
        assert "Traceback" not in gw.log_text()
    finally:
        gw.stop()
        rc.stop()
        broker.stop()
