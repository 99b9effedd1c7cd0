"""The imperative shell around the engine: readings in, committed events out.

Drivers call the :class:`Pipeline` from their own threads (it is their
``Sink``); one pipeline thread takes readings off a queue, filters out tags
that are not enrolled (counted, never stored or logged: privacy), runs the
pure engine, commits the resulting events to the outbox in one transaction
per batch, and wakes the publisher. Nothing here waits on the network.

The engine state without its RSSI sample windows (its decisions) is saved in
the same transaction as every commit that holds events (and at least every
STATE_SAVE_S otherwise): a power cut then never loses the record of a decision
whose event is in the buffer, so a restart does not decide it again under a new
id (docs/architecture.md). The windows are most of the state's bytes and of the
CPU to encode it, and decide nothing by themselves: they are saved apart, every
WINDOWS_SAVE_S and at a stop. Routine events decided within STATE_COALESCE_S
of the last save wait for the next commit, at most that long, to share it;
emergency events never wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from gateway import pseudonym
from gateway import roster as rostermod
from gateway.clock import Clock
from gateway.config import Config
from gateway.engine import (
    Engine,
    EngineState,
    end_roll_call,
    persist,
    start_roll_call,
)
from gateway.engine.forget import forget, orphan_children, stale, tags_of
from gateway.model import BleSighting, Event, Lane, ReaderState, Reading, TagConfig, TagRead
from gateway.outbox import BufferWriteError, Outbox
from gateway.recording import Recorder
from gateway.roster import Roster, RosterChange, RosterError, RosterFile

log = logging.getLogger("gateway.pipeline")

T = TypeVar("T")

BATCH = 512
TICK_S = 0.5
QUEUE_MAX = 50_000  # readings waiting for the pipeline; beyond it they are counted and dropped
PENDING_MAX = 100_000  # decided events waiting for a buffer that cannot be written
STATE_KEY = "engine"  # the engine state without its RSSI windows
WINDOWS_KEY = "engine_rssi"  # a state holding only the RSSI windows
STATE_SAVE_S = 1.0  # the state goes to disk with every commit of events, else this often
MARKS_KEY = "retention_marks"  # [[engine time, last seq], ...] of the retention purges
WINDOWS_SAVE_S = 30.0  # the RSSI windows, this often (and at a stop)
STATE_COALESCE_S = 0.2  # routine events wait at most this long to share a state save


# An item of the pipeline's queue: a reading, a driver's batch of them, or None (wake()).
Item = Reading | list[Reading] | None


def _count(item: Item) -> int:
    return len(item) if isinstance(item, list) else 1


def _flat(items: list[Item]) -> list[Reading]:
    out: list[Reading] = []
    for item in items:
        if isinstance(item, list):
            out.extend(item)
        elif item is not None:
            out.append(item)
    return out


class _Readings(queue.Queue[Item]):
    """The readings queue, bounded by readings rather than items: a batch counts as the
    readings in it (queue.Queue's _init/_qsize/_put/_get hooks)."""

    def _init(self, maxsize: int) -> None:
        self.queue: deque[Item] = deque()
        self.readings = 0

    def _qsize(self) -> int:
        return self.readings

    def _put(self, item: Item) -> None:
        self.queue.append(item)
        self.readings += _count(item)

    def _get(self) -> Item:
        item = self.queue.popleft()
        self.readings -= _count(item)
        return item


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        outbox: Outbox,
        clock: Clock,
        on_committed: Callable[[], None] = lambda: None,
        record: Recorder | None = None,
        state: EngineState | None = None,
        roster: Roster | None = None,
        roster_file: RosterFile | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.outbox = outbox
        self.clock = clock
        self.on_committed = on_committed
        self.record = record
        # (wall, monotonic) time of the engine's last tick (the Recorder's end)
        self.last_tick: tuple[float, float] | None = None
        # The roster in force (gateway/roster.py): the backend's, else the config's tags.
        self.roster = roster if roster is not None else rostermod.from_config(cfg.tags)
        self.roster_file = roster_file
        self.pseudonyms = pseudonym.Pseudonyms(self.roster.term)
        # Swapped whole (never changed in place) on the pipeline thread: the BLE driver
        # reads it as its bound on remembered tags (drivers/ble.py).
        self.enrolled = frozenset(self.roster.tag_map())
        self.retention_s = cfg.privacy.retention_days * 86400.0
        self.purge_every_s = cfg.privacy.purge_interval_s
        self._next_purge = -math.inf
        # (engine time, last seq) at each purge: which events are older than the retention,
        # by the monotonic engine time, not by their (steppable) wall-clock commit times.
        self._marks = load_marks(outbox)
        # Saved state keys: the child reference, never the tag id (engine/persist.py).
        self._state_keys = persist.saved_keys(engine.runtime.tags)
        self.engine_state: EngineState = (state if state is not None
                                          else restore_state(outbox, engine))
        self._state_saved = -math.inf
        self._windows_saved = -math.inf
        # None is not a reading: wake() puts it to end a wait for readings at once.
        self._q = _Readings(QUEUE_MAX)
        # Work for the pipeline thread from others (commands): run between batches, so the
        # engine state is only ever touched on this thread.
        self._control: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any], bool]] = (
            queue.SimpleQueue())
        self._pending: list[Event] = []  # decided, not yet committed (the buffer failed)
        self._deferred: list[Event] = []  # routine events waiting to share a state save
        self._failing = False  # the last commit failed
        self.lost_at_stop = 0  # held events neither committed nor parked at the stop
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.reader_readings: Counter[str] = Counter()  # per reader, for the health message
        self.reader_states: dict[str, tuple[ReaderState, str]] = {
            r.id: (ReaderState.STARTING, "") for r in cfg.readers
        }

    def roll_call(self, alert_id: str | None) -> None:
        """The ``--roll-call`` switch at start, before run(): start (alert id), or end (None)
        a roll-call the switch started before. One started by command (``alert/start``)
        runs on over restarts until ``alert/stop``."""
        running = self.engine_state.roll_call
        if alert_id:
            self.set_roll_call(alert_id)
        elif running is not None and running.by == "switch":
            self.set_roll_call(None)

    def set_roll_call(self, alert_id: str | None, interval_s: float | None = None,
                      by: str = "switch") -> bool:
        """Start (alert id) or end (None: whichever runs) the roll-call; on the pipeline
        thread (or before run()). False: an end with none running."""
        now, mono = self.clock.now(), self.clock.monotonic()
        running = self.engine_state.roll_call
        if alert_id:
            self.engine_state = start_roll_call(self.engine_state, alert_id, mono, interval_s,
                                                by)
            log.warning("roll-call for alert %s active", alert_id)
        elif running is not None:
            self.engine_state = end_roll_call(self.engine_state)
            log.warning("roll-call for alert %s ended", running.alert_id)
        if self.record is not None and (alert_id or running):
            self.record.control("roll_call_start" if alert_id else "roll_call_end", now,
                                alert_id or (running.alert_id if running else None), mono)
        return bool(alert_id) or running is not None

    def control(self, fn: Callable[[], T], changes: bool = False, timeout: float = 5.0) -> T:
        """Run ``fn`` on the pipeline thread between two batches and return its result
        (commands from the command worker). ``changes``: it changes the engine state, which
        is saved before this returns. Raises TimeoutError (then ``fn`` never runs)."""
        done: Future[T] = Future()
        self._control.put((fn, done, changes))
        self.wake()
        try:
            return done.result(timeout)
        except TimeoutError:
            done.cancel()  # not run later behind the caller's back (unless already running)
            raise

    def _run_controls(self) -> None:
        while True:
            try:
                fn, done, changes = self._control.get_nowait()
            except queue.Empty:
                return
            if not done.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
                if changes:  # saved now (with any events waiting): "done" survives a power cut
                    events, self._deferred = self._deferred, []
                    self._state_saved = -math.inf
                    self.commit(events)
            except BaseException as e:  # the caller's to report (500), not this thread's end
                done.set_exception(e)
            else:
                done.set_result(result)

    # -- Sink: called from driver threads ----------------------------------------------------

    def reading(self, reading: Reading) -> None:
        try:
            self._q.put_nowait(reading)
        except queue.Full:  # the pipeline is stuck (a dead disk): never block a reader
            with self._lock:
                self.counters["readings_dropped_queue_full"] += 1

    def reading_batch(self, batch: Sequence[Reading]) -> None:
        """Several readings as one item of the queue (the BLE driver's batches): one
        hand-over and one wake-up of this thread for the lot."""
        if not batch:
            return
        try:
            self._q.put_nowait(batch if isinstance(batch, list) else list(batch))
        except queue.Full:
            with self._lock:
                self.counters["readings_dropped_queue_full"] += len(batch)

    def reject(self, reader: str, reason: str) -> None:
        with self._lock:
            self.rejects[(reader, reason)] += 1

    def state(self, reader: str, state: ReaderState, detail: str = "") -> None:
        with self._lock:
            old = self.reader_states.get(reader, (None, ""))[0]
            self.reader_states[reader] = (state, detail)
        if old != state:
            log.info("reader %s: %s%s", reader, state.value, f" ({detail})" if detail else "")

    def wake(self) -> None:
        """End the pipeline thread's wait for readings now (shutdown: stop is already set)."""
        with contextlib.suppress(queue.Full):  # full: the thread is not waiting anyway
            self._q.put_nowait(None)

    # -- the pipeline thread -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_tick = self.clock.monotonic() + TICK_S
        while not stop.is_set():
            got: list[Item] = []
            try:
                wait = TICK_S
                if self._deferred:  # not longer than the coalescing allows
                    wait = min(wait, max(0.0, self._state_saved + STATE_COALESCE_S
                                         - self.clock.monotonic()))
                got.append(self._q.get(timeout=wait))
                n = _count(got[0])
                while n < BATCH:
                    got.append(item := self._q.get_nowait())
                    n += _count(item)
            except queue.Empty:
                pass
            batch = _flat(got)
            events = self.process(batch)
            self._run_controls()
            mono = self.clock.monotonic()
            if mono >= self._next_purge:
                self._next_purge = mono + self.purge_every_s
                self.purge()
            if mono >= next_tick:
                next_tick = mono + TICK_S
                self.last_tick = (self.clock.now(), mono)
                self.engine_state, more = self.engine.tick(self.engine_state, *self.last_tick)
                events.extend(more)
            self.commit_soon(events)
        self._run_controls()
        # Drain what the drivers already handed over before we stop.
        rest: list[Item] = []
        while True:
            try:
                rest.append(self._q.get_nowait())
            except queue.Empty:
                break
        self.commit_soon(self.process(_flat(rest)), final=True)
        if self._pending:
            self._park_at_stop()

    def process(self, batch: list[Reading]) -> list[Event]:
        events: list[Event] = []
        engine, enrolled = self.engine, self.enrolled
        if batch:
            self.counters["readings"] += len(batch)
        by_reader = self.reader_readings
        for r in batch:
            by_reader[r.reader] += 1
            if isinstance(r, TagRead | BleSighting) and r.tag not in enrolled:
                self.counters["unenrolled_reads"] += 1
                continue
            if self.record is not None:
                self.record(r)
            self.engine_state, evs = engine.step(self.engine_state, r)
            events.extend(evs)
        return events

    def commit_soon(self, events: list[Event], final: bool = False) -> None:
        """:meth:`commit` for the pipeline thread (the only one that calls it): routine
        events decided within STATE_COALESCE_S of the last state save wait, at most that
        long, to share the next one; emergency events and a final commit never wait."""
        if self._deferred:
            events = self._deferred + events
            self._deferred = []
        if (events and not final
                and self.clock.monotonic() - self._state_saved < STATE_COALESCE_S
                and all(e.lane != Lane.EMERGENCY for e in events)):
            self._deferred = events
            return
        self.commit(events, final)

    def commit(self, events: list[Event], final: bool = False) -> None:
        """Commit decided events, and the engine state with them, in one transaction
        (without events, the state at most every STATE_SAVE_S).

        If the buffer cannot be written (disk full, card failing) the events stay in
        memory, are retried with the next commit, and the failure is logged; past
        PENDING_MAX the oldest non-emergency ones are dropped and counted.
        """
        mono = self.clock.monotonic()
        if self._pending:
            events = self._pending + events
            self._pending = []
        events = self.pseudonyms.events(events)  # child references as the wire shows them
        if final or mono - self._windows_saved >= WINDOWS_SAVE_S:
            self._save_windows(mono)
        save = bool(events) or final or mono - self._state_saved >= STATE_SAVE_S
        if not events and not save:
            return
        state = None
        if save:  # without the windows: about half the bytes, most of the CPU (_save_windows)
            without = dataclasses.replace(self.engine_state, rssi={})
            state = (STATE_KEY, persist.dumps(without, self._state_keys))
        try:
            stored = self.outbox.add(events, now=self.clock.now(), state=state)
        except BufferWriteError as e:
            self._hold(events, e)
            return
        if state is not None:
            self._state_saved = self.clock.monotonic()
        if self._failing:
            log.warning("buffer writable again; %d held events committed", len(events))
            self._failing = False
        if not stored:
            return
        self.counters["events"] += len(stored)
        for ev, s in zip(events, stored, strict=True):
            self.counters[f"events_{ev.kind}"] += 1
            if ev.kind == "clock_step":  # the engine reports a step once: one line
                log.warning("wall clock stepped %+.3f s (event seq=%d); engine time is "
                            "monotonic: timers unaffected, event times follow the new clock",
                            ev.data["step_s"], s.seq)
                continue
            log.log(logging.WARNING if ev.lane == Lane.EMERGENCY else logging.INFO,
                    "event %s seq=%d child=%s reader=%s lane=%s%s", ev.kind, s.seq,
                    ev.child or "-", ev.reader or "-", Lane(ev.lane).name.lower(),
                    f" direction={ev.data.get('direction') or '-'}"  # gates: arrival/departure
                    if "direction" in ev.data else "")
        self.on_committed()

    # -- roster, erase, retention (docs/privacy.md) ------------------------------------------

    def change_roster(self, change: RosterChange) -> dict[str, Any]:
        """Apply a roster change at once (pipeline thread): persisted first (the file is the
        commit point), then the enrolled set, the engine's tags and the BLE driver's bound
        switch together, the state of unenrolled tags is forgotten and saved without them.
        Raises RosterError (nothing changed)."""
        applied = rostermod.apply(self.roster, change)
        if self.roster_file is not None:
            try:
                self.roster_file.save(applied.roster)
            except OSError as e:
                raise RosterError(500, f"cannot save the roster: {e.strerror or e}") from e
        new_term = applied.roster.term is not None and applied.roster.term != self.roster.term
        forgotten = self._switch(applied.roster)
        if applied.removed:
            self._save_now(scrub=True)
        log.warning("roster version %d in force: %d tags of %d children (+%d, -%d tags)%s",
                    applied.roster.version, len(applied.roster.tags),
                    len(applied.roster.children), len(applied.added), len(applied.removed),
                    f"; pseudonym term {applied.roster.term.id}"
                    if applied.roster.term and new_term else "")
        return {**applied.roster.summary(), "added": len(applied.added),
                "removed": len(applied.removed), "state_forgotten": forgotten}

    def _switch(self, roster: Roster) -> int:
        tags = roster.tag_map()
        forgotten = self.engine.retag(self.engine_state, tags)
        self._state_keys = persist.saved_keys(tags)
        self.pseudonyms.set_term(roster.term)
        self.roster = roster
        self.enrolled = frozenset(tags)
        return forgotten

    def _save_now(self, scrub: bool) -> None:
        """The engine state (and its RSSI windows) to disk now, and, ``scrub``, the WAL
        emptied: what was forgotten is then on the card in no copy, old or new."""
        self._state_saved = -math.inf
        self.commit([])
        self._save_windows(self.clock.monotonic())
        if scrub:
            try:
                self.outbox.truncate_wal()
            except BufferWriteError as e:
                log.warning("could not empty the buffer's WAL yet (%s)", e)

    def erase_names(self, child: str) -> set[str]:
        """Every name the child's events may carry here (any thread: the roster is swapped
        whole): its enrolment id and its pseudonyms under the terms the unit holds."""
        roster = self.roster
        return pseudonym.names(child, [t for t in (roster.term, *roster.retired) if t])

    def erase(self, child: str, found: tuple[list[int], int] = ([], 0)) -> dict[str, Any]:
        """Erase a child's local data (pipeline thread): its engine state (sightings, zone
        presence, RSSI windows, gate and battery records), its events not yet committed,
        and its undelivered events in the buffer (roll-calls listing it lose its entries).
        ``found``: the candidates ``outbox.child_rows`` found beforehand on another thread
        and the last seq it scanned (only rows after it are scanned here). Enrolment is not
        changed (the roster command does that). Returns the counts."""
        names = self.erase_names(child)
        state_n = forget(self.engine_state, tags_of({child}, self.engine.runtime.tags),
                         {child})
        held = len(self._deferred) + len(self._pending)
        self._deferred = [e for e in self._deferred if e.child not in names]
        self._pending = [e for e in self._pending if e.child not in names]
        held -= len(self._deferred) + len(self._pending)
        try:
            erased = self.outbox.erase_child(names, *found)
        except BufferWriteError as e:
            raise RosterError(500, f"cannot write the buffer: {e}") from e
        self._save_now(scrub=True)
        self.counters["erasures"] += 1
        log.warning("erase: a child's data removed (%d state entries, %d buffered events "
                    "deleted, %d roll-calls redacted, %d held events)", state_n,
                    erased.deleted, erased.redacted, held)
        return {"time": self.clock.now(), "state_entries": state_n,
                "events_deleted": erased.deleted + held,
                "events_redacted": erased.redacted,
                "ranges": [list(r) for r in erased.ranges]}

    def purge(self) -> dict[str, int]:
        """Retention (pipeline thread): events committed more than retention_days ago
        leave the buffer (outbox.purge_upto, by engine time: the marks), the engine forgets
        tags unseen for that
        long, and retired pseudonym keys no buffered event needs are dropped."""
        now, mono = self.clock.now(), self.clock.monotonic()
        cutoff = mono - self.retention_s
        if self._marks and self._marks[-1][0] > mono:  # from another timeline: not evidence
            self._marks = []
        upto = max((seq for t, seq in self._marks if t <= cutoff), default=0)
        try:
            events = self.outbox.purge_upto(upto, now)
        except BufferWriteError as e:
            log.warning("retention purge of the buffer failed (%s); retried later", e)
            events = 0
        # The newest mark at or past the cutoff is still the threshold; older ones are not.
        older = [m for m in self._marks if m[0] <= cutoff]
        self._marks = older[-1:] + [m for m in self._marks if m[0] > cutoff]
        self._marks.append((mono, self.outbox.last_seq()))
        with contextlib.suppress(BufferWriteError):  # the next run writes them again
            self.outbox.add([], state=(MARKS_KEY, json.dumps(self._marks).encode()))
        state = self.engine_state
        # Engine time (monotonic, continued across restarts): a wall-clock step neither
        # ages nor rejuvenates a sighting.
        old = stale(state, cutoff)
        tags = self.engine.runtime.tags
        forgotten = forget(state, old)
        forgotten += forget(state, (), orphan_children(state, tags))  # no tag of theirs left
        if forgotten:
            self._save_now(scrub=False)
        terms = 0
        if self.roster.retired:
            try:
                keep = self.outbox.terms_in_use(t.id for t in self.roster.retired)
            except Exception as e:  # a read (peewee, sqlite3); the next purge tries again
                log.warning("retention: cannot list the terms in use (%s)", e)
            else:
                new = rostermod.drop_retired(self.roster, keep)
                if new is not self.roster and self.roster_file is not None:
                    try:
                        self.roster_file.save(new)
                    except OSError as e:
                        log.warning("retention: cannot save the roster (%s)", e)
                    else:
                        terms = len(self.roster.retired) - len(new.retired)
                        self.roster = new
        if events:
            self.on_committed()  # the buffer_drop notices
        log.log(logging.INFO if events or forgotten or terms else logging.DEBUG,
                 "retention (%g days): %d events purged from the buffer, %d tags unseen "
                 "forgotten (%d state entries), %d retired pseudonym keys forgotten",
                 self.retention_s / 86400, events, len(old), forgotten, terms)
        return {"events": events, "tags": len(old), "state_entries": forgotten,
                "terms": terms}

    def _save_windows(self, mono: float) -> None:
        """Save the RSSI sample windows in their own transaction. They only smooth what
        the next sightings show (after any real downtime they have expired anyway); the
        decisions made from them are in the zone presences, saved with every event."""
        windows = EngineState(rssi=self.engine_state.rssi)
        try:
            self.outbox.add([], state=(WINDOWS_KEY, persist.dumps(windows, self._state_keys)))
        except BufferWriteError:
            return  # counted and logged by the commit of events that follows
        self._windows_saved = mono

    def _hold(self, events: list[Event], error: Exception) -> None:
        self.counters["buffer_write_failures"] += 1
        if not self._failing:
            if events:
                log.error("cannot write the buffer (%s); holding %d events in memory and "
                          "retrying", error, len(events))
            else:  # only the engine state was to be saved
                log.error("cannot write the buffer (%s); the engine state is not saved, "
                          "retrying", error)
            self._failing = True
        if len(events) > PENDING_MAX:
            keep = [e for e in events if e.lane == Lane.EMERGENCY]
            rest = [e for e in events if e.lane != Lane.EMERGENCY]
            drop = len(events) - PENDING_MAX
            self.counters["events_dropped_buffer_failed"] += min(drop, len(rest))
            events = keep + rest[min(drop, len(rest)):]
            events.sort(key=lambda e: e.time)
        self._pending = events

    def _park_at_stop(self) -> None:
        """The buffer cannot be written and we are stopping: park what memory holds in a
        fallback file (committed at the next start), or say loudly what is lost."""
        held, self._pending = self._pending, []
        kinds = ", ".join(f"{k} {n}" for k, n in Counter(e.kind for e in held).most_common())
        where = self.outbox.park(held)
        if where is not None:
            self.counters["events_parked_at_stop"] += len(held)
            log.error("buffer not writable at stop: %d held events (%s) parked in %s, "
                      "committed at the next start", len(held), kinds, where)
            return
        self.lost_at_stop += len(held)
        self.counters["events_lost_at_stop"] += len(held)
        log.critical("buffer not writable at stop and no fallback file could be written: "
                     "%d decided events LOST (%s)", len(held), kinds)

    @property
    def lost(self) -> int:
        """Decided events this run lost: dropped while the buffer failed, or at the stop."""
        return self.lost_at_stop + self.counters["events_dropped_buffer_failed"]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rejects: dict[str, dict[str, int]] = {}
            for (reader, reason), n in self.rejects.items():
                rejects.setdefault(reader, {})[reason] = n
            readers = {rid: {"state": st.value, "detail": d, "rejects": rejects.get(rid, {}),
                             "readings": self.reader_readings[rid]}
                       for rid, (st, d) in self.reader_states.items()}
        return {"counters": dict(self.counters), "readers": readers}


