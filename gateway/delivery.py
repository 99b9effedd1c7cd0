"""What is sent when, and what is deleted when: the delivery rules, without I/O.

Sans-I/O in the style of h11's ``_connection.py``: the paho shell
(gateway/publisher.py) tells a :class:`Delivery` what happened - ``connected``,
``committed``, ``published``, ``acked``, ``disconnected`` - and asks it what to
do now with ``poll(now)``, which returns actions: :class:`Publish` these rows,
:class:`Delete` these seqs (the broker has them), :class:`Refused` (log it).
The core reads the buffer through one port, the outbox's ``fetch``, a read
that must not block on the network; deleting is an action the shell carries
out. No sockets, clock, threads or logging here, so tests/test_delivery_core.py
drives it without a broker, hypothesis included.

The rules:

- QoS 1, at least once. A seq is deleted only after the broker acknowledged it
  (``acked(handle, ok=True)``); a refused PUBACK (``ok=False``) keeps the event
  buffered, and it goes again on the next connection. Each stored event is
  offered at most once per connection: a cursor per lane and part only moves
  forward. After ``disconnected()`` (which hands back the acks still to delete)
  the next ``connected()`` starts every cursor again, so every un-acknowledged
  event is offered again.
- Acknowledgements are deleted in batches: when ``batch`` are pending, when
  nothing is in flight any more, or ``ack_flush_s`` after the last delete.
- Window: at most ``window + reserve`` events in flight, and routine and
  telemetry events never take more than ``window`` of them; the ``reserve``
  slots are emergency events' only.
- Emergency lane first, always: each poll offers waiting emergency events
  before anything else, and offers routine or telemetry events only when no
  emergency event is waiting. **Bound:** an emergency event is offered at the
  first poll after its commit is signalled (``committed()``), unless
  ``window + reserve`` events are in flight; routine and telemetry hold at most
  ``window`` slots, so with fewer than ``reserve`` emergency events in flight it
  goes at once. It never waits behind a routine or telemetry event offered
  after its commit: ahead of it are only the events already in flight (at most
  ``window`` routine/telemetry ones) and earlier emergency events.
- Live and backlog: at ``connected(live_mark)`` the other lanes split into a
  backlog (seq <= live_mark) and live events (newer). Refills take one chunk of
  up to ``batch`` events per part, and the part that goes first alternates, so a
  live event committed while no other live event waits is offered behind at
  most one backlog chunk. Routine goes before telemetry within a part. Order is
  kept within each lane's backlog and live part.
- Refill in chunks: routine/telemetry are fetched when at least ``batch // 2``
  slots are free (or none of theirs is in flight), not one query per freed slot.
- Deletes that fail (disk full, read-only card): the shell reports them with
  ``delete_failed``; those seqs count as acknowledged - never offered again,
  on this connection or the next - and a ``Delete`` of them is retried every
  ``delete_retry_s`` until the shell reports ``deleted``. So a full disk
  costs memory for the seqs (at most ``max_undeleted``), not a resend loop.
- Queries the store cannot answer are not asked: a part whose last fetch came
  back short is exhausted until ``committed()`` (live parts, emergency) or for
  the rest of the connection (backlog). Every ``idle_s`` all parts are asked
  again anyway, so a commit whose wake-up was lost still goes out.

Receipt mode (``Limits.receipts``, ``[delivery] mode = "receipt"``, issue 13): a
PUBACK says only that the broker took an event; the backend's signed receipt
says it is in its database. Then:

- A PUBACKed event is *awaiting receipt*: it stays in the buffer and is not
  offered again on this connection until it has *timed out*: the current
  timeout (below) has passed since the poll that saw its PUBACK (so never
  within ``receipt_timeout_s`` of its last send). A
  ``receipt(ranges, upto)`` (verified by the shell) covering its seq makes the
  core emit :class:`DeleteRanges`; nothing else deletes in this mode.
- A receipt deletes only seqs this core has sent (ranges are clipped to the
  highest seq it published): a receipt can never delete an event that did not
  leave the unit. ``upto`` is the range ``[1, upto]``.
- After a disconnect every un-receipted event is offered again (the awaiting
  marks live in memory, per connection: a restart is a reconnect, see
  gateway/outbox.py). An awaiting event whose timeout passed is *due*: due
  emergency events go before any other emergency event, due routine and
  telemetry events take the backlog's turn (one chunk of at most ``batch``), so
  the live bound and the emergency bound above still hold: awaiting events hold
  no in-flight slot.
- Back-off (docs/fleet.md, finding 4: slow receipts made every unit resend its
  whole window each timeout, the resends slowed the receipts further). The
  timeout of routine and telemetry events starts at ``receipt_timeout_s``;
  when events sent under it time out, it doubles (once for those timing out
  together), up to ``receipt_timeout_max_s`` (default 8x). It counts from each
  event's PUBACK, so a longer timeout also holds back what already awaits. A
  receipt for an event sent once on this connection (Karn: a resent event's
  delay is ambiguous) sets it to twice the delay measured, at least the base:
  fast receipts bring it back to the base, a backlog's slow ones keep it above
  their delay. And at most one chunk (``batch``, the oldest) of timed-out
  events is released per timeout; more wait the next (backed-off) timeout.
  Liveness: the timeout never exceeds the cap, so every awaiting event goes
  again within ``receipt_timeout_max_s`` per chunk ahead of it.
  Emergency events are exempt: they always time out after
  ``receipt_timeout_s`` and never move the back-off. They are few (at most
  ``reserve`` in flight, a handful per unit), so resending them costs the
  backend nothing measurable, and an SOS whose event or receipt was lost
  (a backend crash between storing and receipting) is in the database a
  base timeout later, not 8x later. Sending an SOS at once is unchanged.
- Flow control: new routine and telemetry events are offered only while fewer
  than ``max_awaiting`` events are awaiting a receipt or in flight (a backend
  that is offline must not make the unit push its whole buffer into the broker's
  queue, nor this core hold a mark per buffered event). Emergency events ignore
  that bound.
- A receipt's delete that fails is kept (its seqs still count as done, never
  offered again) and retried every ``delete_retry_s``, as for PUBACK deletes.
- The buffer cap (gateway/outbox.py) may drop an awaiting event like any other:
  a due event whose row is gone is forgotten.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.contract import Stored
from gateway.model import Lane

_EMERGENCY = int(Lane.EMERGENCY)
_OTHER_LANES = (int(Lane.ROUTINE), int(Lane.TELEMETRY))  # in this order within a part
# Parts of a lane: everything (emergency), or split at the connection's live mark.
ALL, LIVE, BACKLOG = "all", "live", "backlog"


class Fetch(Protocol):
    """The outbox's read port: the oldest stored events of a lane with seq in (after, upto]."""

    def __call__(self, lane: int, after: int, limit: int,
                 upto: int | None = None) -> list[Stored]: ...


