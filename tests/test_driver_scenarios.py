"""Scenario files: every shipped scenario parses and starts, the single-device RDM6300
format still works through the multi-device loader, mistakes are reported with their step
or key, and each kind's simulator is found through the registry."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers import registry
from firmware_sim import cli, simulator
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


def test_mistakes_in_a_device_table_name_the_key() -> None:
    raw = {"device": [{"id": "a", "kind": "gps", "track": [[1.0, 2.0]]},
                      {"id": "b", "kind": "gps_nmea"},
                      {"id": "c", "kind": "gps_nmea", "speed_mps": 0},
                      {"id": "d", "kind": "gps_nmea", "track": [[1.0, 2.0], "x"]}],
           "step": []}
    with pytest.raises(scen.ScenarioError) as e:
        scen.parse_multi(raw, "bad.toml")
    msg = str(e.value)
    # The old name of the GPS simulator is refused with the new one, not guessed.
    assert "device[0].kind: 'gps' is now called 'gps_nmea'" in msg
    for part in ("device[1].track: expected", "device[2].speed_mps: expected",
                 "device[3].track: waypoint 1: expected"):
        assert part in msg


def test_every_kind_with_a_simulator_declares_it() -> None:
    for kind in registry.KINDS:
        if kind.simulator is None:
            continue
        sim = simulator.get(kind.name)
        assert sim.kind == kind.name
        assert sim.actions and all(isinstance(v, tuple) for v in sim.actions.values())
    assert set(simulator.kinds()) >= {"rdm6300", "uhf_r2000", "ble", "gps_nmea"}


def test_the_readers_snippet_pastes_after_any_table() -> None:
    """Short readers too (tomli-w alone would write them inline), and text outside the BMP."""
    readers: list[dict[str, Any]] = [
        {"id": "g", "kind": "uhf_r2000", "antennas": [1, 2],
         "antenna_roles": {"1": "outer", "2": "inner"}},
        {"id": "b", "kind": "ble", "adapter": "hci0 \U0001F68C"}]
    text = cli.readers_snippet(readers)
    assert text.count("[[readers]]") == 2
    assert tomllib.loads('[buffer]\npath = "x.db"\n' + text) == {
        "buffer": {"path": "x.db"}, "readers": readers}
