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
(itself never dropped) that lists the exact sequence runs. The cap counts the
WAL file too, and the buffer never grows into the last ``reserve_mb`` of free
disk.

Faults of the file itself (issue 11):

- A high-water mark lives beside the buffer (``<path>.seq``, written atomically
  whenever the sequence passes it, ``HWM_STEP`` numbers ahead), so a lost or
  corrupt buffer cannot take the sequence back with it.
- A corrupt buffer found at start (``PRAGMA quick_check``, or SQLite refusing
  the file) is moved aside (``<path>.corrupt-<UTC time>``), every readable event
  is copied row by row into a fresh buffer, and an emergency ``buffer_salvage``
  event names the seq ranges that could not be saved.
- A buffer deleted or replaced under the running daemon is noticed by file
  identity (device, inode) before every commit; what the still-open old file
  holds is copied into a re-created one, with a ``buffer_salvage`` event.
- Events held in memory at a stop whose buffer cannot be written are parked in a
  JSON-lines file (``park``) and committed at the next start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peewee import (
    BlobField,
    DatabaseError,
    FloatField,
    IntegerField,
    Model,
    OperationalError,
    PeeweeException,
    SqliteDatabase,
    TextField,
)
from playhouse.sqlite_ext import AutoIncrementField

from gateway import contract
from gateway.contract import Stored
from gateway.durable import write_durably
from gateway.model import Event, Lane

log = logging.getLogger("gateway.outbox")

