"""The delivery core (gateway/delivery.py) without a broker: rules, then properties.

A list stands in for the outbox (its ``fetch`` is the core's one port) and a
dict of handles for paho's in-flight messages; the tests play the broker by
acknowledging (or refusing) handles, and the network by disconnecting.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract import Stored
from gateway.delivery import Delete, Delivery, Limits, Publish, Refused
from gateway.model import Lane

E, R, T = int(Lane.EMERGENCY), int(Lane.ROUTINE), int(Lane.TELEMETRY)
SMALL = Limits(window=8, reserve=2, batch=4, ack_flush_s=0.02, idle_s=0.5)


class Store:
    """The outbox as the core sees it: rows by seq, deleted on Delete."""

    def __init__(self) -> None:
        self.rows: dict[int, Stored] = {}
        self.last = 0
        self.fetches = 0

    def add(self, lane: int, n: int = 1) -> list[int]:
        out = []
        for _ in range(n):
            self.last += 1
            self.rows[self.last] = Stored(self.last, f"id-{self.last}", lane, "event/x", b"{}")
            out.append(self.last)
        return out

    def fetch(self, lane: int, after: int, limit: int, upto: int | None = None) -> list[Stored]:
        self.fetches += 1
        got = [r for s, r in sorted(self.rows.items())
               if r.lane == lane and s > after and (upto is None or s <= upto)]
        return got[:limit]


@dataclass
class Shell:
    """Carries out the core's actions as the publisher does, and checks each one."""

    store: Store
    core: Delivery
    now: float = 0.0
    next_handle: int = 1
    inflight: dict[int, Stored] = field(default_factory=dict)  # handle -> row (paho's view)
    acked_ok: set[int] = field(default_factory=set)
    deleted: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)  # on this connection, in order
    live_mark: int = 0
    disk_ok: bool = True  # False: every delete fails (a full or read-only card)
    failed_deletes: int = 0

    def connect(self) -> None:
        self.live_mark = self.store.last
        self.core.connected(self.live_mark, self.now)
        self.offered = []

    def run(self, actions: list[Delete | Publish | Refused]) -> list[Stored]:
        published: list[Stored] = []
        for a in actions:
            if isinstance(a, Publish):
                handles = []
                for row in a.rows:
                    assert row.seq not in self.offered, f"seq {row.seq} offered twice"
                    # Acknowledged means done, even while its delete keeps failing.
                    assert row.seq not in self.acked_ok, f"seq {row.seq} offered after its ack"
                    assert row.seq in self.store.rows
                    self.offered.append(row.seq)
                    self.inflight[self.next_handle] = row
                    handles.append(self.next_handle)
                    self.next_handle += 1
                self.core.published(a, handles)
                published.extend(a.rows)
            elif isinstance(a, Delete):
                for s in a.seqs:
                    assert s in self.acked_ok, f"seq {s} deleted before its ack"
                if not self.disk_ok:
                    self.failed_deletes += 1
                    self.core.delete_failed(a.seqs, self.now)
                    continue
                for s in a.seqs:
                    del self.store.rows[s]
                self.deleted.extend(a.seqs)
                self.core.deleted(a.seqs)
            else:
                assert a.seq in self.store.rows  # a refused event stays buffered
                self.refused.append(a.seq)
        return published

    def poll(self, dt: float = 0.0) -> list[Stored]:
        self.now += dt
        return self.run(self.core.poll(self.now))

    def ack(self, handle: int, ok: bool = True) -> None:
        row = self.inflight.pop(handle)
        if ok:
            self.acked_ok.add(row.seq)
        self.core.acked(handle, ok)

    def ack_all(self, ok: bool = True) -> None:
        for h in list(self.inflight):
            self.ack(h, ok)

    def disconnect(self) -> None:
        self.run(self.core.disconnected())
        self.inflight.clear()  # what the broker had not acknowledged is lost with it

    def commit(self, lane: int, n: int = 1) -> list[int]:
        seqs = self.store.add(lane, n)
        self.core.committed()
        return seqs


