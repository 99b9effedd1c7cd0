"""The saved engine state keeps no tag id in clear (issue 11, item 6): EM4100 card
numbers are clonable. It is keyed by child reference (gateway/engine/persist.py),
mapped back through the enrolled tags at restore, and a restart decides as before."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_engine_misc import full_raw

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from gateway.clock import FakeClock
from gateway.engine import Engine, locate, persist, start_roll_call, state_to_dict
from gateway.model import BleSighting, GpsFix, Reading, TagRead
from gateway.outbox import Outbox
from gateway.pipeline import STATE_KEY, Pipeline, restore_state
from gateway.replay import Replayer, event_line
from harness import GatewayProcess, wait_until, write_config
from scenarios import SCHOOL, T0, child_tags, engine_of, run, zone_moving

# Every part of the state_to_dict form, and whether it is keyed by tag id. A new part
# must be classified here (and in persist.TAG_KEYED* if it holds tag ids).
NOT_TAG_KEYED = {"version", "clock", "wall_offset", "downtime_s", "heard", "arrived", "passed",
                 "gate_sides", "gate_peaks", "gps", "roll_call"}


def _ids(tags: list[dict[str, Any]]) -> list[bytes]:
    """Each tag id as it could appear in bytes: as configured, upper and lower case."""
    return sorted({v.encode() for t in tags for v in (t["id"], t["id"].upper(),
                                                      t["id"].lower())})


def _busy_state(tags: list[dict[str, Any]]) -> tuple[Engine, list[Reading], int]:
    """An engine and readings that fill every tag-keyed part of the state: zone
    presence and RSSI windows, an open gate presentation, battery minutes, an SOS,
    sightings, last zones (and a GPS fix and a roll-call)."""
    eng = engine_of(full_raw(tags))
    reads: list[Reading] = list(zone_moving(1, tags, 900)[0])
    reads += [BleSighting("ble-yard", tags[0]["id"], T0 + s, -62, battery_mv=2600 - s // 30,
                          button=s == 600) for s in range(0, 900, 5)]
    reads += [TagRead("uhf-gate", tags[1]["id"], T0 + 700 + i * 0.1, rssi=-45.0,
                      antenna=1 if i < 15 else 2) for i in range(30)]
    reads.append(GpsFix("gps", T0 + 650, SCHOOL[0], SCHOOL[1], hdop=0.9))
    reads.sort(key=lambda r: r.time)
    cut = next(i for i, r in enumerate(reads) if r.time > T0 + 701)  # mid-presentation
    return eng, reads, cut


def test_saved_state_holds_no_tag_id_and_restores_exactly() -> None:
    tags = child_tags(6)
    eng, reads, cut = _busy_state(tags)
    st, _ = run(eng, reads[:cut])
    st = start_roll_call(st, "a1", reads[0].time)
    plain = state_to_dict(st)
    assert set(plain) == NOT_TAG_KEYED | set(persist.TAG_KEYED) | set(persist.TAG_KEYED_INNER)
    for name in persist.TAG_KEYED:
        assert plain[name], f"the scenario leaves {name} empty: it would test nothing"
    for name in persist.TAG_KEYED_INNER:
        assert any(plain[name].values()), f"the scenario leaves {name} empty"
    blob = persist.dumps(st, persist.saved_keys(eng.runtime.tags))
    for tid in _ids(tags):
        assert tid not in blob.upper() and tid not in blob.lower()
    assert b'"card:0:c-0001"' in blob  # keyed by the child reference
    restored, info = persist.loads(blob, eng.runtime.tags)
    assert info == persist.Restored()
    assert state_to_dict(restored) == json.loads(json.dumps(plain))


def test_restart_from_the_saved_form_decides_as_without_it() -> None:
    """Saved (by child reference) and restored mid-presentation, mid-dwell and
    mid-battery-minute, a new engine decides exactly as one that never stopped."""
    tags = child_tags(6)
    eng, reads, cut = _busy_state(tags)
    _, whole = run(eng, reads, until=T0 + 1000)
    st, before = run(eng, reads[:cut])
    blob = persist.dumps(st, persist.saved_keys(eng.runtime.tags))
    eng2, _, _ = _busy_state(tags)  # a new process
    state, _ = persist.loads(blob, eng2.runtime.tags)
    _, after = run(eng2, reads[cut:], state=state, until=T0 + 1000)
    assert [event_line(e) for e in before + after] == [event_line(e) for e in whole]
    assert {e.kind for e in whole} >= {"gate", "zone_enter", "sos"}


def test_zone_replay_restart_continues_identically_through_the_saved_form() -> None:
    """tests/test_engine_zones.py's restart test, with the state as the daemon saves it."""
    tags = child_tags(20)
    reads, _ = zone_moving(9, tags, 3600)
    eng, _, _ = _busy_state(tags)
    _, straight = run(eng, reads)
    half = len(reads) // 2
    st, first = run(eng, reads[:half])
    blob = persist.dumps(st, persist.saved_keys(eng.runtime.tags))
    eng2, _, _ = _busy_state(tags)
    rp = Replayer(eng2, persist.loads(blob, eng2.runtime.tags)[0])
    rp.last_tick = reads[half - 1].time
    second = [e for r in reads[half:] for e in rp.feed(r)]
    assert [event_line(e) for e in first + second] == [event_line(e) for e in straight]