# peewee ships no type annotations: the few calls of it this module makes go through
# these typed wrappers, so the rest of the module is checked strictly.
def _sql(db: SqliteDatabase, query: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    cur: sqlite3.Cursor = db.execute_sql(query, params)  # type: ignore[no-untyped-call]
    return cur


def _cursor(db: SqliteDatabase) -> sqlite3.Cursor:
    cur: sqlite3.Cursor = db.cursor()  # type: ignore[no-untyped-call]
    return cur


def _connection(db: SqliteDatabase) -> sqlite3.Connection:
    conn: sqlite3.Connection = db.connection()  # type: ignore[no-untyped-call]
    return conn


HWM_STEP = 1000  # seqs reserved per write of the high-water mark file, at least
HWM_BATCHES = 8  # ... and this many of the commit's size (a burst writes it less often)
MAX_NOTICE_RANGES = 200  # seq runs listed in one buffer_salvage event
# SD-card wear (docs/architecture.md, bench/wear.py): page_size first, it only takes on a
# new file; 1 KiB pages make each commit's WAL frames a quarter of the default 4 KiB.
# wal_autocheckpoint: 4,000 of those pages, the 4 MiB SQLite's default (1,000 pages) moves
# at 4 KiB pages; at 1,000 small pages a burst checkpointed (two more fsyncs) 4 times as
# often. journal_size_limit: the WAL file is cut back to 4 MiB after a checkpoint (disk).
# secure_delete: freed pages are zeroed, so nothing deleted or overwritten (an engine state
# saved by tag id before, see engine/persist.py) lingers in the file. Debian's SQLite has
# it on already (measured with it); said here for other builds.
PRAGMAS = {"page_size": 1024, "journal_mode": "wal", "synchronous": 2, "busy_timeout": 10_000,
           "cache_size": -2000, "wal_autocheckpoint": 4000,
           "journal_size_limit": 4 * 1024 * 1024, "secure_delete": 1}


def _utc_stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _complement(have: list[int], low: int, high: int) -> list[tuple[int, int]]:
    """Runs of [low, high] not in ``have`` (sorted ascending)."""
    out: list[tuple[int, int]] = []
    nxt = low
    for s in have:
        if s < nxt:
            continue
        if s > high:
            break
        if s > nxt:
            out.append((nxt, s - 1))
        nxt = s + 1
    if nxt <= high:
        out.append((nxt, high))
    return out


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


def _put_kv(db: SqliteDatabase, key: str, value: bytes) -> None:
    # Plain SQL: peewee building the query took longer than SQLite storing the engine
    # state, which goes with every commit of events (docs/architecture.md, "Cost at a site").
    _sql(db, "INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))


@dataclass(frozen=True, slots=True)
class Erased:
    """What :meth:`Outbox.erase_child` removed: deleted seqs as inclusive runs, and the
    roll-calls whose lists lost the child."""

    ranges: tuple[tuple[int, int], ...]
    redacted: int

    @property
    def deleted(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)


def _redact(body: dict[str, Any], names: Collection[str]) -> bool:
    """A roll-call without the entries of ``names`` (in place); whether it had any."""
    data = body.get("data")
    if body.get("kind") != "roll_call" or not isinstance(data, dict):
        return False
    hit = False
    for key in ("present", "missing"):
        items = data.get(key)
        if isinstance(items, list):
            kept = [x for x in items if not (isinstance(x, dict) and x.get("child") in names)]
            hit = hit or len(kept) != len(items)
            data[key] = kept
    if hit and isinstance(data.get("present"), list):
        data["count"] = len(data["present"])
    return hit


class BufferWriteError(Exception):
    """The buffer could not be written (disk full, card failing); nothing was committed."""


class BufferReadError(Exception):
    """A buffer file could not be read (missing, not a buffer, locked for too long)."""


def _fit_header(path: str) -> None:
    """A truncated file: make the header's page count match what is left, so SQLite reads
    the pages that are there instead of refusing the whole file as malformed."""
    with open(path, "r+b") as f:
        head = f.read(100)
        if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
            return
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        if page_size < 512:
            return
        have = os.fstat(f.fileno()).st_size // page_size
        if int.from_bytes(head[28:32], "big") > have:
            f.truncate(have * page_size)
            f.seek(28)
            f.write(have.to_bytes(4, "big"))


_ROW_COLS = "seq, uid, lane, kind, topic, payload, created"


def _salvage_rows(conn: sqlite3.Connection, high: int) -> tuple[list[tuple[Any, ...]], int, bool]:
    """Every readable outbox row of a damaged file, row by row in seq order.

    A read that fails (an unreadable page) is retried further on, at exponentially
    growing distances, so one bad page costs only the rows on it. Returns the rows,
    the highest seq the file itself still names, and whether the scan began cleanly
    (then no row below the first one existed).
    """
    with contextlib.suppress(sqlite3.Error):
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        if row:
            high = max(high, int(row[0]))
    rows: list[tuple[Any, ...]] = []
    after, clean_start = 0, True
    while True:
        try:
            for r in conn.execute(f"SELECT {_ROW_COLS} FROM outbox WHERE seq>? ORDER BY seq",
                                  (after,)):
                rows.append(tuple(r))
                after = int(r[0])
            break
        except sqlite3.Error:
            if not rows:
                clean_start = False
            skip, resumed = 1, False
            while after + skip <= high:
                try:
                    nxt = conn.execute("SELECT seq FROM outbox WHERE seq>? ORDER BY seq LIMIT 1",
                                       (after + skip,)).fetchone()
                except sqlite3.Error:
                    skip *= 2
                    continue
                if nxt is None:
                    break
                after, resumed = int(nxt[0]) - 1, True
                break
            if not resumed:
                break
    if rows:
        high = max(high, int(rows[-1][0]))
    return rows, high, clean_start


def _salvage_kv(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
    try:
        return [(str(k), bytes(v)) for k, v in conn.execute("SELECT key, value FROM kv")]
    except sqlite3.Error:
        return []


def _salvage_drops(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    try:
        return [tuple(r) for r in conn.execute(
            "SELECT first_seq, last_seq, count, lane, at FROM drops")]
    except sqlite3.Error:
        return []


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
            return list(_sql(self._db, sql, params).fetchall())
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
        reserve_mb: float = 0.0,
    ) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.unit = unit
        self.site = site
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.max_events = max_events
        self.reserve_bytes = int(reserve_mb * 1024 * 1024)
        self._reserve_in_force = self.reserve_bytes
        self._models = (OutboxRow, DropRow, KvRow)
        self._lock = threading.Lock()
        # One writer at a time inside the process, queued on a lock: SQLite's own busy
        # handler polls with growing sleeps, so a thread waiting for the write lock (a
        # receipt's delete) could miss every short gap between the pipeline's commits for
        # seconds. Reads (WAL) never wait for it.
        self._write_gate = threading.RLock()
        self._lanes: Counter[int] = Counter()
        self._fast_ack_conns: set[int] = set()
        self._hwm_path = f"{path}.seq"
        self._reserved, self._unacked_from = self._read_hwm()
        self._hwm_failing = False
        self._old_last = 0
        self._kv_saved: dict[str, int] = {}  # key -> hash of the value last committed
        self._parked_pending = False
        self._unsaved: list[Event] = []  # own notices not yet committed (the buffer failed)
        # What happened to the buffer file itself, newest last (health and status show it).
        self.incidents: list[dict[str, Any]] = []
        notice = self._open_checked()
        # Events per lane, kept in memory: counting a million-row table for every health
        # message would stall the publisher for most of a second on a Pi.
        self._recount()
        self.dropped_total = sum(d.count for d in DropRow.select())
        self._floor_sequence()
        parked = self._unpark()
        if notice is not None:
            self._unsaved.append(notice)
        if notice is not None or parked:
            try:
                self.add(parked)
            except BufferWriteError as e:  # kept: parked files stay, notices wait in memory
                log.error("cannot commit at start (%s); retried with the next commit", e)
                self._unsaved.extend(parked)
                self._parked_pending = True
            else:
                self._clear_parked()

    # -- opening, salvage, identity ------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE), queued behind this process's others."""
        with self._write_gate, self.db.atomic("IMMEDIATE"):
            yield

    def _connect(self) -> SqliteDatabase:
        db = SqliteDatabase(self.path, pragmas=PRAGMAS, check_same_thread=False)
        db.bind(self._models)
        db.connect(reuse_if_open=True)
        db.create_tables(self._models)
        return db

    def _open_checked(self) -> Event | None:
        """Open the buffer; a corrupt one is moved aside and salvaged (the notice returned)."""
        existed = os.path.exists(self.path)
        problem = None
        db: SqliteDatabase | None = None
        try:
            db = self._connect()
            check = [str(r[0]) for r in _sql(db, "PRAGMA quick_check").fetchall()]
            if check != ["ok"]:
                problem = "; ".join(check[:3])
        except OperationalError:
            raise  # locked, unopenable: not corruption, and not ours to move aside
        except DatabaseError as e:
            problem = str(e)
        if problem is None and db is not None:
            self.db = db
            self._identity = self._stat()
            if not existed and self._reserved > 0:
                return self._lost_notice("missing", "the buffer file was missing at start", None,
                                         [], True)
            if existed and self.last_seq() < self._unacked_from - 1:
                # Only an older copy put in place can be behind the mark's lowest unsent seq.
                return self._replace_older()
            return None
        if db is not None:
            with contextlib.suppress(Exception):
                db.close()
        return self._salvage_file(problem or "unreadable")

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def _move_aside(self, tag: str) -> str | None:
        """Keep a damaged or foreign buffer (and its -wal, -shm) for forensics."""
        aside = f"{self.path}.{tag}-{_utc_stamp(time.time())}"
        moved = None
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path + suffix, aside + suffix)
                if suffix == "":
                    moved = aside
        return moved

    def _salvage_file(self, problem: str) -> Event:
        aside = self._move_aside("corrupt")
        rows: list[tuple[Any, ...]] = []
        kv: list[tuple[str, bytes]] = []
        drops: list[tuple[Any, ...]] = []
        high, clean = self._reserved, False
        if aside is not None:
            work = f"{aside}.salvaging"  # a copy: the one moved aside stays as it was found
            try:
                for suffix in ("", "-wal"):
                    with contextlib.suppress(FileNotFoundError):
                        shutil.copyfile(aside + suffix, work + suffix)
                _fit_header(work)
                conn = sqlite3.connect(work)
                try:
                    rows, high, clean = _salvage_rows(conn, 0)
                    kv, drops = _salvage_kv(conn), _salvage_drops(conn)
                finally:
                    conn.close()
            except (OSError, sqlite3.Error) as e:
                log.error("salvage of %s failed: %s", aside, e)
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(work + suffix)
        self.db = self._connect()
        self._identity = self._stat()
        self._copy_in(rows, kv, drops, max(high, self._reserved))
        return self._lost_notice("corrupt", problem, aside, rows, clean, known_high=high or None)

    def _copy_in(self, rows: list[tuple[Any, ...]], kv: list[tuple[str, bytes]],
                 drops: list[tuple[Any, ...]], high: int) -> None:
        with self._writing():
            cur = _cursor(self.db)
            cur.executemany(f"INSERT OR IGNORE INTO outbox ({_ROW_COLS}) VALUES (?,?,?,?,?,?,?)",
                            rows)
            cur.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", kv)
            cur.executemany("INSERT INTO drops (first_seq, last_seq, count, lane, at) "
                            "VALUES (?,?,?,?,?)", drops)
            self._set_sequence(high)

    def _set_sequence(self, seq: int) -> None:
        if seq <= self.last_seq():
            return
        cur = _sql(self.db, "UPDATE sqlite_sequence SET seq=? WHERE name='outbox'", (seq,))
        if cur.rowcount == 0:
            _sql(self.db, "INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                                (seq,))

    def _lost_notice(self, reason: str, detail: str, aside: str | None,
                     rows: list[tuple[Any, ...]], clean_start: bool,
                     known_high: int | None = None, complete: bool = False) -> Event:
        """The emergency notice of a buffer lost in part: what was saved, which seqs not.

        ``ranges`` are the seqs the unit may have held and could not save: those among them
        the backend has not received are lost (some may have been delivered before, or
        only reserved by the high-water mark and never used)."""
        high = self.last_seq() if complete else max(self._reserved, self.last_seq())
        saved = [int(r[0]) for r in rows]
        # Below the first salvaged row nothing was buffered if the scan began cleanly;
        # otherwise the mark's lowest unsent seq (written with the mark) bounds it.
        low = saved[0] if clean_start and saved else max(1, self._unacked_from)
        runs = [] if complete else _complement(saved, low, known_high or high)
        lost_max = sum(b - a + 1 for a, b in runs)
        with self._writing():
            self._set_sequence(high)
        incident = {"at": contract.iso_utc(time.time()), "reason": reason, "detail": detail,
                    "moved_to": aside, "salvaged": len(saved), "lost_max": lost_max,
                    "ranges": [[a, b] for a, b in runs[:MAX_NOTICE_RANGES]]}
        self.incidents = [*self.incidents, incident][-10:]
        log.error("buffer %s %s (%s): %s; %d events salvaged, up to %d seqs lost in %d runs "
                  "(%s), seq continues above %d", self.path, reason, detail,
                  f"moved to {aside}" if aside else "nothing to move aside", len(saved),
                  lost_max, len(runs), ", ".join(f"{a}-{b}" for a, b in runs[:5])
                  + (" ..." if len(runs) > 5 else ""), high)
        return Event(kind="buffer_salvage", time=time.time(), lane=Lane.EMERGENCY, data={
            "reason": reason, "detail": detail[:200],
            "moved_to": os.path.basename(aside) if aside else None,
            "salvaged": len(saved), "lost_max": lost_max,
            "ranges": incident["ranges"], "ranges_complete": len(runs) <= MAX_NOTICE_RANGES})

    def _replace_older(self) -> Event:
        """An older buffer was put in place: keep its unsent events, continue above the mark."""
        rows = [tuple(r) for r in _sql(self.db, f"SELECT {_ROW_COLS} FROM outbox")]
        self._old_last = self.last_seq()
        return self._rebuild("replaced", "an older buffer file was put in place", rows, [], [],
                             complete=False)

    def _rebuild(self, reason: str, detail: str, rows: list[tuple[Any, ...]],
                 kv: list[tuple[str, bytes]], drops: list[tuple[Any, ...]],
                 complete: bool) -> Event:
        with contextlib.suppress(Exception):
            self.db.close()
        aside = self._move_aside(reason) if reason == "replaced" else None
        if reason == "deleted":  # a -wal or -shm left behind belongs to the deleted file
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path + suffix)
        self._fast_ack_conns = set()
        self._kv_saved = {}
        self.db = self._connect()
        self._identity = self._stat()
        # Everything carried over: seq goes on from the old file's own last (no gap);
        # otherwise above the high-water mark (nothing assigned before is used again).
        high = max([self._old_last if complete else self._reserved] + [int(r[0]) for r in rows])
        self._copy_in(rows, kv, drops, high)
        self._recount()
        self.dropped_total = sum(d.count for d in DropRow.select())
        rows.sort(key=lambda r: int(r[0]))
        return self._lost_notice(reason, detail, aside, rows, clean_start=False,
                                 complete=complete)

    def check_file(self) -> Event | None:
        """Is the file at ``path`` still the one we have open? If it was deleted or
        replaced, re-create it with everything the open file still holds (the notice
        returned, to be committed)."""
        ident = self._stat()
        if ident == self._identity:
            return None
        reason = "deleted" if ident is None else "replaced"
        rows: list[tuple[Any, ...]] = []
        kv: list[tuple[str, bytes]] = []
        drops: list[tuple[Any, ...]] = []
        complete = False
        with contextlib.suppress(PeeweeException, sqlite3.Error):  # the old inode is still open
            rows = [tuple(r) for r in _sql(self.db, f"SELECT {_ROW_COLS} FROM outbox")]
            kv = [(str(k), bytes(v)) for k, v in _sql(self.db, "SELECT key, value FROM kv")]
            drops = [tuple(r) for r in _sql(self.db,
                "SELECT first_seq, last_seq, count, lane, at FROM drops")]
            complete = True
        self._old_last = 0
        try:
            self._old_last = self.last_seq()
        except (PeeweeException, sqlite3.Error):
            complete = False  # the old file's own last seq is unknown: go above the mark
        return self._rebuild(reason, f"the buffer file was {reason} while the unit ran",
                             rows, kv, drops, complete)

    # -- the high-water mark -------------------------------------------------------------------

    def _read_hwm(self) -> tuple[int, int]:
        try:
            doc = json.loads(Path(self._hwm_path).read_text())
            return int(doc["reserved"]), int(doc["unacked_from"])
        except FileNotFoundError:
            return 0, 0
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.error("high-water mark %s unreadable (%s); the buffer's own seq is used",
                      self._hwm_path, e)
            return 0, 0

    def _write_hwm(self, upto: int, ahead: int = HWM_STEP) -> None:
        """Reserve seqs up to ``upto`` + ``ahead`` before any of them is committed."""
        reserved = upto + ahead
        row = _sql(self.db, "SELECT seq FROM outbox ORDER BY seq LIMIT 1").fetchone()
        unacked_from = int(row[0]) if row else self.last_seq() + 1
        try:
            write_durably(self._hwm_path, json.dumps(
                {"reserved": reserved, "unacked_from": unacked_from}).encode())
        except OSError as e:
            if not self._hwm_failing:
                log.error("cannot write the high-water mark %s (%s)", self._hwm_path, e)
            self._hwm_failing = True
            return
        self._hwm_failing = False
        self._reserved, self._unacked_from = reserved, unacked_from

    def _floor_sequence(self) -> None:
        last = self.last_seq()
        if self._reserved <= last:
            self._write_hwm(last)

    @property
    def high_water(self) -> int:
        """No seq at or below this is ever assigned again (the birth message carries it)."""
        return max(self._reserved, self.last_seq())

    # -- events held at a stop ----------------------------------------------------------------

    def _park_paths(self) -> list[str]:
        paths = [f"{self.path}.held.jsonl"]
        run = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
        if run:
            paths.append(os.path.join(run, os.path.basename(self.path) + ".held.jsonl"))
        return paths

    def park(self, events: Sequence[Event]) -> str | None:
        """Write events the buffer could not take to the first writable fallback file."""
        data = b"".join(json.dumps({"kind": e.kind, "time": e.time, "lane": int(e.lane),
                                    "reader": e.reader, "child": e.child, "data": e.data,
                                    "term": e.term},
                                   separators=(",", ":")).encode() + b"\n" for e in events)
        for path in self._park_paths():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                log.error("cannot park held events in %s (%s)", path, e)
                continue
            return path
        return None

    def _unpark(self) -> list[Event]:
        out: list[Event] = []
        for path in self._park_paths():
            try:
                lines = Path(path).read_bytes().splitlines()
            except FileNotFoundError:
                continue
            except OSError as e:
                log.error("cannot read parked events %s (%s)", path, e)
                continue
            for line in lines:
                try:
                    d = json.loads(line)
                    out.append(Event(kind=d["kind"], time=float(d["time"]), lane=Lane(d["lane"]),
                                     reader=d["reader"], child=d["child"], data=d["data"],
                                     term=d.get("term")))
                except (ValueError, KeyError, TypeError):
                    log.error("a parked event in %s is unreadable; skipped", path)
            log.warning("%d events parked at the last stop (%s) committed now", len(lines), path)
        return out

    def _clear_parked(self) -> None:
        for path in self._park_paths():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    # -- writer side (the pipeline thread) ---------------------------------------------------

    def add(self, events: Sequence[Event], now: float | None = None,
            state: tuple[str, bytes] | None = None) -> list[Stored]:
        """Commit events in one durable transaction; assign ids and sequence numbers.

        ``state`` (key, value) is saved in the same transaction, so the engine state on
        disk always matches the events on disk. If the commit takes the buffer over its
        cap, the oldest low-lane events are dropped in the same transaction and a
        ``buffer_drop`` event names each run.
        """
        if not events and state is None and not self._unsaved:
            return []
        now = time.time() if now is None else now
        extra: list[Event] = []
        kv_saved: tuple[str, int] | None = None
        try:
            lost = self.check_file()
            if lost is not None:
                self._unsaved.append(lost)
            extra, self._unsaved = self._unsaved, []
            with self._writing():
                # An unchanged state (an idle unit) is not written again: SD-card wear.
                if state is not None and self._kv_saved.get(state[0]) != hash(state[1]):
                    _put_kv(self.db, state[0], state[1])
                    kv_saved = (state[0], hash(state[1]))
                out: list[Stored] = []
                if events or extra:
                    n = len(events) + len(extra)
                    needed = self.last_seq() + n + 64
                    if needed > self._reserved:
                        self._write_hwm(needed, max(HWM_STEP, HWM_BATCHES * n))
                    # Notices of this unit's own buffer go first and are not the caller's.
                    if extra:
                        self._insert(extra, now)
                    out = self._insert(events, now)
                    notices = self._enforce_cap(now)
                    if notices:
                        self._insert(notices, now)
            if kv_saved is not None:
                self._kv_saved[kv_saved[0]] = kv_saved[1]
            if self._parked_pending and extra:
                self._clear_parked()
                self._parked_pending = False
        except (PeeweeException, sqlite3.Error) as e:
            self._unsaved = extra + self._unsaved  # the notices wait for the next commit
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
        row = _sql(self.db, "SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
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
        _cursor(self.db).executemany(
            "INSERT INTO outbox (seq, uid, lane, kind, topic, payload, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        with self._lock:
            self._lanes.update(r[2] for r in rows)
        return out

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def free_disk_bytes(self) -> int | None:
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return None
        # A reserve bigger than a tenth of the filesystem (a small card or partition)
        # would leave the buffer no room at all: it is held to that tenth.
        self._reserve_in_force = min(self.reserve_bytes, st.f_blocks * st.f_frsize // 10)
        return st.f_bavail * st.f_frsize

    def _used_bytes(self) -> tuple[int, int]:
        """(bytes the events take, including the WAL; the cap in force now).

        The cap is ``max_mb``, or less where the disk has less than ``reserve_mb`` free: the
        file (its free pages count as room) may take what is free beyond the reserve, and
        once it ate into the reserve, that much of it is kept as free pages, so it does
        not grow further; events are dropped (oldest, lowest lane first) to make them.
        """
        pc = _sql(self.db, "PRAGMA page_count").fetchone()[0]
        fl = _sql(self.db, "PRAGMA freelist_count").fetchone()[0]
        ps = _sql(self.db, "PRAGMA page_size").fetchone()[0]
        wal = self._wal_bytes()
        cap = self.max_bytes
        free = self.free_disk_bytes()
        if self.reserve_bytes and free is not None:
            cap = min(cap, pc * ps + wal + free - self._reserve_in_force)
        return int((pc - fl) * ps + wal), cap

    def _enforce_cap(self, now: float) -> list[Event]:
        over_events = self._count - self.max_events
        used, cap = self._used_bytes()
        over_bytes = used - cap
        if over_events <= 0 and over_bytes <= 0:
            return []
        notices: list[Event] = []
        # Free 5% more than the excess so the cap is not hit again on every insert.
        avg = max(1, used // max(1, self._count))
        margin = (self.max_events if over_events > 0 else max(1, cap) // avg) // 20
        want = max(over_events, over_bytes // avg + 1, 0) + max(1, margin)
        for lane in (Lane.TELEMETRY, Lane.ROUTINE):
            if want <= 0:
                break
            # Drop notices are never dropped: they are the backend's account of the gaps.
            seqs = [r[0] for r in _sql(self.db,
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
            cur = _sql(self.db,
                "SELECT seq, uid, lane, topic, payload FROM outbox WHERE lane=? AND seq>? "
                "ORDER BY seq LIMIT ?", (lane, after, limit))
        else:
            cur = _sql(self.db,
                "SELECT seq, uid, lane, topic, payload FROM outbox WHERE lane=? AND seq>? "
                "AND seq<=? ORDER BY seq LIMIT ?", (lane, after, upto, limit))
        return [Stored(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur]

    def ack(self, seqs: Iterable[int]) -> None:
        """The broker has these: delete them (NORMAL sync: a lost ack is only a resend)."""
        seqs = list(seqs)
        if not seqs:
            return
        conn = _connection(self.db)
        if id(conn) not in self._fast_ack_conns:
            conn.execute("PRAGMA synchronous=NORMAL")
            self._fast_ack_conns.add(id(conn))
        try:
            with self._writing():
                self._delete(seqs)
        except (PeeweeException, sqlite3.Error) as e:
            self._recount()
            raise BufferWriteError(f"{e}") from e

    # -- receipts (issue 13; helper "receipts" owns this region) -----------------------------
    #
    # Only deletes persist. The awaiting-receipt marks stay in the delivery core's memory,
    # per connection: a restart is a new connection, after which every un-receipted event
    # is offered again anyway (the rule after a reconnect), so a persisted mark would buy
    # nothing and cost an SD-card write per PUBACK. What a receipt covered is deleted at
    # once and durably enough (NORMAL sync, as PUBACK deletes: a lost delete is a resend
    # that the backend de-duplicates and receipts again).

    def fetch_seqs(self, seqs: Sequence[int]) -> list[Stored]:
        """The stored rows among ``seqs`` (the delivery core's resends after a receipt
        timeout); seqs no longer stored are left out."""
        out: list[Stored] = []
        seqs = list(seqs)
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            cur = _sql(self.db,
                "SELECT seq, uid, lane, topic, payload FROM outbox WHERE seq IN "
                f"({','.join('?' * len(chunk))}) ORDER BY seq", chunk)
            out.extend(Stored(r[0], r[1], r[2], r[3], bytes(r[4])) for r in cur)
        return out

    def delete_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """A receipt covers these inclusive seq ranges: delete what of them is stored, in one
        transaction; returns the seqs deleted."""
        if not ranges:
            return []
        conn = _connection(self.db)
        if id(conn) not in self._fast_ack_conns:
            conn.execute("PRAGMA synchronous=NORMAL")
            self._fast_ack_conns.add(id(conn))
        gone: Counter[int] = Counter()
        seqs: list[int] = []
        try:
            with self._writing():
                for lo, hi in ranges:
                    cur = _sql(self.db, "DELETE FROM outbox WHERE seq BETWEEN ? AND ? "
                                        "RETURNING seq, lane", (lo, hi))
                    for seq, lane in cur.fetchall():
                        seqs.append(int(seq))
                        gone[int(lane)] += 1
        except (PeeweeException, sqlite3.Error) as e:
            self._recount()
            raise BufferWriteError(f"{e}") from e
        with self._lock:
            self._lanes.subtract(gone)
        return sorted(seqs)

    # -- end of the receipts region ----------------------------------------------------------

    def _delete(self, seqs: list[int]) -> None:
        gone: Counter[int] = Counter()
        for i in range(0, len(seqs), 500):
            chunk = seqs[i:i + 500]
            cur = _sql(self.db,   # RETURNING (SQLite >= 3.35) keeps the lane counts exact
                f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))}) RETURNING lane",
                chunk)
            gone.update(lane for (lane,) in cur.fetchall())
        with self._lock:
            self._lanes.subtract(gone)

    def _recount(self) -> None:
        counts = Counter({lane: n for lane, n in _sql(self.db,
            "SELECT lane, count(*) FROM outbox GROUP BY lane")})
        with self._lock:
            self._lanes = counts

    @property
    def _count(self) -> int:
        with self._lock:
            return sum(self._lanes.values())

    def last_seq(self) -> int:
        row = _sql(self.db, "SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return int(row[0]) if row else 0

    def depth(self) -> int:
        return self._count

    def disk(self) -> dict[str, Any]:
        """Free disk, the reserve kept, the WAL, the high-water mark, incidents: for health."""
        free = self.free_disk_bytes()
        mib = 1024 * 1024
        return {"free_disk_mb": round(free / mib, 1) if free is not None else None,
                "reserve_mb": round(self._reserve_in_force / mib, 1),
                "wal_mb": round(self._wal_bytes() / mib, 2),
                "high_water_seq": self.high_water,
                "incidents": list(self.incidents)}

    def depth_by_lane(self) -> dict[str, int]:
        with self._lock:
            return {lane.name.lower(): self._lanes[int(lane)] for lane in Lane}

    def oldest_created(self) -> float | None:
        # The lowest seq is the oldest event: a primary-key lookup, not a table scan.
        row = _sql(self.db, "SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def drops(self, recent: int = 20) -> dict[str, Any]:
        by_lane = {lane.name.lower(): 0 for lane in Lane}
        for lane, n in _sql(self.db, "SELECT lane, sum(count) FROM drops GROUP BY lane"):
            by_lane[Lane(lane).name.lower()] = n
        ranges = [[r.first_seq, r.last_seq] for r in
                  DropRow.select().order_by(DropRow.first_seq.desc()).limit(recent)][::-1]
        return {"total": self.dropped_total, "by_lane": by_lane, "recent_ranges": ranges}

    # -- small persistent state --------------------------------------------------------------

    def save_state(self, key: str, value: bytes) -> None:
        with self._write_gate:
            _put_kv(self.db, key, value)

    def load_state(self, key: str) -> bytes | None:
        row = KvRow.get_or_none(KvRow.key == key)
        return bytes(row.value) if row else None

    def truncate_wal(self) -> None:
        """Checkpoint the WAL and cut it to nothing: frames of overwritten data (an old
        engine state saved by tag id) are gone from the disk, not only superseded."""
        try:
            _sql(self.db, "PRAGMA wal_checkpoint(TRUNCATE)")
        except PeeweeException as e:
            raise BufferWriteError(f"{e}") from e

    # -- privacy: erase and retention (docs/privacy.md; the roster helper's region) ---------

    def child_rows(self, names: Collection[str], after: int = 0,
                   upto: int | None = None) -> list[int]:
        """Seqs of the events in (after, upto] that may name one of ``names`` (as the
        envelope's child or in a roll-call's lists): a read, on any thread, so the scan of
        a long backlog does not hold the pipeline (``erase_child`` checks each one)."""
        needles = [f'"child":{json.dumps(n, ensure_ascii=False)}'.encode() for n in names]
        if not needles:
            return []
        where = " OR ".join("instr(payload, ?) > 0" for _ in needles)
        bound = "" if upto is None else " AND seq<=?"
        params: list[Any] = [after, *([] if upto is None else [upto]), *needles]
        return [int(r[0]) for r in _sql(self.db,
            f"SELECT seq FROM outbox WHERE seq>?{bound} AND ({where}) ORDER BY seq", params)]

    def erase_child(self, names: Collection[str], candidates: Iterable[int] = (),
                    scanned_upto: int = 0) -> Erased:
        """Remove a child's undelivered events, in one transaction: those about the child
        (the envelope's ``child`` is one of ``names``: its enrolment id, its pseudonyms)
        are deleted; roll-calls that list it among others keep their id and lose the
        child's entries (``count`` follows). ``candidates``: what :meth:`child_rows`
        found up to ``scanned_upto`` (rows after it are scanned here). Events already
        handed to the broker are not recalled (the backend erases its copy)."""
        wanted = set(names)
        if not wanted:
            return Erased((), 0)
        deleted: list[int] = []
        redacted = 0
        try:
            with self._writing():
                seqs = sorted(set(candidates) | set(self.child_rows(wanted, scanned_upto)))
                for i in range(0, len(seqs), 500):
                    chunk = seqs[i:i + 500]
                    rows = list(_sql(self.db, "SELECT seq, payload FROM outbox WHERE seq IN "
                                              f"({','.join('?' * len(chunk))})", chunk))
                    for seq, payload in rows:
                        body = json.loads(bytes(payload))
                        if body.get("child") in wanted:
                            deleted.append(int(seq))
                        elif _redact(body, wanted):
                            _sql(self.db, "UPDATE outbox SET payload=? WHERE seq=?",
                                 (contract.encode_json(body).encode(), seq))
                            redacted += 1
                if deleted:
                    self._delete(deleted)
        except (PeeweeException, sqlite3.Error) as e:
            self._recount()
            raise BufferWriteError(f"{e}") from e
        return Erased(tuple(_runs(sorted(deleted))), redacted)

    def purge_upto(self, upto: int, now: float) -> int:
        """Retention: delete the routine and telemetry events with seq <= ``upto`` (the
        caller knows them to be older than the retention; delivered or not), each run
        reported to the backend as a ``buffer_drop`` like the cap's drops; undelivered
        emergency events are kept (never dropped). Returns the number deleted."""
        total = 0
        if upto <= 0:
            return 0
        try:
            with self._writing():
                notices: list[Event] = []
                for lane in (Lane.TELEMETRY, Lane.ROUTINE):
                    seqs = [int(r[0]) for r in _sql(self.db,
                        "SELECT seq FROM outbox WHERE lane=? AND seq<=? AND "
                        "kind != 'buffer_drop' ORDER BY seq", (int(lane), upto))]
                    if not seqs:
                        continue
                    self._delete(seqs)
                    runs = _runs(seqs)
                    for first, last in runs:
                        DropRow.create(first_seq=first, last_seq=last,
                                       count=last - first + 1, lane=int(lane), at=now)
                    self.dropped_total += len(seqs)
                    total += len(seqs)
                    notices.append(Event(kind="buffer_drop", time=now, lane=Lane.ROUTINE,
                                         data={"lane": lane.name.lower(), "count": len(seqs),
                                               "ranges": [[a, b] for a, b in runs]}))
                if notices:
                    self._insert(notices, now)
        except (PeeweeException, sqlite3.Error) as e:
            self._recount()
            raise BufferWriteError(f"{e}") from e
        return total

    def terms_in_use(self, terms: Iterable[str]) -> set[str]:
        """Which of these pseudonym terms events still in the buffer are named in (their
        keys are kept); stops at the first such event of each."""
        return {t for t in terms if _sql(self.db,
            "SELECT 1 FROM outbox WHERE instr(payload, ?) > 0 LIMIT 1",
            (f'"term":{json.dumps(t)}'.encode(),)).fetchone()}

    @staticmethod
    def saved(path: str, timeout_s: float = 5.0) -> SavedBuffer:
        """Open a buffer file read-only (another process may own it); see SavedBuffer."""
        return SavedBuffer(path, timeout_s)

    def close(self) -> None:
        self.db.close()

    # -- commands: admitted request ids and their replies (issue 12) --------------------------
    # gateway/commands: a repeated id gets its stored reply, the same id with another
    # payload is refused; rows go once the command has expired (it is refused anyway then).
    # Raw SQL on its own table, created on first use: a salvaged buffer starts without it.

    _COMMANDS_DDL = ("CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, digest TEXT "
                     "NOT NULL, expires REAL NOT NULL, reply TEXT NOT NULL)")

    def _commands_sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        writes = not query.startswith("SELECT")
        try:
            with self._write_gate if writes else contextlib.nullcontext():
                _sql(self.db, self._COMMANDS_DDL)
                return list(_sql(self.db, query, params).fetchall())
        except PeeweeException as e:
            raise BufferWriteError(f"{e}") from e

    def command_seen(self, request_id: str) -> tuple[str, str] | None:
        """(digest, stored reply) of an admitted request id, or None."""
        rows = self._commands_sql("SELECT digest, reply FROM commands WHERE id = ?",
                                  (request_id,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    def command_done(self, request_id: str, digest: str, expires: float, reply: str) -> None:
        self._commands_sql("INSERT OR REPLACE INTO commands (id, digest, expires, reply) "
                           "VALUES (?, ?, ?, ?)", (request_id, digest, expires, reply))

    def command_purge(self, now: float) -> int:
        """Forget the ids of commands expired before ``now``; how many."""
        return len(self._commands_sql("DELETE FROM commands WHERE expires < ? RETURNING id",
                                      (now,)))
