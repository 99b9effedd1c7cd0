"""The local buffer: sequence numbers, acks, caps and restarts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import Event, Lane
from gateway.outbox import BufferReadError, Outbox


def ev(lane: Lane = Lane.ROUTINE, kind: str = "gate") -> Event:
    return Event(kind=kind, time=1_700_000_000.0, lane=lane, reader="r1", child="c-1")


def test_seq_never_repeats_across_acks_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u1", "s1")
    first = ob.add([ev() for _ in range(5)])
    assert [s.seq for s in first] == [1, 2, 3, 4, 5]
    ob.ack([s.seq for s in first])  # all delivered: table empty
    assert ob.depth() == 0
    ob.close()
    ob = Outbox(path, "u1", "s1")
    again = ob.add([ev()])
    assert again[0].seq == 6  # AUTOINCREMENT: not reused after deletes or a restart
    body = json.loads(again[0].payload)
    assert body["seq"] == 6 and body["unit"] == "u1" and body["id"] == again[0].uid
    assert body["time"] == "2023-11-14T22:13:20.000Z"


def test_fetch_by_lane_and_range(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u1", "s1")
    ob.add([ev(Lane.ROUTINE), ev(Lane.EMERGENCY, "sos"), ev(Lane.ROUTINE), ev(Lane.TELEMETRY)])
    assert [r.seq for r in ob.fetch(int(Lane.EMERGENCY), 0, 10)] == [2]
    assert [r.seq for r in ob.fetch(int(Lane.ROUTINE), 0, 10)] == [1, 3]
    assert [r.seq for r in ob.fetch(int(Lane.ROUTINE), 1, 10)] == [3]
    assert [r.seq for r in ob.fetch(int(Lane.ROUTINE), 0, 10, upto=2)] == [1]
    assert ob.depth_by_lane() == {"emergency": 1, "routine": 2, "telemetry": 1}


def test_cap_drops_lowest_lane_oldest_first_never_emergency(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u1", "s1", max_events=100)
    ob.add([ev(Lane.EMERGENCY, "sos") for _ in range(30)])
    ob.add([ev(Lane.TELEMETRY, "sighting") for _ in range(40)])
    ob.add([ev(Lane.ROUTINE) for _ in range(40)])  # 110 > 100: telemetry goes first
    by = ob.depth_by_lane()
    notices = [json.loads(r.payload) for r in ob.fetch(int(Lane.ROUTINE), 0, 1000)
               if b'"buffer_drop"' in r.payload]
    assert len(notices) == 1  # the drop is reported to the backend as an event
    assert by["emergency"] == 30 and by["routine"] == 40 + 1 and by["telemetry"] < 40
    drops = ob.drops()
    assert drops["by_lane"]["telemetry"] == 40 - by["telemetry"]
    assert drops["recent_ranges"][0][0] == 31  # the oldest telemetry event went first
    dropped = notices[0]["data"]
    assert dropped["lane"] == "telemetry" and dropped["count"] == drops["total"]
    assert dropped["ranges"] == [[31, 31 + dropped["count"] - 1]]
    ob.add([ev(Lane.EMERGENCY, "sos") for _ in range(200)])  # only emergency left to keep
    assert ob.depth_by_lane()["emergency"] == 230
    assert ob.drops()["by_lane"]["emergency"] == 0


def test_drop_runs_are_exact_when_lanes_interleave(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u1", "s1", max_events=10)
    ob.add([ev(Lane.TELEMETRY if i % 2 else Lane.EMERGENCY) for i in range(12)])
    # 12 > 10: telemetry seqs 2, 4, 6 ... go; each is its own run.
    notice = json.loads(next(r.payload for r in ob.fetch(int(Lane.ROUTINE), 0, 10)))
    ranges = notice["data"]["ranges"]
    assert all(a == b and a % 2 == 0 for a, b in ranges)
    assert notice["data"]["count"] == len(ranges)
    left = {r.seq for lane in Lane for r in ob.fetch(int(lane), 0, 100)}
    assert not left & {a for a, _ in ranges}


def test_state_kv_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u1", "s1")
    ob.save_state("engine", b'{"x": 1}')
    ob.close()
    assert Outbox(path, "u1", "s1").load_state("engine") == b'{"x": 1}'


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
def test_iso_utc_matches_datetime(t: float) -> None:
    from datetime import UTC, datetime

    from gateway.contract import iso_utc

    assert iso_utc(t) == datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_lane_counts_in_memory_match_the_table(tmp_path: Path) -> None:
    import random

    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u1", "s1", max_events=300)
    rnd = random.Random(7)

    def table() -> dict[str, int]:
        counts = {lane.name.lower(): 0 for lane in Lane}
        for lane, n in ob.db.execute_sql("SELECT lane, count(*) FROM outbox GROUP BY lane"):
            counts[Lane(lane).name.lower()] = n
        return counts

    for _ in range(40):
        ob.add([ev(rnd.choice(list(Lane))) for _ in range(rnd.randint(1, 30))])
        live = [r.seq for lane in Lane for r in ob.fetch(int(lane), 0, 1000)]
        ob.ack([*rnd.sample(live, k=min(len(live), rnd.randint(0, 20))), 10**9])  # + unknown
        assert ob.depth_by_lane() == table()
        assert ob.depth() == sum(table().values())
    assert ob.drops()["total"] > 0  # the cap was exercised too
    # The lowest seq is the oldest commit: the indexed lookup gives what a full scan gives.
    assert ob.oldest_created() == ob.db.execute_sql("SELECT min(created) FROM outbox").fetchone()[0]
    ob.close()
    assert Outbox(path, "u1", "s1", max_events=300).depth_by_lane() == ob.depth_by_lane()


def test_saved_buffer_reads_beside_the_owner_and_never_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u", "s")
    ob.add([ev(), ev()], state=("engine", b'{"v": 1}'))
    ob.ack([1])
    with Outbox.saved(path) as saved:  # while the owner still has it open
        assert saved.load_state("engine") == b'{"v": 1}'
        assert saved.load_state("other") is None
        assert saved.depth() == 1 and saved.last_seq() == 2
    ob.close()
    with pytest.raises(BufferReadError, match="cannot read the buffer"):
        Outbox.saved(str(tmp_path / "missing.db"))
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created


def test_the_cap_counts_the_wal_and_keeps_the_disk_reserve(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "b.db"), "u1", "s1", reserve_mb=1)
    ob.add([ev() for _ in range(1000)])
    used, _ = ob._used_bytes()
    assert used >= ob._wal_bytes() > 0  # the WAL is part of what the buffer takes
    ob.ack(range(1, 501))  # freed pages: room inside the file
    pages = ob.db.execute_sql("PRAGMA page_count").fetchone()[0]
    # 64 KiB into the reserve: that much must stay free inside the file.
    ob.free_disk_bytes = lambda: ob.reserve_bytes - 65536  # type: ignore[method-assign]
    ob.add([ev() for _ in range(100)])  # the freed pages cover it: nothing dropped
    assert ob.dropped_total == 0
    for _ in range(10):  # beyond them: the file would grow into the reserve
        ob.add([ev() for _ in range(100)])
    assert ob.dropped_total > 0 and ob.drops()["total"] == ob.dropped_total
    grown = ob.db.execute_sql("PRAGMA page_count").fetchone()[0] - pages
    assert grown <= 10, grown  # at most one commit's pages beyond the file it had
    assert ob.disk()["reserve_mb"] == 1.0


def test_high_water_mark_outlives_the_buffer(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u1", "s1")
    ob.add([ev() for _ in range(10)])
    assert ob.high_water >= 10 and json.loads(Path(path + ".seq").read_text())["reserved"] >= 10
    ob.close()
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    ob = Outbox(path, "u1", "s1")  # the file is gone: seq goes on above the mark
    notice = json.loads(ob.fetch(int(Lane.EMERGENCY), 0, 10)[0].payload)
    assert notice["kind"] == "buffer_salvage" and notice["data"]["reason"] == "missing"
    assert notice["seq"] > 10 and notice["data"]["ranges"][0][0] == 1
    assert ob.add([ev()])[0].seq > notice["seq"]


def test_a_truncated_buffer_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    ob = Outbox(str(path), "u1", "s1")
    ob.add([ev() for _ in range(2000)])
    ob.ack(range(1, 101))
    ob.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    ob = Outbox(str(path), "u1", "s1")  # no exception: the unit runs
    (aside,) = tmp_path.glob("b.db.corrupt-*")
    assert aside.stat().st_size > 0  # kept as found
    notice = json.loads(ob.fetch(int(Lane.EMERGENCY), 0, 10)[0].payload)
    data = notice["data"]
    assert notice["kind"] == "buffer_salvage" and data["reason"] == "corrupt"
    kept = {r.seq for r in ob.fetch(int(Lane.ROUTINE), 0, 10_000)}
    assert len(kept) == data["salvaged"] > 0 and min(kept) == 101
    lost = {s for a, b in data["ranges"] for s in range(a, b + 1)}
    assert kept | lost == set(range(101, 2001)) and not kept & lost
    assert notice["seq"] > 2000 and ob.add([ev()])[0].seq > notice["seq"]


def test_a_deleted_buffer_is_recreated_from_the_open_file(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    ob = Outbox(str(path), "u1", "s1")
    ob.add([ev() for _ in range(300)])
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    (new,) = ob.add([ev()])
    assert path.exists() and new.seq == 302  # 300, the notice, this one: seq goes on
    assert ob.depth() == 302
    notice = json.loads(ob.fetch(int(Lane.EMERGENCY), 0, 10)[0].payload)
    assert notice["data"]["reason"] == "deleted" and notice["data"]["lost_max"] == 0
    assert ob.disk()["incidents"][-1]["reason"] == "deleted"


def test_parked_events_are_committed_at_the_next_start(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    ob = Outbox(path, "u1", "s1")
    assert ob.park([ev(), ev(Lane.EMERGENCY, "sos")]) == path + ".held.jsonl"
    ob.close()
    ob = Outbox(path, "u1", "s1")
    assert ob.depth_by_lane() == {"emergency": 1, "routine": 1, "telemetry": 0}
    assert not Path(path + ".held.jsonl").exists()
