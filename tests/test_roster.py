"""The roster model (gateway/roster.py): strict parsing of the command's args, atomic
application against the expected version, the checksum, the file beside the buffer;
and the args schema (docs/schemas/commands/roster.schema.json) agreeing with the parser."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker

from gateway import roster as r
from gateway.model import TagConfig
from gateway.roster import RosterError, Term

SCHEMA = Path(__file__).resolve().parent.parent / "docs/schemas/commands/roster.schema.json"
KEY = base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=").decode()
BASE = r.from_config([TagConfig("AA01", "c-1", ("class-1",)), TagConfig("AA02", "c-2"),
                      TagConfig("ibeacon:f7826da6:1:2", "c-2")])


def validator() -> Draft202012Validator:
    return Draft202012Validator(json.loads(SCHEMA.read_text()), format_checker=FormatChecker())


GOOD: list[dict[str, Any]] = [
    {"expected_version": 0, "enrol": [{"tag": "aa03", "child": "c-3", "groups": ["g1"]}]},
    {"expected_version": 0, "unenrol": [{"child": "c-2"}, {"tag": "AA01"}]},
    {"expected_version": 7, "term": {"id": "2027-spring", "key": KEY}},
    {"expected_version": 0, "unenrol": [{"tag": "AA01"}],
     "enrol": [{"tag": "AA01", "child": "c-9"}]},
]
BAD: list[tuple[Any, str]] = [
    ({}, "missing field 'expected_version'"),
    ({"expected_version": 0}, "nothing to change"),
    ({"expected_version": -1, "enrol": []}, "expected_version"),
    ({"expected_version": True, "unenrol": [{"child": "c-1"}]}, "expected_version"),
    ({"expected_version": "1", "unenrol": [{"child": "c-1"}]}, "expected_version"),
    ({"expected_version": 0, "enrol": [{"tag": "AA", "child": "c"}], "extra": 1},
     "unknown field 'extra'"),
    ({"expected_version": 0, "enrol": [{"tag": "AA", "child": "c", "name": "Kim"}]},
     "unknown field 'name'"),
    ({"expected_version": 0, "enrol": [{"tag": "AA", "child": "c"}, {"tag": "aa", "child": "d"}]},
     "enrolled twice"),
    ({"expected_version": 0, "enrol": [{"tag": "AA", "child": "c", "groups": ["g", "g"]}]},
     "listed twice"),
    ({"expected_version": 0, "enrol": [{"tag": "A A", "child": "c"}]}, "tag id"),
    ({"expected_version": 0, "enrol": [{"tag": "AA", "child": "Kim Lee"}]}, "child"),
    ({"expected_version": 0, "enrol": [{"tag": 12, "child": "c"}]}, "tag id"),
    ({"expected_version": 0, "enrol": {"tag": "AA", "child": "c"}}, "expected an array"),
    ({"expected_version": 0, "unenrol": [{"child": "c-1", "tag": "AA01"}]}, "exactly one"),
    ({"expected_version": 0, "unenrol": [{}]}, "exactly one"),
    ({"expected_version": 0, "unenrol": [{"child": "c-1"}, {"child": "c-1"}]},
     "unenrolled twice"),
    ({"expected_version": 0, "term": {"id": "t1", "key": "c2hvcnQ"}}, "32 bytes"),
    ({"expected_version": 0, "term": {"id": "t1"}}, "missing field 'key'"),
    ({"expected_version": 0, "term": {"id": "t1", "key": KEY, "alg": "x"}}, "unknown field"),
    ([], "expected an object"),
]


@pytest.mark.parametrize("args", GOOD)
def test_good_args_pass_schema_and_parser(args: dict[str, Any]) -> None:
    validator().validate(args)
    r.parse_change(args)


@pytest.mark.parametrize(("args", "why"), BAD)
def test_bad_args_fail_schema_and_parser(args: Any, why: str) -> None:
    with pytest.raises(RosterError) as e:
        r.parse_change(args)
    assert e.value.code == 400 and why in e.value.reason
    schema_errors = list(validator().iter_errors(args))
    # Duplicates across items and "something to change" are the parser's alone.
    if not any(w in why for w in ("twice", "nothing to change", "32 bytes")):
        assert schema_errors, f"the schema accepts what the parser refuses: {args}"


def test_apply_is_versioned_atomic_and_checksummed() -> None:
    change = r.parse_change({"expected_version": 0,
                             "unenrol": [{"child": "c-2"}],
                             "enrol": [{"tag": "aa03", "child": "c-3", "groups": ["b", "a"]}]})
    done = r.apply(BASE, change)
    new = done.roster
    assert new.version == 1
    assert [t.id for t in new.tags] == ["AA01", "AA03"]
    assert new.tag_map()["AA03"].groups == ("a", "b")
    assert set(done.removed) == {"AA02", "ibeacon:f7826da6:1:2"} and done.added == ("AA03",)
    assert done.removed_children == ("c-2",)
    # The documented canonical form.
    canon = json.dumps({"tags": [["AA01", "c-1", ["class-1"]], ["AA03", "c-3", ["a", "b"]]],
                        "term": None}, separators=(",", ":"), sort_keys=True)
    assert new.checksum == hashlib.sha256(canon.encode()).hexdigest()
    assert BASE.version == 0 and len(BASE.tags) == 3  # the old roster stands
    # Stale version: 409 with the unit's version and checksum, nothing changed.
    with pytest.raises(RosterError) as e:
        r.apply(new, change)
    assert e.value.code == 409 and e.value.data["version"] == 1
    assert e.value.data["checksum"] == new.checksum


@pytest.mark.parametrize(("args", "code"), [
    ({"expected_version": 0, "unenrol": [{"child": "c-7"}]}, 404),
    ({"expected_version": 0, "unenrol": [{"tag": "FF"}]}, 404),
    ({"expected_version": 0, "enrol": [{"tag": "AA01", "child": "c-5"}]}, 400),
    # a valid item before a bad one: nothing of the batch is applied
    ({"expected_version": 0, "unenrol": [{"child": "c-1"}, {"child": "c-9"}]}, 404),
])
def test_refused_changes_change_nothing(args: dict[str, Any], code: int) -> None:
    before = r.dumps(BASE)
    with pytest.raises(RosterError) as e:
        r.apply(BASE, r.parse_change(args))
    assert e.value.code == code
    assert r.dumps(BASE) == before


def test_terms_move_forward_and_old_keys_are_kept_while_needed() -> None:
    k1, k2 = bytes(32), bytes([1] * 32)
    b64 = lambda k: base64.urlsafe_b64encode(k).rstrip(b"=").decode()  # noqa: E731
    v1 = r.apply(BASE, r.parse_change({"expected_version": 0,
                                       "term": {"id": "t1", "key": b64(k1)}})).roster
    assert v1.term == Term("t1", k1) and v1.retired == ()
    v2 = r.apply(v1, r.parse_change({"expected_version": 1,
                                     "term": {"id": "t2", "key": b64(k2)}})).roster
    assert v2.term == Term("t2", k2) and v2.retired == (Term("t1", k1),)
    assert v2.checksum != v1.checksum  # the term is part of the checksum
    for args, why in [({"id": "t1", "key": b64(k1)}, "retired"),
                      ({"id": "t2", "key": b64(k1)}, "another key")]:
        with pytest.raises(RosterError, match=why):
            r.apply(v2, r.parse_change({"expected_version": 2, "term": args}))
    assert r.drop_retired(v2, {"t1"}) is v2
    assert r.drop_retired(v2, set()).retired == ()


def test_file_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    f = r.RosterFile(str(tmp_path / "buf.db"))
    assert f.load() is None
    v1 = r.apply(BASE, r.parse_change(GOOD[2] | {"expected_version": 0})).roster
    f.save(v1)
    assert f.load() == v1
    assert os.stat(f.path).st_mode & 0o777 == 0o600
    assert not Path(f.path + ".tmp").exists()
    Path(f.path).write_text('{"format": 1, "version": "x"}')
    with pytest.raises(ValueError):
        f.load()


def test_the_backends_roster_replaces_the_configs() -> None:
    assert r.effective(BASE.tags, None) == BASE
    saved = r.Roster(3, (TagConfig("BB", "c-8"),))
    assert r.effective(BASE.tags, saved) is saved


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["expected_version", "enrol", "unenrol", "term", "tag", "child",
                         "groups", "id", "key", "x"]), inner, max_size=5),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_json_is_a_change_or_a_400_never_a_crash(args: Any) -> None:
    try:
        change = r.parse_change(args)
    except RosterError as e:
        assert e.code == 400
        return
    try:
        r.apply(BASE, change)
    except RosterError as e:
        assert e.code in (400, 404, 409)
