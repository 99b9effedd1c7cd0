"""The JSON Schemas of docs/schemas/ against what the code builds (and against garbage)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import contract
from gateway import config as configmod
from gateway import contract as gwcontract
from gateway import status
from gateway.contract import iso_utc
from gateway.daemon import Gateway
from gateway.model import Event, Lane
from gateway.outbox import Outbox


@pytest.mark.parametrize("name", ["event", "status", "birth", "health"])
def test_schemas_are_valid_json_schema(name: str) -> None:
    contract.validator(name)  # raises on a broken schema


def test_event_payloads_validate_and_garbage_does_not(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u-1", "site", max_events=3)
    stored = ob.add([Event("gate", 1.7e9, Lane.ROUTINE, "r1", "c-1", contract.gate_data())
                     for _ in range(5)])
    for s in stored:
        assert contract.violations(f"kidsafe/v1/u-1/{s.topic}", s.payload) == []
    notices = [r for r in ob.fetch(int(Lane.ROUTINE), 0, 100) if r.topic == "event/buffer_drop"]
    assert notices
    for n in notices:
        assert contract.violations(f"kidsafe/v1/u-1/{n.topic}", n.payload) == []
    body = json.loads(stored[0].payload)
    for broken in ({**body, "seq": 0}, {**body, "time": "yesterday"},
                   {**body, "data": {**body["data"], "direction": "sideways"}},
                   {**body, "data": {"direction": None}},  # the gate's fields are required
                   {**body, "data": {**body["data"], "extra": 1}},
                   {**body, "kind": "no_such_kind"},
                   {**body, "time": "2026-13-01T00:00:00.000Z"},  # only format catches it
                   {k: v for k, v in body.items() if k != "id"}):
        assert contract.violations("kidsafe/v1/u-1/event/gate", json.dumps(broken).encode())
    assert contract.violations("kidsafe/v1/u-1/event/gate", b"\xff not json")


def test_zone_events_carry_their_decision_time(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u-1", "site")
    data = {"zone": "yard", "rssi": -70.0, "dwell_s": 5.0, "decided": iso_utc(1.7e9 + 40)}
    (stored,) = ob.add([Event("zone_enter", 1.7e9, Lane.ROUTINE, "r1", "c-1", data)])
    assert contract.violations(f"kidsafe/v1/u-1/{stored.topic}", stored.payload) == []
    body = json.loads(stored.payload)
    for bad in ({k: v for k, v in data.items() if k != "decided"}, {**data, "decided": 1.7e9}):
        assert contract.violations("kidsafe/v1/u-1/event/zone_enter",
                                   json.dumps({**body, "data": bad}).encode())


def test_status_birth_and_health_validate(tmp_path: Path) -> None:
    for online, t, reason in ((True, iso_utc(1.7e9), "connected"),
                              (False, None, "connection-lost"),
                              (False, iso_utc(1.7e9), "shutdown")):
        body = gwcontract.status_payload("u-1", online, t, reason)
        assert contract.violations("kidsafe/v1/u-1/status", json.dumps(body).encode()) == []
    birth = gwcontract.birth_payload("u-1", "s", "v1", 7, iso_utc(1.7e9), "5")
    assert contract.violations("kidsafe/v1/u-1/birth", json.dumps(birth).encode()) == []
    cfg = configmod.parse({
        "unit": {"id": "u-1", "site": "s"}, "broker": {"port": 1},
        "buffer": {"path": str(tmp_path / "b.db")},
        "readers": [{"id": "g", "kind": "rdm6300", "port": "/dev/null"}],
    })
    gw = Gateway(cfg)
    health = gw.health()
    assert contract.violations("kidsafe/v1/u-1/health", json.dumps(health).encode()) == []
    assert "standby" not in health["mqtt"]  # only with [broker] standby_host
    gw.outbox.close()
    # With a standby connection (not started here): its state in health and in status.
    cfg = configmod.parse({
        "unit": {"id": "u-1", "site": "s"},
        "broker": {"port": 1, "standby_host": "127.0.0.2", "standby_port": 2},
        "buffer": {"path": str(tmp_path / "b2.db")},
        "readers": [{"id": "g", "kind": "rdm6300", "port": "/dev/null"}],
    })
    gw = Gateway(cfg)
    health = gw.health()
    assert contract.violations("kidsafe/v1/u-1/health", json.dumps(health).encode()) == []
    assert health["mqtt"]["standby"] == {"address": "127.0.0.2:2", "connected": False,
                                         "connects": 0, "sent": 0, "deleted": 0}
    lines = status.render({**health, "broker": {"address": "127.0.0.1:1"}}, cfg)
    assert any(ln.startswith("standby   127.0.0.2:2 NOT CONNECTED") for ln in lines), lines
    gw.outbox.close()


def test_every_engine_event_kind_validates_as_sent(tmp_path: Path) -> None:
    """Run the engine's own scenarios and check each event as the outbox puts it on the wire."""
    from test_engine_misc import full_raw

    import scenarios
    from gateway.engine import start_roll_call
    from gateway.model import BleSighting, TagRead
    from scenarios import T0, bus_track, child_tags, run, zone_moving

    tags = child_tags(6, groups=["class-1"])
    eng = scenarios.engine_of(full_raw(tags, zone={"stay_groups": ["class-1"]}))
    readings, _ = zone_moving(3, tags, 900.0)
    t = T0 + 1000
    readings += [BleSighting("ble-yard", tags[0]["id"], t + i, -60, battery_mv=2400,
                             button=i == 3) for i in range(5)]
    readings += [TagRead("uhf-gate", tags[1]["id"], t + 10 + i * 0.2, rssi=-60.0,
                         antenna=1 if i < 3 else 2) for i in range(6)]
    state, events = run(eng, readings, until=t + 100)
    from test_engine_geofence import FENCE, READERS

    gps, _ = bus_track(1)
    events += run(scenarios.engine_of(
        scenarios.raw_config(READERS, [], geofences=[FENCE])), gps)[1]
    state = start_roll_call(state, "quake-1", t + 101)
    state, more = eng.tick(state, t + 102)
    events += more
    kinds = {e.kind for e in events}
    assert {"zone_enter", "zone_exit", "zone_alert", "sos", "low_battery", "gate",
            "geofence_enter", "geofence_exit", "roll_call"} <= kinds, kinds
    ob = Outbox(str(tmp_path / "b.db"), "u-1", "site")
    for s in ob.add(events):
        assert contract.violations(f"kidsafe/v1/u-1/{s.topic}", s.payload) == [], s.payload


