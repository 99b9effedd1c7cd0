"""Monotonic engine time (issue 10): wall-clock steps back and forward, and restarts.

Readings carry the wall clock (``time``) and the monotonic clock (``mono``); the
engine's timers run on ``mono`` and event times are wall-clock times.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway import config as configmod
from gateway.clock import FakeClock
from gateway.daemon import continued
from gateway.engine import Engine, EngineState, state_from_dict, state_to_dict
from gateway.model import BleSighting, Event, TagRead
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from scenarios import T0, engine_of, raw_config, reader

CARD = "62E3086CED"
KID = "C0FFEE000001"
STEPS = [-3.0, -120.0, -7200.0, 3.0, 120.0, 3600.0]  # seconds to hours, both ways


def _kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# -- a card held at a gate while the wall clock steps ----------------------------------------

def _gate_pipeline(tmp_path: Path, clock: FakeClock) -> tuple[Pipeline, Outbox]:
    cfg = configmod.parse({
        "unit": {"id": "u-1", "site": "s"}, "broker": {},
        "buffer": {"path": str(tmp_path / "b.db")},
        "readers": [{"id": "g", "kind": "rdm6300", "role": "gate", "port": "/dev/null"}],
        "tags": [{"id": CARD, "child": "c-1"}],
        "engine": {"timezone": "Asia/Seoul"},
    })
    ob = Outbox(cfg.buffer.path, "u-1", "s")
    return Pipeline(cfg, Engine(configmod.engine_config(cfg)), ob, clock), ob


@pytest.mark.parametrize("step", STEPS)
def test_card_held_2s_across_a_step_is_one_passage(tmp_path: Path, step: float,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The RDM6300 repeats its frame every 0.1 s while the card is held; the wall clock
    steps 1 s in. One gate event at the true time of the first read, the step logged
    once as one line with its size."""
    clock = FakeClock(T0)
    pipe, ob = _gate_pipeline(tmp_path, clock)
    events: list[Event] = []
    first_wall = clock.now()
    with caplog.at_level(logging.INFO, logger="gateway.pipeline"):
        for i in range(20):
            if i == 10:
                clock.step_wall(step)  # NTP: the monotonic clock does not move
            evs = pipe.process([TagRead("g", CARD, clock.now(), mono=clock.monotonic())])
            for _ in range(3):  # the pipeline ticks every 0.5 s, faster than reads here
                pipe.engine_state, more = pipe.engine.tick(pipe.engine_state, clock.now(),
                                                           clock.monotonic())
                evs += more
            pipe.commit(evs)
            events += evs
            clock.advance(0.1)
        clock.advance(5.0)
        pipe.engine_state, more = pipe.engine.tick(pipe.engine_state, clock.now(),
                                                   clock.monotonic())
        events += more
        pipe.commit(more)
    gates = [e for e in events if e.kind == "gate"]
    assert len(gates) == 1 and gates[0].data["first_passage_today"] is True
    assert gates[0].time == pytest.approx(first_wall)  # decided at once, before the step
    steps = [e for e in events if e.kind == "clock_step"]
    assert [e.data["step_s"] for e in steps] == [pytest.approx(step)]
    lines = [r.getMessage() for r in caplog.records if "wall clock stepped" in r.getMessage()]
    assert len(lines) == 1 and f"{step:+.3f} s" in lines[0]
    assert ob.last_seq() == 2  # the passage and the step notice
    ob.close()


@pytest.mark.parametrize("step", [-7200.0, 3600.0])
def test_two_sided_passage_across_a_step_has_its_true_time(step: float) -> None:
    """A passage decided after the step is stamped on the corrected clock."""
    eng = engine_of(raw_config([reader("out", "gate_outer"), reader("in", "gate_inner")],
                               [{"id": CARD, "child": "c-1"}],
                               engine={"timezone": "Asia/Seoul"}))
    st = eng.initial_state()
    events: list[Event] = []
    wrong = -step  # the wall clock is wrong by this until the step corrects it
    for i in range(20):
        mono = 100.0 + i * 0.1
        wall = T0 + i * 0.1 + (wrong if i < 10 else 0.0)
        st, evs = eng.step(st, TagRead("out" if i < 8 else "in", CARD, wall, mono=mono))
        events += evs
    for k in range(1, 30):
        st, evs = eng.tick(st, T0 + 2.0 + k * 0.5, 102.0 + k * 0.5)
        events += evs
    gates = [e for e in events if e.kind == "gate"]
    assert len(gates) == 1 and gates[0].data["direction"] == "arrival"
    assert T0 <= gates[0].time <= T0 + 2.0  # true time, not the wrong clock's
    assert _kinds(events).count("clock_step") == 1


# -- zone timers while the wall clock steps --------------------------------------------------