def shell(limits: Limits = SMALL) -> Shell:
    store = Store()
    return Shell(store, Delivery(store.fetch, limits))


def seqs(rows: list[Stored]) -> list[int]:
    return [r.seq for r in rows]


# -- the rules, one by one --------------------------------------------------------------------

def test_emergency_uses_the_reserved_slots_when_the_window_is_full() -> None:
    sh = shell()
    sh.connect()
    sh.commit(R, 20)
    assert len(sh.poll()) == 4  # one refill chunk
    while sh.poll():
        pass
    assert sh.core.in_flight == SMALL.window  # routine holds the whole window, no more
    sos = sh.commit(E, 3)
    assert seqs(sh.poll()) == sos[:2]  # the reserve: 2 slots that routine never takes
    assert sh.poll() == []
    sh.ack(next(iter(sh.inflight)))  # one routine ack frees one slot: the SOS goes first
    assert seqs(sh.poll()) == [sos[2]]


def test_routine_never_takes_slots_an_emergency_event_waits_for() -> None:
    sh = shell()
    sh.connect()
    sh.commit(E, SMALL.window + SMALL.reserve + 3)  # an emergency storm fills everything
    sh.poll()
    sh.commit(R, 5)
    assert sh.core.in_flight == SMALL.window + SMALL.reserve
    assert sh.poll() == []  # no routine beyond window + reserve, and not before the SOSes
    for h in list(sh.inflight)[:6]:
        sh.ack(h)
    assert all(r.lane == E for r in sh.poll())  # the freed slots go to the waiting SOSes


def test_live_events_alternate_with_the_backlog() -> None:
    sh = shell(Limits(window=100, reserve=2, batch=4))
    backlog = sh.store.add(R, 40)
    sh.connect()
    first = sh.poll()  # turn 0: live first, none yet; then one backlog chunk
    assert seqs(first) == backlog[:4]
    live = sh.commit(R)
    second = sh.poll()  # turn 1: backlog first, then live
    assert seqs(second) == [*backlog[4:8], *live]
    live2 = sh.commit(T)
    assert seqs(sh.poll())[0] == live2[0]  # turn 2: live first


def test_refused_event_stays_buffered_and_goes_again_on_the_next_connection() -> None:
    sh = shell()
    sh.connect()
    a, b = sh.commit(R, 2)
    sh.poll()
    handles = list(sh.inflight)
    sh.ack(handles[0], ok=False)
    sh.ack(handles[1])
    sh.poll(0.05)
    assert sh.refused == [a] and sh.deleted == [b]
    assert a in sh.store.rows
    assert sh.poll(1.0) == []  # not offered again on this connection
    sh.disconnect()
    sh.connect()
    assert seqs(sh.poll()) == [a]


def test_acks_are_deleted_in_batches() -> None:
    sh = shell(Limits(window=100, reserve=2, batch=4, ack_flush_s=0.02))
    sh.connect()
    sh.commit(R, 8)
    sh.poll()
    sh.poll()
    handles = list(sh.inflight)
    for h in handles[:3]:
        sh.ack(h)
    sh.poll()
    assert sh.deleted == [] and sh.core.timeout() == 0.02  # 3 < batch, 5 still in flight
    sh.ack(handles[3])
    sh.poll()
    assert len(sh.deleted) == 4  # a batch full
    sh.ack(handles[4])
    sh.poll(0.01)
    assert len(sh.deleted) == 4
    sh.poll(0.02)
    assert len(sh.deleted) == 5  # ack_flush_s after the last delete
    for h in handles[5:]:
        sh.ack(h)
    sh.poll()
    assert len(sh.deleted) == 8  # nothing in flight any more


