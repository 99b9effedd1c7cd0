"""A CONNECT that is never answered costs the publisher 5 s, not its whole CONNACK
timeout: after a node of a RabbitMQ 3.10 cluster dies, a CONNECT sent to a surviving
node in the next second is sometimes never answered while the next one is at once
(docs/fleet.md, "A CONNECT never answered"). Real mosquitto behind a proxy that mutes
the first connection(s); a lost connection is tried again after a pause."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from fleet.unit import unit_config
from gateway import backoff
from gateway.clock import SystemClock
from gateway.outbox import Outbox
from gateway.publisher import CONNACK_FIRST_S, Publisher
from harness import driver_running, wait_until
from tcpproxy import Proxy


@contextlib.contextmanager
def running_publisher(tmp_path: Path, proxy: Proxy, unit: str) -> Iterator[Publisher]:
    """The gateway's publisher for ``unit``, connecting through ``proxy``, in its own
    thread until the block ends (then stopped, the proxy cut, the buffer closed)."""
    cfg = unit_config(unit, "gate-0001", proxy.port, str(tmp_path / "buf.db"),
                      {"broker": {"reconnect_max_s": 0.5, "protocol": "3.1.1"}})
    outbox = Outbox(cfg.buffer.path, unit, "gate-0001", reserve_mb=0)
    pub = Publisher(cfg, outbox, SystemClock())
    try:
        with driver_running(pub):  # its run(stop) on a thread, as the daemon does
            yield pub
    finally:
        proxy.cut()
        outbox.close()


def test_the_wait_doubles_from_the_first_to_the_cap() -> None:
    waits = [backoff.doubling(a, 5.0, 10.0) for a in range(6)]
    assert waits == [5.0, 10.0, 10.0, 10.0, 10.0, 10.0]
    assert backoff.doubling(0, 5.0, 1.0) == 1.0  # a cap below the first wait wins


@pytest.mark.parametrize("muted", [1, 2])
def test_an_unanswered_connect_is_given_up_early_and_tried_again(
        tmp_path: Path, broker: LocalBroker, caplog: pytest.LogCaptureFixture,
        muted: int) -> None:
    proxy = Proxy(broker.port, mute_first=muted).restore()
    caplog.set_level(logging.WARNING, logger="gateway.mqtt")
    with running_publisher(tmp_path, proxy, "unit-c1") as pub:
        wait_until(lambda: pub.connects == 1, 30, "connected through the proxy")
        assert proxy.accepted == muted + 1  # the muted CONNECTs, then the answered one
        gave_up = [r.getMessage() for r in caplog.records
                   if "no answer to CONNECT" in r.getMessage()]
        # Each unanswered CONNECT waited twice as long as the one before, from CONNACK_FIRST_S.
        firsts = [backoff.doubling(a, CONNACK_FIRST_S, pub.connack_timeout_s)
                  for a in range(muted)]
        assert len(gave_up) == muted, gave_up
        for msg, wait in zip(gave_up, firsts, strict=True):
            assert f"no answer to CONNECT in {wait:g} s" in msg


def test_a_lost_connection_is_tried_again_after_a_pause(
        tmp_path: Path, broker: LocalBroker) -> None:
    """Not at once: a CONNECT in the second after a cluster node's death may never be read
    (gateway/backoff.py, after_loss)."""
    proxy = Proxy(broker.port).restore()
    with running_publisher(tmp_path, proxy, "unit-c2") as pub:
        wait_until(lambda: pub.connects == 1, 30, "connected through the proxy")
        cut_at = time.monotonic()
        proxy.cut()
        proxy.restore()  # the broker is back at once: only the pause delays the reconnect
        wait_until(lambda: proxy.accepted == 2, 15, "the reconnect's TCP connection")
        took = time.monotonic() - cut_at
        assert took >= backoff.RECONNECT_AFTER_LOSS_S
        assert took < backoff.RECONNECT_AFTER_LOSS_S + backoff.RECONNECT_JITTER_S + 5.0
        wait_until(lambda: pub.connects == 2, 30, "connected again")


def test_the_pause_after_a_loss_is_jittered_within_its_bounds() -> None:
    lo, hi = backoff.after_loss(lambda: 0.0), backoff.after_loss(lambda: 0.999999)
    assert lo == backoff.RECONNECT_AFTER_LOSS_S
    assert lo < hi < backoff.RECONNECT_AFTER_LOSS_S + backoff.RECONNECT_JITTER_S