def _zone_engine() -> Engine:
    zone = {"id": "yard", "readers": ["ble-z"], "enter_dbm": -75.0, "exit_dbm": -85.0,
            "stay_groups": ["class-3a"], "stay_hours": ["08:00-16:00"]}
    return engine_of(raw_config([reader("ble-z", "zone")],
                                [{"id": KID, "child": "c-1", "groups": ["class-3a"]}],
                                zones=[zone], engine={"timezone": "Asia/Seoul"}))


def _zone_run(eng: Engine, st: EngineState, wall0: float, mono0: float, seconds: int,
              step_at: float | None = None, step: float = 0.0, advertise_until: float = 60.0,
              ) -> tuple[EngineState, list[tuple[Event, float]]]:
    """A tag advertising at 1 Hz until ``advertise_until`` s, then gone; ticks every 0.5 s.
    Returns events with the engine (monotonic) time that decided them."""
    out: list[tuple[Event, float]] = []
    for k in range(seconds * 2):
        dt = k * 0.5
        wall = wall0 + dt + (step if step_at is not None and dt >= step_at else 0.0)
        mono = mono0 + dt
        if k % 2 == 0 and dt < advertise_until:
            st, evs = eng.step(st, BleSighting("ble-z", KID, wall, -60, mono=mono))
            out += [(e, mono) for e in evs]
        st, evs = eng.tick(st, wall, mono)
        out += [(e, mono) for e in evs]
    return st, out


@pytest.mark.parametrize("step", [*STEPS, -1.5, 1.5])
def test_zone_timers_neither_freeze_nor_fire_across_a_step(step: float) -> None:
    eng = _zone_engine()
    st, decided = _zone_run(eng, eng.initial_state(), T0, 500.0, 150, step_at=30.0, step=step)
    kinds = [e.kind for e, _ in decided]
    big = abs(step) > 2.0
    assert kinds == ["zone_enter", *(["clock_step"] if big else []), "zone_exit", "zone_alert"]
    exit_, mono = next((e, m) for e, m in decided if e.kind == "zone_exit")
    # Absent 30 s after the last advert at 59 s: decided on the monotonic clock.
    assert 500.0 + 89.0 <= mono <= 500.0 + 91.0
    # On the new wall clock: decided then, crossed (estimated) between the last advert
    # and the decision.
    decided_at = _epoch(exit_.data["decided"])
    assert decided_at == pytest.approx(T0 + (mono - 500.0) + step, abs=0.001)
    last_seen = _epoch(exit_.data["last_seen"])
    assert last_seen == pytest.approx(T0 + 59.0 + step, abs=0.01)
    assert last_seen - 0.01 <= exit_.time <= decided_at
    assert st.downtime_s == 0.0  # a forward step is not downtime


def test_stay_hours_follow_the_corrected_wall_clock() -> None:
    """The wall clock was 9 h ahead (19:00 in Seoul, outside the stay hours) until NTP
    corrected it; the child leaves after the correction, at 10:01: an alert."""
    eng = _zone_engine()
    _, decided = _zone_run(eng, eng.initial_state(), T0 + 9 * 3600, 500.0, 150,
                            step_at=30.0, step=-9 * 3600)
    assert [e.kind for e, _ in decided] == ["zone_enter", "clock_step", "zone_exit",
                                            "zone_alert"]
    # Without the correction the same exit is outside the stay hours: no alert.
    _, decided = _zone_run(eng, eng.initial_state(), T0 + 9 * 3600, 500.0, 150)
    assert [e.kind for e, _ in decided] == ["zone_enter", "zone_exit"]


def test_readings_without_mono_run_on_wall_time() -> None:
    """Readings made by hand (no monotonic stamp): engine time is their wall time."""
    eng = _zone_engine()
    st = eng.initial_state()
    st, evs = eng.step(st, BleSighting("ble-z", KID, T0, -60))
    assert st.clock == T0 and st.wall_offset == 0.0 and evs == []


# -- across a restart ------------------------------------------------------------------------

def _saved(st: EngineState) -> EngineState:
    return state_from_dict(json.loads(json.dumps(state_to_dict(st))))


