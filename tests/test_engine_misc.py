"""SOS, low battery, locate, roll-call, config sections, state JSON, replay files."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from test_engine_gate import UHF

from gateway.config import ConfigInvalid, parse
from gateway.engine import end_roll_call, locate, start_roll_call, state_from_dict, state_to_dict
from gateway.engine.state import pack_steps, unpack_steps
from gateway.model import BleSighting, GpsFix, Lane, Reading, TagRead
from gateway.recording import Recorder, read_items
from gateway.replay import main_locate, main_replay
from scenarios import (
    SCHOOL,
    T0,
    ZONE_SECTION,
    child_tags,
    engine_of,
    offset,
    raw_config,
    reader,
    run,
    zone_moving,
)

READERS = [reader("ble-yard", "zone"), reader("gps", "gps"), *UHF]
CAMS = [{"id": "cam-near", "lat": SCHOOL[0], "lon": SCHOOL[1] + 0.0005},  # ~44 m east
        {"id": "cam-far", "lat": SCHOOL[0] + 0.01, "lon": SCHOOL[1]}]


def full_raw(tags: list[dict[str, Any]], zone: dict[str, Any] | None = None,
             **engine: Any) -> dict[str, Any]:
    return raw_config(READERS, tags, zones=[{**ZONE_SECTION, **(zone or {})}], cameras=CAMS,
                      engine={"position": [SCHOOL[0], SCHOOL[1]], "camera_radius_m": 100.0,
                              **engine},
                      battery={"low_mv": 2500, "clear_mv": 2700}, roll_call={"interval_s": 30})


def test_sos_once_per_press_with_position_cameras_and_zone() -> None:
    tags = child_tags(1)
    eng = engine_of(full_raw(tags))
    tag = tags[0]["id"]
    reads = [BleSighting("ble-yard", tag, T0 + i, -60) for i in range(30)]
    reads += [BleSighting("ble-yard", tag, T0 + 30 + i * 0.5, -60, button=True) for i in range(8)]
    reads += [BleSighting("ble-yard", tag, T0 + 60, -60, button=True)]  # a second press
    _, evs = run(eng, reads)
    sos = [e for e in evs if e.kind == "sos"]
    assert [e.time for e in sos] == [T0 + 30, T0 + 60]
    d = sos[0].data
    assert sos[0].lane == Lane.EMERGENCY and sos[0].child == "c-0000"
    assert d["zone"] == "yard" and d["cameras"] == ["cam-near"]
    assert d["position"] == {"lat": SCHOOL[0], "lon": SCHOOL[1], "source": "fixed"}
    json.dumps(d)  # JSON-able


def test_sos_uses_last_trusted_gps_fix() -> None:
    tags = child_tags(1)
    eng = engine_of(full_raw(tags))
    lat, lon = offset(*SCHOOL, 0, 2000)
    st = eng.initial_state()
    st, _ = eng.step(st, GpsFix("gps", T0, lat, lon, fix_quality=1, fix_type=3))
    st, evs = eng.step(st, BleSighting("ble-yard", tags[0]["id"], T0 + 1, -70, button=True))
    assert evs[0].data["position"]["source"] == "gps" and evs[0].data["cameras"] == []


def test_low_battery_once_per_crossing() -> None:
    """Noisy readings (sd 10 mV) every 10 s of a voltage falling 3 mV/min through low_mv
    (2500) at +20 min, a new battery at +40 min (clear_mv 2700 re-arms), falling 4 mV/min
    through again at +102.5 min: one event per crossing, near it, none for the early dips."""
    import random

    tags = child_tags(1)
    eng = engine_of(full_raw(tags))
    rnd = random.Random(7)

    def true_mv(s: float) -> float:
        return 2560 - 3 * s / 60 if s < 2400 else 2750 - 4 * (s - 2400) / 60

    reads = [BleSighting("ble-yard", tags[0]["id"], T0 + s, -90,
                         battery_mv=round(true_mv(s) + rnd.gauss(0, 10)))
             for s in range(0, 7200, 10)]
    assert any(r.battery_mv is not None and r.battery_mv < 2500 for r in reads[:100])
    _, evs = run(eng, reads)
    low = [e for e in evs if e.kind == "low_battery"]
    assert len(low) == 2
    assert abs(low[0].time - (T0 + 1200)) <= 300 and abs(low[1].time - (T0 + 6150)) <= 300
    assert all(e.data["threshold_mv"] == 2500 and 2450 < e.data["battery_mv"] < 2500
               for e in low)


def test_low_battery_at_once_when_first_heard_far_below() -> None:
    tags = child_tags(1)
    eng = engine_of(full_raw(tags))
    reads = [BleSighting("ble-yard", tags[0]["id"], T0 + i, -90, battery_mv=2300 + i)
             for i in range(8)]
    _, evs = run(eng, reads)
    assert [(e.time - T0, e.data["battery_mv"]) for e in evs if e.kind == "low_battery"] == [
        (0, 2304)]


def test_locate_and_roll_call() -> None:
    tags = child_tags(3, groups=["class-1"])
    eng = engine_of(full_raw(tags, zone={"stay_groups": ["class-1"]}))
    st = eng.initial_state()
    reads: list[Reading] = [BleSighting("ble-yard", tags[i]["id"], T0 + k, -62)
                            for k in range(40) for i in range(2)]
    reads.append(TagRead("uhf-gate", tags[2]["id"], T0 + 5, rssi=-58.0, antenna=1))
    st, _ = run(eng, reads, state=st)
    a = locate(st, eng.cfg, "c-0001")
    assert a["found"] and a["zone"] == "yard" and a["reader"] == "ble-yard"
    assert a["time"] == T0 + 39 and a["position"]["source"] == "fixed"
    b = eng.locate(st, tags[2]["id"].lower())
    assert b["found"] and b["zone"] is None and b["reader"] == "uhf-gate"
    assert locate(st, eng.cfg, "nobody") == {"query": "nobody", "found": False,
                                             "enrolled": False}
    st = start_roll_call(st, "quake-1", T0 + 40)
    calls = []
    for k in range(41, 120):
        st, evs = eng.tick(st, T0 + k)
        calls += evs
    rc = [e for e in calls if e.kind == "roll_call"]
    assert [e.time - T0 for e in rc] == [41, 70, 100]  # every 30 s from the start
    d = rc[0].data
    assert rc[0].lane == Lane.EMERGENCY and d["alert_id"] == "quake-1" and d["count"] == 2
    assert [p["child"] for p in d["present"]] == ["c-0000", "c-0001"]
    assert [m["child"] for m in d["missing"]] == ["c-0002"]
    st = end_roll_call(st, "quake-1")
    st, evs = eng.tick(st, T0 + 200)
    assert not [e for e in evs if e.kind == "roll_call"]


def test_config_sections_errors_have_key_paths() -> None:
    raw = raw_config(
        [reader("ble-yard", "zone"), reader("g", "gate", antenna_roles={"1": "outer", "2": "up"})],
        [], engine={"timezone": "Mars/Olympus", "position": [99, 0], "bogus": 1},
        zones=[{"id": "yard", "readers": ["nope"], "enter_dbm": -90.0, "exit_dbm": -80.0,
                "stay_hours": ["25:00-26:00"]}],
        geofences=[{"id": "a", "center": [1.0, 2.0]}, {"id": "b", "points": [[1, 2]]}],
        cameras=[{"id": "c1", "lat": 1.0}], battery={"low_mv": 2800, "clear_mv": 2500})
    with pytest.raises(ConfigInvalid) as ei:
        parse(raw)
    keys = {e.key for e in ei.value.errors}
    assert {"engine.timezone", "engine.position", "engine.bogus", "zones[0].readers",
            "zones[0].exit_dbm", "zones[0].stay_hours", "geofences[0].radius_m",
            "geofences[1].points", "cameras[0].lon", "battery.clear_mv",
            "readers[1].antenna_roles.2"} <= keys


def test_config_defaults() -> None:
    cfg = parse(raw_config([reader("ble-yard", "zone")], [], zones=[{"id": "yard"}]))
    s = cfg.engine
    assert s.timezone == "UTC" and s.zones[0].readers == ("ble-yard",)
    assert (s.zones[0].enter_dbm, s.zones[0].exit_dbm) == (-75.0, -85.0)


def test_state_json_roundtrip_mid_scenario() -> None:
    tags = child_tags(5)
    eng = engine_of(full_raw(tags))
    reads, _ = zone_moving(1, tags, 1200)
    st, _ = run(eng, reads[: len(reads) // 2])
    st = start_roll_call(st, "a1", reads[0].time)
    d = state_to_dict(st)
    assert state_to_dict(state_from_dict(json.loads(json.dumps(d)))) == d


def test_step_bins_saved_packed_and_the_older_list_form_still_loads() -> None:
    """A tag's step bins go into the saved state as packed float32s (docs/architecture.md,
    "Cost at a site"), exact enough to decide the same; a state saved by an older unit
    (bins as a list of rounded numbers) still loads; bad bins are an error, not a crash."""
    steps = [-12.345678, 3.0, 0.1, 7.0, 4099.9, 512.0] + [0.0, 0.0] * 60
    packed = pack_steps(steps)
    assert isinstance(packed, str)
    assert unpack_steps(packed) == pytest.approx(steps, rel=1e-6, abs=1e-6)
    assert unpack_steps([-12.3, 3.0]) == [-12.3, 3.0]
    assert unpack_steps(pack_steps([])) == []
    for bad in ("not base64!", "AAA="):  # a stray character; 2 bytes, not a float32
        with pytest.raises(ValueError):
            unpack_steps(bad)
    tags = child_tags(5)
    eng = engine_of(full_raw(tags))
    reads, _ = zone_moving(1, tags, 1200)
    st, _ = run(eng, reads[: len(reads) // 2])
    d = json.loads(json.dumps(state_to_dict(st)))
    zones = d["zones"]
    assert any(isinstance(v[12], str) and v[12] for tags_ in zones.values()
               for v in tags_.values()), "no tag with step bins mid-scenario"
    for tags_ in zones.values():  # as an older unit saved it
        for v in tags_.values():
            v[12] = [round(x, 1) for x in unpack_steps(v[12])]
    old = state_from_dict(d)
    assert all(isinstance(p.steps, list) for ps in old.zones.values() for p in ps.values())


def test_gate_and_battery_state_survive_a_restart_mid_decision() -> None:
    """Saved and restored in the middle of gate presentations and battery minutes, the
    engine decides exactly as it would have without the restart."""
    tags = child_tags(3)
    eng = engine_of(full_raw(tags))
    reads: list[Reading] = [BleSighting("ble-yard", tags[0]["id"], T0 + s, -70,
                                        battery_mv=2560 - s // 20) for s in range(0, 1800, 7)]
    for k, t0 in enumerate((T0 + 100, T0 + 700, T0 + 1300)):
        first, second = (1, 2) if k != 1 else (2, 1)
        reads += [TagRead("uhf-gate", tags[1]["id"], t0 + i * 0.1, rssi=-45.0 - (i % 3),
                          antenna=first if i < 15 else second) for i in range(30)]
        reads.append(TagRead("uhf-gate", tags[1]["id"], t0 + 1.0, rssi=-75.0,
                             antenna=second))  # a reflection
    reads.sort(key=lambda r: r.time)
    _, whole = run(eng, reads, until=T0 + 1900)
    cut = next(i for i, r in enumerate(reads) if r.time > T0 + 701)  # mid-passage
    st, before = run(eng, reads[:cut])
    d = json.loads(json.dumps(state_to_dict(st)))
    assert d["passages"] and d["battery"]
    _, after = run(eng, reads[cut:], state=state_from_dict(d), until=T0 + 1900)
    assert [(e.kind, e.time, e.data) for e in before + after] == [
        (e.kind, e.time, e.data) for e in whole]
    assert [e.data["direction"] for e in whole if e.kind == "gate"] == [
        "arrival", "departure", "arrival"]
    assert [e.kind for e in whole].count("low_battery") == 1


def test_recorder_and_replay_are_byte_identical(tmp_path: Path) -> None:
    tags = child_tags(8)
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text("\n".join([
        '[unit]\nid = "u1"\nsite = "s"', '[broker]\nhost = "127.0.0.1"',
        f'[buffer]\npath = "{tmp_path / "b.db"}"', '[engine]\ntimezone = "Asia/Seoul"',
        '[[readers]]\nid = "ble-yard"\nkind = "rdm6300"\nrole = "zone"\nport = "/dev/null"',
        '[[zones]]\nid = "yard"\nenter_dbm = -80.0\nexit_dbm = -86.0',
        *[f'[[tags]]\nid = "{t["id"]}"\nchild = "{t["child"]}"' for t in tags]]) + "\n")
    reads, _ = zone_moving(4, tags, 1800)
    rec_path = tmp_path / "readings.jsonl"
    with Recorder(rec_path, now=reads[0].time - 1) as rec:
        for r in reads:
            rec(r)
        rec.control("roll_call_start", reads[-1].time, "drill-1")
        rec.control("tick", reads[-1].time + 60)
    assert sum(1 for _ in read_items(rec_path)) == len(reads) + 3
    outs = []
    for _ in range(2):
        buf = io.StringIO()
        assert main_replay(str(cfg_path), str(rec_path), buf) == 0
        outs.append(buf.getvalue())
    assert outs[0] == outs[1] and outs[0].count("\n") > 20
    lines = [json.loads(x) for x in outs[0].splitlines()]
    assert {x["kind"] for x in lines} >= {"zone_enter", "zone_exit", "roll_call"}
    assert all(list(x) == sorted(x) for x in lines)
    buf = io.StringIO()
    assert main_locate(str(cfg_path), str(rec_path), "c-0003", buf) == 0
    assert json.loads(buf.getvalue())["child"] == "c-0003"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "ble", "t": 1.0}\n')
    assert main_replay(str(cfg_path), str(bad), io.StringIO()) == 1
