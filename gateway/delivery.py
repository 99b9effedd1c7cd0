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
"""

from __future__ import annotations

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


Action = Publish | Delete | Refused


class Delivery:
    """The delivery state machine of one publisher, across its connections."""

    def __init__(self, fetch: Fetch, limits: Limits | None = None) -> None:
        self.fetch = fetch
        self.limits = limits or Limits()
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

    # -- events in ---------------------------------------------------------------------------

    def connected(self, live_mark: int, now: float) -> None:
        """A connection is up; ``live_mark`` is the buffer's last seq at this moment."""
        self._reset()
        self._online = True
        self._live_mark = live_mark
        self._last_flush = now
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

    def acked(self, handle: int, ok: bool) -> None:
        """The broker answered a publish; handles this core never issued are ignored."""
        seq = self._handles.pop(handle, None)
        if seq is None:
            return  # birth, status, health: not events
        if seq < 0:
            self._emergency_inflight -= 1
            seq = -seq
        else:
            self._other_inflight -= 1
        if ok:
            self._pending.append(seq)
        else:
            self._refused.append(seq)

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

    def disconnected(self) -> list[Action]:
        """The connection is gone (or stopped cleanly): what the broker has is deleted now,
        so it is not sent again; everything else is offered again on the next connection."""
        out = self._drain_notes()
        if self._pending:
            out.append(Delete(self._pending))
        self._reset()
        return out

    # -- actions out -------------------------------------------------------------------------

    def poll(self, now: float) -> list[Action]:
        """What to do now: refusals to report, acks to delete, rows to publish."""
        if not self._online:
            return []
        lim = self.limits
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
        if now >= self._recheck_at:
            self._exhausted.clear()
            self._recheck_at = now + lim.idle_s
        sent = False
        free = lim.window + lim.reserve - self._emergency_inflight - self._other_inflight
        rows = self._take(_EMERGENCY, ALL, free)
        if rows:
            out.append(Publish(rows))
            self._emergency_inflight += len(rows)
            sent = True
        else:
            # Routine and telemetry: never beyond `window`, nor into slots an emergency
            # event is waiting for (free is 0 then).
            room = min(lim.window - self._other_inflight, free)
            if room >= lim.batch // 2 or self._other_inflight == 0:
                parts = (LIVE, BACKLOG) if self._turn % 2 == 0 else (BACKLOG, LIVE)
                self._turn += 1
                for part in parts:
                    for lane in _OTHER_LANES:
                        got = self._take(lane, part, min(room, lim.batch))
                        if got:
                            out.append(Publish(got))
                            self._other_inflight += len(got)
                            room -= len(got)
                            sent = True
                            break
                    if room <= 0:
                        break
        self._busy = sent
        return out

    def timeout(self) -> float:
        """How long the shell may wait for the network before polling again."""
        if self._busy:
            return 0.0  # sent something: more may fit at once
        return self.limits.ack_flush_s if self._pending else self.limits.idle_s

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
            if not self._undeleted:
                return out + rows if out else rows
            # Acknowledged already (their delete failed): skip them, read on.
            out.extend(r for r in rows if r.seq not in self._undeleted)
            if len(out) >= limit or len(rows) < want:
                return out

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
