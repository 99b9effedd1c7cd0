"""The JSON Schemas of docs/schemas/ against what the code builds (and against garbage)."""

from __future__ import annotations

import json
from pathlib import Path

import contract
import pytest

from gateway import config as configmod
from gateway import contract as gwcontract
from gateway.daemon import Gateway
from gateway.model import Event, Lane
from gateway.outbox import Outbox, iso_utc


@pytest.mark.parametrize("name", ["event", "status", "birth", "health"])
def test_schemas_are_valid_json_schema(name: str) -> None:
    contract.validator(name)  # raises on a broken schema


def test_event_payloads_validate_and_garbage_does_not(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u-1", "site", max_events=3)
    stored = ob.add([Event("gate", 1.7e9, Lane.ROUTINE, "r1", "c-1", {"direction": None})
                     for _ in range(5)])
    for s in stored:
        assert contract.violations(f"kidsafe/v1/u-1/{s.topic}", s.payload) == []
    notices = [r for r in ob.fetch(int(Lane.ROUTINE), 0, 100) if r.topic == "event/buffer_drop"]
    assert notices
    for n in notices:
        assert contract.violations(f"kidsafe/v1/u-1/{n.topic}", n.payload) == []
    body = json.loads(stored[0].payload)
    for broken in ({**body, "seq": 0}, {**body, "time": "yesterday"},
                   {**body, "data": {"direction": "sideways"}},
                   {k: v for k, v in body.items() if k != "id"}):
        assert contract.violations("kidsafe/v1/u-1/event/gate", json.dumps(broken).encode())
    assert contract.violations("kidsafe/v1/u-1/event/gate", b"\xff not json")


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
    gw.outbox.close()