def test_times_inside_data_are_rfc3339_like_the_envelope() -> None:
    """Contract v2: engine times in data become wall times as RFC 3339 text; a GPS
    position's fix_time (the receiver's own UTC time) is only formatted."""
    from gateway.engine import _walled_data

    data: dict[str, Any] = {"started": 100.0, "decided": 100.5, "last_seen": 99.0, "zone": "z",
            "present": [{"child": "c-1", "last_seen": 98.25}],
            "missing": [{"child": "c-2", "last_seen": None, "last_reader": None}],
            "position": {"lat": 1.0, "lon": 2.0, "source": "gps", "fix_time": 1.7e9 + 3.5}}
    out = _walled_data(data, 1.7e9)
    assert out["started"] == iso_utc(1.7e9 + 100) == "2023-11-14T22:15:00.000Z"
    assert out["decided"] == iso_utc(1.7e9 + 100.5)
    assert out["last_seen"] == iso_utc(1.7e9 + 99)
    assert out["present"][0]["last_seen"] == iso_utc(1.7e9 + 98.25)
    assert out["missing"][0]["last_seen"] is None
    assert out["position"]["fix_time"] == iso_utc(1.7e9 + 3.5)
    assert data["position"]["fix_time"] == 1.7e9 + 3.5  # the engine's own dict untouched
    assert gwcontract.SCHEMA_VERSION == 2
    assert contract.schema("birth")["properties"]["schema"]["const"] == gwcontract.SCHEMA_VERSION


