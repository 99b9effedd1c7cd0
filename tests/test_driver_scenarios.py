"""Scenario files: every shipped scenario parses and starts, the single-device RDM6300
format still works through the multi-device loader, mistakes are reported with their step
or key, and each kind's simulator is found through the registry."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers import registry
from firmware_sim import cli, procs, simulator
from firmware_sim import scenario as scen
from firmware_sim.ble import missing_tools
from gateway import config
from harness import REPO, sim_until_playing
from scenarios import raw_config


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


def test_a_waypoint_out_of_time_is_named() -> None:
    raw = {"device": [{"id": "bus", "kind": "gps_nmea", "speed_mps": 10.0,
                       "track": [[37.57, 126.965, 0.0], [37.569, 126.97],
                                 [37.569, 126.97, 20.0]]}]}
    with pytest.raises(scen.ScenarioError) as e:
        scen.parse_multi(raw, "bus.toml")
    msg = str(e.value)
    assert "device[0].track: waypoint times must not go backwards" in msg
    assert "waypoint 2 (37.569, 126.97) has t = 20 s" in msg
    assert "waypoint 1 (37.569, 126.97) is at t = 45.4 s (reached at 10 m/s)" in msg


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


SHIPPED = [*sorted((REPO / "config" / "scenarios").glob("*.toml")),
           REPO / "config" / "demo-scenario.toml"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_start(path: Path, tmp_path: Path) -> None:
    """Every shipped scenario's devices start, give a [[readers]] snippet gatewayd takes,
    play their first moments and stop, all within seconds."""
    sc = scen.load_multi(str(path))
    if any(d.kind == "ble" for d in sc.devices) and (why := missing_tools()):
        pytest.skip(f"needs a mock BlueZ: {why}")
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        ctx = simulator.Context(tmp_path, stack)
        running = cli._start_devices(sc, ctx)
        assert [r.dev.id for r in running] == [d.id for d in sc.devices]
        snippet = tomllib.loads(cli.readers_snippet([r.reader for r in running])
                                + "\n" + cli.tags_snippet(cli.simulated_tags(sc, running)))
        cfg = config.parse(raw_config(readers=snippet["readers"], tags=snippet.get("tags")))
        assert [r.kind for r in cfg.readers] == [d.kind for d in sc.devices]
        # The [[tags]] it prints are what it simulates (GPS: none), enrolled as printed.
        assert bool(cfg.tags) == any(d.kind != "gps_nmea" for d in sc.devices)
        for r in running:
            port = r.reader.get("port")
            assert port is None or Path(port).exists(), f"{r.dev.id}: no device at {port}"
        player = threading.Thread(target=cli.play, args=(sc, running, stop), daemon=True)
        player.start()
        time.sleep(0.7)
        stop.set()
        player.join(5)
        assert not player.is_alive()
    # Every simulator's thread ended with the stack.
    assert not [t.name for t in threading.enumerate() if t.name.endswith("-sim")]


@pytest.mark.timeout(60)
def test_the_sim_command_starts_the_bus_route(tmp_path: Path) -> None:
    """`kidsafe-sim run config/scenarios/bus-route.toml` (it failed on a waypoint once)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim", "run", str(REPO / "config" / "scenarios" /
                                                         "bus-route.toml"),
         "--workdir", str(tmp_path), "--start-delay", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _text, snippet = sim_until_playing(proc)
        readers = tomllib.loads(snippet)
        assert readers["readers"][0]["kind"] == "gps_nmea"
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        procs.end(proc)


def test_the_tags_snippet_leaves_out_visitors_and_ble_addresses() -> None:
    sc = scen.load_multi(str(REPO / "config" / "scenarios" / "morning-rush.toml"))
    running = [cli._Running(d, simulator.Started({}, "", lambda *_: None)) for d in sc.devices]
    tags = cli.simulated_tags(sc, running)
    assert "300833B2DDD9014000000000" not in tags  # the visitor (enrolled = false)
    assert tags[0] == "E28011606000020000000001" and len(tags) == len(set(tags)) >= 10
    park = scen.load_multi(str(REPO / "config" / "scenarios" / "park.toml"))
    named = ("ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42",
             "eddystone:edd1ebeac04e5defa017:0000000000b7")
    running = [cli._Running(d, simulator.Started({}, "", lambda *_: None, tags=named))
               for d in park.devices]
    assert cli.simulated_tags(park, running) == list(named)  # steps name C0:...: addresses
    parsed = tomllib.loads(cli.tags_snippet(list(named)))
    assert parsed == {"tags": [{"id": named[0], "child": "child-01"},
                               {"id": named[1], "child": "child-02"}]}


def test_the_bus_route_geofence_comment_is_valid_toml() -> None:
    text = (REPO / "config" / "scenarios" / "bus-route.toml").read_text()
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if "geofence_enter" in ln) + 1
    block = []
    for ln in lines[start:]:
        if not ln.startswith("# ") or ln.startswith("# On the way"):
            break
        block.append(ln[2:])
    fence = tomllib.loads("\n".join(block))
    gps = {"id": "bus-gps", "kind": "gps_nmea", "role": "gps", "port": "/dev/ttyS0"}
    cfg = config.parse(raw_config(readers=[gps], **fence))
    assert [(g.id, g.radius_m) for g in cfg.engine.geofences] == [("school", 120.0)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_config_tables_in_scenario_comments_paste_as_valid_toml(path: Path) -> None:
    """A `# [[tags]]` / `# [[geofences]]` block in a scenario's comment is TOML as written
    (without the leading "# "), so a technician can paste it."""
    blocks: list[list[str]] = []
    for line in path.read_text().splitlines():
        body = line.lstrip("#").strip() if line.startswith("#") else None
        if body is not None and body.startswith("[["):
            blocks.append([body])
        elif blocks and body is not None and blocks[-1] and re.match(r"^\w+ = ", body):
            blocks[-1].append(body)
        elif blocks and blocks[-1]:
            blocks.append([])  # the block ended
    for block in filter(None, blocks):
        tomllib.loads("\n".join(block))