def test_a_child_with_two_tags_gets_unambiguous_keys() -> None:
    tags: list[dict[str, Any]] = [{"id": "62E3086CED", "child": "c-1", "groups": []},
                                  {"id": "01000734E0", "child": "c-1", "groups": []},  # a spare
                                  {"id": "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42",
                                   "child": "c-1", "groups": []},
                                  {"id": "67003B51C6", "child": "c-10", "groups": []}]
    eng = engine_of(full_raw(tags))
    keys = persist.saved_keys(eng.runtime.tags)
    assert keys == {"01000734E0": "card:0:c-1", "62E3086CED": "card:1:c-1",
                    "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42": "ibeacon:0:c-1",
                    "67003B51C6": "card:0:c-10"}
    reads: list[Reading] = [TagRead("uhf-gate", t["id"], T0 + i, rssi=-50.0 - i, antenna=1)
                            for i, t in enumerate(tags) if not t["id"].startswith("ibeacon")]
    reads.append(BleSighting("ble-yard", tags[2]["id"], T0 + 10, -60))
    st, _ = run(eng, reads)
    blob = persist.dumps(st, keys)
    for tid in _ids(tags):
        assert tid not in blob
    back, _ = persist.loads(blob, eng.runtime.tags)
    assert {t: s.rssi for t, s in back.seen.items()} == {t: s.rssi for t, s in st.seen.items()}
    assert len(back.seen) == 4


def test_entries_of_tags_no_longer_enrolled_are_dropped_and_counted() -> None:
    tags = child_tags(4)
    eng, reads, cut = _busy_state(tags)
    st, _ = run(eng, reads[:cut])
    blob = persist.dumps(st, persist.saved_keys(eng.runtime.tags))
    gone = tags[3]["id"]
    eng2 = engine_of(full_raw(tags[:3]))  # c-0003 left the school
    state, info = persist.loads(blob, eng2.runtime.tags)
    assert gone not in state.seen and gone not in state.last_zone
    assert all(gone not in entries for entries in state.zones.values())
    assert all(gone not in entries for entries in state.rssi.values())
    assert info.dropped >= 3 and not info.migrated
    assert set(state.seen) == set(st.seen) - {gone}


def test_a_state_saved_by_tag_id_is_migrated_once() -> None:
    """A state saved before this version (keyed by tag id) loads: the enrolled tags'
    entries kept, the rest dropped and counted; the next save is by child reference."""
    tags = child_tags(4)
    eng, reads, cut = _busy_state(tags)
    st, _ = run(eng, reads[:cut])
    old = json.dumps(state_to_dict(st)).encode()
    assert tags[0]["id"].encode() in old
    state, info = persist.loads(old, eng.runtime.tags)
    assert info == persist.Restored(migrated=True, dropped=0)
    assert state_to_dict(state) == json.loads(old)
    eng3 = engine_of(full_raw(tags[1:]))
    _, info = persist.loads(old, eng3.runtime.tags)
    assert info.migrated and info.dropped >= 3
    with pytest.raises(ValueError, match="keyed by"):
        persist.loads(json.dumps({**json.loads(old), "tag_keys": "hash/9"}), eng.runtime.tags)


