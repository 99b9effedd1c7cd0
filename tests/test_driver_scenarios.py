"""Scenario files: every shipped scenario parses, the single-device RDM6300 format still
works through the multi-device loader, and mistakes are reported with their step."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim import scenario as scen
from harness import REPO


@pytest.mark.parametrize("path", sorted((REPO / "config" / "scenarios").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_shipped_scenarios_parse(path: Path) -> None:
    sc = scen.load_multi(str(path))
    assert sc.devices and sc.steps and sc.duration_s > max(s.at for s in sc.steps)


def test_single_device_format_still_loads_both_ways() -> None:
    path = str(REPO / "config" / "demo-scenario.toml")
    single = scen.load(path)
    multi = scen.load_multi(path)
    assert [d.kind for d in multi.devices] == ["rdm6300"]
    assert [(s.at, s.action) for s in multi.steps] == [(s.at, s.action) for s in single.steps]


def test_mistakes_are_listed() -> None:
    raw = {"device": [{"id": "g", "kind": "uhf_r2000", "antena": 2},
                      {"id": "b", "kind": "ble"}, {"id": "x", "kind": "laser"}],
           "step": [{"at": 1, "device": "g", "action": "press", "tag": "t"},
                    {"at": 2, "device": "b", "action": "press"},
                    {"at": 3, "device": "nope", "action": "walk"},
                    {"at": -1, "device": "g", "action": "walk", "tag": "t"}]}
    with pytest.raises(scen.ScenarioError) as e:
        scen.parse_multi(raw, "bad.toml")
    msg = str(e.value)
    for part in ("device[0].antena", "device[2].kind", "step[0].action", "step[1]: press needs tag",
                 "step[2].device", "step[3].at"):
        assert part in msg
