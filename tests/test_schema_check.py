"""The tests' fast schema check (tests/contract.py) says exactly what the whole schema says."""

from __future__ import annotations

import itertools
from typing import Any

import contract

BASE: dict[str, Any] = {
    "id": "0b6f3a52-8f0e-4f7e-9a51-2f6c1f0d9a11", "seq": 7, "unit": "unit-t1", "site": "s",
    "kind": "gate", "lane": "routine", "time": "2026-12-01T10:00:00.000Z",
    "recorded": "2026-12-01T10:00:00.100Z", "reader": "r", "child": "c-1",
    "data": contract.gate_data(),
}
KINDS = [b["if"]["properties"]["kind"]["const"] for b in contract.schema("event")["allOf"]]
DATA: list[Any] = [
    {}, {"direction": None}, contract.gate_data(), {"direction": "sideways"}, "not an object",
    {"zone": "yard", "position": None, "cameras": []},
    {"zone": "yard", "position": {"lat": 52.5, "lon": 13.4}, "cameras": ["cam-1"]},
    {"lane": "routine", "count": 3, "ranges": [[1, 3]]}, {"battery_v": 2.4},
    {"alert_id": "a-1"}, {"zone": 5},
]
BREAKS: list[dict[str, Any]] = [{}, {"seq": 0}, {"time": "yesterday"}, {"id": "x"},
                                {"extra": 1}, {"lane": "emergency"}, {"lane": "nope"}]


def errors(v: Any, body: Any) -> list[tuple[tuple[Any, ...], str]]:
    return sorted((tuple(e.path), e.message) for e in v.iter_errors(body))


def test_per_kind_validators_give_the_whole_schemas_errors() -> None:
    full = contract.validator("event")
    checked = 0
    for kind, data, broken in itertools.product([*KINDS, "no_such_kind"], DATA, BREAKS):
        body = {**BASE, "kind": kind, "data": data, **broken}
        assert errors(contract.validator_for_kind("event", kind), body) == errors(full, body), \
            (kind, data, broken)
        checked += 1
    assert checked == (len(KINDS) + 1) * len(DATA) * len(BREAKS)
    # Without a usable "kind" the whole schema is used.
    assert contract.body_violations("event", {**BASE, "kind": 3}, "t")
    assert contract.body_violations("event", [], "t")
