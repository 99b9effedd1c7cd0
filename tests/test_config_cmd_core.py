"""The config trial's pure core (gateway/trial.py), its files (gateway/trialfiles.py) and the
command's argument parsing (gateway/commands/config.py). End to end: test_config_cmd_e2e.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import trial as tr
from gateway import trialfiles
from gateway.commands.config import parse
from gateway.commands.core import BadArgs
from gateway.config import load
from harness import GOOD_CONFIG

OLD = "[unit]\nid = 'gate-01'\n"
NEW = "[unit]\nid = 'gate-01'\n# changed\n"


def trial(**kw: object) -> tr.Trial:
    base = tr.Trial(request="r-1", unit="gate-01", version=tr.version_of(NEW.encode()),
                    previous=tr.version_of(OLD.encode()), previous_text=OLD, started=1000.0,
                    deadline=1120.0, reply_topic="kidsafe/v1/gate-01/reply/r-1",
                    correlation="0a0b", digest="d" * 64, expires=5000.0)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_version_is_the_sha256_of_the_bytes() -> None:
    import hashlib

    assert tr.version_of(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert tr.is_version(tr.version_of(b"")) and not tr.is_version("ABC")


def test_a_trial_is_confirmed_by_a_connection_before_its_deadline() -> None:
    t = trial()
    assert isinstance(tr.on_tick(t, 1010.0, connected=False), tr.Wait)
    d = tr.on_tick(t, 1010.0, connected=True)
    assert isinstance(d, tr.Keep) and d.trial.outcome == tr.Outcome(
        200, "confirmed: connected to the broker 10.0 s after the change")
    assert tr.reply_data(d.trial)["outcome"] == "kept"
    assert tr.reply_data(d.trial)["active_version"] == t.version


def test_no_connection_by_the_deadline_rolls_back() -> None:
    d = tr.on_tick(trial(), 1120.0, connected=False)
    assert isinstance(d, tr.RollBack)
    assert d.trial.outcome is not None and d.trial.outcome.code == 409
    assert "no broker connection within 120 s" in d.trial.outcome.reason
    data = tr.reply_data(d.trial)
    assert data["outcome"] == "rolled-back" and data["active_version"] == trial().previous


def test_a_wall_clock_gone_back_counts_as_expired() -> None:
    assert isinstance(tr.on_tick(trial(), 900.0, connected=False), tr.RollBack)


def test_at_start() -> None:
    t = trial()
    # Restarted during the trial (kill -9, power cut), before the deadline: it goes on.
    assert tr.at_start(t, t.version, 1050.0) == tr.Wait(t, 1120.0)
    # After the deadline: rolled back.
    d = tr.at_start(t, t.version, 1200.0)
    assert isinstance(d, tr.RollBack) and "restarted during the trial" in str(d.trial.outcome)
    # The swap never happened: the previous config is active, the trial failed (500).
    d = tr.at_start(t, t.previous, 1050.0)
    assert isinstance(d, tr.Report) and d.trial.outcome is not None
    assert d.trial.outcome.code == 500
    # A hand edit during the trial wins.
    d = tr.at_start(t, tr.version_of(b"other"), 1050.0)
    assert isinstance(d, tr.Report) and "changed on the unit" in str(d.trial.outcome)
    # Decided before: only the reply is left to send.
    done = t.decided(409, "rolled back")
    assert tr.at_start(done, t.previous, 1050.0) == tr.Report(done)


def test_marker_round_trip_and_rejects() -> None:
    t = trial().decided(409, "no broker")
    assert tr.from_json(tr.to_json(t)) == t
    assert tr.from_json(tr.to_json(trial())) == trial()
    for bad in (b"", b"[]", b'{"marker": 2}', b"\xff",
                tr.to_json(trial(previous_text="tampered"))):
        with pytest.raises(tr.MarkerError):
            tr.from_json(bad)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_marker_bytes_parse_or_raise_marker_error(raw: bytes) -> None:
    with contextlib.suppress(tr.MarkerError):
        tr.from_json(raw)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["marker", "request", "version", "started", "outcome",
                                        "previous_text", "deadline", "expires"]),
                       st.one_of(st.none(), st.integers(), st.text(max_size=5),
                                 st.floats(allow_nan=True), st.lists(st.integers()))))
def test_any_marker_json_parses_or_raises_marker_error(doc: dict[str, object]) -> None:
    good = json.loads(tr.to_json(trial()))
    with contextlib.suppress(tr.MarkerError):
        tr.from_json(json.dumps({**good, **doc}).encode())


def test_args() -> None:
    v = tr.version_of(b"x")
    a = parse({"config": NEW, "expected_version": v})
    assert (a.text, a.expected_version, a.confirm_s) == (NEW, v, None)
    assert parse({"config": NEW, "expected_version": v, "confirm_s": 30}).confirm_s == 30.0
    for bad in ({"config": NEW}, {"expected_version": v}, {"config": "", "expected_version": v},
                {"config": NEW, "expected_version": "abc"},
                {"config": NEW, "expected_version": v.upper()},
                {"config": NEW, "expected_version": v, "confirm_s": 5},
                {"config": NEW, "expected_version": v, "confirm_s": True},
                {"config": NEW, "expected_version": v, "extra": 1},
                {"config": 3, "expected_version": v}, {"config": "a\x00b", "expected_version": v}):
        with pytest.raises(BadArgs):
            parse(bad)


# -- the files --------------------------------------------------------------------------------

def write_good(tmp_path: Path, text: str = GOOD_CONFIG) -> Path:
    p = tmp_path / "gw.toml"
    p.write_text(text)
    return p


def test_candidate_is_checked_by_the_loader_with_the_config_named(tmp_path: Path) -> None:
    p = write_good(tmp_path)
    running = load(p)
    c = trialfiles.Candidate(p, GOOD_CONFIG.replace('port = 1883', 'port = 0'))
    errors, _ = c.check(running)
    c.discard()
    assert errors == [f"{p}: broker.port: must be a TCP port between 1 and 65535"]
    c = trialfiles.Candidate(p, GOOD_CONFIG.replace('id = "gate-01"', 'id = "gate-02"')
                             .replace('path = "buf.db"', 'path = "other.db"'))
    errors, _ = c.check(running)
    c.discard()
    assert [e.split(": ")[1] for e in errors] == ["unit.id", "buffer.path"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["gw.toml"]  # no temp file left


def test_begin_keep_and_roll_back_leave_consistent_files(tmp_path: Path) -> None:
    p = write_good(tmp_path, OLD)
    p.chmod(0o640)
    c = trialfiles.Candidate(p, NEW)
    t = trial()
    trialfiles.begin(c, t)
    assert p.read_text() == NEW and p.stat().st_mode & 0o777 == 0o640
    assert trialfiles.read_marker(p) == t
    # Kept: .previous is the old text, the marker records the outcome until the reply goes.
    kept = t.decided(200, "ok")
    trialfiles.keep(p, kept)
    assert trialfiles.previous_path(p).read_text() == OLD
    assert trialfiles.read_marker(p) == kept
    assert trialfiles.versions(p) == (t.version, t.previous)
    trialfiles.remove_marker(p)
    assert trialfiles.read_marker(p) is None
    # Rolled back: the old text is back, the tried one kept as .rejected.
    p.write_text(NEW)
    back = t.decided(409, "no broker")
    trialfiles.roll_back(p, back)
    assert p.read_text() == OLD and trialfiles.rejected_path(p).read_text() == NEW
    assert trialfiles.read_marker(p) == back


def test_at_start_rolls_back_an_expired_trial_on_disk(tmp_path: Path) -> None:
    p = write_good(tmp_path, NEW)
    trialfiles.write_marker(p, trial())
    d = trialfiles.at_start(p, 2000.0)
    assert isinstance(d, tr.Report) and d.trial.outcome is not None
    assert p.read_text() == OLD
    assert trialfiles.read_marker(p) == d.trial  # the reply is still to be sent
    # A config file lost during the trial gets the previous one back.
    p.unlink()
    trialfiles.write_marker(p, trial())
    d = trialfiles.at_start(p, 1050.0)
    assert isinstance(d, tr.Report) and p.read_text() == OLD


def test_unusable_marker_is_moved_aside(tmp_path: Path) -> None:
    p = write_good(tmp_path)
    trialfiles.marker_path(p).write_text("{half")
    assert trialfiles.at_start(p, 0.0) is None
    assert Path(f"{trialfiles.marker_path(p)}.bad").exists()
    assert not trialfiles.marker_path(p).exists()


def test_schema_and_parser_agree() -> None:
    import jsonschema

    doc = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schemas" / "commands"
                      / "config.schema.json").read_text())
    cls = jsonschema.validators.validator_for(doc)
    cls.check_schema(doc)
    check = cls(doc)
    for ok in doc["examples"]:
        check.validate(ok)
        parse(ok)
    v = tr.version_of(b"x")
    for bad in ({"config": NEW}, {"config": "", "expected_version": v},
                {"config": NEW, "expected_version": v.upper()},
                {"config": NEW, "expected_version": v, "confirm_s": 5},
                {"config": NEW, "expected_version": v, "confirm_s": 4000},
                {"config": NEW, "expected_version": v, "extra": 1},
                {"config": "a\x00b", "expected_version": v}):
        assert not check.is_valid(bad), bad
        with pytest.raises(BadArgs):
            parse(bad)