# -- the pipeline, its SQLite buffer, and a real daemon ------------------------------------

def _buffer_bytes(path: Path) -> dict[str, bytes]:
    """The buffer file and its -wal/-shm, as they are on disk."""
    return {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*")}


def _assert_no_tag_id(path: Path, tags: list[dict[str, Any]], wal: bool = False) -> None:
    files = _buffer_bytes(path)
    assert path.name in files and (not wal or path.name + "-wal" in files), files.keys()
    for name, data in files.items():
        for tid in _ids(tags):
            assert tid not in data, f"{tid!r} in {name}"


def test_pipeline_buffer_holds_no_card_number(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    tags = [{"id": f"62E3086C{i:02X}", "child": f"c-{i}"} for i in range(5)]
    raw = {"unit": {"id": "u-1", "site": "s"}, "broker": {},
           "buffer": {"path": str(tmp_path / "buf.db")},
           "readers": [{"id": "g", "kind": "rdm6300", "role": "gate", "port": "/dev/null"}],
           "tags": tags}
    cfg = configmod.parse(raw)
    clock = FakeClock(1.7e9)
    ob = Outbox(cfg.buffer.path, "u-1", "s")
    pipe = Pipeline(cfg, Engine(configmod.engine_config(cfg)), ob, clock)
    for i, tag in enumerate(tags):
        mono = clock.monotonic()
        events = pipe.process([TagRead("g", tag["id"], clock.now(), mono=mono)])
        clock.advance(5.0 if i < 4 else 0.2)  # the last card is still at the reader
        more = pipe.engine.tick(pipe.engine_state, clock.now(), clock.monotonic())[1]
        pipe.commit(events + more)
    pipe.commit([], final=True)
    assert ob.load_state(STATE_KEY) is not None
    _assert_no_tag_id(tmp_path / "buf.db", tags, wal=True)  # the WAL as a running daemon's
    ob.close()
    _assert_no_tag_id(tmp_path / "buf.db", tags)
    # A restart restores it through the enrolled tags: locate answers by child.
    ob2 = Outbox(cfg.buffer.path, "u-1", "s")
    eng2 = Engine(configmod.engine_config(cfg))
    with caplog.at_level(logging.INFO, "gateway.pipeline"):
        state = restore_state(ob2, eng2)
    assert "engine state restored (5 tags last seen)" in caplog.text
    assert "dropped" not in caplog.text and "migrated" not in caplog.text
    where = locate(state, eng2.runtime, "c-2")
    assert where["found"] and where["tag"] == "62E3086C02" and where["reader"] == "g"
    assert state.passages["g"].keys() == {"62E3086C04"}  # the held card: same presentation
    ob2.close()


def test_a_migrated_state_is_logged_once_and_scrubbed_from_the_disk(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An old state (by tag id) in the buffer and in its WAL, as a power cut leaves it
    after an upgrade: restored, logged in one line with the dropped count, and at once
    overwritten so that no card number stays in the file or the WAL."""
    tags = child_tags(40)
    eng, reads, cut = _busy_state(tags)
    st, _ = run(eng, reads[:cut])
    buf = tmp_path / "buf.db"
    old = Outbox(str(buf), "u-1", "s")
    for _ in range(3):  # several versions of it in the WAL
        old.add([], state=(STATE_KEY, json.dumps(state_to_dict(st)).encode()))
    assert tags[0]["id"].encode() in _buffer_bytes(buf)["buf.db-wal"]
    ob = Outbox(str(buf), "u-1", "s")  # the new version, the old left as a power cut does
    eng2 = engine_of(full_raw(tags[:30]))  # ten children left
    with caplog.at_level(logging.INFO, "gateway.pipeline"):
        state = restore_state(ob, eng2)
    lines = [r.getMessage() for r in caplog.records if "migrated" in r.getMessage()]
    assert len(lines) == 1 and "entries of tags no longer enrolled dropped" in lines[0]
    assert tags[35]["id"] not in state.seen and tags[0]["id"] in state.seen
    _assert_no_tag_id(buf, tags)
    again, info = persist.loads(ob.load_state(STATE_KEY) or b"", eng2.runtime.tags)
    assert not info.migrated and state_to_dict(again) == state_to_dict(state)
    ob.close()
    old.close()
    _assert_no_tag_id(buf, tags)


E2E_TAGS: list[dict[str, Any]] = [
    {"id": "62E3086CED", "child": "c-1001", "groups": ["3a"]},
    {"id": "01000734E0", "child": "c-1002", "groups": ["3a"]},
    {"id": "67003B51C6", "child": "c-1003", "groups": ["4b"]},
]




def _locate(cfg: Path, who: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "locate", "--config", str(cfg), who],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    answer: dict[str, Any] = json.loads(out)
    return answer


def test_daemon_buffer_holds_no_card_number_and_locate_works(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    """A real gatewayd behind a simulated RDM6300 gate: the buffer and its WAL, while it
    runs, after a SIGKILL and after a restart, hold no enrolled card number; locate
    answers from the saved state; the restart restores every tag (none dropped). The
    recording a technician asked for (--record) is the one file with card numbers: it
    is said so in the log, and made owner-only even if it existed world-readable."""
    buf = tmp_path / "buf.db"
    rec = tmp_path / "readings.jsonl"
    rec.touch(mode=0o644)
    rec.chmod(0o644)
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=buf,
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": reader.path,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=E2E_TAGS, gate_window_s=1.0)
    gw = GatewayProcess(cfg, tmp_path / "gateway.log", ["--record", str(rec)]).start()
    try:
        gw.wait_log("reader gate-main: online")
        assert (f"recording readings of enrolled tags to {rec}: it holds their tag ids "
                "(card numbers) in clear" in gw.log_text())
        assert rec.stat().st_mode & 0o777 == 0o600
        sim = Rdm6300Sim(reader, repeat_s=0.1)
        for tag in E2E_TAGS:
            sim.present(tag["id"], hold_s=0.3)
        wait_until(lambda: gw.log_text().count("event gate seq=") >= 3, 15, "3 gate events")
        time.sleep(1.5)  # past the gate window: a new passage, and the recording flushed
        sim.present(E2E_TAGS[2]["id"], hold_s=0.2)
        wait_until(lambda: "event gate seq=4" in gw.log_text(), 15, "a 4th gate event")
        time.sleep(1.5)  # a state save after the last event
        _assert_no_tag_id(buf, E2E_TAGS, wal=True)
        assert E2E_TAGS[1]["id"] in rec.read_text()  # the recording does hold them
        gw.kill()  # a power cut: the WAL stays as it was
        _assert_no_tag_id(buf, E2E_TAGS, wal=True)
        where = _locate(cfg, "c-1002")
        assert where["found"] and where["child"] == "c-1002" and where["reader"] == "gate-main"
    finally:
        gw.stop()
    gw2 = GatewayProcess(cfg, tmp_path / "gateway2.log").start()
    try:
        gw2.wait_log("engine state restored (3 tags last seen)")
        gw2.wait_log("reader gate-main: online")
        Rdm6300Sim(reader, repeat_s=0.1).present(E2E_TAGS[0]["id"], hold_s=0.3)
        wait_until(lambda: "event gate seq=5" in gw2.log_text(), 15, "a gate event after")
        assert "dropped" not in gw2.log_text() and "Traceback" not in gw2.log_text()
    finally:
        gw2.stop()
    _assert_no_tag_id(buf, E2E_TAGS)
    where = _locate(cfg, "c-1001")
    assert where["found"] and where["reader"] == "gate-main" and where["tag"] == "62E3086CED"
