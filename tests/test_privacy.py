"""Privacy in the pipeline, with a real SQLite buffer (docs/privacy.md): unenrolment
stops a tag at once and forgets its state, exactly like a tag never enrolled;
pseudonyms on the wire per term; erase; retention. End to end through mosquitto:
tests/test_privacy_e2e.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import config as configmod
from gateway import roster as rostermod
from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.model import Event, Lane, TagRead
from gateway.outbox import Outbox
from gateway.pipeline import STATE_KEY, WINDOWS_KEY, Pipeline
from gateway.pseudonym import Pseudonyms, names, pseudonym
from gateway.roster import RosterError, RosterFile, Term

TAGS = [{"id": "62E3086C01", "child": "enrol-1"}, {"id": "62E3086C02", "child": "enrol-2"}]
STRANGER = "62E3086CFF"  # never enrolled
K1, K2 = bytes(range(32)), bytes(range(1, 33))


def b64(k: bytes) -> str:
    return base64.urlsafe_b64encode(k).rstrip(b"=").decode()


def make(tmp_path: Path, retention_days: float = 30.0) -> tuple[Pipeline, Outbox, FakeClock]:
    raw = {"unit": {"id": "u-1", "site": "s"}, "broker": {},
           "buffer": {"path": str(tmp_path / "buf.db")},
           "readers": [{"id": "g", "kind": "rdm6300", "role": "gate", "port": "/dev/null"}],
           "tags": TAGS, "privacy": {"retention_days": retention_days}}
    cfg = configmod.parse(raw)
    clock = FakeClock(1.7e9)
    ob = Outbox(cfg.buffer.path, "u-1", "s")
    pipe = Pipeline(cfg, Engine(configmod.engine_config(cfg)), ob, clock,
                    roster_file=RosterFile(cfg.buffer.path))
    return pipe, ob, clock


def present(pipe: Pipeline, clock: FakeClock, *tags: str) -> None:
    """Each card presented once at the gate and taken away; events committed."""
    for tag in tags:
        events = pipe.process([TagRead("g", tag, clock.now(), mono=clock.monotonic())])
        clock.advance(5.0)
        events += pipe.engine.tick(pipe.engine_state, clock.now(), clock.monotonic())[1]
        pipe.commit(events)


def buffered(ob: Outbox) -> list[dict[str, Any]]:
    return [json.loads(s.payload) for lane in Lane for s in ob.fetch(int(lane), 0, 10_000)]


def test_unenrolment_stops_a_tag_at_once_like_one_never_enrolled(tmp_path: Path) -> None:
    pipe, ob, clock = make(tmp_path)
    present(pipe, clock, "62E3086C01", "62E3086C02")
    assert sorted(e["child"] for e in buffered(ob)) == ["enrol-1", "enrol-2"]
    assert "62E3086C02" in pipe.engine_state.seen
    done = pipe.change_roster(rostermod.parse_change(
        {"expected_version": 0, "unenrol": [{"child": "enrol-2"}]}))
    assert done["version"] == 1 and done["removed"] == 1 and done["state_forgotten"] >= 1
    assert done["checksum"] == pipe.roster.checksum == RosterFile(ob.path).load().checksum  # type: ignore[union-attr]
    # Undelivered events of the withdrawn child stay (decided while consent held).
    assert sorted(e["child"] for e in buffered(ob)) == ["enrol-1", "enrol-2"]
    # Its state is gone from memory and from the saved state; the WAL was emptied.
    st = pipe.engine_state
    assert "62E3086C02" not in st.seen
    assert "enrol-2" not in st.arrived and "enrol-2" not in st.passed
    for key in (STATE_KEY, WINDOWS_KEY):
        assert b"enrol-2" not in (ob.load_state(key) or b"")
    assert not (tmp_path / "buf.db-wal").exists() or (tmp_path / "buf.db-wal").stat().st_size == 0
    # From now on it is exactly a tag that was never enrolled: counted, nothing else.
    before = dict(pipe.counters)
    present(pipe, clock, "62E3086C02", STRANGER)
    assert pipe.counters["unenrolled_reads"] - before.get("unenrolled_reads", 0) == 2
    assert pipe.counters["events"] == before["events"]
    assert "62E3086C02" not in pipe.engine_state.seen and STRANGER not in pipe.engine_state.seen
    assert pipe.enrolled == frozenset({"62E3086C01"})
    assert pipe.engine.runtime.tags.keys() == {"62E3086C01"}
    ob.close()


def test_a_stale_or_bad_change_changes_nothing(tmp_path: Path) -> None:
    pipe, ob, clock = make(tmp_path)
    present(pipe, clock, "62E3086C01")
    roster, enrolled = pipe.roster, pipe.enrolled
    for args, code in [({"expected_version": 3, "unenrol": [{"child": "enrol-1"}]}, 409),
                       ({"expected_version": 0, "unenrol": [{"child": "c-9"}]}, 404)]:
        with pytest.raises(RosterError) as e:
            pipe.change_roster(rostermod.parse_change(args))
        assert e.value.code == code
    assert pipe.roster is roster and pipe.enrolled is enrolled
    assert not Path(RosterFile(ob.path).path).exists()
    assert "62E3086C01" in pipe.engine_state.seen
    ob.close()


def test_events_carry_pseudonyms_of_the_term_and_rotation_keeps_continuity(
        tmp_path: Path) -> None:
    pipe, ob, clock = make(tmp_path)
    pipe.change_roster(rostermod.parse_change(
        {"expected_version": 0, "term": {"id": "t1", "key": b64(K1)}}))
    present(pipe, clock, "62E3086C01")
    pipe.change_roster(rostermod.parse_change(
        {"expected_version": 1, "term": {"id": "t2", "key": b64(K2)}}))
    present(pipe, clock, "62E3086C01")
    evs = [e for e in buffered(ob) if e["kind"] == "gate"]
    assert [(e["child"], e["term"]) for e in evs] == [(pseudonym(K1, "enrol-1"), "t1"),
                                                     (pseudonym(K2, "enrol-1"), "t2")]
    assert evs[0]["child"].startswith("p-") and len(evs[0]["child"]) == 34
    # The backend maps back: it holds the term keys and the enrolment ids.
    backend = {(t, pseudonym(k, c)): c for t, k in (("t1", K1), ("t2", K2))
               for c in ("enrol-1", "enrol-2")}
    assert {backend[(e["term"], e["child"])] for e in evs} == {"enrol-1"}
    # Enrolment ids appear in no event and no saved state.
    assert b"enrol-1" not in json.dumps(evs).encode()
    assert pipe.roster.retired == (Term("t1", K1),)
    ob.close()


def test_roll_calls_name_children_by_pseudonym() -> None:
    p = Pseudonyms(Term("t1", K1))
    rc = Event("roll_call", 1.0, Lane.EMERGENCY, data={
        "present": [{"child": "enrol-1", "zones": ["yard"]}], "missing": [{"child": "enrol-2"}],
        "count": 1})
    out = p.events([rc, Event("clock_step", 1.0, data={"step_s": 3})])
    assert out[0].data["present"][0]["child"] == pseudonym(K1, "enrol-1")
    assert out[0].data["missing"][0]["child"] == pseudonym(K1, "enrol-2") and out[0].term == "t1"
    assert out[1].term is None  # names no child
    assert p.events(out) == out  # named once: a held event is not renamed
    assert rc.data["present"][0]["child"] == "enrol-1"  # the engine's event is not changed


def test_erase_removes_state_and_undelivered_events_under_every_term(tmp_path: Path) -> None:
    pipe, ob, clock = make(tmp_path)
    present(pipe, clock, "62E3086C01", "62E3086C02")  # no term yet: enrolment ids
    pipe.change_roster(rostermod.parse_change(
        {"expected_version": 0, "term": {"id": "t1", "key": b64(K1)}}))
    present(pipe, clock, "62E3086C01", "62E3086C02")
    pipe.commit([Event("roll_call", clock.now(), Lane.EMERGENCY, data={
        "alert_id": "a1", "present": [{"child": "enrol-1", "zones": []},
                                      {"child": "enrol-2", "zones": []}],
        "count": 2, "missing": []})])
    seqs_c1 = [e["seq"] for e in buffered(ob) if e["child"] in names("enrol-1", [Term("t1", K1)])]
    assert len(seqs_c1) == 2
    out = pipe.erase("enrol-1")
    assert out["events_deleted"] == 2 and out["events_redacted"] == 1
    assert sum(b - a + 1 for a, b in out["ranges"]) == 2
    assert sorted(s for a, b in out["ranges"] for s in range(a, b + 1)) == sorted(seqs_c1)
    assert out["state_entries"] >= 1
    left = buffered(ob)
    assert all(e["child"] not in names("enrol-1", [Term("t1", K1)]) for e in left)
    rc = next(e for e in left if e["kind"] == "roll_call")
    assert [x["child"] for x in rc["data"]["present"]] == [pseudonym(K1, "enrol-2")]
    assert rc["data"]["count"] == 1
    assert "62E3086C01" not in pipe.engine_state.seen
    assert b"enrol-1" not in (ob.load_state(STATE_KEY) or b"")
    # Still enrolled: the erase does not unenrol (the roster command does).
    assert "62E3086C01" in pipe.enrolled
    assert pipe.erase("c-7")["events_deleted"] == 0  # unknown: erased too, nothing found
    ob.close()


def test_retention_purges_old_events_state_and_retired_keys(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe, ob, clock = make(tmp_path, retention_days=2)
    pipe.change_roster(rostermod.parse_change(
        {"expected_version": 0, "term": {"id": "t1", "key": b64(K1)}}))
    present(pipe, clock, "62E3086C01", "62E3086C02")
    assert pipe.purge()["events"] == 0  # a mark: these two events are older than now
    pipe.change_roster(rostermod.parse_change(
        {"expected_version": 1, "term": {"id": "t2", "key": b64(K2)}}))
    clock.advance(86400.0)
    present(pipe, clock, "62E3086C02")  # c-2 seen a day later
    old = [e["seq"] for e in buffered(ob)]
    clock.advance(1.5 * 86400.0)  # the first events are 2.5 days old, the last 1.5
    clock.step_wall(-3e8)  # a wall clock stepped back by years ages nothing (engine time does)
    import logging
    with caplog.at_level(logging.INFO, "gateway.pipeline"):
        out = pipe.purge()
    assert out == {"events": 2, "tags": 1, "state_entries": out["state_entries"], "terms": 1}
    assert "retention (2 days): 2 events purged" in caplog.text
    left = buffered(ob)
    assert [e["kind"] for e in left] == ["gate", "buffer_drop"]
    assert left[1]["data"]["ranges"] == [[old[0], old[1]]]
    assert "62E3086C01" not in pipe.engine_state.seen and "62E3086C02" in pipe.engine_state.seen
    assert pipe.roster.retired == ()  # no buffered event needs t1 any more
    assert RosterFile(ob.path).load().retired == ()  # type: ignore[union-attr]
    ob.close()


def test_erase_scans_off_the_pipeline_thread_and_catches_what_came_after(
        tmp_path: Path) -> None:
    """The daemon scans the buffer for the child's rows on the command thread and hands
    the pipeline the rows found and the last seq scanned: events committed in between
    are erased too."""
    pipe, ob, clock = make(tmp_path)
    present(pipe, clock, "62E3086C01", "62E3086C02")
    upto = ob.last_seq()
    found = ob.child_rows(pipe.erase_names("enrol-1"), upto=upto)
    assert len(found) == 1
    present(pipe, clock, "62E3086C01")  # committed after the scan
    out = pipe.erase("enrol-1", (found, upto))
    assert out["events_deleted"] == 2
    assert [e["child"] for e in buffered(ob)] == ["enrol-2"]
    ob.close()


@pytest.mark.parametrize(("section", "why"), [
    ({"retention_days": 0}, "privacy.retention_days"),
    ({"retention_days": "30"}, "privacy.retention_days"),
    ({"retention_days": 5000}, "privacy.retention_days"),
    ({"purge_interval_s": 0.5}, "privacy.purge_interval_s"),
    ({"retention_day": 30}, "privacy.retention_day"),
])
def test_privacy_config_is_strict(section: dict[str, Any], why: str) -> None:
    raw = {"unit": {"id": "u-1", "site": "s"}, "broker": {}, "buffer": {"path": "/tmp/x.db"},
           "privacy": section}
    with pytest.raises(configmod.ConfigInvalid) as e:
        configmod.parse(raw)
    assert any(err.key == why for err in e.value.errors), e.value.errors


def test_privacy_config_defaults() -> None:
    cfg = configmod.parse({"unit": {"id": "u-1", "site": "s"}, "broker": {},
                           "buffer": {"path": "/tmp/x.db"}})
    assert cfg.privacy == configmod.PrivacyConfig(30.0, 3600.0)
