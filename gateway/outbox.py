"""The local buffer: every decided event is committed here before it is sent.

SQLite through peewee, in WAL mode. Event inserts run with
``synchronous=FULL``: a commit is on the card before the pipeline moves on, so
a power cut loses nothing committed. Acknowledgement deletes run on the
publisher's own connection with ``synchronous=NORMAL``: losing the last acks
in a power cut only means those events are sent again, which the backend
de-duplicates by id. WAL keeps the file consistent across ``kill -9`` in the
middle of any write.

The primary key is the per-unit sequence number (``AUTOINCREMENT``, so a
number is never reused, even after rows are deleted or the process dies).
Rows are deleted when the broker acknowledges them. When the size cap is
reached, the oldest events of the lowest lane go first; emergency events are
never dropped; every drop is recorded and reported in a ``buffer_drop`` event
(itself never dropped) that lists the exact sequence runs.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from peewee import (
    BlobField,
    FloatField,
    IntegerField,
    Model,
    PeeweeException,
    SqliteDatabase,
    TextField,
)
from playhouse.sqlite_ext import AutoIncrementField

from gateway import contract
from gateway.contract import Stored
from gateway.model import Event, Lane

log = logging.getLogger("gateway.outbox")


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> [(1, 3), (7, 8)] (seqs sorted ascending)."""
    runs: list[tuple[int, int]] = []
    for s in seqs:
        if runs and runs[-1][1] == s - 1:
            runs[-1] = (runs[-1][0], s)
        else:
            runs.append((s, s))
    return runs


class _Base(Model):
    class Meta:
        database = None  # bound per Outbox instance


class OutboxRow(_Base):
    seq = AutoIncrementField()
    uid = TextField()
    lane = IntegerField()
    kind = TextField()
    topic = TextField()  # below the unit's prefix, e.g. "event/gate"
    payload = BlobField()
    created = FloatField()

    class Meta:
        table_name = "outbox"
        indexes = ((("lane", "seq"), False),)


class DropRow(_Base):
    """A run of events removed by the size cap: the backend sees these gaps explained."""

    first_seq = IntegerField()
    last_seq = IntegerField()
    count = IntegerField()
    lane = IntegerField()
    at = FloatField()

    class Meta:
        table_name = "drops"


class KvRow(_Base):
    """Small state that must survive a restart (engine state, ...)."""

    key = TextField(primary_key=True)
    value = BlobField()

    class Meta:
        table_name = "kv"


class BufferWriteError(Exception):
    """The buffer could not be written (disk full, card failing); nothing was committed."""


class BufferReadError(Exception):
    """A buffer file could not be read (missing, not a buffer, locked for too long)."""