def _event(kind: str, lane: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"id": "0b6f3a52-8f0e-4f7e-9a51-2f6c1f0d9a11", "seq": 1, "unit": "u-1",
                       "site": "s", "kind": kind, "lane": lane,
                       "time": iso_utc(1.7e9), "recorded": iso_utc(1.7e9), "reader": "r",
                       "child": "c-1", "data": data}).encode()


def test_positions_carry_their_fix_time_as_text() -> None:
    gps = {"lat": 37.5, "lon": 127.0, "source": "gps", "fix_time": iso_utc(1.7e9 - 1)}
    sos = {"zone": "yard", "cameras": [], "rssi": -60.0, "battery_mv": 2900}
    ok = [gps, {"lat": 37.5, "lon": 127.0, "source": "fixed"}, None]
    bad = [{**gps, "fix_time": 1.7e9 - 1}, {k: v for k, v in gps.items() if k != "fix_time"},
           {"lat": 37.5, "lon": 127.0, "source": "fixed", "fix_time": iso_utc(1.7e9)},
           {**gps, "alt": 30.0}, {**gps, "lat": 91.0}]
    for pos in ok:
        assert contract.violations("t/event/sos", _event("sos", "emergency",
                                                         {**sos, "position": pos})) == []
    for pos in bad:
        assert contract.violations("t/event/sos", _event("sos", "emergency",
                                                         {**sos, "position": pos})), pos


def test_status_reason_fits_its_state() -> None:
    good = gwcontract.status_payload("u-1", True, iso_utc(1.7e9), "connected")
    for body in ({**good, "state": "offline"}, {**good, "time": None},
                 {**good, "reason": "connection-lost"}, {**good, "time": "2023-11-14"}):
        assert contract.violations("t/status", json.dumps(body).encode()), body


def test_health_counts_events_per_kind_of_the_event_schema() -> None:
    """The health schema names a counter per event kind: the same kinds as events."""
    kinds = contract.schema("event")["properties"]["kind"]["enum"]
    (pattern,) = contract.schema("health")["properties"]["counters"]["patternProperties"]
    assert pattern == f"^events_({'|'.join(kinds)})$"
    health = {"unit": "u-1", "time": iso_utc(1.7e9), "uptime_s": 1.0, "software": "x",
              "buffer": {"depth": 0, "depth_by_lane": {"emergency": 0, "routine": 0,
                                                       "telemetry": 0},
                         "oldest_unsent_age_s": 0.0, "last_seq": 0,
                         "dropped": {"total": 0, "by_lane": {"emergency": 0, "routine": 0,
                                                             "telemetry": 0},
                                     "recent_ranges": []},
                         "free_disk_mb": None, "reserve_mb": 1.0, "wal_mb": 0.0,
                         "high_water_seq": 0, "incidents": [], "acks_not_recorded": 0},
              "readers": {}, "counters": {"events_gate": 3, "readings": 9},
              "mqtt": {"sent": 0, "acked": 0, "refused": 0, "connects": 0, "commands": 0}}
    assert contract.violations("t/health", json.dumps(health).encode()) == []
    for counters in ({"events_sighting": 1}, {"made_up": 1}, {"readings": -1}):
        body = {**health, "counters": counters}
        assert contract.violations("t/health", json.dumps(body).encode()), counters


def test_topics_map_to_their_schemas() -> None:
    assert contract.schema_for("kidsafe/v1/u-1/event/gate") == "event"
    for name in ("status", "birth", "health"):
        assert contract.schema_for(f"kidsafe/v1/u-1/{name}") == name
    # signed payloads (JWS, not JSON) are never checked as JSON
    assert contract.schema_for("kidsafe/v1/u-1/cmd/ping") is None
    assert contract.schema_for("kidsafe/v1/u-1/receipt") is None
    has_reply = (contract.SCHEMAS / "reply.schema.json").exists()
    assert contract.schema_for("kidsafe/v1/u-1/reply/r-1") == ("reply" if has_reply else None)
