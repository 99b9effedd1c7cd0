"""Caps, lanes and sessions with a real broker, driving the gateway in-process.

These tests commit events straight through the pipeline's commit step (what
the engine would hand it) so they can make emergency and telemetry events
without the BLE stack; outbox, publisher, paho and mosquitto are all real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import contract
from firmware_sim.broker import LocalBroker
from gateway import config as configmod
from gateway.daemon import Gateway
from gateway.model import Event, Lane
from harness import GatewayProcess, Subscriber, wait_until, write_config


def make_gateway(tmp_path: Path, broker: LocalBroker, **buffer: int) -> Gateway:
    cfg = configmod.parse({
        "unit": {"id": "unit-t1", "site": "s"},
        "broker": {"port": broker.port, "reconnect_max_s": 0.5},
        "buffer": {"path": str(tmp_path / "buf.db"), **buffer},
        "health": {"interval_s": 0.5},
    })
    return Gateway(cfg)


@pytest.fixture
def running(tmp_path: Path, broker: LocalBroker) -> Iterator[tuple[Gateway, Subscriber]]:
    sub = Subscriber(broker.port, client_id="backend-lanes", persistent=True).start()
    gw = make_gateway(tmp_path, broker, max_events=400)
    try:
        yield gw, sub
    finally:
        gw.shutdown()
        sub.stop()


def ev(lane: Lane, i: int) -> Event:
    # Data as the engine would give it: the subscriber checks every message against the schemas.
    kind = {Lane.EMERGENCY: "sos", Lane.ROUTINE: "gate", Lane.TELEMETRY: "clock_step"}[lane]
    data: dict[str, object] = {"step_s": float(i)}
    if kind == "gate":
        data = contract.gate_data()
    elif kind == "sos":
        data = {"zone": "yard", "position": None, "cameras": [], "rssi": -60.0,
                "battery_mv": None}
    return Event(kind=kind, time=1.7e9 + i, lane=lane, reader="r", child=f"c-{i % 7}", data=data)


@pytest.mark.slow
def test_cap_during_outage_drops_only_low_lanes_and_reports_it(
        running: tuple[Gateway, Subscriber], broker: LocalBroker) -> None:
    gw, sub = running
    broker.stop()  # the outage starts before the unit connects
    gw.start()
    lanes = [Lane.EMERGENCY] * 100 + [Lane.ROUTINE] * 600 + [Lane.TELEMETRY] * 400
    for i in range(len(lanes)):  # interleaved (7 is coprime to 1100), as a day would be
        gw.pipeline.commit([ev(lanes[(i * 7) % len(lanes)], i)])
    n = gw.outbox.last_seq()
    assert gw.outbox.drops()["total"] > 0
    assert gw.outbox.depth_by_lane()["emergency"] == 100
    broker.start()
    wait_until(lambda: gw.outbox.depth() == 0, 30, "the buffer to drain")
    wait_until(lambda: len(sub.seq_ids()) >= n - gw.outbox.drops()["total"], 30, "all kept events")
    got = sub.events()
    sos = [e for e in got if e["kind"] == "sos"]
    assert len({e["id"] for e in sos}) == 100  # every emergency event arrived
    notices = [e for e in got if e["kind"] == "buffer_drop"]
    dropped = {s for e in notices for a, b in e["data"]["ranges"] for s in range(a, b + 1)}
    assert all(e["data"]["lane"] in ("telemetry", "routine") for e in notices)
    received = {e["seq"] for e in got}
    assert received | dropped == set(range(1, n + 1))  # every gap is explained
    assert not received & dropped
    wait_until(lambda: any(h["buffer"]["depth"] == 0 for h in sub.on("/health")), 10,
               "a health message after the drain")
    health = [h for h in sub.on("/health") if h["buffer"]["depth"] == 0][-1]
    assert health["buffer"]["dropped"]["total"] == len(dropped) == sum(
        e["data"]["count"] for e in notices)
    assert sub.violations == []


@pytest.mark.slow
def test_emergency_and_live_events_overtake_a_backlog(
        running: tuple[Gateway, Subscriber], broker: LocalBroker, tmp_path: Path) -> None:
    gw, sub = running
    gw.outbox.max_events = 1_000_000
    acked: list[int] = []  # the order the broker acknowledged events in
    gw.publisher.on_acked = acked.extend
    broker.stop()
    gw.start()
    for i in range(0, 5_000, 500):  # a backlog several times the 1,000 we wait for
        gw.pipeline.commit([ev(Lane.ROUTINE, i + k) for k in range(500)])
    backlog = gw.outbox.last_seq()
    broker.start()
    wait_until(lambda: len(acked) >= 1000, 30, "the backlog to start draining")
    p = gw.publisher
    gw.pipeline.commit([ev(Lane.EMERGENCY, 1), ev(Lane.ROUTINE, 2)])
    # Events handed to the broker by the time the commit returned (the publisher keeps
    # sending during the durable commit itself, however long its fsync takes).
    sent_at_commit = p.sent
    sos_seq, live_seq = backlog + 1, backlog + 2
    wait_until(lambda: sos_seq in acked and live_seq in acked, 30, "the SOS and the live event")
    wait_until(lambda: live_seq in sub.seq_ids(), 30, "the SOS and the live event at the backend")
    # The broker forwards in publish order, so the backend's order is the unit's. Ahead of
    # the SOS: only what was already sent, plus what a publisher turn running as the
    # commit returned may still add (a live and a backlog batch). Ack order is not used here:
    # acks are reported a flush at a time, sorted, which blurs the order.
    order = [e["seq"] for e in sub.events()]
    assert order.index(sos_seq) <= sent_at_commit + 2 * p.batch
    # The live event goes out in the turn after the SOS, behind at most one backlog batch.
    assert order.index(live_seq) <= sent_at_commit + 3 * p.batch + 1
    wait_until(lambda: len(sub.seq_ids()) >= backlog + 2, 60, "the whole backlog at the backend")
    assert acked.index(sos_seq) < backlog - 1000  # long before the backlog was done
    order = [e["seq"] for e in sub.events()]
    routine = [s for s in order if s <= backlog]
    assert routine == sorted(routine)  # order kept within the lane's backlog
    assert order.index(sos_seq) < max(i for i, s in enumerate(order) if s <= backlog)


def test_commands_queued_while_offline_arrive(tmp_path: Path, broker: LocalBroker) -> None:
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "b.db",
                       readers=[], tags=[])
    log = tmp_path / "gw.log"
    gw = GatewayProcess(cfg, log).start()
    gw.wait_log("connected (MQTT 5)")
    time.sleep(0.5)  # SUBACK for cmd/#: the broker now keeps the session's subscription
    gw.stop()
    backend = Subscriber(broker.port, topic="nothing/#", client_id="backend-cmd").start()
    backend.client.publish("kidsafe/v1/unit-t1/cmd/locate", b'{"child": "c-1"}', qos=1)
    time.sleep(0.5)
    backend.stop()
    gw = GatewayProcess(cfg, log).start()
    try:
        gw.wait_log("command cmd/locate received", timeout=15)
    finally:
        gw.stop()


def test_the_publisher_works_with_descriptors_above_1023(
        running: tuple[Gateway, Subscriber], broker: LocalBroker) -> None:
    """select() cannot watch a descriptor numbered above FD_SETSIZE (1024): a daemon with
    many open files (or many units in one process, docs/fleet.md) must still deliver."""
    import gc
    import os
    import resource
    gw, sub = running
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    gc.collect()  # a socket an earlier test dropped would close later and leave a hole
    pads = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        # Every number below 1024 is taken: the publisher's socket will be above it.
        # (lexists: the link of a socket or pipe leads nowhere.)
        for _ in range(10):
            holes = [n for n in range(1024) if not os.path.lexists(f"/proc/self/fd/{n}")]
            if not holes:
                break
            pads += [os.open(os.devnull, os.O_RDONLY) for _ in holes]
        assert not holes, holes
        gw.start()
        gw.pipeline.commit([ev(Lane.EMERGENCY, 1), ev(Lane.ROUTINE, 2)])
        wait_until(lambda: len(sub.seq_ids()) >= 2, 30, "both events at the backend")
    finally:
        for fd in pads:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