@pytest.mark.parametrize("wall_step", [0.0, -3600.0, 7200.0])
def test_restart_continues_engine_time(wall_step: float) -> None:
    """State saved, the unit down 20 s while the wall clock stepped (or not), restored:
    engine time continues, the child inside stays inside (no false exit), the card
    still held at the gate is the same passage, the step is reported once, and event
    times are on the new wall clock."""
    eng = engine_of(raw_config(
        [reader("ble-z", "zone"), reader("g", "gate")],
        [{"id": KID, "child": "c-1", "groups": ["class-3a"]}, {"id": CARD, "child": "c-2"}],
        zones=[{"id": "yard", "readers": ["ble-z"], "enter_dbm": -75.0, "exit_dbm": -85.0}],
        engine={"timezone": "Asia/Seoul"}))
    clock = FakeClock(T0)
    clock.advance(1000.0)  # the process has run a while: monotonic 1000
    st = eng.initial_state()
    events: list[Event] = []

    def run(seconds: float, ble: bool, card: bool, c: Any) -> None:
        nonlocal st
        end = c.monotonic() + seconds
        while c.monotonic() < end:
            if ble:
                st, evs = eng.step(st, BleSighting("ble-z", KID, c.now(), -60, mono=c.monotonic()))
                events.extend(evs)
            if card:
                st, evs = eng.step(st, TagRead("g", CARD, c.now(), mono=c.monotonic()))
                events.extend(evs)
            st, evs = eng.tick(st, c.now(), c.monotonic())
            events.extend(evs)
            clock.advance(0.5)

    run(20.0, ble=True, card=False, c=clock)
    run(1.0, ble=True, card=True, c=clock)
    assert _kinds(events) == ["zone_enter", "gate"]
    saved = _saved(st)
    before = saved.clock
    # Down 20 s: a new process, its monotonic clock from its own zero; the wall stepped.
    clock = FakeClock(clock.now() + 20.0 + wall_step)
    shifted = continued(clock, saved)
    st = saved
    # Engine time goes on, never back: over the downtime where it looks plausible.
    assert shifted.monotonic() == pytest.approx(before + (0.0 if wall_step < 0 else
                                                          20.5 + wall_step))
    run(2.0, ble=True, card=True, c=shifted)  # the card is still held, the child still in
    run(60.0, ble=False, card=False, c=shifted)  # then both go
    kinds = _kinds(events)
    assert kinds.count("gate") == 1 and kinds.count("zone_enter") == 1
    assert kinds.count("zone_exit") == 1
    # A step back shows as a wall clock behind the saved state: no downtime, one step.
    # A step forward looks like a longer downtime, which is all the engine needs.
    assert kinds.count("clock_step") == (1 if wall_step < 0 else 0)
    exit_ = next(e for e in events if e.kind == "zone_exit")
    assert exit_.data["reason"] == "absent"
    # The last advert 1.5 s after the restart, decided absent 30 s later: on the stepped
    # wall clock.
    last = T0 + 1000.0 + 21.0 + 20.0 + wall_step + 1.5
    assert _epoch(exit_.data["last_seen"]) == pytest.approx(last, abs=0.6)
    assert _epoch(exit_.data["decided"]) == pytest.approx(last + 30.0, abs=1.1)
    assert last - 0.6 <= exit_.time <= last + 31.1


def test_clock_step_event_validates_as_sent(tmp_path: Path) -> None:
    import contract  # tests/contract.py: the schemas as the backend checks them

    eng = _zone_engine()
    st = eng.initial_state()
    events: list[Event] = []
    for i, wall in enumerate((T0, T0 + 1.0, T0 - 3600.0)):
        st, evs = eng.step(st, BleSighting("ble-z", KID, wall, -60, mono=10.0 + i))
        events += evs
    assert _kinds(events) == ["clock_step"]
    ob = Outbox(str(tmp_path / "b.db"), "u-1", "site")
    for s in ob.add(events):
        assert contract.violations(f"kidsafe/v1/u-1/{s.topic}", s.payload) == [], s.payload
    ob.close()


def test_recording_carries_mono_and_replays_across_a_step(tmp_path: Path) -> None:
    """The readings file keeps each line's monotonic time (``m``): a replay decides on it
    as the live engine did, whatever the wall clock did; old lines without it still load."""
    from gateway.recording import Control, Recorder, read_items
    from gateway.replay import Replayer

    reads = [BleSighting("ble-z", KID, T0 + k + (-7200.0 if k >= 30 else 0.0), -60,
                         mono=500.0 + k) for k in range(60)]
    live = Replayer(_zone_engine())
    expected = [e for r in reads for e in live.feed(r)]
    path = tmp_path / "readings.jsonl"
    with Recorder(path, now=T0 - 1, mono=499.0) as rec:
        for r in reads:
            rec(r)
        rec.control("tick", T0 - 7200.0 + 120.0, mono=620.0)
    expected += live.feed(Control("tick", T0 - 7080.0, mono=620.0))
    items = list(read_items(path))
    assert items[1] == reads[0]  # mono round-trips
    rp = Replayer(_zone_engine())
    replayed = [e for it in items for e in rp.feed(it)]
    assert [(e.kind, e.time) for e in replayed] == [(e.kind, e.time) for e in expected]
    assert _kinds(replayed) == ["zone_enter", "clock_step", "zone_exit", "zone_alert"]
    old = tmp_path / "old.jsonl"
    old.write_text('{"type": "ble", "t": 1717203600.0, "reader": "ble-z", '
                   '"tag": "c0ffee000001", "rssi": -60}\n')
    (item,) = read_items(old)
    assert isinstance(item, BleSighting) and item.mono != item.mono  # NaN: runs on t
