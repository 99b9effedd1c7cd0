"""The backend's pure parts: contract validation, parsing, receipts' ranges, gaps, config;
and the migrations against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import contract as test_contract
from backend import config, migrate, schemas
from backend.gaps import Gap, classify, summarise
from backend.ingest import EventRow, Invalid, UnitMessage, parse, receipts, to_ranges
from backendproc import drop_event, encode, event
from firmware_sim.postgres import query

C = schemas.load()
P = "kidsafe/v1"


def test_valid_event_parses_to_a_row() -> None:
    body = event("u1", 7)
    row = parse(P, C, "kidsafe/v1/u1/event/gate", encode(body))
    assert isinstance(row, EventRow)
    assert (row.id, row.unit, row.seq, row.kind, row.losses) == (body["id"], "u1", 7, "gate", ())
    assert json.loads(row.data) == body["data"]


def test_drop_event_carries_its_ranges() -> None:
    row = parse(P, C, "kidsafe/v1/u1/event/buffer_drop", encode(drop_event("u1", 9, [[2, 4]])))
    assert isinstance(row, EventRow) and row.losses == ((2, 4),)


def test_sos_position_is_kept_for_the_map() -> None:
    data = {"zone": "park", "position": {"lat": 37.5, "lon": 127.0, "source": "fixed"},
            "cameras": ["cam-1"], "rssi": -60.0, "battery_mv": 2900}
    row = parse(P, C, "kidsafe/v1/u1/event/sos",
                encode(event("u1", 3, "sos", data, lane="emergency")))
    assert isinstance(row, EventRow) and (row.lat, row.lon) == (37.5, 127.0)


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    ("kidsafe/v1/u1/event/gate", b"{", "not JSON"),
    ("kidsafe/v1/u1/event/gate", encode({**event("u1", 1), "lane": "emergency"}), "routine"),
    ("kidsafe/v1/u1/event/gate", encode({**event("u1", 1), "extra": 1}), "extra"),
    ("kidsafe/v1/u1/event/gate", encode(event("u2", 1)), "topic's"),
    ("kidsafe/v1/u1/event/sos", encode(event("u1", 1)), "topic's"),
    ("kidsafe/v1/u1/event/gate", encode({**event("u1", 1), "id": "nope"}), "uuid"),
    ("kidsafe/v1/u1/whatever", b"{}", "unknown topic"),
    ("other/u1/event/gate", b"{}", "outside"),
])
def test_invalid_messages_are_quarantined_with_a_reason(topic: str, payload: bytes,
                                                        reason: str) -> None:
    item = parse(P, C, topic, payload)
    assert isinstance(item, Invalid)
    assert reason in " ".join(item.reasons), item.reasons


def test_unit_messages() -> None:
    status = {"unit": "u1", "state": "offline", "time": None, "reason": "connection-lost"}
    item = parse(P, C, "kidsafe/v1/u1/status", json.dumps(status).encode())
    assert isinstance(item, UnitMessage) and item.kind == "status"
    item = parse(P, C, "kidsafe/v1/u1/status", json.dumps({**status, "unit": "u2"}).encode())
    assert isinstance(item, Invalid)


def _mutations(body: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for key in list(body):
        b = copy.deepcopy(body)
        del b[key]
        out.append(b)
        b = copy.deepcopy(body)
        b[key] = rng.choice([None, 1, "x", [], {}, True, -1.5])
        out.append(b)
    for key in list(body["data"]):
        b = copy.deepcopy(body)
        b["data"][key] = rng.choice([None, 1, "x", [], {}, True, [[1]], [[0, 1]]])
        out.append(b)
    return out


def test_compiled_validators_agree_with_jsonschema() -> None:
    """fastjsonschema (draft-7 translation, per-kind specialisation) gives the same verdict
    as jsonschema on the whole 2020-12 schema, over valid events and many broken ones."""
    rng = random.Random(4)
    samples = [event("u1", 5), drop_event("u1", 6, [[1, 3]]),
               event("u1", 7, "clock_step", {"step_s": -3.5}, lane="telemetry"),
               event("u1", 8, "sos", {"zone": None, "position": None, "cameras": [], "rssi": -60.0,
                                 "battery_mv": 2900},
                     lane="emergency")]
    checked = 0
    for body in samples:
        for b in [body, *_mutations(body, rng)]:
            ours = not C.check("event", b)
            theirs = test_contract.validator("event").is_valid(b)
            assert ours == theirs, (b, C.check("event", b))
            checked += 1
    assert checked > 50


def test_unknown_keywords_fall_back_to_jsonschema(tmp_path: Path) -> None:
    for name in schemas.NAMES:
        (tmp_path / f"{name}.schema.json").write_text(
            (schemas.DEFAULT_DIR / f"{name}.schema.json").read_text())
    doc = json.loads((tmp_path / "status.schema.json").read_text())
    doc.pop("additionalProperties")
    doc["unevaluatedProperties"] = False  # 2020-12 only: fastjsonschema would ignore it
    (tmp_path / "status.schema.json").write_text(json.dumps(doc))
    c = schemas.load(tmp_path)
    ok = {"unit": "u1", "state": "offline", "time": None, "reason": "connection-lost"}
    assert c.check("status", ok) == []
    assert c.check("status", {**ok, "more": 1})  # refused, not silently accepted


@given(st.sets(st.integers(1, 200)))
@settings(max_examples=200, deadline=None)
def test_ranges_cover_exactly_the_seqs(seqs: set[int]) -> None:
    ranges = to_ranges(seqs)
    assert {s for a, b in ranges for s in range(a, b + 1)} == seqs
    assert all(r[0] <= r[1] for r in ranges)
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(ranges))


def test_receipts_cover_valid_duplicates_and_quarantined_events() -> None:
    good = parse(P, C, "kidsafe/v1/u1/event/gate", encode(event("u1", 1)))
    again = parse(P, C, "kidsafe/v1/u1/event/gate", encode(event("u1", 2)))
    bad = parse(P, C, "kidsafe/v1/u1/event/gate", encode({**event("u1", 3), "lane": "x"}))
    junk = parse(P, C, "kidsafe/v1/u1/event/gate", b"nope")
    other = parse(P, C, "kidsafe/v1/u2/event/gate", encode(event("u2", 9)))
    assert receipts([good, again, again, bad, junk, other]) == {"u1": [[1, 3]], "u2": [[9, 9]]}


def test_gaps_split_at_drop_and_salvage_ranges() -> None:
    gaps = [("u1", 5, 20), ("u1", 30, 30), ("u2", 1, 4)]
    losses = [("u1", 5, 7, "buffer_drop"), ("u1", 8, 9, "buffer_drop"),
              ("u1", 12, 25, "buffer_salvage"), ("u2", 3, 3, "buffer_drop")]
    assert classify(gaps, losses) == [
        Gap("u1", 5, 9, "buffer_drop"), Gap("u1", 10, 11, None),
        Gap("u1", 12, 20, "buffer_salvage"), Gap("u1", 30, 30, None),
        Gap("u2", 1, 2, None), Gap("u2", 3, 3, "buffer_drop"), Gap("u2", 4, 4, None)]
    s = summarise(classify(gaps, losses))
    assert [(x.unit, x.explained_seqs, x.unexplained_seqs) for x in s] == [
        ("u1", 14, 3), ("u2", 1, 3)]


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 10)), max_size=6),
       st.tuples(st.integers(1, 60), st.integers(0, 30)))
@settings(max_examples=300, deadline=None)
def test_gap_classification_partitions_each_gap(losses: list[tuple[int, int]],
                                                gap: tuple[int, int]) -> None:
    lo, hi = gap[0], gap[0] + gap[1]
    lost = [("u", a, a + n, "buffer_drop") for a, n in losses]
    parts = classify([("u", lo, hi)], lost)
    seqs = [s for g in parts for s in range(g.from_seq, g.to_seq + 1)]
    assert seqs == list(range(lo, hi + 1))  # in order, each once
    covered = {s for _, a, b, _ in lost for s in range(a, b + 1)}
    for g in parts:
        inside = {s in covered for s in range(g.from_seq, g.to_seq + 1)}
        assert inside == {g.explained_by is not None}


def test_config_is_strict(tmp_path: Path) -> None:
    cfg = config.parse({"broker": {"port": 1884, "protocol": "5", "shared_group": "g"},
                        "ingest": {"batch_latency_ms": 5}})
    assert cfg.broker.port == 1884 and cfg.ingest.batch_latency_ms == 5.0
    assert cfg.broker.emergency_receipt_qos == 1
    assert config.parse({"broker": {"emergency_receipt_qos": 0}}).broker.emergency_receipt_qos == 0
    cases: list[tuple[dict[str, Any], str]] = [
        ({"brokr": {}}, "unknown"), ({"broker": {"port": "x"}}, "broker.port"),
        ({"broker": {"shared_group": "g"}}, "shared_group"),
        ({"ingest": {"batch_size": True}}, "batch_size"),
        ({"broker": {"emergency_receipt_qos": 2}}, "emergency_receipt_qos")]
    for bad, what in cases:
        with pytest.raises(config.ConfigError, match=what):
            config.parse(bad)
    sample = Path(__file__).resolve().parents[1] / "config" / "backend.example.toml"
    assert config.load(sample).prefix == "kidsafe/v1"


def test_migrations_apply_once_and_refuse_edited_files(pg_dsn: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert asyncio.run(migrate.apply(pg_dsn)) == [m.name for m in migrate.available()]
    assert asyncio.run(migrate.apply(pg_dsn)) == []
    rows = query(pg_dsn, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["name"] for r in rows] == [m.name for m in migrate.available()]
    edited = [migrate.Migration(m.version, m.name, m.sql + "\n-- edited")
              for m in migrate.available()]
    monkeypatch.setattr(migrate, "available", lambda: edited)
    with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
        asyncio.run(migrate.apply(pg_dsn))


def test_a_failing_migration_leaves_nothing(pg_dsn: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    good = migrate.available()
    broken = [*good, migrate.Migration(9999, "9999_broken.sql",
                                       "CREATE TABLE half (x int); SELECT 1/0;")]
    monkeypatch.setattr(migrate, "available", lambda: broken)
    with pytest.raises(Exception, match="division by zero"):
        asyncio.run(migrate.apply(pg_dsn))
    assert query(pg_dsn, "SELECT to_regclass('events') IS NULL, "
                 "to_regclass('half') IS NULL")[0] == (True, True)


def test_store_notifies_listeners_at_commit(backend_dsn: str) -> None:
    """The page's live feed: a notification per committed batch, emergencies by id."""
    from backend.store import Store

    sos = event("u1", 2, "sos", {"zone": None, "position": None, "cameras": [], "rssi": -60.0,
                                 "battery_mv": 2900},
                lane="emergency")
    items = [parse(P, C, "kidsafe/v1/u1/event/gate", encode(event("u1", 1))),
             parse(P, C, "kidsafe/v1/u1/event/sos", encode(sos))]

    async def go() -> list[tuple[str, dict[str, Any]]]:
        store = await Store.open(backend_dsn)
        heard: list[tuple[str, dict[str, Any]]] = []
        listener = await store.listen(lambda ch, body: heard.append((ch, body)))
        try:
            written = await store.write(items)
            assert (written.events, written.duplicates) == (2, 0)
            again = await store.write(items)  # duplicates: nothing new, no event notice
            assert (again.events, again.duplicates) == (0, 2)
            for _ in range(50):
                if len(heard) >= 3:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            units = await store.units()
            assert [(u.unit, u.stored_max_seq) for u in units] == [("u1", 2)]
            assert [e.kind for e in await store.emergencies()] == ["sos"]
            return heard
        finally:
            await listener.close()
            await store.close()

    heard = asyncio.run(go())
    events = [b for ch, b in heard if ch == "kidsafe_events"]
    assert events == [{"events": 2, "units": ["u1"], "emergency": [sos["id"]],
                       "more_emergency": False}]
    assert any(ch == "kidsafe_units" and b == {"units": ["u1"]} for ch, b in heard)


def test_prune_keeps_recent_history(backend_dsn: str) -> None:
    from backend.store import Store

    query(backend_dsn, "INSERT INTO unit_messages (unit, kind, received, body) VALUES "
          "('u1', 'health', now() - interval '20 days', '{}'), ('u1', 'health', now(), '{}')")

    async def go() -> int:
        store = await Store.open(backend_dsn)
        try:
            return await store.prune(14)
        finally:
            await store.close()

    assert asyncio.run(go()) == 1
    assert query(backend_dsn, "SELECT count(*) FROM unit_messages")[0][0] == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze missing: ./dev.sh setup installs systemd")
def test_backend_systemd_unit_verifies_and_is_sandboxed(tmp_path: Path) -> None:
    unit = Path(__file__).resolve().parents[1] / "systemd" / "kidsafe-backend.service"
    shipped = "/opt/kidsafe-gateway/.venv/bin/kidsafe-backend"
    exe = Path(sys.executable).parent / "kidsafe-backend"
    assert exe.exists() and shipped in unit.read_text()
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(shipped, str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unknown key" not in r.stderr and "Failed to parse" not in r.stderr, r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.5, r.stdout + r.stderr