class Refetch(Protocol):
    """The outbox's second read port (receipt mode): the stored rows among ``seqs``; seqs
    no longer stored (deleted, dropped by the cap) are simply absent."""

    def __call__(self, seqs: Sequence[int]) -> list[Stored]: ...


@dataclass(frozen=True, slots=True)
class Limits:
    window: int = 256  # routine + telemetry events in flight
    reserve: int = 32  # further in-flight slots only emergency events may use
    batch: int = 64  # refill chunk, and acks deleted per transaction
    # Pending acks are deleted at least this often: fewer, larger delete transactions write
    # fewer WAL pages (SD-card wear); a crash only resends what was not yet deleted.
    ack_flush_s: float = 0.1
    idle_s: float = 0.5  # wait with nothing to do; every part is asked again this often
    delete_retry_s: float = 2.0  # deletes that failed are tried again this often
    # Acknowledged seqs kept while their deletes fail (a read-only card under a large
    # backlog): beyond this the lowest are forgotten, and go once more after a reconnect.
    max_undeleted: int = 200_000
    # Receipt mode (issue 13): deleted on the backend's receipt, not on the PUBACK.
    receipts: bool = False
    receipt_timeout_s: float = 60.0  # an awaiting event goes again this long after its PUBACK
    # The timeout backs off (doubles) while resends bring no receipt, up to this (None: 8x).
    receipt_timeout_max_s: float | None = None
    max_awaiting: int = 10_000  # new routine/telemetry only while fewer await or fly


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish these rows (QoS 1), then report their handles with ``published``."""

    rows: list[Stored]


@dataclass(frozen=True, slots=True)
class Delete:
    """The broker acknowledged these seqs: delete them from the buffer."""

    seqs: list[int]


@dataclass(frozen=True, slots=True)
class Refused:
    """The broker refused this seq; it stays buffered and goes again next connection."""

    seq: int


@dataclass(frozen=True, slots=True)
class DeleteRanges:
    """Receipt mode: a receipt covers these inclusive seq ranges; delete what is stored of
    them, then report ``ranges_deleted`` (or ``delete_failed_ranges``)."""

    ranges: list[tuple[int, int]]


Action = Publish | Delete | Refused | DeleteRanges


@dataclass(frozen=True, slots=True)
class _Awaiting:
    """A PUBACKed event waiting for its receipt (receipt mode, per connection)."""

    acked_at: float  # the poll that saw its PUBACK: timeouts and receipt delays count from it
    emergency: bool
    resent: bool  # sent before on this connection: its receipt's delay is ambiguous


class Ranges:
    """Disjoint inclusive seq ranges, kept sorted and merged (receipted, not yet deleted)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __contains__(self, seq: int) -> bool:
        i = bisect_right(self._starts, seq) - 1
        return i >= 0 and seq <= self._ends[i]

    def __bool__(self) -> bool:
        return bool(self._starts)

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def add(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Cover [lo, hi]; return the parts of it that were not covered before."""
        i = bisect_left(self._ends, lo - 1)  # touching ranges merge too
        j = bisect_right(self._starts, hi + 1)
        new: list[tuple[int, int]] = []
        nxt = lo
        for k in range(i, j):
            if self._starts[k] > nxt:
                new.append((nxt, min(self._starts[k] - 1, hi)))
            nxt = max(nxt, self._ends[k] + 1)
        if nxt <= hi:
            new.append((nxt, hi))
        if i < j:
            lo, hi = min(lo, self._starts[i]), max(hi, self._ends[j - 1])
        self._starts[i:j] = [lo]
        self._ends[i:j] = [hi]
        return new

    def remove(self, lo: int, hi: int) -> None:
        i = bisect_left(self._ends, lo)
        j = bisect_right(self._starts, hi)
        if i >= j:
            return
        starts, ends = [], []
        if self._starts[i] < lo:
            starts.append(self._starts[i])
            ends.append(lo - 1)
        if self._ends[j - 1] > hi:
            starts.append(hi + 1)
            ends.append(self._ends[j - 1])
        self._starts[i:j] = starts
        self._ends[i:j] = ends


class Delivery:
    """The delivery state machine of one publisher, across its connections."""

    def __init__(self, fetch: Fetch, limits: Limits | None = None,
                 refetch: Refetch | None = None) -> None:
        self.fetch = fetch
        self.limits = limits or Limits()
        if self.limits.receipts and refetch is None:
            raise ValueError("receipt mode needs the outbox's refetch port")
        self.refetch = refetch
        self._receipts = self.limits.receipts
        self._online = False
        self._live_mark = 0
        self._cursors: dict[tuple[int, str], int] = {}  # highest seq offered, per lane/part
        self._exhausted: set[tuple[int, str]] = set()
        self._recheck_at = 0.0
        self._handles: dict[int, int] = {}  # handle -> seq, negative for emergency events
        self._emergency_inflight = 0
        self._other_inflight = 0
        self._pending: list[int] = []  # acknowledged, not yet deleted
        self._refused: list[int] = []
        self._last_flush = 0.0
        self._turn = 0
        self._busy = False
        # Acknowledged, but the delete failed: kept across connections, never offered again.
        self._undeleted: set[int] = set()
        self._retry_at = 0.0
        self._now = 0.0  # the last poll's time (deadlines of PUBACKs seen before the next)
        # Receipt mode. Kept across connections: what receipts covered and is not yet
        # deleted (never offered again), the deletes to emit or retry, the highest seq sent.
        self._receipted = Ranges()
        self._to_delete: list[tuple[int, int]] = []
        self._retry_ranges: list[tuple[int, int]] = []
        self._ranges_retry_at = 0.0
        self._max_sent = 0
        # The current receipt timeout of routine and telemetry events (backed off; kept
        # across connections: a slow backend stays slow when the unit reconnects).
        self._rto = self.limits.receipt_timeout_s
        self._backed_off_at = float("-inf")  # when the timeout last doubled
        self._rto_max = max(self.limits.receipt_timeout_s, self.limits.receipt_timeout_max_s
                            or 8 * self.limits.receipt_timeout_s)
        # Per connection: PUBACKed seqs -> _Awaiting, (PUBACK time, seq) heaps per lane
        # group (a deadline is that time plus the group's timeout *now*: a backed-off
        # timeout holds back what already awaits too), the due ones (timed out) waiting to
        # go again, per lane group, and what went again.
        self._awaiting: dict[int, _Awaiting] = {}
        self._resent: set[int] = set()
        self._acked_emergency: list[tuple[float, int]] = []
        self._acked_other: list[tuple[float, int]] = []
        self._due: set[int] = set()
        self._due_emergency: list[int] = []  # heaps of seqs (stale entries skipped)
        self._due_other: list[int] = []
        self._covered_in_flight: set[int] = set()  # receipted while in flight: await nothing

    # -- events in ---------------------------------------------------------------------------

    def connected(self, live_mark: int, now: float) -> None:
        """A connection is up; ``live_mark`` is the buffer's last seq at this moment."""
        self._reset()
        self._online = True
        self._live_mark = live_mark
        self._last_flush = now
        self._now = now
        self._recheck_at = now + self.limits.idle_s
        self._busy = True

    def committed(self) -> None:
        """New events may be in the buffer: ask the live parts and the emergency lane again."""
        if self._exhausted:
            self._exhausted = {k for k in self._exhausted if k[1] == BACKLOG}

    def published(self, publish: Publish, handles: Sequence[int]) -> None:
        """The shell handed ``publish.rows`` to the client; ``handles`` name them, in order."""
        for row, handle in zip(publish.rows, handles, strict=True):
            self._handles[handle] = -row.seq if row.lane == _EMERGENCY else row.seq
        if self._receipts and publish.rows:
            self._max_sent = max(self._max_sent, max(r.seq for r in publish.rows))

    def acked(self, handle: int, ok: bool) -> None:
        """The broker answered a publish; handles this core never issued are ignored."""
        seq = self._handles.pop(handle, None)
        if seq is None:
            return  # birth, status, health: not events
        emergency = seq < 0
        if emergency:
            self._emergency_inflight -= 1
            seq = -seq
        else:
            self._other_inflight -= 1
        if not ok:
            if seq in self._covered_in_flight:  # a receipt already has it: nothing refused
                self._covered_in_flight.discard(seq)
            else:
                self._refused.append(seq)
        elif not self._receipts:
            self._pending.append(seq)
        elif seq in self._covered_in_flight:
            self._covered_in_flight.discard(seq)
        elif seq not in self._receipted:
            # Awaiting its receipt; not offered again on this connection before it timed out.
            self._awaiting[seq] = _Awaiting(self._now, emergency, seq in self._resent)
            heapq.heappush(self._acked_emergency if emergency else self._acked_other,
                           (self._now, seq))

    def receipt(self, ranges: Sequence[tuple[int, int]], upto: int | None = None) -> None:
        """A verified receipt: every seq in ``ranges`` (inclusive), and every seq <= ``upto``,
        is in the backend's database. Only seqs this core has sent are taken (clipped)."""
        spans = list(ranges)
        if upto is not None:
            spans.append((1, upto))
        delay = -1.0
        for lo, hi in spans:
            lo, hi = max(lo, 1), min(hi, self._max_sent)
            if lo > hi:
                continue
            for a, b in self._receipted.add(lo, hi):
                self._to_delete.append((a, b))
                delay = max(delay, self._forget(a, b))
        if delay >= 0:
            # A receipt for an event sent once (Karn: a resent one's delay is ambiguous):
            # receipts come back, so the timeout returns to the base, or to twice the delay
            # measured if that is longer (a backlog's receipts queue behind it).
            self._rto = min(self._rto_max, max(self.limits.receipt_timeout_s, 2 * delay))
        # PUBACKs still to come for receipted seqs mark nothing (the rows may be gone by then).
        if self._handles and self._receipted:
            covered = self._receipted
            self._covered_in_flight.update(s for s in map(abs, self._handles.values())
                                           if s in covered)

    def delete_failed(self, seqs: Sequence[int], now: float) -> None:
        """The shell could not carry out a Delete: remember the seqs and retry later."""
        self._undeleted.update(seqs)
        self._retry_at = now + self.limits.delete_retry_s
        cap = self.limits.max_undeleted
        if len(self._undeleted) > cap:
            self._undeleted = set(sorted(self._undeleted)[-(cap * 9 // 10):])

    def deleted(self, seqs: Sequence[int]) -> None:
        """The shell carried out a Delete."""
        if self._undeleted:
            self._undeleted.difference_update(seqs)

    def delete_failed_ranges(self, ranges: Sequence[tuple[int, int]], now: float) -> None:
        """The shell could not carry out a DeleteRanges: still done (never offered again),
        retried every ``delete_retry_s``."""
        self._retry_ranges.extend(ranges)
        self._ranges_retry_at = now + self.limits.delete_retry_s

    def ranges_deleted(self, ranges: Sequence[tuple[int, int]]) -> None:
        """The shell carried out a DeleteRanges: those rows are gone from the buffer."""
        for lo, hi in ranges:
            self._receipted.remove(lo, hi)

    def disconnected(self) -> list[Action]:
        """The connection is gone (or stopped cleanly): what the broker has is deleted now,
        so it is not sent again; everything else is offered again on the next connection.
        (Receipt mode: what receipts covered is deleted; the rest goes again.)"""
        out = self._drain_notes()
        if self._pending:
            out.append(Delete(self._pending))
        if self._to_delete:
            out.append(DeleteRanges(self._to_delete))
            self._to_delete = []
        self._reset()
        return out

    # -- actions out -------------------------------------------------------------------------

    def poll(self, now: float) -> list[Action]:
        """What to do now: refusals to report, acks to delete, rows to publish."""
        if not self._online:
            return []
        lim = self.limits
        self._now = now
        out = self._drain_notes() if self._refused else []
        pending = self._pending
        if pending and (len(pending) >= lim.batch
                        or self._emergency_inflight + self._other_inflight == 0
                        or now - self._last_flush >= lim.ack_flush_s):
            out.append(Delete(pending))
            self._pending = []
            self._last_flush = now
        if self._undeleted and now >= self._retry_at:
            out.append(Delete(sorted(self._undeleted)))
            self._retry_at = now + lim.delete_retry_s
        if self._receipts:
            self._receipt_deletes(now, out)
            self._expire(now)
        if now >= self._recheck_at:
            self._exhausted.clear()
            self._recheck_at = now + lim.idle_s
        sent = False
        free = lim.window + lim.reserve - self._emergency_inflight - self._other_inflight
        rows = self._resend(self._due_emergency, free) if self._due else []
        rows += self._take(_EMERGENCY, ALL, free - len(rows))
        if rows:
            out.append(Publish(rows))
            self._emergency_inflight += len(rows)
            sent = True
        else:
            # Routine and telemetry: never beyond `window`, nor into slots an emergency
            # event is waiting for (free is 0 then).
            room = min(lim.window - self._other_inflight, free)
            # New events (not resends) also stay under max_awaiting in receipt mode.
            fresh = room if not self._receipts else min(
                room, lim.max_awaiting - self.awaiting_receipt - self.in_flight)
            if room >= lim.batch // 2 or self._other_inflight == 0:
                parts = (LIVE, BACKLOG) if self._turn % 2 == 0 else (BACKLOG, LIVE)
                self._turn += 1
                for part in parts:
                    if part == BACKLOG and self._due_other and self._due:
                        # Due resends take the backlog's turn: one chunk, as a backlog's.
                        got = self._resend(self._due_other, min(room, lim.batch))
                        if got:
                            out.append(Publish(got))
                            self._other_inflight += len(got)
                            room -= len(got)
                            sent = True
                            if room <= 0:
                                break
                            continue
                    for lane in _OTHER_LANES:
                        got = self._take(lane, part, min(room, fresh, lim.batch))
                        if got:
                            out.append(Publish(got))
                            self._other_inflight += len(got)
                            room -= len(got)
                            fresh -= len(got)
                            sent = True
                            break
                    if room <= 0:
                        break
        self._busy = sent
        return out

    def timeout(self) -> float:
        """How long the shell may wait for the network before polling again."""
        if self._busy or self._to_delete:
            return 0.0  # sent something: more may fit at once; or a receipt to carry out
        wait = self.limits.ack_flush_s if self._pending else self.limits.idle_s
        for heap, limit in ((self._acked_emergency, self.limits.receipt_timeout_s),
                            (self._acked_other, self._rto)):
            if heap:
                wait = min(wait, max(0.0, heap[0][0] + limit - self._now))
        return wait

    # -- state for the shell and tests -------------------------------------------------------

    @property
    def online(self) -> bool:
        return self._online

    @property
    def in_flight(self) -> int:
        return self._emergency_inflight + self._other_inflight

    @property
    def emergency_in_flight(self) -> int:
        return self._emergency_inflight

    @property
    def pending_deletes(self) -> int:
        return len(self._pending)

    @property
    def undeleted(self) -> int:
        """Acknowledged events whose delete failed, waiting for a retry."""
        return len(self._undeleted)

    @property
    def awaiting_receipt(self) -> int:
        """Receipt mode: events the broker acknowledged on this connection that no receipt
        covers yet (those due to go again included; those in flight again not)."""
        return len(self._awaiting) + len(self._due)

    @property
    def receipt_timeout(self) -> float:
        """Receipt mode: the current (backed-off) receipt timeout of routine and telemetry
        events; emergency events always wait ``receipt_timeout_s``."""
        return self._rto

    @property
    def receipted_undeleted(self) -> list[tuple[int, int]]:
        """Receipted seq ranges not yet deleted from the buffer (a delete pending or failed)."""
        return self._receipted.pairs()

    # -- inside ------------------------------------------------------------------------------

    def _take(self, lane: int, part: str, limit: int) -> list[Stored]:
        key = (lane, part)
        if limit <= 0 or key in self._exhausted:
            return []
        out: list[Stored] = []
        while True:
            want = limit - len(out)
            after = self._cursors.get(key, 0)
            if part == LIVE:
                rows = self.fetch(lane, max(after, self._live_mark), want)
            elif part == BACKLOG:
                rows = self.fetch(lane, after, want, self._live_mark)
            else:
                rows = self.fetch(lane, after, want)
            if len(rows) < want:
                self._exhausted.add(key)
            if rows:
                self._cursors[key] = rows[-1].seq
            if not self._undeleted and not self._receipted:
                return out + rows if out else rows
            # Done already (acknowledged or receipted, the delete pending or failed): skip
            # them, read on.
            undeleted, receipted = self._undeleted, self._receipted
            out.extend(r for r in rows if r.seq not in undeleted and r.seq not in receipted)
            if len(out) >= limit or len(rows) < want:
                return out

    def _resend(self, due: list[int], limit: int) -> list[Stored]:
        """Up to ``limit`` due events of one heap, lowest seq first, read again."""
        out: list[Stored] = []
        assert self.refetch is not None
        while due and len(out) < limit:
            seqs: list[int] = []
            while due and len(seqs) < limit - len(out):
                seq = heapq.heappop(due)
                if seq in self._due:  # else receipted meanwhile, or a stale entry
                    self._due.discard(seq)
                    self._resent.add(seq)
                    seqs.append(seq)
            if seqs:
                out.extend(self.refetch(seqs))  # rows dropped by the cap are gone: forgotten
        return out

    def _expire(self, now: float) -> None:
        """Awaiting events that waited their group's timeout since the PUBACK become due."""
        heap, due = self._acked_emergency, self._due_emergency
        while heap and heap[0][0] + self.limits.receipt_timeout_s <= now:
            self._make_due(heapq.heappop(heap), due)
        heap, due = self._acked_other, self._due_other
        back_off = False
        while heap and heap[0][0] + self._rto <= now:
            acked_at, seq = heapq.heappop(heap)
            if self._make_due((acked_at, seq), due) and acked_at >= self._backed_off_at:
                back_off = True
        if back_off:
            # Sent since the last doubling, timed out, no receipt: back off, once for all
            # that timed out together (they go again now; what waits gets the new timeout).
            self._rto = min(self._rto_max, 2 * self._rto)
            self._backed_off_at = now

    def _make_due(self, key: tuple[float, int], due: list[int]) -> bool:
        acked_at, seq = key
        entry = self._awaiting.get(seq)
        if entry is None or entry.acked_at != acked_at:
            return False  # receipted, or awaiting again since a later PUBACK
        del self._awaiting[seq]
        self._due.add(seq)
        heapq.heappush(due, seq)
        return True

    def _forget(self, lo: int, hi: int) -> float:
        """Receipted seqs in [lo, hi] await nothing any more (stale heap entries stay).
        Returns the longest receipt delay among those sent once, -1 if none was."""
        gone: list[_Awaiting] = []
        if hi - lo + 1 <= len(self._awaiting) + len(self._due) + len(self._resent):
            for seq in range(lo, hi + 1):
                e = self._awaiting.pop(seq, None)
                if e is not None:
                    gone.append(e)
                self._due.discard(seq)
                self._resent.discard(seq)
        else:
            for seq in [s for s in self._awaiting if lo <= s <= hi]:
                gone.append(self._awaiting.pop(seq))
            self._due.difference_update([s for s in self._due if lo <= s <= hi])
            self._resent.difference_update([s for s in self._resent if lo <= s <= hi])
        return max((self._now - e.acked_at for e in gone if not e.resent), default=-1.0)

    def _receipt_deletes(self, now: float, out: list[Action]) -> None:
        if self._to_delete:
            out.append(DeleteRanges(self._to_delete))
            self._to_delete = []
        if self._retry_ranges and now >= self._ranges_retry_at:
            out.append(DeleteRanges(self._retry_ranges))
            self._retry_ranges = []
            self._ranges_retry_at = now + self.limits.delete_retry_s

    def _drain_notes(self) -> list[Action]:
        out: list[Action] = [Refused(seq) for seq in self._refused]
        self._refused = []
        return out

    def _reset(self) -> None:
        self._online = False
        self._cursors = {}
        self._exhausted = set()
        self._handles = {}
        self._emergency_inflight = 0
        self._other_inflight = 0
        self._pending = []
        self._refused = []
        self._turn = 0
        self._busy = False
        self._awaiting = {}
        self._resent = set()
        self._acked_emergency = []
        self._acked_other = []
        self._due = set()
        self._due_emergency = []
        self._due_other = []
        self._covered_in_flight = set()
