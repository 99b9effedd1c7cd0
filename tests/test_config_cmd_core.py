"""The config trial's pure core (gateway/trial.py), its files (gateway/trialfiles.py) and the
command's argument parsing (gateway/commands/config.py). End to end: test_config_cmd_e2e.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import trial as tr
from gateway import trialfiles
from gateway.commands.config import parse
from gateway.commands.core import BadArgs, Command
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


# -- the daemon's side, on real files (gateway/configtrial.py) ----------------------------------

class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def command(rid: str = "0b8f1f4e-9a38-4c1e-8d2f-6a1c2b3d4e5f") -> Command:
    return Command(rid, "gate-01", "config", 0.0, 9e9, {}, digest="d" * 64)


def test_config_trials_begin_refuse_confirm_and_reply(tmp_path: Path) -> None:
    from gateway.commands.config import PENDING, ConfigArgs
    from gateway.configtrial import ConfigTrials

    p = write_good(tmp_path)
    clock = Clock(1000.0)
    trials = ConfigTrials(load(p), None, 120.0, clock)
    old = tr.version_of(GOOD_CONFIG.encode())
    new_text = GOOD_CONFIG + "\n[health]\ninterval_s = 30\n"
    assert trials.info()["version"] == old and trials.info()["previous"] is None
    # Stale: 409, nothing written.
    r = trials.start(command(), ConfigArgs(new_text, tr.version_of(b"x"), None), "t", None)
    assert r.code == 409 and sorted(x.name for x in tmp_path.iterdir()) == ["gw.toml"]
    # The active text again: 200 unchanged, no restart.
    r = trials.start(command(), ConfigArgs(GOOD_CONFIG, old, None), "t", None)
    assert (r.code, r.data["outcome"]) == (200, "unchanged") and not trials.restart.is_set()
    # Begun: PENDING, the file replaced, the marker holds the old text, a restart asked for.
    r = trials.start(command(), ConfigArgs(new_text, old, 30.0), "kidsafe/v1/gate-01/reply/x",
                     b"\x01\x02")
    assert r.code == PENDING and trials.restart.is_set()
    assert p.read_text() == new_text
    marker = trialfiles.read_marker(p)
    assert marker is not None and marker.previous_text == GOOD_CONFIG
    assert (marker.deadline, marker.correlation) == (1030.0, "0102")
    # A second push while it runs: 409.
    r = trials.start(command("1b6713c0-1ea7-454c-bc9b-7c62f9dfbff5"),
                     ConfigArgs(GOOD_CONFIG, tr.version_of(new_text.encode()), None), "t", None)
    assert r.code == 409 and "in progress" in r.reason
    # The next image (after the re-exec) finds the trial and confirms it on connecting.
    found = trialfiles.at_start(p, 1005.0)
    assert isinstance(found, tr.Wait)
    nxt = ConfigTrials(load(p), found, 120.0, clock)
    assert nxt.active and nxt.info()["trial"]["deadline_s"] == 30.0
    sent: list[tuple[str, Any, bytes | None]] = []
    stored: list[tuple[str, Any]] = []
    nxt.tick(False, lambda *a: sent.append(a), lambda rid, d, e, rep: stored.append((rid, rep)))
    assert not sent and nxt.active
    clock.t = 1010.0
    nxt.tick(True, lambda *a: sent.append(a), lambda rid, d, e, rep: stored.append((rid, rep)))
    assert [(t, rep.code, c) for t, rep, c in sent] == [
        ("kidsafe/v1/gate-01/reply/x", 200, b"\x01\x02")]
    assert stored[0][0] == command().id and stored[0][1] == sent[0][1]
    assert not trialfiles.marker_path(p).exists()
    assert trialfiles.previous_path(p).read_text() == GOOD_CONFIG
    assert nxt.info()["version"] == tr.version_of(new_text.encode())
    assert nxt.info()["previous"] == old and nxt.info()["trial"] is None


def test_config_trials_roll_back_at_the_deadline(tmp_path: Path) -> None:
    from gateway.commands.config import ConfigArgs
    from gateway.configtrial import ConfigTrials

    p = write_good(tmp_path)
    clock = Clock(1000.0)
    old = tr.version_of(GOOD_CONFIG.encode())
    new_text = GOOD_CONFIG.replace("port = 1883", "port = 1884")
    ConfigTrials(load(p), None, 20.0, clock).start(command(), ConfigArgs(new_text, old, None),
                                                   "t", None)
    found = trialfiles.at_start(p, 1001.0)
    trials = ConfigTrials(load(p), found, 20.0, clock)
    clock.t = 1020.0
    sent: list[Any] = []
    trials.tick(False, lambda *a: sent.append(a), lambda *a: None)
    assert trials.restart.is_set() and not sent and p.read_text() == GOOD_CONFIG
    assert trialfiles.rejected_path(p).read_text() == new_text
    # The image on the old config sends the outcome once connected.
    found = trialfiles.at_start(p, 1021.0)
    assert isinstance(found, tr.Report)
    back = ConfigTrials(load(p), found, 20.0, clock)
    back.tick(False, lambda *a: sent.append(a), lambda *a: None)
    assert not sent and trialfiles.marker_path(p).exists()  # not connected yet
    back.tick(True, lambda *a: sent.append(a), lambda *a: None)
    assert [(rep.code, rep.data["outcome"]) for _, rep, _ in sent] == [(409, "rolled-back")]
    assert not trialfiles.marker_path(p).exists()
    assert back.info()["version"] == old and back.info()["previous"] is None


def test_config_trials_refuse_an_invalid_config_with_the_checkers_words(tmp_path: Path) -> None:
    from gateway.commands.config import ConfigArgs
    from gateway.configtrial import ConfigTrials

    p = write_good(tmp_path)
    trials = ConfigTrials(load(p), None, 120.0, Clock(0.0))
    r = trials.start(command(), ConfigArgs(GOOD_CONFIG.replace("port = 1883", "port = -1"),
                                           tr.version_of(GOOD_CONFIG.encode()), None), "t", None)
    assert r.code == 400 and r.data["errors"] == [
        f"{p}: broker.port: must be a TCP port between 1 and 65535"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["gw.toml"]
    assert p.read_text() == GOOD_CONFIG and not trials.restart.is_set()


def test_a_push_must_keep_the_key_that_signed_it(tmp_path: Path) -> None:
    from gateway import signing

    signing.generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    signing.generate_keypair(tmp_path / "b.key", tmp_path / "b.pub")
    kid_a = signing.kid_of(signing.load_private_key(tmp_path / "a.key").public_key())
    p = write_good(tmp_path, GOOD_CONFIG + '\n[commands]\npublic_keys = ["a.pub"]\n')
    running = load(p)
    for keys, ok in (('["a.pub", "b.pub"]', True), ('["b.pub"]', False), ("[]", False)):
        c = trialfiles.Candidate(p, GOOD_CONFIG + f"\n[commands]\npublic_keys = {keys}\n")
        errors, _ = c.check(running, kid_a)
        c.discard()
        assert (errors == []) == ok, (keys, errors)
        assert ok or "must still hold the key that signed this push" in errors[0]


def _mutated_configs() -> st.SearchStrategy[str]:
    lines = GOOD_CONFIG.splitlines()
    junk = st.sampled_from(["port = 0", "port = 1e999", "[[readers]]", "id = ''", "x = [",
                            "[unit]", "kind = 'nope'", "path = '/proc/x'", "\x00", "é = 1",
                            "interval_s = -1", "[commands]", "public_keys = ['/nope']"])
    return st.one_of(
        st.text(max_size=200),
        st.builds(lambda i, j: "\n".join([*lines[:i], j, *lines[i + 1:]]),
                  st.integers(0, len(lines) - 1), junk))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(text=_mutated_configs())
def test_any_pushed_text_is_answered_and_a_refusal_changes_nothing(tmp_path: Path,
                                                                   text: str) -> None:
    """Hostile or broken configs through the handler and the daemon's trial side: an
    answer every time, never an exception; a refusal leaves exactly the file that was."""
    from gateway.commands import config as handler
    from gateway.commands.config import PENDING
    from gateway.commands.core import dispatch
    from gateway.configtrial import ConfigTrials

    d = tmp_path / str(abs(hash(text)))
    d.mkdir(exist_ok=True)
    p = write_good(d)
    trials = ConfigTrials(load(p), None, 120.0, Clock(0.0))

    class Unit:
        unit_id = "gate-01"

        def config_trial(self, cmd: Command, args: Any) -> Any:
            return trials.start(cmd, args, "t", None)

    cmd = Command("0b8f1f4e-9a38-4c1e-8d2f-6a1c2b3d4e5f", "gate-01", "config", 0.0, 9e9,
                  {"config": text, "expected_version": tr.version_of(GOOD_CONFIG.encode())})
    reply = dispatch(Unit(), cmd, {"config": handler.handle})  # type: ignore[arg-type]
    assert reply.code in (200, 400, PENDING), reply
    if reply.code != PENDING:
        assert p.read_text() == GOOD_CONFIG
        assert sorted(x.name for x in d.iterdir()) == ["gw.toml"]


def test_a_trial_whose_files_cannot_be_written_is_retried_at_the_next_tick(
        tmp_path: Path) -> None:
    from gateway.commands.config import ConfigArgs
    from gateway.configtrial import ConfigTrials

    p = write_good(tmp_path)
    clock = Clock(1000.0)
    new_text = GOOD_CONFIG + "\n# new\n"
    ConfigTrials(load(p), None, 60.0, clock).start(
        command(), ConfigArgs(new_text, tr.version_of(GOOD_CONFIG.encode()), None), "t", None)
    trials = ConfigTrials(load(p), trialfiles.at_start(p, 1001.0), 60.0, clock)
    trialfiles.previous_path(p).mkdir()  # a write that fails, even for root
    sent: list[Any] = []
    trials.tick(True, lambda *a: sent.append(a), lambda *a: None)
    assert not sent and trials.active  # nothing decided: the same decision next tick
    trialfiles.previous_path(p).rmdir()
    trials.tick(True, lambda *a: sent.append(a), lambda *a: None)
    assert [rep.code for _, rep, _ in sent] == [200] and not trials.active
    assert trialfiles.previous_path(p).read_text() == GOOD_CONFIG
