"""The pipeline when the buffer cannot be written, or readings come faster than it goes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway import config as configmod
from gateway.clock import FakeClock
from gateway.engine import Engine
from gateway.model import Event, Lane, TagRead
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline


def make(tmp_path: Path) -> tuple[Pipeline, Outbox]:
    cfg = configmod.parse({
        "unit": {"id": "u-1", "site": "s"}, "broker": {},
        "buffer": {"path": str(tmp_path / "b.db")},
        "readers": [{"id": "g", "kind": "rdm6300", "port": "/dev/null"}],
        "tags": [{"id": "62E3086CED", "child": "c-1"}],
    })
    ob = Outbox(cfg.buffer.path, "u-1", "s")
    return Pipeline(cfg, Engine(configmod.engine_config(cfg)), ob, FakeClock()), ob


def events(n: int, lane: Lane = Lane.ROUTINE) -> list[Event]:
    return [Event("gate", 1.7e9 + i, lane, "g", "c-1", {"direction": None}) for i in range(n)]


def test_a_full_disk_holds_events_and_commits_them_later(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    pipe, ob = make(tmp_path)
    pipe.commit(events(1))
    # SQLite's own "database or disk is full", as on a full SD card.
    pages = ob.db.execute_sql("PRAGMA page_count").fetchone()[0]
    ob.db.execute_sql(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.ERROR, logger="gateway.pipeline"):
        for _ in range(3):
            pipe.commit(events(200))  # no exception escapes; nothing is lost
    assert "cannot write the buffer" in caplog.text and "full" in caplog.text
    assert pipe.stats()["counters"]["buffer_write_failures"] == 3
    assert ob.depth() == 1
    ob.db.execute_sql("PRAGMA max_page_count = 1073741823")
    pipe.commit([])
    assert ob.depth() == 1 + 600  # the held events went in, in order
    seqs = [r.seq for r in ob.fetch(int(Lane.ROUTINE), 0, 1000)]
    assert seqs == list(range(1, 602))


def test_held_events_are_capped_but_emergency_kept(tmp_path: Path, monkeypatch:
                                                   pytest.MonkeyPatch) -> None:
    import gateway.pipeline as pl

    monkeypatch.setattr(pl, "PENDING_MAX", 100)
    pipe, ob = make(tmp_path)
    ob.db.execute_sql("PRAGMA max_page_count = 1")
    pipe.commit(events(5, Lane.EMERGENCY) + events(300))
    held = pipe._pending
    assert len(held) == 100 and sum(e.lane == Lane.EMERGENCY for e in held) == 5
    assert pipe.stats()["counters"]["events_dropped_buffer_failed"] == 205


def test_readings_beyond_the_queue_are_counted_not_blocking(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    import gateway.pipeline as pl

    pipe, _ = make(tmp_path)
    pipe._q = pl._Readings(10)  # bounded by readings: a driver's batch counts as its readings

    def read(i: int) -> TagRead:
        return TagRead("g", "62E3086CED", 1.7e9 + i)

    for i in range(5):  # nobody is taking them: a stuck pipeline
        pipe.reading(read(i))
    pipe.reading_batch([read(i) for i in range(5, 10)])  # fits: 10 readings waiting
    pipe.reading_batch([read(i) for i in range(10, 14)])  # does not: 4 dropped
    for i in range(14, 25):
        pipe.reading(read(i))
    assert pipe.stats()["counters"]["readings_dropped_queue_full"] == 15
    assert pipe._q.qsize() == 10
