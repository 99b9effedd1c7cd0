"""The imperative shell around the engine: readings in, committed events out.

Drivers call the :class:`Pipeline` from their own threads (it is their
``Sink``); one pipeline thread takes readings off a queue, filters out tags
that are not enrolled (counted, never stored or logged: privacy), runs the
pure engine, commits the resulting events to the outbox in one transaction
per batch, and wakes the publisher. Nothing here waits on the network.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock
from gateway.config import Config
from gateway.engine import Engine, EngineState
from gateway.model import BleSighting, Event, Lane, ReaderState, Reading, TagRead
from gateway.outbox import Outbox

log = logging.getLogger("gateway.pipeline")

BATCH = 512
TICK_S = 0.5


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        engine: Engine,
        outbox: Outbox,
        clock: Clock,
        on_committed: Callable[[], None] = lambda: None,
        record: Callable[[Reading], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.engine = engine
        self.outbox = outbox
        self.clock = clock
        self.on_committed = on_committed
        self.record = record
        self.enrolled = frozenset(cfg.tag_map())
        self.engine_state: EngineState = engine.initial_state()
        self._q: queue.SimpleQueue[Reading] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.reader_states: dict[str, tuple[ReaderState, str]] = {
            r.id: (ReaderState.STARTING, "") for r in cfg.readers
        }

    # -- Sink: called from driver threads ----------------------------------------------------

    def reading(self, reading: Reading) -> None:
        self._q.put(reading)

    def reject(self, reader: str, reason: str) -> None:
        with self._lock:
            self.rejects[(reader, reason)] += 1

    def state(self, reader: str, state: ReaderState, detail: str = "") -> None:
        with self._lock:
            old = self.reader_states.get(reader, (None, ""))[0]
            self.reader_states[reader] = (state, detail)
        if old != state:
            log.info("reader %s: %s%s", reader, state.value, f" ({detail})" if detail else "")

    # -- the pipeline thread -----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_tick = self.clock.monotonic() + TICK_S
        while not stop.is_set():
            batch: list[Reading] = []
            try:
                batch.append(self._q.get(timeout=TICK_S))
                while len(batch) < BATCH:
                    batch.append(self._q.get_nowait())
            except queue.Empty:
                pass
            events = self.process(batch)
            if self.clock.monotonic() >= next_tick:
                next_tick = self.clock.monotonic() + TICK_S
                self.engine_state, more = self.engine.tick(self.engine_state, self.clock.now())
                events.extend(more)
            self.commit(events)
        # Drain what the drivers already handed over before we stop.
        rest: list[Reading] = []
        while True:
            try:
                rest.append(self._q.get_nowait())
            except queue.Empty:
                break
        self.commit(self.process(rest))

    def process(self, batch: list[Reading]) -> list[Event]:
        events: list[Event] = []
        engine, enrolled = self.engine, self.enrolled
        for r in batch:
            self.counters["readings"] += 1
            if isinstance(r, TagRead | BleSighting) and r.tag not in enrolled:
                self.counters["unenrolled_reads"] += 1
                continue
            if self.record is not None:
                self.record(r)
            self.engine_state, evs = engine.step(self.engine_state, r, r.time)
            events.extend(evs)
        return events

    def commit(self, events: list[Event]) -> None:
        if not events:
            return
        stored = self.outbox.add(events, now=self.clock.now())
        self.counters["events"] += len(stored)
        for ev, s in zip(events, stored, strict=True):
            self.counters[f"events_{ev.kind}"] += 1
            log.log(logging.WARNING if ev.lane == Lane.EMERGENCY else logging.INFO,
                    "event %s seq=%d child=%s reader=%s lane=%s", ev.kind, s.seq,
                    ev.child or "-", ev.reader or "-", Lane(ev.lane).name.lower())
        self.on_committed()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            rejects: dict[str, dict[str, int]] = {}
            for (reader, reason), n in self.rejects.items():
                rejects.setdefault(reader, {})[reason] = n
            readers = {rid: {"state": st.value, "detail": d, "rejects": rejects.get(rid, {})}
                       for rid, (st, d) in self.reader_states.items()}
        return {"counters": dict(self.counters), "readers": readers}