class SavedBuffer:
    """A read-only look at a buffer file that a daemon may be writing right now.

    For ``gatewayd locate`` and the bench: SQLite's read-only mode, so the file is
    never created, migrated or written, and no Outbox (with its tables and pragmas) is
    opened beside the daemon's. Raises BufferReadError rather than peewee's errors.
    """

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self._db = SqliteDatabase(f"file:{path}?mode=ro", uri=True, timeout=timeout_s,
                                  check_same_thread=False)
        self._query("SELECT 1")  # fail here, with the file's name, not at the first read

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return list(self._db.execute_sql(sql, params).fetchall())
        except (PeeweeException, sqlite3.DatabaseError) as e:  # fetchall's are not wrapped
            raise BufferReadError(f"cannot read the buffer {self.path}: {e}") from e

    def load_state(self, key: str) -> bytes | None:
        rows = self._query("SELECT value FROM kv WHERE key=?", (key,))
        return bytes(rows[0][0]) if rows else None

    def depth(self) -> int:
        return int(self._query("SELECT count(*) FROM outbox")[0][0])

    def last_seq(self) -> int:
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name='outbox'")
        return int(rows[0][0]) if rows else 0

    def quick_check(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check``: ["ok"], or what is damaged (gatewayd doctor)."""
        return [str(r[0]) for r in self._query("PRAGMA quick_check")]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SavedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Outbox:
    def __init__(
        self,
        path: str,
        unit: str,
        site: str,
        max_mb: float = 256.0,
        max_events: int = 2_000_000,
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.unit = unit
        self.site = site
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_events = max_events
        self.db = SqliteDatabase(
            path,
            # secure_delete: freed pages are zeroed, so nothing deleted or overwritten
            # (an engine state saved by tag id before, see engine/persist.py) lingers in
            # the file. Debian's SQLite has it on already; said here for other builds.
            pragmas={"journal_mode": "wal", "synchronous": 2, "busy_timeout": 10_000,
                     "cache_size": -2000, "secure_delete": 1},
            check_same_thread=False,
        )
        self._models = (OutboxRow, DropRow, KvRow)
        self.db.bind(self._models)
        self.db.connect(reuse_if_open=True)
        self.db.create_tables(self._models)
        self._lock = threading.Lock()
        # Events per lane, kept in memory: counting a million-row table for every health
        # message would stall the publisher for most of a second on a Pi.
        self._lanes: Counter[int] = Counter()
        self._recount()
        self._fast_ack_conns: set[int] = set()
        self.dropped_total = sum(d.count for d in DropRow.select())

    # -- writer side (the pipeline thread) ---------------------------------------------------

    def add(self, events: Sequence[Event], now: float | None = None,
            state: tuple[str, bytes] | None = None) -> list[Stored]:
        """Commit events in one durable transaction; assign ids and sequence numbers.

        ``state`` (key, value) is saved in the same transaction, so the engine state on
        disk always matches the events on disk. If the commit takes the buffer over its
        cap, the oldest low-lane events are dropped in the same transaction and a
        ``buffer_drop`` event names each run.
        """
        if not events and state is None:
            return []
        now = time.time() if now is None else now
        try:
            with self.db.atomic("IMMEDIATE"):
                if state is not None:
                    KvRow.replace(key=state[0], value=state[1]).execute()
                if not events:
                    return []
                out = self._insert(events, now)
                notices = self._enforce_cap(now)
                if notices:
                    self._insert(notices, now)
        except PeeweeException as e:
            # On SQLITE_FULL SQLite has rolled back already and peewee's own rollback then
            # fails with "no transaction is active": report the cause, not the echo.
            cause: BaseException = e
            while cause.__context__ is not None and "no transaction is active" in str(cause):
                cause = cause.__context__
            self._recount()  # nothing of this commit is in
            raise BufferWriteError(f"{cause}") from cause
        return out

    def _insert(self, events: Sequence[Event], now: float) -> list[Stored]:
        recorded = contract.iso_utc(now)
        row = self.db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        seq = row[0] if row else 0
        rows = []
        out: list[Stored] = []
        for ev in events:
            seq += 1
            uid = str(uuid.uuid4())
            payload = contract.event_payload(ev, seq, uid, self.unit, self.site, recorded)
            topic = contract.event_topic(ev.kind)
            rows.append((seq, uid, int(ev.lane), ev.kind, topic, payload, now))
            out.append(Stored(seq, uid, int(ev.lane), topic, payload))
        self.db.cursor().executemany(
            "INSERT INTO outbox (seq, uid, lane, kind, topic, payload, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        with self._lock:
            self._lanes.update(r[2] for r in rows)
        return out

    def _used_bytes(self) -> int:
        pc = self.db.execute_sql("PRAGMA page_count").fetchone()[0]
        fl = self.db.execute_sql("PRAGMA freelist_count").fetchone()[0]
        ps = self.db.execute_sql("PRAGMA page_size").fetchone()[0]
        return int((pc - fl) * ps)

    def _enforce_cap(self, now: float) -> list[Event]:
        over_events = self._count - self.max_events
        used = self._used_bytes()
        over_bytes = used - self.max_bytes
        if over_events <= 0 and over_bytes <= 0:
            return []
        notices: list[Event] = []
        # Free 5% more than the excess so the cap is not hit again on every insert.
        avg = max(1, used // max(1, self._count))
        want = max(over_events, over_bytes // avg + 1, 0) + max(1, self.max_events // 20)
        for lane in (Lane.TELEMETRY, Lane.ROUTINE):
            if want <= 0:
                break
            # Drop notices are never dropped: they are the backend's account of the gaps.
            seqs = [r[0] for r in self.db.execute_sql(
                "SELECT seq FROM outbox WHERE lane=? AND kind != 'buffer_drop' "
                "ORDER BY seq LIMIT ?", (int(lane), want))]
            if not seqs:
                continue
            self._delete(seqs)
            runs = _runs(seqs)  # lanes interleave: a lane's seqs come in runs, not one range
            for first, last in runs:
                DropRow.create(first_seq=first, last_seq=last, count=last - first + 1,
                               lane=int(lane), at=now)
            self.dropped_total += len(seqs)
            want -= len(seqs)
            log.warning("buffer full: dropped %d %s events (seq %d-%d in %d runs)", len(seqs),
                        lane.name.lower(), seqs[0], seqs[-1], len(runs))
            notices.append(Event(kind="buffer_drop", time=now, lane=Lane.ROUTINE, data={
                "lane": lane.name.lower(), "count": len(seqs),
                "ranges": [[a, b] for a, b in runs]}))
        if want > 0 and over_events > 0:
            log.error("buffer over its cap with only emergency events left; keeping them all")
        return notices

    # -- publisher side ----------------------------------------------------------------------

    def fetch(self, lane: int, after: int, limit: int, upto: int | None = None) -> list[Stored]:
        """Oldest unacknowledged events of a lane with seq in (after, upto]."""
        if upto is None:
            cur = self.db.execute_sql(
                "SELECT seq, uid, lane, topic, payload FROM outbox WHERE lane=? AND seq>? "
                "ORDER BY seq LIMIT ?", (lane, after, limit))
        else:
            cur = self.db.execute_sql(
                "SELECT seq, uid, lane, topic, payload FROM outbox WHERE lane=? AND seq>? "
                "AND seq<=? ORDER BY seq LIMIT ?", (lane, after, upto, limit))
        return [Stored(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur]

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: delete them (NORMAL sync: a lost ack is only a resend)."""
        seqs = list(seqs)
        if not seqs:
            return
        conn = self.db.connection()
        if id(conn) not in self._fast_ack_conns:
            conn.execute("PRAGMA synchronous=NORMAL")
            self._fast_ack_conns.add(id(conn))
        with self.db.atomic("IMMEDIATE"):
            self._delete(seqs)

    def _delete(self, seqs: list[int]) -> None:
        gone: Counter[int] = Counter()
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            cur = self.db.execute_sql(  # RETURNING (SQLite >= 3.35) keeps the lane counts exact
                f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) RETURNING lane",
                chunk)
            gone.update(lane for (lane,) in cur.fetchall())
        with self._lock:
            self._lanes.subtract(gone)

    def _recount(self) -> None:
        counts = Counter({lane: n for lane, n in self.db.execute_sql(
            "SELECT lane, count(*) FROM outbox GROUP BY lane")})
        with self._lock:
            self._lanes = counts

    @property
    def _count(self) -> int:
        with self._lock:
            return sum(self._lanes.values())

    def last_seq(self) -> int:
        row = self.db.execute_sql("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return int(row[0]) if row else 0

    def depth(self) -> int:
        return self._count

    def depth_by_lane(self) -> dict[str, int]:
        with self._lock:
            return {lane.name.lower(): self._lanes[int(lane)] for lane in Lane}

    def oldest_created(self) -> float | None:
        # The lowest seq is the oldest event: a primary-key lookup, not a table scan.
        row = self.db.execute_sql("SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def drops(self, recent: int = 20) -> dict[str, Any]:
        by_lane = {lane.name.lower(): 0 for lane in Lane}
        for lane, n in self.db.execute_sql("SELECT lane, sum(count) FROM drops GROUP BY lane"):
            by_lane[Lane(lane).name.lower()] = n
        ranges = [[r.first_seq, r.last_seq] for r in
                  DropRow.select().order_by(DropRow.first_seq.desc()).limit(recent)][::-1]
        return {"total": self.dropped_total, "by_lane": by_lane, "recent_ranges": ranges}

    # -- small persistent state --------------------------------------------------------------

    def save_state(self, key: str, value: bytes) -> None:
        KvRow.replace(key=key, value=value).execute()

    def load_state(self, key: str) -> bytes | None:
        row = KvRow.get_or_none(KvRow.key == key)
        return bytes(row.value) if row else None

    def truncate_wal(self) -> None:
        """Checkpoint the WAL and cut it to nothing: frames of overwritten data (an old
        engine state saved by tag id) are gone from the disk, not only superseded."""
        try:
            self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except PeeweeException as e:
            raise BufferWriteError(f"{e}") from e

    @staticmethod
    def saved(path: str, timeout_s: float = 5.0) -> SavedBuffer:
        """Open a buffer file read-only (another process may own it); see SavedBuffer."""
        return SavedBuffer(path, timeout_s)

    def close(self) -> None:
        self.db.close()
