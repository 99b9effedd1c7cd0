"""The standby connection with real parts: a real mosquitto, the gateway's own Publisher
and Outbox, a test backend that stores and signs receipts (tests/receipter.py), and the
main connection through a loopback TCP proxy the test controls (tests/tcpproxy.py):
closing the proxy drops the main connection only (its node "died"); the standby goes to
the broker directly.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_sim.broker import LocalBroker, free_port
from fleet import traffic
from fleet.traffic import Mix
from fleet.unit import unit_config
from gateway import signing
from gateway.clock import SystemClock
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from harness import wait_until
from receipter import Receipter
from tcpproxy import Proxy

UNIT = "unit-s1"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    priv, pub = tmp_path / "backend.key", tmp_path / "backend.pub"
    signing.generate_keypair(priv, pub)
    return signing.load_private_key(priv), pub


@pytest.fixture
def proxy(broker: LocalBroker) -> Iterator[Proxy]:
    p = Proxy(broker.port).restore()
    yield p
    p.cut()


class Unit:
    """A unit: its buffer and the gateway's publisher (receipt mode), in this process."""

    def __init__(self, tmp_path: Path, main_port: int, standby_port: int, pub: Path,
                 mode: str = "receipt") -> None:
        cfg = unit_config(UNIT, "gate-0001", main_port, str(tmp_path / "buf.db"), {
            "broker": {"standby_host": "127.0.0.1", "standby_port": standby_port,
                       "reconnect_max_s": 0.5, "protocol": "3.1.1"},
            "delivery": {"mode": mode, "receipt_timeout_s": 30},
            "commands": {"public_keys": [str(pub)]}})
        self.outbox = Outbox(cfg.buffer.path, UNIT, "gate-0001", reserve_mb=0)
        self.deleted: dict[int, float] = {}  # seq -> when its delete was decided
        self.publisher = Publisher(cfg, self.outbox, SystemClock(), on_acked=self._acked)
        self.rng = random.Random(5)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.publisher.run, args=(self.stop,),
                                       daemon=True)

    def _acked(self, seqs: list[int]) -> None:
        now = time.monotonic()
        for s in seqs:
            self.deleted.setdefault(s, now)

    def start(self) -> Unit:
        self.thread.start()
        return self

    def close(self) -> float:
        """Stop the publisher (and its standby); seconds the stop took."""
        if self.stop.is_set():
            return 0.0
        t0 = time.monotonic()
        self.stop.set()
        self.publisher.notify()
        self.thread.join(10)
        took = time.monotonic() - t0
        self.outbox.close()
        return took

    def commit(self, sos: bool) -> tuple[int, float]:
        now = time.time()
        ev = (traffic.sos(self.rng, 1, now) if sos
              else traffic.event(self.rng, Mix(), "gate", 1, now))
        (stored,) = self.outbox.add([ev], now)
        self.publisher.notify()
        return stored.seq, time.monotonic()


@pytest.mark.timeout(60)
def test_an_sos_while_the_main_is_down_goes_on_the_standby_and_its_receipt_deletes_it(
        tmp_path: Path, broker: LocalBroker, proxy: Proxy,
        keys: tuple[Ed25519PrivateKey, Path]) -> None:
    rc = Receipter(broker.port, keys[0]).start()
    u = Unit(tmp_path, proxy.port, broker.port, keys[1]).start()
    try:
        standby = u.publisher.standby
        assert standby is not None
        wait_until(lambda: u.publisher.online and standby.connected.is_set(), 10, "connected")
        first, _ = u.commit(sos=True)  # main up: it goes on the main only
        wait_until(lambda: first in u.deleted, 10, "the first SOS receipted")
        assert standby.sent == 0

        proxy.cut()  # the main's "node" dies; the standby's broker lives
        wait_until(lambda: not u.publisher.online, 5, "the main connection lost")
        sos, t0 = u.commit(sos=True)
        routine, _ = u.commit(sos=False)
        wait_until(lambda: sos in u.deleted, 5, "the SOS receipted through the standby")
        assert u.deleted[sos] - t0 < 1.5, f"{u.deleted[sos] - t0:.2f} s"
        assert not u.publisher.online  # the main is still down: the standby carried it
        assert standby.sent >= 1 and standby.deleted >= 1 and standby.receipts >= 1
        assert routine not in u.deleted  # the routine lane waits for the main
        assert u.outbox.depth() == 1

        proxy.restore()  # the main reconnects and delivers the rest
        wait_until(lambda: u.outbox.depth() == 0, 20, "the buffer emptied by the main")
        with rc.lock:
            stored = {int(b["seq"]) for b in rc.stored.values()}
        assert stored == {first, sos, routine}
        assert set(u.deleted) == {first, sos, routine}
        # Back on the main, the standby drops its receipt subscription, sends nothing more.
        sent = standby.sent
        wait_until(lambda: not standby.core.subscribed, 5, "the standby unsubscribed")
        last, _ = u.commit(sos=True)
        wait_until(lambda: last in u.deleted, 10, "an SOS on the main again")
        assert standby.sent == sent
        assert u.close() < 3.0  # the standby, asleep while the main is up, is woken to stop
    finally:
        u.close()
        rc.stop()


@pytest.mark.timeout(60)
def test_broker_mode_a_standby_puback_deletes_and_the_main_resends_nothing_lost(
        tmp_path: Path, broker: LocalBroker, proxy: Proxy,
        keys: tuple[Ed25519PrivateKey, Path]) -> None:
    rc = Receipter(broker.port, keys[0]).start()
    rc.receipting = False  # broker mode: the PUBACK is the end of the unit's duty
    u = Unit(tmp_path, proxy.port, broker.port, keys[1], mode="broker").start()
    try:
        standby = u.publisher.standby
        assert standby is not None
        wait_until(lambda: u.publisher.online and standby.connected.is_set(), 10, "connected")
        proxy.cut()
        wait_until(lambda: not u.publisher.online, 5, "the main connection lost")
        seqs = [u.commit(sos=True)[0] for _ in range(5)] + [u.commit(sos=False)[0]]
        wait_until(lambda: all(s in u.deleted for s in seqs[:5]), 5, "PUBACKed on the standby")
        assert u.outbox.depth() == 1 and not u.publisher.online
        proxy.restore()
        wait_until(lambda: u.outbox.depth() == 0, 20, "the main delivers the routine event")
        wait_until(lambda: len(rc.stored) == 6, 5, "every event at the backend")
    finally:
        u.close()
        rc.stop()


@pytest.mark.timeout(60)
def test_a_standby_broker_that_is_down_does_not_disturb_the_main(
        tmp_path: Path, broker: LocalBroker, keys: tuple[Ed25519PrivateKey, Path]) -> None:
    rc = Receipter(broker.port, keys[0]).start()
    u = Unit(tmp_path, broker.port, free_port(), keys[1]).start()  # nothing listens there
    try:
        standby = u.publisher.standby
        assert standby is not None
        wait_until(lambda: u.publisher.online, 10, "the main connected")
        done = []
        for i in range(10):
            seq, t0 = u.commit(sos=i % 2 == 0)
            wait_until(lambda: seq in u.deleted, 5, "receipted on the main")  # noqa: B023
            done.append(u.deleted[seq] - t0)
        assert max(done) < 1.0, done
        assert not standby.connected.is_set() and standby.sent == 0
        assert u.outbox.depth() == 0
    finally:
        u.close()
        rc.stop()
