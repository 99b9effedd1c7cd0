"""A fleet through a three-node RabbitMQ cluster with a node killed (issue 14).

50 simulated units (the gateway's own outbox and publisher, in receipt mode) spread over
the three nodes, the reference backend on node 3 storing into PostgreSQL and receipting.
Node 1 is SIGKILLed mid-run and restarted 10 s later. Every committed event must be in
PostgreSQL exactly once, the SOS events pressed while the node was down must be stored
while it was down (the killed node's units through their standby connection on the next
node), and every unit must be back online and delivering.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import pytest

from fleet import traffic
from fleet.cluster import Cluster
from fleet.generator import Fleet
from fleet.stack import BackendProc, keypair, query, stored_count, stored_seqs
from fleet.traffic import Mix
from fleet.unit import SimUnit
from gateway.contract import event_payload, iso_utc
from rabbit import need_rabbit, rabbit_cluster  # noqa: F401 - the fixture

UNITS = 50


def test_traffic_matches_the_contract() -> None:
    """Every kind of event the fleet decides passes the contract's event schema."""
    import random

    from contract import violations

    rng = random.Random(3)
    now = time.time()
    for unit in range(6):
        kind = traffic.site_kind(unit)
        evs = [traffic.event(rng, Mix(battery_share=0.3), kind, unit, now) for _ in range(200)]
        evs.append(traffic.sos(rng, unit, now))
        for seq, ev in enumerate(evs, 1):
            payload = event_payload(ev, seq, "0c1f3d2e-7a4b-4c5d-8e9f-0a1b2c3d4e5f", f"u{unit}",
                                    "site", iso_utc(now))
            assert violations(f"kidsafe/v1/u{unit}/event/{ev.kind}", payload) == [], payload


def test_unit_health_matches_the_contract(tmp_path: Path) -> None:
    from contract import violations

    u = SimUnit(0, "u00000", "gate-0000", [1], str(tmp_path / "u.db"))
    try:
        body = json.dumps(u.health()).encode()
        assert violations("kidsafe/v1/u00000/health", body) == []
    finally:
        u.close()


@pytest.mark.slow
@pytest.mark.timeout(170)
def test_fleet_survives_a_node_kill(rabbit_cluster: Cluster,  # noqa: F811
                                    backend_dsn: str, tmp_path: Path) -> None:
    logging.getLogger("gateway").setLevel(logging.CRITICAL)
    cluster = rabbit_cluster
    priv, pub = keypair(tmp_path / "keys")
    backend = BackendProc(tmp_path / "backend", cluster.mqtt_port(3), backend_dsn, priv)
    backend.start()
    fleet = Fleet(UNITS, cluster.mqtt_ports, tmp_path / "units", mix=Mix(rate=1.0), seed=7,
                  extra={"delivery": {"mode": "receipt", "receipt_timeout_s": 20},
                         "commands": {"public_keys": [str(pub)]}}, standby=True)
    try:
        fleet.start()
        assert fleet.wait(lambda: fleet.online() == UNITS, 60), f"{fleet.online()} online"
        # ... and every standby too: under load (the whole suite on two cores) some were
        # still waiting for their CONNACK at the kill, and the mains carried their SOS.
        assert fleet.wait(lambda: all(u.publisher.standby is not None
                                      and u.publisher.standby.connected.is_set()
                                      for u in fleet.units), 60), "standbys not connected"
        fleet.start_traffic(30, sos_every_s=0.5)
        time.sleep(8)
        killed_at = time.time()
        cluster.kill(1)
        fleet.mark(killed_at)
        # An SOS at each of the killed node's units at once: decided while their main
        # connection is down, it goes on their standby connection (the next node).
        fleet.sos([u for u in fleet.units if u.index % 3 == 0])
        time.sleep(10)
        restarted_at = time.time()
        sos_while_down = fleet.stats.sos_committed
        cluster.restart(1)
        fleet.join_traffic()
        assert fleet.wait(lambda: fleet.depth() == 0 and
                          stored_count(backend_dsn) >= fleet.stats.committed, 60, 0.5), (
            f"buffers hold {fleet.depth()}, {stored_count(backend_dsn)} of "
            f"{fleet.stats.committed} stored; backend log: {backend.log_text()[-2000:]}")

        stored = stored_seqs(backend_dsn)
        for u in fleet.units:
            have = stored.get(u.id, [])
            assert len(have) == len(set(have)), f"{u.id}: a seq stored twice"
            assert set(have) == fleet.committed_ids[u.id], (
                f"{u.id}: missing {sorted(fleet.committed_ids[u.id] - set(have))[:10]}, "
                f"extra {sorted(set(have) - fleet.committed_ids[u.id])[:10]}")
        assert sum(len(v) for v in stored.values()) == fleet.stats.committed

        # SOS pressed while node 1 was down (after the units had moved) were stored then.
        rows = query(backend_dsn, "SELECT recorded, received FROM events WHERE kind = 'sos'")
        down = [(r, s) for r, s in rows
                if killed_at + 3 < r.timestamp() < restarted_at - 1]
        assert sos_while_down > 0 and len(down) >= 8, (len(down), sos_while_down)
        late = [(r, s) for r, s in down if s.timestamp() > restarted_at]
        assert not late, f"SOS stored only after the restart: {late[:3]}"
        assert all(isinstance(r, datetime) for r, _ in down)
        # The killed node's units sent SOS on their standby connection, and receipts on it
        # deleted them. Not all, nor a set share: a main back first (often within a second
        # of the kill) takes over what is left, and how many mains beat their standby
        # depends on the machine's load (2 and 6 of 17 standbys in two full-suite runs).
        standbys = [u.publisher.standby for u in fleet.units if u.index % 3 == 0]
        assert sum(s.sent for s in standbys if s is not None) >= 1
        assert sum(s.deleted for s in standbys if s is not None) > 0

        assert fleet.wait(lambda: fleet.online() == UNITS, 30), f"{fleet.online()} online"
        assert len(fleet.back) == UNITS, (
            f"units not delivering after the kill: "
            f"{sorted({u.id for u in fleet.units} - set(fleet.back))[:10]}")
    finally:
        fleet.close()
        backend.stop()


@pytest.mark.slow
def test_a_blank_node_whose_port_another_process_took_moves(tmp_path: Path) -> None:
    """A free port picked for node 1 is taken by another process before the node binds it
    (seen in a full-suite run: the node died with eaddrinuse, and the other process's
    accepting port passed for the node's, so nodes 2 and 3 came up without it)."""
    import socket

    need_rabbit()
    cluster = Cluster(tmp_path / "rabbit")
    taken = cluster.mqtt_port(1)
    thief = socket.create_server(("127.0.0.1", taken))  # accepts, as a stranger would
    try:
        cluster.start()
        try:
            assert cluster.mqtt_port(1) != taken
            assert len(cluster.members()) == 3
        finally:
            cluster.stop()
    finally:
        thief.close()