def load_marks(outbox: Outbox) -> list[tuple[float, int]]:
    """The retention purges' marks saved in the buffer (none: a fresh buffer, or unreadable,
    and then events are purged once marks are retention_days old)."""
    try:
        blob = outbox.load_state(MARKS_KEY)
        return [(float(t), int(seq)) for t, seq in json.loads(blob)] if blob else []
    except (ValueError, TypeError):
        return []


class StateStore(Protocol):
    def load_state(self, key: str) -> bytes | None: ...


def saved_state(store: StateStore, tags: Mapping[str, TagConfig]
                ) -> tuple[EngineState, persist.Restored] | None:
    """The engine state saved last (None: none yet), with the RSSI windows saved last
    (up to WINDOWS_SAVE_S older: samples, not decisions; the engine expires stale ones).
    Raises ValueError, KeyError or TypeError for a bad or foreign state."""
    blob = store.load_state(STATE_KEY)
    if blob is None:
        return None
    state, restored = persist.loads(blob, tags)
    windows = store.load_state(WINDOWS_KEY)
    if windows is not None:  # else a buffer from before they were apart: its own
        state.rssi = persist.loads(windows, tags)[0].rssi
    return state, restored


def restore_state(outbox: Outbox, engine: Engine) -> EngineState:
    """The engine state saved before the last stop or crash, so a reboot continues
    (no burst of false exits and re-entries); a bad or foreign state starts fresh."""
    try:
        saved = saved_state(outbox, engine.runtime.tags)
    except (ValueError, KeyError, TypeError) as e:
        log.warning("saved engine state not usable (%s); starting fresh", e)
        return engine.initial_state()
    if saved is None:
        return engine.initial_state()
    state, restored = saved
    if restored.migrated:
        log.warning("engine state saved by tag id (before this version) migrated: it is "
                    "saved by child reference from now on; %d entries of tags no longer "
                    "enrolled dropped", restored.dropped)
        _scrub_old_state(outbox, state, engine)
    elif restored.dropped:
        log.warning("engine state: %d entries of tags or children no longer enrolled "
                    "dropped", restored.dropped)
    log.info("engine state restored (%d tags last seen)", len(state.seen))
    return state


def _scrub_old_state(outbox: Outbox, state: EngineState, engine: Engine) -> None:
    """Overwrite a state saved by tag id at once, and empty the WAL, whose old frames
    (after a power cut) would hold it in clear until they are reused."""
    blob = persist.dumps(state, persist.saved_keys(engine.runtime.tags))
    try:
        outbox.add([], state=(STATE_KEY, blob))
        outbox.truncate_wal()
    except BufferWriteError as e:  # the next save overwrites it
        log.warning("could not overwrite the old engine state yet (%s)", e)
