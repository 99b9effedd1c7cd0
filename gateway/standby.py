"""When the standby connection carries emergency events: the rules, without I/O.

The standby (``[broker] standby_host``, docs/mqtt.md "Standby connection") is a second,
already-open MQTT connection to a different broker address (another node of a cluster).
It exists for one case: the main connection is down (its node died, it is reconnecting)
and an SOS is decided. Reconnecting to a cluster costs seconds (RabbitMQ 3.10 registers
the client id in a Raft cluster and re-attaches the session's queue: docs/fleet.md,
finding 6); a connection that was open before the failure publishes at once.

Sans-I/O like gateway/delivery.py: the shell (gateway/standbylink.py) tells a
:class:`Standby` what happened (``connected``, ``disconnected``, ``main``, ``committed``,
``published``, ``acked``, ``receipt``) and asks ``poll(now)`` what to do. The core reads
the buffer through the outbox's ``fetch`` port; deleting is an action.

The rules:

- Only while the main connection is down, and only emergency-lane events (sos,
  zone_alert, roll_call, buffer_salvage). While the main is up the standby sends
  nothing (the shell's keepalive only): status, health, commands and the other lanes
  stay on the main.
- When the main goes down, every emergency event still in the buffer goes on the
  standby (oldest first, QoS 1), at most ``reserve`` in flight; then each new one as it
  is committed. Each at most once per outage and standby connection (an event the main
  already had PUBACKed and awaits a receipt for goes again: a duplicate on the wire, which
  the backend drops by id). A lost standby connection forgets what was in flight: the
  next standby connection offers it again if the main is still down.
- Broker mode: a standby PUBACK deletes the event, as the main's would.
- Receipt mode: the standby subscribes to the unit's receipt topic with its first
  publish of an outage, ahead of it on the same connection (the main's persistent
  session gets receipts only after its reconnect). A verified
  receipt deletes only seqs **this standby published** (exact seqs, not a range up to the
  highest sent): it can never delete an event that did not leave the unit, and seqs the
  main sent are left for the main's own copy of the receipt. A PUBACKed event not
  receipted within ``receipt_timeout_s`` goes again while the main is still down.
- When the main is back, the standby stops publishing; it keeps its receipt subscription
  while events it sent still await a receipt, at most ``linger_s``, then unsubscribes and
  forgets them (the main sends every un-receipted event again after its reconnect anyway:
  duplicates on the wire, never a loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.contract import Stored
from gateway.delivery import Delete, DeleteRanges, Fetch, Publish, Refetch
from gateway.model import Lane

_EMERGENCY = int(Lane.EMERGENCY)


@dataclass(frozen=True, slots=True)
class StandbyLimits:
    reserve: int = 32  # emergency events in flight on the standby
    receipts: bool = False  # receipt mode: deleted on the backend's receipt
    receipt_timeout_s: float = 60.0  # a PUBACKed event without receipt goes again this late
    linger_s: float = 30.0  # receipts still awaited after the main is back: this long at most
    idle_s: float = 0.5  # the buffer is asked again this often while active
    # While the main is up and nothing of the standby's is outstanding it only keeps its
    # connection alive: the shell may sleep this long (the main's changes wake it).
    quiet_s: float = 5.0
    # Receipt mode: subscribe to the receipts once connected, not at an outage's first
    # publish ([broker] standby_subscribe = "connect"): no queue declared at the broker
    # while a node is dying; receipts then come twice while the main is up (dropped unread).
    subscribe_at_connect: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Receipt mode: subscribe to the unit's receipt topic on the standby connection."""


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Receipt mode: the main is back and nothing awaits: drop the receipt subscription."""


StandbyAction = Publish | Delete | DeleteRanges | Subscribe | Unsubscribe


class Standby:
    """The standby connection's state machine (one per publisher, across connections)."""

    def __init__(self, fetch: Fetch, refetch: Refetch,
                 limits: StandbyLimits | None = None) -> None:
        self.fetch = fetch
        self.refetch = refetch
        self.limits = limits or StandbyLimits()
        self._now = 0.0
        self._linked = False  # the standby connection is up
        self._main_up = False
        self._main_up_at = 0.0
        self._subscribed = False
        self._cursor = 0  # highest emergency seq offered in this outage on this connection
        self._exhausted = False  # the last fetch came back short: wait for a commit
        self._recheck_at = 0.0
        self._handles: dict[int, int] = {}  # handle -> seq, in flight
        self._awaiting: dict[int, float] = {}  # receipt mode: PUBACKed seq -> when
        self._sent: set[int] = set()  # seqs this standby published and not yet deleted
        self._pending: list[int] = []  # broker mode: PUBACKed, to delete
        self._to_delete: list[tuple[int, int]] = []
        self._due: list[int] = []  # receipt timed out, main still down: go again
        self.published_count = 0

    # -- events in ---------------------------------------------------------------------------

    def connected(self, now: float) -> None:
        """The standby connection is up (a clean session: nothing subscribed)."""
        self._linked = True
        self._subscribed = False
        self._rewind(now)

    def disconnected(self) -> list[StandbyAction]:
        """The standby connection is gone: what was in flight or awaits a receipt (which
        can no longer arrive on it: a clean session) is forgotten, and offered again on the
        next standby connection while the main is down; PUBACKed ones (broker mode) are
        deleted."""
        out = self._flush()
        self._linked = False
        self._subscribed = False
        self._sent.difference_update(self._handles.values())
        self._sent.difference_update(self._awaiting)
        self._handles = {}
        self._awaiting = {}
        self._due = []
        return out

    def main(self, up: bool, now: float) -> None:
        """The main connection's state, as the shell last saw it."""
        if up == self._main_up:
            return
        self._main_up = up
        if up:
            self._main_up_at = now
        else:
            self._rewind(now)  # a new outage: every emergency event still buffered goes

    def committed(self) -> None:
        self._exhausted = False

    def published(self, publish: Publish, handles: Sequence[int]) -> None:
        for row, handle in zip(publish.rows, handles, strict=True):
            self._handles[handle] = row.seq
            self._sent.add(row.seq)
        self.published_count += len(publish.rows)

    def acked(self, handle: int, ok: bool, now: float) -> None:
        seq = self._handles.pop(handle, None)
        if seq is None:
            return
        if not ok:
            self._sent.discard(seq)  # refused: the main sends it after its reconnect
            return
        if seq not in self._sent:
            return  # receipted while in flight
        if self.limits.receipts:
            self._awaiting[seq] = now
        else:
            self._pending.append(seq)
            self._sent.discard(seq)

    def receipt(self, ranges: Sequence[tuple[int, int]], upto: int | None = None) -> None:
        """A verified receipt: delete the seqs in it that this standby published. In broker
        mode (no receipts) a PUBACK is what deletes, and a receipt changes nothing (the
        standby does not subscribe then; one arriving anyway must not delete an event whose
        PUBACK has not come: hypothesis found that)."""
        if not self.limits.receipts:
            return
        spans = list(ranges) + ([(1, upto)] if upto is not None else [])
        mine = sorted(s for s in self._sent if any(lo <= s <= hi for lo, hi in spans))
        for s in mine:
            self._sent.discard(s)
            self._awaiting.pop(s, None)
            self._to_delete.append((s, s))

    # -- actions out -------------------------------------------------------------------------

    def poll(self, now: float) -> list[StandbyAction]:
        self._now = now
        out = self._flush()
        if not self._linked:
            return out
        lim = self.limits
        if lim.receipts and lim.subscribe_at_connect and not self._subscribed:
            out.append(Subscribe())
            self._subscribed = True
        if self._main_up and self._subscribed and (
                (not self._awaiting and not self._handles)
                or now - self._main_up_at >= lim.linger_s):
            # The main is back and nothing of ours awaits (or it waited long enough: the
            # main sends it again): forget it; drop the subscription made for the outage.
            self._sent.difference_update(self._awaiting)
            self._awaiting = {}
            if not lim.subscribe_at_connect:
                out.append(Unsubscribe())
                self._subscribed = False
        if self._main_up:
            return out
        if lim.receipts:
            for seq, at in list(self._awaiting.items()):
                if now - at >= lim.receipt_timeout_s:
                    del self._awaiting[seq]
                    self._due.append(seq)
        if now >= self._recheck_at:
            self._exhausted = False
            self._recheck_at = now + lim.idle_s
        free = lim.reserve - len(self._handles)
        rows: list[Stored] = []
        if self._due and free > 0:
            due = sorted(self._due)
            due, self._due = due[:free], due[free:]
            rows = self.refetch(due)
            got = {r.seq for r in rows}
            self._sent.difference_update(s for s in due if s not in got)  # deleted meanwhile
        if free - len(rows) > 0 and not self._exhausted:
            want = free - len(rows)
            got_rows = self.fetch(_EMERGENCY, self._cursor, want)
            if len(got_rows) < want:
                self._exhausted = True
            if got_rows:
                self._cursor = got_rows[-1].seq
            rows += [r for r in got_rows if r.seq not in self._sent]
        if rows:
            if lim.receipts and not self._subscribed:
                # Only once something goes (most outages carry no SOS: no broker work), and
                # before the publish on the same connection: its receipt comes here.
                out.append(Subscribe())
                self._subscribed = True
            out.append(Publish(rows))
        return out

    def timeout(self) -> float:
        """How long the shell may wait before polling again."""
        if self._pending or self._to_delete or self._due:
            return 0.0
        if self._main_up and not self._handles and not self._awaiting:
            return self.limits.quiet_s
        wait = self.limits.idle_s
        if self._awaiting and not self._main_up:
            oldest = min(self._awaiting.values())
            wait = min(wait, max(0.0, oldest + self.limits.receipt_timeout_s - self._now))
        return wait

    # -- state for the shell and tests -------------------------------------------------------

    @property
    def active(self) -> bool:
        """The standby carries emergency events now (linked, main down)."""
        return self._linked and not self._main_up

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def expecting_receipts(self) -> bool:
        """Events this standby published are not yet deleted (a receipt may matter)."""
        return bool(self._sent)

    @property
    def in_flight(self) -> int:
        return len(self._handles)

    @property
    def awaiting_receipt(self) -> int:
        return len(self._awaiting)

    # -- inside ------------------------------------------------------------------------------

    def _rewind(self, now: float) -> None:
        self._cursor = 0
        self._exhausted = False
        self._recheck_at = now + self.limits.idle_s
        # What is in flight or awaiting stays tracked (not offered twice in one outage).

    def _flush(self) -> list[StandbyAction]:
        out: list[StandbyAction] = []
        if self._pending:
            out.append(Delete(self._pending))
            self._pending = []
        if self._to_delete:
            out.append(DeleteRanges(self._to_delete))
            self._to_delete = []
        return out