def test_a_disconnect_deletes_what_was_acked_and_the_rest_goes_again() -> None:
    sh = shell()
    sh.connect()
    sent = sh.commit(R, 4)
    sh.poll()
    first = next(iter(sh.inflight))
    sh.ack(first)
    sh.disconnect()
    assert sh.deleted == [sent[0]]
    sh.connect()
    assert seqs(sh.poll()) == sent[1:]


def test_a_commit_without_a_wake_up_still_goes_within_idle_s() -> None:
    sh = shell()
    sh.connect()
    assert sh.poll() == []
    sh.store.add(E)  # committed, but the wake-up was lost: committed() is not called
    assert sh.poll(0.1) == []
    assert sh.core.timeout() == SMALL.idle_s
    assert len(sh.poll(SMALL.idle_s)) == 1


def test_no_query_when_nothing_new_was_committed() -> None:
    sh = shell()
    sh.connect()
    sh.poll()
    before = sh.store.fetches
    for _ in range(10):
        sh.poll(0.001)
    assert sh.store.fetches == before  # idle polls cost nothing until committed()


def test_timeout_follows_the_work() -> None:
    sh = shell()
    sh.connect()
    sh.commit(R)
    sh.poll()
    assert sh.core.timeout() == 0.0  # sent: go round at once
    sh.poll()
    assert sh.core.timeout() == SMALL.idle_s
    sh.ack_all()
    sh.poll()  # nothing in flight: deleted at once
    assert sh.core.timeout() == SMALL.idle_s and sh.core.pending_deletes == 0


def test_offline_core_does_nothing_and_ignores_unknown_handles() -> None:
    sh = shell()
    sh.commit(E)
    assert sh.poll() == []
    sh.connect()
    sh.core.acked(999, True)  # a status or birth message's PUBACK
    assert len(sh.poll()) == 1


def test_the_core_loads_no_io() -> None:
    """Sans-I/O for real: importing the core loads no network, database or thread module."""
    out = subprocess.run([sys.executable, "-c", "import json, sys, gateway.delivery\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    roots = {m.split(".")[0] for m in json.loads(out)}
    assert not roots & {"paho", "peewee", "sqlite3", "socket", "select", "ssl", "threading",
                        "drivers"}
    assert not {"gateway.outbox", "gateway.config", "gateway.engine"} & set(json.loads(out))


# -- properties over random histories ---------------------------------------------------------

op = st.one_of(
    st.tuples(st.just("commit"), st.sampled_from([E, R, T]), st.integers(1, 12)),
    st.tuples(st.just("poll"), st.sampled_from([0.0, 0.001, 0.03, 0.6])),
    st.tuples(st.just("ack"), st.integers(0, 20), st.lists(st.booleans(), max_size=20),
              st.booleans()),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("connect")),
    st.tuples(st.just("disk"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=80), st.booleans())
def test_delivery_properties(ops: list[tuple[object, ...]], start_with_backlog: bool) -> None:
    """Over any history of commits, polls, acks, refusals, disconnects and ticks:

    - nothing is deleted before its ack (Shell.run), each event is offered at most once
      per connection (Shell.run), the windows are never exceeded;
    - an emergency event is offered at the first poll after its commit when a slot is
      free, and no routine or telemetry event is offered while one waits (the bound in
      gateway/delivery.py);
    - a routine live event committed while no live event waits is offered behind at most
      one backlog chunk;
    - after any sequence of disconnects, the next connection offers every event not yet
      acknowledged, and in the end every event is deleted exactly once;
    - while deletes fail (a full or read-only disk), an acknowledged event is never offered
      again, on any connection, and its delete is retried until it succeeds.
    """
    lim = SMALL
    sh = shell(lim)
    if start_with_backlog:
        sh.store.add(R, 9)
        sh.store.add(T, 5)
    online = False
    watched: dict[int, int] = {}  # live routine seq -> backlog rows offered since its commit

    def waiting_live() -> bool:
        return any(s > sh.live_mark and r.lane != E and s not in sh.offered
                   and s not in sh.acked_ok for s, r in sh.store.rows.items())

    def checked_poll(dt: float) -> None:
        free = lim.window + lim.reserve - sh.core.in_flight
        waiting_sos = [s for s, r in sorted(sh.store.rows.items())
                       if r.lane == E and s not in sh.offered and s not in sh.acked_ok]
        rows = sh.poll(dt)
        got = set(seqs(rows))
        assert set(waiting_sos[:max(free, 0)]) <= got  # emergency at the first poll
        if any(s not in got for s in waiting_sos):
            assert all(r.lane == E for r in rows)  # nothing overtakes a waiting SOS
        lanes = [r.lane for r in sh.inflight.values()]
        assert len(lanes) <= lim.window + lim.reserve
        assert sum(lane != E for lane in lanes) <= lim.window
        for r in rows:
            if r.lane != E and r.seq <= sh.live_mark:
                for s in watched:
                    watched[s] += 1
            if r.seq in watched:
                assert watched.pop(r.seq) <= lim.batch, "a live event waited behind 2 chunks"

    for o in ops:
        match o:
            case ("commit", lane, n):
                assert isinstance(lane, int) and isinstance(n, int)
                fresh = online and lane == R and not waiting_live()
                new = sh.commit(lane, n)
                if fresh:
                    watched[new[0]] = 0
            case ("poll", dt):
                assert isinstance(dt, float)
                if online:
                    checked_poll(dt)
                else:
                    sh.now += dt
                    assert sh.core.poll(sh.now) == []
            case ("ack", k, oks, from_front):
                assert isinstance(k, int) and isinstance(oks, list)
                handles = list(sh.inflight)
                if not from_front:
                    handles.reverse()
                for i, h in enumerate(handles[:k]):
                    sh.ack(h, oks[i] if i < len(oks) else True)
            case ("disconnect",):
                if online:
                    sh.disconnect()
                    online = False
                    watched.clear()
                    assert sh.core.pending_deletes == 0 and sh.core.in_flight == 0
            case ("connect",):
                if not online:
                    sh.connect()
                    online = True
            case ("disk", ok):
                assert isinstance(ok, bool)
                sh.disk_ok = ok
    # The next connection offers everything not acknowledged; acked, it is all deleted.
    sh.disk_ok = True
    if online:
        sh.disconnect()
    watched.clear()
    owed = set(sh.store.rows) - sh.acked_ok
    sh.connect()
    for _ in range(1000):
        checked_poll(0.03)
        if not sh.inflight and not sh.store.rows:
            break
        sh.ack_all()
    assert owed <= set(sh.offered)
    assert not sh.store.rows
    assert sorted(sh.deleted) == list(range(1, sh.store.last + 1))  # each exactly once


def test_failed_deletes_are_not_resent_and_are_retried() -> None:
    sh = shell()
    sh.commit(R, 4)
    sh.connect()
    assert seqs(sh.poll()) == [1, 2, 3, 4]
    sh.disk_ok = False
    sh.ack_all()
    sh.poll(0.03)  # the delete fails: remembered, not an error
    assert sh.failed_deletes == 1 and sh.core.undeleted == 4 and len(sh.store.rows) == 4
    sh.disconnect()
    sh.connect()
    assert sh.poll(0.03) == []  # acknowledged: not offered again on the new connection
    sh.disk_ok = True
    sh.poll(SMALL.delete_retry_s)  # the retry goes through
    assert sh.core.undeleted == 0 and not sh.store.rows and sorted(sh.deleted) == [1, 2, 3, 4]


def test_failed_deletes_kept_in_memory_are_bounded() -> None:
    store = Store()
    core = Delivery(store.fetch, Limits(max_undeleted=100))
    core.delete_failed(list(range(1, 151)), 0.0)
    assert core.undeleted == 90  # the newest 90 kept; the rest may go once more
